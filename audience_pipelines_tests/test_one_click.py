"""One-click activation (`activate:` on an audience) and the match-rate check, through Dagster."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq
import pytest

from audience_pipelines.components.sync import MATCH_RATE_CHECK
from audience_pipelines_tests.dagster_helpers import materialize, metadata, project_defs
from audience_pipelines_tests.fakes import FakeMeta
from audience_pipelines_tests.test_config_errors import load_error

TOKEN = "EAAB-one-click-token"
META = """type: audience_pipelines.components.Destination
attributes:
  name: meta_ads
  type: meta_custom_audiences
  from_env: {access_token: META_ACCESS_TOKEN, base_url: META_BASE_URL}
  settings: {ad_account_id: "777"}
"""
AUDIENCE = """---
type: audience_pipelines.components.Audience
attributes:
  name: {name}
  {id}
  entity: {entity}
  filter: lifetime_value > 1000
  schedule: daily
  activate: {activate}
"""


def project(name="vip_buyers", activate="[meta_ads]", entity="customers", audience_id="", extra=""):
    text = META + AUDIENCE.format(name=name, activate=activate, entity=entity,
                                  id=f"id: {audience_id}" if audience_id else "") + extra
    return {"one_click/defs.yaml": text}


@pytest.fixture
def meta(monkeypatch):
    with FakeMeta(access_token=TOKEN, ad_account_id="777") as server:
        monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
        monkeypatch.setenv("META_BASE_URL", server.url)
        yield server


def sync_asset(defs: dg.Definitions, key: str) -> dg.AssetsDefinition:
    return defs.resolve_assets_def(dg.AssetKey(key.split("/")))


def test_activation_creates_a_sync_with_the_default_settings(home, meta):
    with project_defs(extra=project()) as defs:
        asset = sync_asset(defs, "syncs/vip_buyers_to_meta_ads")
        spec = asset.specs_by_key[dg.AssetKey(["syncs", "vip_buyers_to_meta_ads"])]
        # Mirror mode, a daily schedule, every identifier of the entity Meta takes.
        assert spec.metadata["sync_mode"] == "mirror" and spec.metadata["destination"] == "meta_ads"
        assert "- mode: mirror (adds, updates and removes)" in spec.description
        assert ("- identifiers: `email` ← column `email`" not in spec.description
                and "- identifiers: `email`, `phone`, `first_name`, `last_name`, `country`, `zip`, `device_id`"
                in spec.description)
        assert "- target: destination audience name 'vip_buyers'" in spec.description
        assert "One-click activation" in spec.description
        schedule = defs.resolve_schedule_def("sync_vip_buyers_to_meta_ads_schedule")
        assert schedule.cron_schedule == "0 6 * * *"

        instance = dg.DagsterInstance.ephemeral()
        result = materialize(defs, "audiences/vip_buyers", "syncs/vip_buyers_to_meta_ads", instance=instance)
        m = metadata(result, "syncs/vip_buyers_to_meta_ads")
        audience_id = meta.audience_id_by_name("vip_buyers")  # named after the audience
        members = pq.read_table(home / "audiences" / "vip_buyers" / "membership.parquet")
        assert m["destination_audience_id"] == audience_id
        assert len(meta.members(audience_id)) == m["rows_added"] == members.num_rows - m["rows_set_aside"]
        assert m["match_rate"] == 1.0 and m["match_rate_basis"] == "audience size / members held"


def test_a_renamed_audience_keeps_its_destination_audience_and_switching_off_removes_nothing(home, meta):
    instance = dg.DagsterInstance.ephemeral()
    with project_defs(extra=project()) as defs:
        materialize(defs, "audiences/vip_buyers", "syncs/vip_buyers_to_meta_ads", instance=instance)
    audience_id = meta.audience_id_by_name("vip_buyers")
    held = set(meta.members(audience_id))

    # Renamed, with its first name kept as its id: the same sync, the same Meta audience and name.
    with project_defs(extra=project(name="big_spenders", audience_id="vip_buyers")) as defs:
        result = materialize(defs, "audiences/big_spenders", "syncs/vip_buyers_to_meta_ads", instance=instance)
        m = metadata(result, "syncs/vip_buyers_to_meta_ads")
    assert m["destination_audience_id"] == audience_id and (m["rows_added"], m["rows_removed"]) == (0, 0)
    assert [a["name"] for a in meta.audiences.values()] == ["vip_buyers"]

    # Switched off: the sync and its schedule are gone, and the audience keeps its members.
    with project_defs(extra=project(name="big_spenders", audience_id="vip_buyers", activate="[]")) as defs:
        keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
        assert "syncs/vip_buyers_to_meta_ads" not in keys
        assert not any(s.name == "sync_vip_buyers_to_meta_ads_schedule" for s in defs.schedules or [])
    assert set(meta.members(audience_id)) == held


def test_an_explicit_sync_for_the_pair_replaces_the_default(home, meta):
    explicit = """---
