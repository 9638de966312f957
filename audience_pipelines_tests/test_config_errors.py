"""Mistakes in YAML fail when definitions load, naming the file and the key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import audience_pipelines.definitions as definitions
from audience_pipelines.components.load_errors import first_user_error
from audience_pipelines.engine import ConfigError
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


# --- every component's YAML mistakes: `<file> (document N): <kind> '<name>', key '<path>': <what>` --------

T = "type: audience_pipelines.components."
SPARE = T + "Warehouse\nattributes: {name: spare, url: demo}\n---\n"  # so the mistake is in document 2
GOOD_SYNC = T + """AudienceSync
attributes:
  name: extra_sync
  audience: high_value_customers
  destination: crm_table
  target: {name: extra}
  identifiers: {email: email}
"""
GOOD_AUDIENCE = T + "Audience\nattributes:\n  name: vip2\n  entity: customers\n  filter: lifetime_value > 5\n"
GOOD_DESTINATION = T + "Destination\nattributes:\n  name: files2\n  type: file\n  settings: {path: /tmp/x}\n"
GOOD_ENTITY = T + "Entity\nattributes:\n  name: people\n  table: customers\n  key: customer_id\n"


def mistake(text: str, drop: tuple[str, ...] = ()) -> str:
    """Our error for `extra/defs.yaml` holding `text`, whatever Dagster wraps it in."""
    with pytest.raises(Exception) as info:
        with project_defs(extra={"extra/defs.yaml": text}, drop=drop):
            pass
    found = first_user_error(info.value)
    assert isinstance(found, ConfigError), repr(info.value)
    return str(found)


AT = "defs/extra/defs.yaml (document 2)"


@pytest.mark.parametrize("text, expected", [
    (GOOD_SYNC.replace("  identifiers:", "  identifers:"),
     f"{AT}: sync 'extra_sync', key 'identifers': unknown key; did you mean 'identifiers'?"),
    (GOOD_SYNC + "  schedule: {cron: '0 6 * * *', timezone: Mars/Olympus}\n",
     f"{AT}: sync 'extra_sync', key 'schedule.timezone': unknown timezone 'Mars/Olympus' "
     "(an IANA name such as 'Europe/London', or 'UTC')"),
    (GOOD_SYNC + "  max_removal_share: lots\n",
     f"{AT}: sync 'extra_sync', key 'max_removal_share': expected a number, got 'lots'"),
    (GOOD_SYNC.replace("  name: extra_sync\n", ""),
     f"{AT}: sync, key 'name': required, but not given"),
    (GOOD_SYNC + "  mode: mirorr\n",
     f"{AT}: sync 'extra_sync', key 'mode': 'mirorr' is not one of ['mirror', 'additive', 'subtractive']; "
     "did you mean 'mirror'?"),
    (GOOD_SYNC + "  removal: do_nothin\n",
     f"{AT}: sync 'extra_sync', key 'removal': 'do_nothin' is not one of ['remove', 'do_nothing']; "
     "did you mean 'do_nothing'?"),
    (GOOD_SYNC.replace("{name: extra}", "{nam: extra}"),
     f"{AT}: sync 'extra_sync', key 'target.nam': unknown key; did you mean 'name'?"),
    (GOOD_SYNC.replace("{email: email}", "{email: [email]}"),
     f"{AT}: sync 'extra_sync', key 'identifiers.email': expected text, got ['email']"),
], ids=["misspelt-key", "timezone", "type", "no-name", "mode", "removal", "nested-key", "nested-type"])
def test_sync_mistakes(home, text, expected):
    assert mistake(SPARE + text) == expected


@pytest.mark.parametrize("text, expected", [
    (GOOD_AUDIENCE.replace("  filter:", "  fitler:"),
     f"{AT}: audience 'vip2', key 'fitler': unknown key; did you mean 'filter'?"),
    (GOOD_AUDIENCE + "  schedule: {cron: '0 6 * * *', timezone: Europe/Londn}\n",
     f"{AT}: audience 'vip2', key 'schedule.timezone': unknown timezone 'Europe/Londn'; "
     "did you mean 'Europe/London'?"),
    (GOOD_AUDIENCE + "  max_bad_key_share: high\n",
     f"{AT}: audience 'vip2', key 'max_bad_key_share': expected a number, got 'high'"),
    (GOOD_AUDIENCE.replace("  name: vip2\n", ""),
     f"{AT}: audience, key 'name': required, but not given"),
    (GOOD_AUDIENCE + "  schedule: 5\n",
     f"{AT}: audience 'vip2', key 'schedule': expected text or a mapping (keys: cron, timezone), got 5"),
], ids=["misspelt-key", "timezone", "type", "no-name", "schedule-type"])
def test_audience_mistakes(home, text, expected):
    assert mistake(SPARE + text) == expected


@pytest.mark.parametrize("text, expected", [
    (GOOD_DESTINATION + "  from_evn: {path: FILES_PATH}\n",
     f"{AT}: destination 'files2', key 'from_evn': unknown key; did you mean 'from_env'?"),
    (GOOD_DESTINATION.replace("{path: /tmp/x}", "5"),
     f"{AT}: destination 'files2', key 'settings': expected a mapping, got 5"),
    (GOOD_DESTINATION.replace("  name: files2\n", ""),
     f"{AT}: destination, key 'name': required, but not given"),
], ids=["misspelt-key", "type", "no-name"])
def test_destination_mistakes(home, text, expected):
    assert mistake(SPARE + text) == expected


@pytest.mark.parametrize("text, expected", [
    (GOOD_ENTITY + "  identifers: {email: email}\n",
     f"{AT}: entity 'people', key 'identifers': unknown key; did you mean 'identifiers'?"),
    (GOOD_ENTITY + "  attributes: {plan: plan}\n",
     f"{AT}: entity 'people', key 'attributes': expected a list, got {{'plan': 'plan'}}"),
    (GOOD_ENTITY.replace("  name: people\n", ""),
     f"{AT}: entity, key 'name': required, but not given"),
], ids=["misspelt-key", "type", "no-name"])
def test_entity_mistakes(home, text, expected):
    assert mistake(SPARE + text) == expected


def test_warehouse_and_settings_mistakes(home):
    assert mistake(T + "Warehouse\nattributes: {name: spare, urll: demo}\n") == \
        "defs/extra/defs.yaml (document 1): warehouse 'spare', key 'urll': unknown key; did you mean 'url'?"
    assert mistake(T + "Warehouse\nattributes: {urll: demo}\n") == \
        "defs/extra/defs.yaml (document 1): warehouse 'main', key 'urll': unknown key; did you mean 'url'?"
    assert mistake(T + "Settings\nattributes: {schedules: runing}\n", drop=("settings",)) == \
        ("defs/extra/defs.yaml (document 1): settings, key 'schedules': 'runing' is not one of "
         "['stopped', 'running']; did you mean 'running'?")
    assert mistake(T + "Settings\nattributes: {automation_interval_seconds: soon}\n", drop=("settings",)) == \
        "defs/extra/defs.yaml (document 1): settings, key 'automation_interval_seconds': expected a whole number, got 'soon'"


def test_every_mistake_of_a_document_gets_its_own_line(home):
    assert mistake(SPARE + T + "Audience\nattributes:\n  name: vip2\n  entity: customers\n  filter: x > 1\n"
                   "  schedule: {crn: '0 6 * * *'}\n").splitlines() == [
        f"{AT}: audience 'vip2', key 'schedule.cron': required, but not given",
        f"{AT}: audience 'vip2', key 'schedule.crn': unknown key; did you mean 'cron'?",
    ]


def test_an_unknown_key_without_a_close_one_lists_the_keys(home):
    assert mistake(SPARE + GOOD_ENTITY + "  colour: blue\n") == (
        f"{AT}: entity 'people', key 'colour': unknown key (the keys are: name, kind, table, key, warehouse, "
        "identifiers, attributes, related)")


def test_a_template_error_names_the_key(home):
    message = mistake(SPARE + GOOD_SYNC + "  fields: {plan: '{{ nope }}'}\n")
    assert message.startswith(f"{AT}: sync 'extra_sync', key 'fields.plan': UndefinedError: 'nope' not found in scope")


def test_the_code_location_leads_with_the_mistake(monkeypatch):
    line = "defs/x.yaml (document 1): sync 's', key 'mode': 'mirorr' is not one of [...]"

    def load(**_):
        try:
            raise ConfigError(line)
        except ConfigError as exc:
            raise RuntimeError("Error while loading component x:\n<component tree>") from exc

    monkeypatch.setattr(definitions.dg, "load_from_defs_folder", load)
    with pytest.raises(ConfigError) as info:
        definitions.defs()
    assert str(info.value) == line

    def broken(**_):
        raise RuntimeError("not a YAML mistake")

    monkeypatch.setattr(definitions.dg, "load_from_defs_folder", broken)
    with pytest.raises(RuntimeError, match="not a YAML mistake"):
        definitions.defs()


@pytest.mark.slow
def test_dagster_definitions_validate_prints_the_mistake_first(tmp_path):
    """What `dagster definitions validate -w workspace.yaml` (and so `dg check defs`) prints."""
    root = Path(definitions.__file__).parents[1]
    shutil.copytree(root / "audience_pipelines", tmp_path / "audience_pipelines",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("workspace.yaml", "pyproject.toml"):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / "audience_pipelines" / "defs" / "extra").mkdir()
    (tmp_path / "audience_pipelines" / "defs" / "extra" / "defs.yaml").write_text(
        GOOD_SYNC.replace("  identifiers:", "  identifers:"))
    (tmp_path / "dagster_home").mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"), "PYTHONPATH": str(tmp_path),
           "AUDIENCE_PIPELINES_HOME": str(tmp_path / "data"), "NO_COLOR": "1"}
    out = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w",
                          "workspace.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    printed = out.stdout + out.stderr
    assert str(tmp_path / "audience_pipelines" / "definitions.py") in printed  # the copy was loaded
    failed = "Validation failed for code location audience_pipelines:"
    after = printed[printed.index(failed) + len(failed):].lstrip().splitlines()
    assert after[0] == ("audience_pipelines.contract.errors.ConfigError: defs/extra/defs.yaml (document 1): "
                        "sync 'extra_sync', key 'identifers': unknown key; did you mean 'identifiers'?")
