"""The shipped Meta and webhook examples, run through Dagster against the fake servers."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq

from audience_pipelines.engine import SnapshotStore
from audience_pipelines_tests.dagster_helpers import materialize, metadata, project_defs
from audience_pipelines_tests.fakes.google_ads import FakeGoogleAds
from audience_pipelines_tests.fakes.hubspot import FakeHubSpot
from audience_pipelines_tests.fakes import FakeMeta, FakeWebhook

TOKEN = "EAAB-secret-token-for-tests"


def all_log_text(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.all_logs(run_id)
    return "\n".join(f"{r.user_message} {r.dagster_event!r}" for r in records)


def test_meta_sync_without_token_says_which_variable_to_set(home, monkeypatch):
    for var in ("META_ACCESS_TOKEN", "META_AD_ACCOUNT_ID", "META_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with project_defs(examples=("meta_and_webhook",)) as defs:
        instance = dg.DagsterInstance.ephemeral()
        result = materialize(defs, "audiences/high_value_customers", "syncs/high_value_to_meta",
                             instance=instance, raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    # Every variable a run needs is named at once, before anything is sent.
    assert ("needs its ad_account_id, access_token: set the environment variables META_AD_ACCOUNT_ID, "
            "META_ACCESS_TOKEN") in message


def test_meta_and_webhook_examples_reach_the_fakes(home, monkeypatch):
    with FakeMeta(access_token=TOKEN, ad_account_id="777") as meta, FakeWebhook(secret="whsec_demo") as hook:
        monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
        monkeypatch.setenv("META_AD_ACCOUNT_ID", "777")
        monkeypatch.setenv("META_BASE_URL", meta.url)
        monkeypatch.setenv("AUDIENCE_WEBHOOK_URL", hook.url)
        monkeypatch.setenv("AUDIENCE_WEBHOOK_SECRET", "whsec_demo")
        with project_defs(examples=("meta_and_webhook",)) as defs:
            instance = dg.DagsterInstance.ephemeral()
            result = materialize(defs, "audiences/high_value_customers", "audiences/churn_risk",
                                 "syncs/high_value_to_meta", "syncs/churn_risk_to_webhook", instance=instance)
            m = metadata(result, "syncs/high_value_to_meta")
            audience_id = meta.audience_id_by_name("High value customers (audience_pipelines)")
            assert m["destination_audience_id"] == audience_id
            members = pq.read_table(home / "audiences" / "high_value_customers" / "membership.parquet")
            assert m["rows_added"] + m["rows_set_aside"] == members.num_rows
            # Every stored email is a SHA-256 of a normalised address, never plain text.
            emails = meta.member_values(audience_id, "EMAIL")
            assert emails and all(len(e) == 64 and "@" not in e for e in emails)
            assert all(r.n_rows is None or r.n_rows <= 10_000 for r in meta.requests)
            assert m["audience_size"] == len(meta.members(audience_id))
            churn = pq.read_table(home / "audiences" / "churn_risk" / "membership.parquet")
            assert hook.member_ids("churn_risk") == set(churn["key"].to_pylist())
            assert TOKEN not in all_log_text(instance, result.run_id)

            again = materialize(defs, "syncs/high_value_to_meta", "syncs/churn_risk_to_webhook", instance=instance)
            for key in ("syncs/high_value_to_meta", "syncs/churn_risk_to_webhook"):
                m2 = metadata(again, key)
                assert (m2["rows_added"], m2["rows_removed"], m2["rows_updated"]) == (0, 0, 0)


def test_google_ads_and_hubspot_examples_reach_the_fakes(home, monkeypatch):
    with FakeGoogleAds(customer_id="1234567890", running_polls=0) as ads, \
            FakeHubSpot(access_token="pat-example") as hubspot:
        for var, value in {"GOOGLE_ADS_CUSTOMER_ID": "123-456-7890", "GOOGLE_ADS_DEVELOPER_TOKEN": ads.developer_token,
                           "GOOGLE_ADS_CLIENT_ID": ads.client_id, "GOOGLE_ADS_CLIENT_SECRET": ads.client_secret,
                           "GOOGLE_ADS_REFRESH_TOKEN": ads.refresh_token, "GOOGLE_ADS_BASE_URL": ads.origin,
                           "GOOGLE_ADS_TOKEN_URL": ads.token_url, "HUBSPOT_ACCESS_TOKEN": "pat-example",
                           "HUBSPOT_BASE_URL": hubspot.url}.items():
            monkeypatch.setenv(var, value)
        monkeypatch.delenv("GOOGLE_ADS_LOGIN_CUSTOMER_ID", raising=False)
        with project_defs(examples=("google_ads_and_hubspot",)) as defs:
            instance = dg.DagsterInstance.ephemeral()
            result = materialize(defs, "audiences/high_value_customers", "audiences/churn_risk",
                                 "syncs/high_value_to_google_ads", "syncs/churn_risk_to_hubspot", instance=instance)
            g = metadata(result, "syncs/high_value_to_google_ads")
            list_id = ads.user_list_id_by_name("High value customers (audience_pipelines)")
            assert g["destination_audience_id"] == list_id and g["rows_failed"] == 0, g["errors_sample"]
            high_value = pq.read_table(home / "audiences" / "high_value_customers" / "membership.parquet")
            assert g["rows_added"] + g["rows_set_aside"] == high_value.num_rows
            emails = ads.member_values(list_id, "hashedEmail")
            assert emails and all(len(e) == 64 and "@" not in e for e in emails)
            assert g["audience_size"] == len(ads.members(list_id)) and 0 < g["match_rate"] <= 1

            h = metadata(result, "syncs/churn_risk_to_hubspot")
            churn = pq.read_table(home / "audiences" / "churn_risk" / "membership.parquet")
            hs_list = hubspot.list_id_by_name("Churn risk (audience_pipelines)")
            assert h["rows_failed"] == 0 and h["rows_added"] + h["rows_set_aside"] == churn.num_rows
            # Customers sharing an email share one HubSpot contact, so the list holds one member per email.
            sent = SnapshotStore(home / "syncs", "churn_risk_to_hubspot").read()
            assert sent.num_rows == h["rows_added"]
            assert len(hubspot.members(hs_list)) == len(set(sent["email"].to_pylist())) == h["audience_size"]
            for secret in (ads.client_secret, ads.refresh_token, ads.developer_token, "pat-example"):
                assert secret not in all_log_text(instance, result.run_id)

            again = materialize(defs, "syncs/high_value_to_google_ads", "syncs/churn_risk_to_hubspot",
                                instance=instance)
            for key in ("syncs/high_value_to_google_ads", "syncs/churn_risk_to_hubspot"):
                m2 = metadata(again, key)
                assert (m2["rows_added"], m2["rows_removed"], m2["rows_updated"]) == (0, 0, 0)
            assert len(ads.user_lists) == 1 and len(hubspot.lists) == 1