type: audience_pipelines.components.AudienceSync
attributes:
  name: vip_meta_additive
  audience: vip_buyers
  destination: meta_ads
  mode: additive
  identifiers: {email: email}
"""
    with project_defs(extra=project(extra=explicit)) as defs:
        keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
        assert "syncs/vip_meta_additive" in keys and "syncs/vip_buyers_to_meta_ads" not in keys


def test_activation_refuses_entities_that_are_not_people_and_destinations_that_are_not_ad_platforms(home):
    companies = """---
type: audience_pipelines.components.Entity
attributes:
  name: companies
  kind: company
  table: customers
  key: customer_id
  identifiers: {email: email}
"""
    message = load_error(extra=project(entity="companies", extra=companies))
    assert "one_click/defs.yaml" in message and "key 'activate'" in message
    assert "entity 'companies' is declared `kind: company`" in message and "`kind: person`" in message

    message = load_error(extra=project(activate="[crm_table]"))
    assert "destination 'crm_table' (sql_table) is not an ad platform" in message

    message = load_error(extra=project(activate="[meta_adz]"))
    assert "no destination named 'meta_adz'" in message and "meta_ads" in message


def test_a_falling_match_rate_is_a_warning_beside_the_run(home, meta):
    instance = dg.DagsterInstance.ephemeral()
    key = dg.AssetKey(["syncs", "vip_buyers_to_meta_ads"])
    with project_defs(extra=project()) as defs:
        first = materialize(defs, "audiences/vip_buyers", "syncs/vip_buyers_to_meta_ads", instance=instance)
        [check] = [c for c in first.get_asset_check_evaluations() if c.check_name == MATCH_RATE_CHECK]
        assert check.passed  # no earlier run to compare with

        meta.match_share = 0.5  # Meta now matches half the people uploaded
        second = materialize(defs, "syncs/vip_buyers_to_meta_ads", instance=instance, run_config={
            "ops": {"syncs__vip_buyers_to_meta_ads": {"config": {"full_resync": True}}}})
        m = metadata(second, "syncs/vip_buyers_to_meta_ads")
        [check] = [c for c in second.get_asset_check_evaluations() if c.check_name == MATCH_RATE_CHECK]
    assert second.success and 0.45 <= m["match_rate"] <= 0.5
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["previous_match_rate"].value == 1.0
    assert "match rate fell from 100.0% to" in check.description
    assert instance.get_latest_materialization_event(key) is not None


def test_a_size_that_arrives_after_the_run_is_recorded_by_the_sync_s_sensor(home, meta):
    instance = dg.DagsterInstance.ephemeral()
    key = dg.AssetKey(["syncs", "vip_buyers_to_meta_ads"])
    with project_defs(extra=project()) as defs:
        sensor = defs.resolve_sensor_def("sync_vip_buyers_to_meta_ads_audience_size")
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
            skipped = sensor.evaluate_tick(context)
        assert "has not run yet" in skipped.skip_message

        result = materialize(defs, "audiences/vip_buyers", "syncs/vip_buyers_to_meta_ads", instance=instance)
        held = metadata(result, "syncs/vip_buyers_to_meta_ads")["dagster/row_count"]
        meta.match_share = 0.5  # Meta has matched half of them by now
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
            observed = sensor.evaluate_tick(context)
    [event] = observed.asset_events
    assert event.asset_key == key
    values = {k: v.value for k, v in event.metadata.items()}
    audience_id = meta.audience_id_by_name("vip_buyers")
    size = int(len(meta.members(audience_id)) * 0.5)
    assert values["audience_size"] == size and values["members_held"] == held
    assert values["match_rate"] == pytest.approx(size / held)
    assert values["destination_audience_id"] == audience_id
