"""Mistakes in YAML fail when definitions load, naming the file and the key."""

from __future__ import annotations

import pytest

from audience_pipelines_tests.dagster_helpers import project_defs

SYNC = """type: audience_pipelines.components.AudienceSync
attributes:
  name: extra_sync
  audience: {audience}
  destination: {destination}
  identifiers: {identifiers}
  fields: {fields}
"""


def sync_yaml(audience="high_value_customers", destination="crm_table", identifiers="{email: email}",
              fields="{plan: plan}") -> dict[str, str]:
    return {"extra/defs.yaml": SYNC.format(audience=audience, destination=destination,
                                           identifiers=identifiers, fields=fields)}


def load_error(**kw) -> str:
    with pytest.raises(Exception) as info:
        with project_defs(**kw):
            pass
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(chain)


def test_unknown_audience_names_file_and_key(home):
    message = load_error(extra=sync_yaml(audience="high_valu_customers"))
    assert "extra/defs.yaml" in message and "key 'audience'" in message
    assert "no audience named 'high_valu_customers'" in message and "high_value_customers" in message


def test_unknown_destination(home):
    message = load_error(extra=sync_yaml(destination="crm"))
    assert "key 'destination'" in message and "no destination named 'crm'" in message


def test_mapped_column_missing_from_the_audience(home):
    message = load_error(extra=sync_yaml(fields="{plan: plan_type}"))
    assert "key 'fields'" in message and "plan_type" in message


def test_identifier_the_destination_does_not_take(home):
    message = load_error(extra=sync_yaml(identifiers="{fingerprint: email}"))
    assert "key 'identifiers'" in message and "fingerprint" in message


def test_typo_in_an_attribute_is_rejected(home):
    message = load_error(extra={"extra/defs.yaml": SYNC.format(
        audience="high_value_customers", destination="crm_table", identifiers="{}", fields="{}")
        .replace("  fields:", "  feilds:")})
    assert "feilds" in message


def test_secret_written_inline_is_refused(home):
    message = load_error(extra={"extra/defs.yaml": """type: audience_pipelines.components.Destination
attributes:
  name: meta_inline
  type: meta_custom_audiences
  settings: {ad_account_id: "1", access_token: "EAAB-not-here"}
"""})
    assert "must not be written in YAML" in message and "from_env" in message
    assert "EAAB-not-here" not in message


def test_unknown_destination_setting(home):
    message = load_error(extra={"extra/defs.yaml": """type: audience_pipelines.components.Destination
attributes:
  name: files2
  type: file
  settings: {path: /tmp/x, fromat: csv}
"""})
    assert "destination 'files2'" in message and "fromat" in message


def test_examples_load_beside_the_demo(home):
    with project_defs(examples=("meta_and_webhook",)) as defs:
        keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"syncs/high_value_to_meta", "syncs/churn_risk_to_webhook"} <= keys


def test_two_syncs_to_one_destination_audience_are_refused(home):
    message = load_error(extra={"extra/defs.yaml": SYNC.format(
        audience="churn_risk", destination="crm_table", identifiers="{email: email}", fields="{}")
        + "  target: {name: high_value_customers}\n"})
    assert "extra/defs.yaml" in message and "key 'target'" in message
    assert "sync 'high_value_to_crm' also writes destination 'crm_table' audience name 'high_value_customers'" \
        in message
