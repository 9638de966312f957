"""`audience-pipelines`: resend, runs, pause/resume and forget, next to the Dagster UI."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from audience_pipelines.engine import AudiencePipelinesError
from audience_pipelines.engine.history import COUNTS
from audience_pipelines.resources import HOME_ENV, AudienceStorage, open_history
from audience_pipelines.webserver import URL_ENV, Webserver


def _schedule(sync: str) -> str:
    from audience_pipelines.components.sync import schedule_name

    return schedule_name(sync)


def cmd_resend(args) -> int:
    web = Webserver(args.url)
    backfill_id = web.launch_resend(args.syncs)
    print(f"backfill {backfill_id} launched: every member of {', '.join(args.syncs)} is sent again")
    print(web.backfill_page(backfill_id))
    if args.wait:
        state = web.wait_for_backfill(backfill_id)
        runs = state["runs"]
        print(f"backfill {backfill_id}: {state['status']}, runs: "
              + ", ".join(f"{r['runId']} {r['status']}" for r in runs))
        return 0 if state["status"] == "COMPLETED_SUCCESS" else 1
    return 0


def cmd_runs(args) -> int:
    history = open_history(AudienceStorage().root)
    try:
        records = history.list(args.sync, limit=args.limit)
    finally:
        history.close()
    if not records:
        print(f"no runs recorded for sync '{args.sync}'")
        return 0
    cols = ["started_at", "status", "mode", *COUNTS, "duration_s", "run_id"]
    rows = [[r.started_at.strftime("%Y-%m-%d %H:%M:%S"), r.status, r.mode or "", *(str(getattr(r, c)) for c in COUNTS),
             f"{r.duration_s or 0:.1f}", r.run_id] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row, rec in zip(rows, records):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
        if rec.error:
            print(f"    error: {rec.error.splitlines()[0][:300]}")
        if rec.rejected_path:
            print(f"    rejected rows: {rec.rejected_path}")
    return 0


def cmd_pause(args) -> int:
    status = Webserver(args.url).stop_schedule(_schedule(args.sync))
    print(f"sync '{args.sync}': schedule {status.lower()}; the next run after resuming sends everything that "
          "changed meanwhile")
    return 0


def cmd_resume(args) -> int:
    status = Webserver(args.url).start_schedule(_schedule(args.sync))
    print(f"sync '{args.sync}': schedule {status.lower()}")
    return 0


def cmd_forget(args) -> int:
    store = AudienceStorage().snapshot_store(args.sync)
    if not store.dir.exists():
        print(f"sync '{args.sync}' has no snapshot under {store.dir.parent}")
        return 1
    if not args.yes:
        print(f"this deletes {store.dir}: the next run of a sync named '{args.sync}' would send its whole "
              "membership again and could not remove members it sent before. Add --yes to confirm.")
        return 1
    with store.lock("forget"):
        shutil.rmtree(Path(store.dir))
    print(f"deleted {store.dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audience-pipelines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    url_help = f"Dagster webserver URL (default ${URL_ENV} or http://127.0.0.1:3000)"

    p = sub.add_parser("resend", help="launch a Dagster backfill that resends the full membership of syncs")
    p.add_argument("syncs", nargs="+")
    p.add_argument("--url", help=url_help)
    p.add_argument("--wait", action="store_true", help="wait for the backfill to finish")
    p.set_defaults(fn=cmd_resend)

    p = sub.add_parser("runs", help=f"list a sync's recorded runs (files under ${HOME_ENV})")
    p.add_argument("sync")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(fn=cmd_runs)

    for name, fn, text in (("pause", cmd_pause, "stop a sync's schedule"), ("resume", cmd_resume, "start it again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("sync")
        p.add_argument("--url", help=url_help)
        p.set_defaults(fn=fn)

    p = sub.add_parser("forget", help="delete the snapshot of a sync removed from YAML")
    p.add_argument("sync")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(fn=cmd_forget)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except AudiencePipelinesError as exc:
        print(f"audience-pipelines: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
