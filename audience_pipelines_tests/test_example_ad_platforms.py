"""The shipped `examples/ad_platforms`: one audience activated on all nine ad platforms, run end to end
against the nine fake servers at once."""

from __future__ import annotations

import contextlib

import dagster as dg
import pyarrow.parquet as pq
import pytest

from audience_pipelines.components.sync import ONE_CLICK_SCHEDULE
from audience_pipelines.components.schedules import PRESETS
from audience_pipelines.destinations import destination_type
from audience_pipelines_tests.cases import all_cases
from audience_pipelines_tests.dagster_helpers import materialize, metadata, project_defs
from audience_pipelines_tests.test_example_syncs import all_log_text

# destination in the example -> (contract-suite case, prefix of its environment variables)
PLATFORMS = {
    "meta_ads": ("meta_custom_audiences", "META"),
    "google_ads": ("google_ads", "GOOGLE_ADS"),
    "linkedin": ("linkedin_ads", "LINKEDIN"),
    "tiktok": ("tiktok_ads", "TIKTOK"),
    "snapchat": ("snapchat_ads", "SNAPCHAT"),
    "pinterest": ("pinterest_ads", "PINTEREST"),
    "reddit": ("reddit_ads", "REDDIT"),
    "microsoft_ads": ("microsoft_ads", "MICROSOFT_ADS"),
    "x_ads": ("x_ads", "X_ADS"),
}
AUDIENCE = "loyal_customers"
# Kinds of the demo entity (customers) each platform takes, so one-click sends them all.
# Each platform's default audience type, as its fake holds the audience the one-click sync created.
DEFAULT_TYPE = {
    "meta_ads": ("subtype", "CUSTOM"),
    "google_ads": ("crmBasedUserList", {"uploadKeyType": "CONTACT_INFO", "dataSourceType": "FIRST_PARTY"}),
    "linkedin": ("type", "USER"),
    "tiktok": ("id_type", "EMAIL_SHA256"),
    "snapchat": ("source_type", "FIRST_PARTY"),
    "pinterest": ("type", "customerlist"),
    "reddit": ("type", "CUSTOMER_LIST"),
    "microsoft_ads": ("Type", "CustomerList"),
    "x_ads": ("audience_type", "CRM"),
}
ENTITY_ORDER = ["email", "phone", "first_name", "last_name", "country", "zip", "device_id"]


@pytest.fixture
def platforms(home, monkeypatch, tmp_path):
    """Every platform's fake, and the example's variables pointing at it."""
    cases = all_cases()
    with contextlib.ExitStack() as stack:
        opened = {}
        for destination, (case_name, prefix) in PLATFORMS.items():
            case = stack.enter_context(cases[case_name].open(tmp_path / destination))
            type_name, settings = case.spec()
            for key, value in settings.items():
                monkeypatch.setenv(f"{prefix}_{key.upper()}", str(value))
            opened[destination] = case
        monkeypatch.delenv("GOOGLE_ADS_LOGIN_CUSTOMER_ID", raising=False)
        yield opened


def test_one_line_activates_nine_syncs_with_the_defaults(home):
    with project_defs(examples=("ad_platforms",)) as defs:
        for destination in PLATFORMS:
            name = f"{AUDIENCE}_to_{destination}"
            key = dg.AssetKey(["syncs", name])
            spec = defs.resolve_assets_def(key).specs_by_key[key]
            assert spec.metadata["destination"] == destination and spec.metadata["sync_mode"] == "mirror"
            assert f"- target: destination audience name '{AUDIENCE}'" in spec.description
            assert "- mode: mirror (adds, updates and removes)" in spec.description
            assert defs.resolve_schedule_def(f"sync_{name}_schedule").cron_schedule == PRESETS[ONE_CLICK_SCHEDULE]
            assert spec.deps[0].asset_key == dg.AssetKey(["audiences", AUDIENCE])
            # Every identifier of the entity the platform takes, in the entity's order.
            takes = destination_type(PLATFORMS[destination][0]).capabilities().identifier_kinds
            kinds = [k for k in ENTITY_ORDER if k in takes]
            assert "- identifiers: " + ", ".join(f"`{k}`" for k in kinds) + "\n" in spec.description, destination


@pytest.mark.slow  # nine platforms' first syncs of a demo audience (LinkedIn's 5 s wait after creating)
def test_the_nine_syncs_reach_the_nine_fakes(home, platforms):
    keys = [f"syncs/{AUDIENCE}_to_{d}" for d in PLATFORMS]
    with project_defs(examples=("ad_platforms",)) as defs:
        instance = dg.DagsterInstance.ephemeral()
        result = materialize(defs, f"audiences/{AUDIENCE}", *keys, instance=instance)
        members = pq.read_table(home / "audiences" / AUDIENCE / "membership.parquet")
        logs = all_log_text(instance, result.run_id)
        for destination, case in platforms.items():
            m = metadata(result, f"syncs/{AUDIENCE}_to_{destination}")
            assert m["rows_failed"] == 0, (destination, m["errors_sample"])
            # Every member sent or set aside for want of an identifier this platform takes.
            assert m["rows_added"] + m["rows_set_aside"] == members.num_rows, destination
            assert case.audience_names() == [AUDIENCE], destination  # named after the audience, created once
            held = getattr(case.fake, case.audiences)[case.audience_id(AUDIENCE)]
            field, value = DEFAULT_TYPE[destination]
            assert held[field] == value, (destination, held)
            if m["audience_size"] is not None:
                assert 0 < m["match_rate"] <= 1, destination
            _, settings = case.spec()
            for secret in _secrets(settings):
                assert secret not in logs, destination

        # Pinterest: the customer list, and the CUSTOMER_LIST audience built on it that campaigns target.
        pinterest = platforms["pinterest"]
        [wrapping] = pinterest.fake.audiences_of(pinterest.audience_id(AUDIENCE))
        assert wrapping["name"] == AUDIENCE

        again = materialize(defs, *keys, instance=instance)
        for destination in PLATFORMS:
            m = metadata(again, f"syncs/{AUDIENCE}_to_{destination}")
            assert (m["rows_added"], m["rows_removed"], m["rows_updated"]) == (0, 0, 0), destination


def _secrets(settings: dict) -> list[str]:
    return [str(v) for k, v in settings.items()
            if any(w in k for w in ("token", "secret")) and isinstance(v, str) and len(v) > 8]
