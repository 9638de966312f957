"""Several batches in flight: operations stay in order, the account's limit holds across runs, a stop
commits what landed, and a PostgreSQL table ends exact."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from audience_pipelines.contract import BatchResult, DestinationError, Target
from audience_pipelines.destinations.sql_table import SqlTableSettings
from audience_pipelines.destinations.sql_table.client import SqlTableDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync
from audience_pipelines.engine.dispatch import Dispatcher, Operation


class Recorder:
    """A session that takes a while per batch and records what was in flight together."""

    def __init__(self, delay_s: float = 0.02, fail_at: int | None = None):
        self.delay_s, self.fail_at = delay_s, fail_at
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.failed_at = float("inf")
        self.spans: list[tuple[str, int, float, float]] = []  # operation, seq, start, end

    def send(self, operation, rows, previous, ctx):
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        start = time.monotonic()
        time.sleep(self.delay_s)
        with self.lock:
            self.in_flight -= 1
            self.spans.append((operation, ctx.seq, start, time.monotonic()))
        if ctx.seq == self.fail_at:
            self.failed_at = time.monotonic()
            raise DestinationError("the platform is down", fatal=True)
        return BatchResult()

    def finish(self, complete):
        from audience_pipelines.contract import Finish
        return Finish("applied")


def operation(name: str, n: int) -> Operation:
    table = pa.table({"key": [f"{name}{i}" for i in range(n)]})
    return Operation(name, name + "d", np.arange(n), table)


class Options:
    run_id, progress, progress_interval_s = "r1", None, 5.0


def test_batches_of_one_operation_overlap_and_operations_never_do():
    session = Recorder()
    ops = [operation("remove", 40), operation("add", 40)]
    outcome = Dispatcher(session, 5, "s", Options(), None, parallel=4).run(ops)
    assert outcome.error is None and outcome.rows_done == 80
    assert all(outcome.accepted[name].all() for name in ("remove", "add"))
    assert session.most == 4
    removes_end = max(end for op, _, _, end in session.spans if op == "remove")
    adds_start = min(start for op, _, start, _ in session.spans if op == "add")
    assert removes_end <= adds_start  # a member's remove lands before its add
    first_add = min((s for s in session.spans if s[0] == "add"), key=lambda s: s[1])
    assert all(start >= first_add[3] for op, seq, start, _ in session.spans if op == "add" and seq != first_add[1])


def test_a_stop_lets_what_is_in_flight_land_and_sends_nothing_after():
    session = Recorder(fail_at=6)
    outcome = Dispatcher(session, 5, "s", Options(), None, parallel=3).run([operation("add", 100)])
    assert isinstance(outcome.error, DestinationError)
    sent = {seq for _, seq, _, _ in session.spans}
    # Batches finish out of order, so a later one may start while 6 is still in flight; none after it failed.
    assert all(start <= session.failed_at for _, _, start, _ in session.spans)
    assert 6 in sent and max(sent) < 20
    landed = np.flatnonzero(outcome.accepted["add"]) // 5 + 1
    assert set(landed) == sent - {6} and outcome.rows_done == 5 * len(sent - {6})


def test_the_accounts_limit_holds_across_runs():
    slots = threading.BoundedSemaphore(2)
    session = Recorder(delay_s=0.03)
    runs = [threading.Thread(target=Dispatcher(session, 5, f"s{i}", Options(), None, parallel=4, slots=slots).run,
                             args=([operation("add", 60)],)) for i in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert len(session.spans) == 24 and session.most == 2


def test_one_batch_at_a_time_keeps_the_order_of_sending():
    session = Recorder(delay_s=0)
    Dispatcher(session, 5, "s", Options(), None).run([operation("remove", 20), operation("add", 20)])
    assert [seq for _, seq, _, _ in sorted(session.spans, key=lambda s: s[2])] == list(range(1, 9))


@pytest.mark.postgres
def test_a_postgres_table_takes_batches_in_parallel_and_ends_exact(pg_schema, tmp_path):
    url, _ = pg_schema
    settings = SqlTableSettings(url=url, table="audience_members")
    assert SqlTableDestination(settings).capabilities.parallel_batches == 4
    spec = SyncSpec(name="t", audience="a", destination="crm", target=Target(name="vip"),
                    identifiers={"email": "email"}, fields={"plan": "plan"}, batch_size=500)
    store = SnapshotStore(tmp_path / "syncs", "t")

    def members(lo, hi, plan="gold"):
        return pa.table({"key": [f"k{i:05d}" for i in range(lo, hi)],
                         "email": [f"p{i}@example.com" for i in range(lo, hi)], "plan": [plan] * (hi - lo)})

    for run_id, table in (("r1", members(0, 10_000)), ("r2", members(200, 10_200, plan="silver"))):
        destination = SqlTableDestination(settings)
        try:
            result = run_sync(spec, table, destination, store, RunOptions(run_id=run_id))
        finally:
            destination.close()
        assert result.failed == 0
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select key, plan from audience_members where audience = 'vip'")).all()
    engine.dispose()
    assert sorted(rows) == [(f"k{i:05d}", "silver") for i in range(200, 10_200)]
    assert (result.removed, result.added, result.updated) == (200, 200, 9_800)


def test_a_sync_asking_for_more_batches_than_its_destination_takes_does_not_load():
    from audience_pipelines.components.load_errors import first_user_error
    from audience_pipelines.engine import ConfigError
    from audience_pipelines_tests.dagster_helpers import project_defs

    sync = ("type: audience_pipelines.components.AudienceSync\nattributes:\n  name: fast\n"
            "  audience: churn_risk\n  destination: {d}\n  target: {{name: fast}}\n  parallel_batches: {n}\n")

    def mistake(destination: str, n: int) -> str | None:
        try:
            with project_defs(extra={"fast/defs.yaml": sync.format(d=destination, n=n)},
                              examples=("meta_and_webhook",)):
                return None
        except Exception as exc:  # noqa: BLE001
            found = first_user_error(exc)
            assert isinstance(found, ConfigError)
            return str(found)

    assert mistake("partner_webhook", 8) is None
    assert mistake("partner_webhook", 9) == (
        "defs/fast/defs.yaml (document 1): sync 'fast', key 'parallel_batches': 9 is not between 1 and 8, the most "
        "destination type 'webhook' takes at once")
    # The demo's CRM table is a DuckDB file, which admits one writer.
    assert "key 'parallel_batches': 2 is not between 1 and 1" in mistake("crm_table", 2)


def test_a_throttle_met_by_one_request_holds_back_the_others_to_that_host():
    import http.server

    from audience_pipelines.destinations.http import HttpClient

    answers = iter([429, 200, 200])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length") or 0))
            status = next(answers)
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "7")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    now = [1000.0]
    slept: dict[str, list[float]] = {"a": [], "b": []}

    def clock():
        return now[0]

    def sleeper(name):
        def sleep(s):
            slept[name].append(s)
            now[0] += s
        return sleep

    origin = f"http://127.0.0.1:{server.server_address[1]}"
    a = HttpClient(origin, sleep=sleeper("a"), clock=clock)
    b = HttpClient(origin, sleep=sleeper("b"), clock=clock)
    try:
        assert a.request("POST", "/x", json={}).status_code == 200  # met the throttle, waited 7 s, went again
        assert slept["a"] == [7.0]
        now[0] -= 5  # b starts 2 s into a's pause: it waits the 5 s left before its first try
        assert b.request("POST", "/y", json={}).status_code == 200
        assert slept["b"] == [5.0]
    finally:
        a.close()
        b.close()
        server.shutdown()


def test_the_runs_last_batch_lands_after_every_other():
    session = Recorder()
    Dispatcher(session, 5, "s", Options(), None, parallel=4).run([operation("add", 60)])
    last = next(s for s in session.spans if s[1] == 12)
    assert all(end <= last[2] for _, seq, _, end in session.spans if seq != 12)
