"""The shipped `examples/crm`: one demo audience kept in five CRMs and marketing tools, run end to end
against the five fake servers at once."""

from __future__ import annotations

import contextlib

import dagster as dg
import pyarrow.parquet as pq
import pytest

from audience_pipelines.engine import SnapshotStore
from audience_pipelines_tests.cases import all_cases
from audience_pipelines_tests.dagster_helpers import materialize, metadata, project_defs
from audience_pipelines_tests.test_example_syncs import all_log_text

AUDIENCE, LIST = "churn_risk", "Churn risk"
# destination in the example -> (contract-suite case, prefix of its variables, its sync)
TOOLS = {
    "hubspot": ("hubspot", "HUBSPOT", "churn_risk_to_hubspot_crm"),
    "salesforce": ("salesforce", "SALESFORCE", "churn_risk_to_salesforce"),
    "braze": ("braze", "BRAZE", "churn_risk_to_braze"),
    "mailchimp": ("mailchimp", "MAILCHIMP", "churn_risk_to_mailchimp"),
    "klaviyo": ("klaviyo", "KLAVIYO", "churn_risk_to_klaviyo"),
}


def first_name(tool: str, case, email: str):
    """The first name the tool's profile for `email` holds (each tool keeps it under its own name)."""
    fake = case.fake
    if tool == "hubspot":
        return fake.contact_by_email(email)["properties"].get("firstname")
    if tool == "salesforce":
        return fake.person_by_email(email).get("FirstName")
    if tool == "braze":
        return fake.user(alias=(email, "email"))["attributes"].get("first_name")
    if tool == "mailchimp":
        return fake.member(email)["merge_fields"].get("FNAME")
    return fake.profile_by_email(email).get("first_name")


@pytest.fixture
def tools(home, monkeypatch, tmp_path):
    cases = all_cases()
    with contextlib.ExitStack() as stack:
        opened = {}
        for destination, (case_name, prefix, _) in TOOLS.items():
            case = stack.enter_context(cases[case_name].open(tmp_path / destination))
            for key, value in case.spec()[1].items():
                monkeypatch.setenv(f"{prefix}_{key.upper()}", str(value))
            opened[destination] = case
        yield opened


@pytest.mark.slow  # five first syncs of a demo audience, with profiles created first
def test_one_audience_reaches_five_crms_with_profiles_and_fields(home, tools):
    syncs = [f"syncs/{sync}" for _, _, sync in TOOLS.values()]
    with project_defs(examples=("crm",)) as defs:
        instance = dg.DagsterInstance.ephemeral()
        result = materialize(defs, f"audiences/{AUDIENCE}", *syncs, instance=instance)
        members = pq.read_table(home / "audiences" / AUDIENCE / "membership.parquet")
        by_key = {k: (e, f) for k, e, f in zip(members["key"].to_pylist(), members["email"].to_pylist(),
                                                members["first_name"].to_pylist())}
        logs = all_log_text(instance, result.run_id)
        for tool, (_, _, sync) in TOOLS.items():
            case = tools[tool]
            m = metadata(result, f"syncs/{sync}")
            assert m["rows_failed"] == 0, (tool, m["errors_sample"])
            assert m["rows_added"] + m["rows_set_aside"] == members.num_rows, tool
            assert case.audience_names() == [LIST], tool  # created once, by name
            held = SnapshotStore(home / "syncs", sync).read()
            emails = {e for e in held["email"].to_pylist() if e}
            # Customers sharing an email share one profile: one member per email.
            assert len(case.state(LIST)) == len(emails), tool
            # A member with a plain email (the demo also holds pre-hashed ones) and a first name.
            key, sent = next((k, e) for k, e in zip(held["key"].to_pylist(), held["email"].to_pylist())
                             if e and "@" in e and (by_key[k][1] or "").strip())
            assert first_name(tool, case, sent) == by_key[key][1].strip(), (tool, sent)
            # The platform's record id per member, for removals without a search.
            assert held["record_id"].null_count == 0, tool
            for secret in (v for k, v in case.spec()[1].items() if "secret" in k or "key" in k or "token" in k):
                assert str(secret) not in logs, tool

        again = materialize(defs, *syncs, instance=instance)
        for _, _, sync in TOOLS.values():
            m = metadata(again, f"syncs/{sync}")
            assert (m["rows_added"], m["rows_removed"], m["rows_updated"]) == (0, 0, 0), sync
