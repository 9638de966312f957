"""The shipped Meta and webhook examples, run through Dagster against the fake servers."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq

from audience_pipelines_tests.dagster_helpers import materialize, metadata, project_defs
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
