"""`audience-pipelines destinations` and `audience-pipelines audiences <destination>`."""

from __future__ import annotations

import pyarrow as pa

from audience_pipelines.cli import main
from audience_pipelines.contract import Target
from audience_pipelines.destinations.meta_custom_audiences import MetaSettings
from audience_pipelines.destinations.meta_custom_audiences.client import MetaCustomAudiencesDestination
from audience_pipelines.engine import RunOptions, SyncSpec, run_sync
from audience_pipelines.resources import AudienceStorage
from audience_pipelines_tests.fakes import FakeMeta


def rows_of(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    return {line.split()[0]: line.split() for line in lines[1:] if line and not line.startswith("identifiers:")}


def test_destinations_lists_every_type_with_what_it_can_do(capsys):
    assert main(["destinations"]) == 0
    out = capsys.readouterr().out
    rows = rows_of(out)
    assert {"file", "google_ads", "hubspot", "meta_custom_audiences", "sql_table", "webhook"} <= set(rows)
    assert out.splitlines()[0].split()[:3] == ["type", "identifiers", "batch"]
    hubspot = " ".join(rows["hubspot"])
    assert hubspot.startswith("hubspot email 100 yes yes yes yes size batches")
    assert " ".join(rows["google_ads"]).endswith("10,000 yes yes - - size, match rate job")
    assert " ".join(rows["meta_custom_audiences"]).endswith("10,000 yes yes - - size replace session")
    assert " ".join(rows["webhook"]) == "webhook any 1,000 yes yes - - - batches"


def test_audiences_lists_what_syncs_created_per_account(home, capsys):
    storage = AudienceStorage()
    with FakeMeta(access_token="tok", ad_account_id="1234") as meta:
        dest = MetaCustomAudiencesDestination(MetaSettings(ad_account_id="1234", access_token="tok",
                                                           base_url=meta.url), sleep=lambda s: None)
        spec = SyncSpec(name="vip_to_meta", audience="a", destination="meta", target=Target(name="VIP buyers"),
                        identifiers={"email": "email"})
        members = pa.table({"key": ["k1"], "email": ["a@example.com"]})
        result = run_sync(spec, members, dest, storage.snapshot_store(spec.name),
                          RunOptions(run_id="run-1", registry=storage.audience_registry()))
    assert main(["audiences", "meta_custom_audiences"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["account", "name", "id", "how", "at", "sync", "run"]
    assert lines[1].startswith(f"act_1234  VIP buyers  {result.destination_audience_id}  created  ")
    assert lines[1].endswith("vip_to_meta  run-1")

    assert main(["audiences", "google_ads"]) == 0
    assert "no audiences registered for google_ads" in capsys.readouterr().out
    assert main(["audiences", "no_such_thing"]) == 2
    assert "neither a destination type" in capsys.readouterr().err
