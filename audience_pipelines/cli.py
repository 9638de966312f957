"""`audience-pipelines`: resend, runs, pause/resume, forget, preview and test sync, quick sync, destinations and
audiences, and the REST API (`api`), next to the Dagster UI."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from audience_pipelines.engine import AudiencePipelinesError
from audience_pipelines.engine.history import COUNTS
from audience_pipelines.project import HOME_ENV, find_state_root
from audience_pipelines.resources import AudienceStorage, open_history
from audience_pipelines.webserver import URL_ENV, Webserver, first_line


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
    history = open_history(find_state_root())
    try:
        records = history.list(args.sync, limit=args.limit)
    finally:
        history.close()
    if not records:
        print(f"no runs recorded for sync '{args.sync}'")
        return 0
    cols = ["started_at", "status", "run_kind", "sync_mode", *COUNTS, "duration_s", "run_id", "attempt"]
    rows = [[r.started_at.strftime("%Y-%m-%d %H:%M:%S"), r.status, r.run_kind or "", r.sync_mode or "",
             *(str(getattr(r, c)) for c in COUNTS), f"{r.duration_s or 0:.1f}", r.run_id, str(r.attempt)]
            for r in records]
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
    return _pause_or_resume(args, pause=True)


def cmd_resume(args) -> int:
    return _pause_or_resume(args, pause=False)


def _pause_or_resume(args, pause: bool) -> int:
    done = Webserver(args.url).set_paused(args.sync, pause)
    if done.kind is None:
        print(f"sync '{args.sync}' has schedule: manual: it runs only when someone launches it, so there is "
              "nothing to " + ("pause" if pause else "resume"))
        return 0
    what = f"{done.kind} {done.trigger} {done.status.lower()}"
    if not done.changed:
        print(f"sync '{args.sync}' is already {'paused' if pause else 'running'} ({what})")
    elif pause:
        print(f"sync '{args.sync}': paused ({what}); the first run after resuming sends everything that changed "
              "meanwhile")
    else:
        print(f"sync '{args.sync}': resumed ({what})")
    return 0


def _defined_syncs() -> list[str]:
    """Syncs the project's YAML defines now, loaded the way the code location loads them."""
    from audience_pipelines.definitions import defs

    try:
        definitions = defs()
    except Exception as exc:  # noqa: BLE001 - any load failure means we cannot tell
        raise AudiencePipelinesError(f"the definitions failed to load, so it is unknown whether the sync is "
                                     f"still defined: {first_line(str(exc))}") from exc
    return sorted(k.path[1] for k in definitions.resolve_all_asset_keys() if len(k.path) == 2 and k.path[0] == "syncs")


def cmd_forget(args) -> int:
    store = AudienceStorage(home=str(find_state_root())).snapshot_store(args.sync)
    if not store.dir.exists():
        print(f"sync '{args.sync}' has no snapshot under {store.dir.parent}")
        return 1
    try:
        defined = args.sync in _defined_syncs()
        problem = f"sync '{args.sync}' is still defined in YAML" if defined else None
    except AudiencePipelinesError as exc:
        problem = str(exc)
    if problem and not args.force:
        print(f"refusing: {problem}; its next run would send its whole membership again and could not remove "
              "members it sent before. Delete it from YAML first (or pass --force).", file=sys.stderr)
        return 1
    if problem:
        print(f"warning: {problem}; forgetting it anyway (--force): its next run sends every member again",
              file=sys.stderr)
    if not args.yes:
        print(f"this deletes {store.dir}: the next run of a sync named '{args.sync}' would send its whole "
              "membership again and could not remove members it sent before. Add --yes to confirm.")
        return 1
    with store.lock("forget"):
        shutil.rmtree(Path(store.dir))
    print(f"deleted {store.dir}")
    return 0


def _table(cols: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def cmd_destinations(args) -> int:
    from audience_pipelines.destinations import destination_types
    from audience_pipelines.identifiers.kinds import KINDS

    def yes(flag: bool) -> str:
        return "yes" if flag else "-"

    rows = []
    for name, dtype in destination_types().items():
        caps = dtype.capabilities()
        reports = [w for w, f in (("size", caps.reports_size), ("match rate", caps.reports_match_rate)) if f]
        sends = "replace session" if caps.replaces_audience else "job" if caps.uses_jobs else "batches"
        kinds = "any" if caps.identifier_kinds >= set(KINDS) else ", ".join(sorted(caps.identifier_kinds))
        rows.append([name, kinds, f"{caps.max_batch_rows:,}",
                     yes(caps.can_list_audiences), yes(caps.can_create_audiences),
                     yes(caps.creates_profiles), yes(caps.keeps_record_ids), ", ".join(reports) or "-", sends])
    _table(["type", "identifiers", "batch", "finds by name", "creates", "profiles", "record ids", "reports",
            "sends as"], rows)
    print(f"\nidentifiers: the kinds a type takes by default (any: all of {', '.join(KINDS)}; Google Ads' depend "
          "on upload_key_type); batch: rows per request by default; finds by name: a name target resolves on the "
          "platform (else through the registry of audiences created, `audience-pipelines audiences`); profiles: "
          "creates a missing contact before membership; sends as: job = outcome known when the platform's job "
          "ends, replace session = a full resend of a mirror sync replaces the audience")
    return 0


def _destination_type_of(name: str) -> str:
    """A destination type, given a type or the name of a declared destination."""
    from audience_pipelines.destinations import destination_types

    if name in destination_types():
        return name
    from audience_pipelines.definitions import defs

    resource = defs().resources.get(f"destination_{name}")
    if resource is None:
        raise AudiencePipelinesError(f"'{name}' is neither a destination type ({', '.join(destination_types())}) "
                                     "nor a destination declared in YAML")
    return resource.type.name


def cmd_audiences(args) -> int:
    type_name = _destination_type_of(args.destination)
    registry = AudienceStorage(home=str(find_state_root())).audience_registry()
    entries = [(account, e) for account in registry.accounts(type_name) for e in registry.entries(type_name, account)]
    if not entries:
        print(f"no audiences registered for {type_name} under {registry.root}")
        return 0
    _table(["account", "name", "id", "how", "at", "sync", "run"],
           [[a, e.name, e.id, "created" if e.created else "found", e.at, e.by_sync, e.by_run] for a, e in entries])
    return 0


def _run_preview_job(sync: str, config: dict) -> int:
    """Run the sync's preview job in this process on the project's Dagster instance, so it shows in the UI."""
    from audience_pipelines.components.sync import preview_job_name, preview_op_name
    from audience_pipelines.instance_state import open_instance

    definitions = _load_definitions()
    jobs = {j.name: j for j in definitions.resolve_all_job_defs()}
    if preview_job_name(sync) not in jobs:
        known = sorted(n.removeprefix("preview_") for n in jobs if n.startswith("preview_"))
        raise AudiencePipelinesError(f"no sync named '{sync}' in the definitions (known: {', '.join(known)})")
    with open_instance() as instance:
        result = jobs[preview_job_name(sync)].execute_in_process(
            run_config={"ops": {preview_op_name(sync): {"config": config}},
                        "loggers": {"console": {"config": {"log_level": "WARNING"}}}}, instance=instance,
            raise_on_error=False)
    if not result.success:
        failure = next((e.step_failure_data.error for e in result.all_events if e.is_step_failure), None)
        message = failure.message.strip() if failure else "the run failed"
        print(f"audience-pipelines: {message}", file=sys.stderr)
        return 1
    print(result.output_for_node(preview_op_name(sync)))
    print(f"(run {result.run_id} on the Dagster instance)")
    return 0


def cmd_preview(args) -> int:
    return _run_preview_job(args.sync, {"sample_rows": args.rows, "full_resync": args.full_resync,
                                        "allow_mass_removal": args.allow_mass_removal})


def cmd_test_sync(args) -> int:
    if not args.key and not args.first:
        raise AudiencePipelinesError("name the members to send with --key (repeatable) or --first N")
    return _run_preview_job(args.sync, {"test_keys": args.key or [], "test_first": args.first or 0,
                                        "commit": args.commit})


def _paused_in_instance(definitions) -> Callable[[str], bool]:
    """Whether a sync's schedule or automation sensor is stopped, as the Dagster instance records it."""
    from audience_pipelines.instance_state import InstanceState, open_instance

    with open_instance() as instance:
        return InstanceState(instance, definitions).paused


def cmd_quick_sync(args) -> int:
    from audience_pipelines.components import quick_sync

    definitions = _load_definitions()
    plan = quick_sync.plan_quick_sync(args.audience, args.to, _paused_in_instance(definitions), name=args.name,
                                      defs=quick_sync.DEFS)
    if plan.template is None:
        print(f"no active sync of an audience on the same entity writes to destination '{args.to}', so there is "
              f"nothing to copy and nothing was written. A sync to start from (add it to a YAML file under "
              f"defs/, then fill in identifiers and fields):\n\n---\n{plan.yaml()}")
        return 1
    template = plan.template.attributes["name"]
    copied = [k for k in plan.attributes if k not in ("name", "audience", "destination", "target")]

    def validate() -> None:
        try:
            quick_sync.validate_project()
        except Exception as exc:  # noqa: BLE001 - the YAML mistake, as loading reports it
            raise AudiencePipelinesError(f"the new sync does not load, so {plan.path} was left as it was: "
                                         f"{first_line(str(exc))}") from exc

    quick_sync.write_quick_sync(plan, validate)
    print(f"sync '{plan.name}' written to {plan.path} (document {len(list(_documents(plan.path)))}), copied from "
          f"sync '{template}' ({plan.template.path}, document {plan.template.index + 1}): {', '.join(copied)}; "
          f"target: {plan.attributes['target']}\n\n---\n{plan.yaml()}")
    return 0


def _documents(path: Path):
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _load_definitions():
    from audience_pipelines.definitions import defs

    try:
        return defs()
    except Exception as exc:  # noqa: BLE001 - report the YAML mistake, not a traceback
        raise AudiencePipelinesError(f"the definitions failed to load: {first_line(str(exc))}") from exc


def cmd_api(args) -> int:
    from audience_pipelines.api.serve import serve

    return serve(args.host, args.port, dagster_url=args.url, tokens_file=args.tokens_file)


def cmd_api_token(args) -> int:
    from audience_pipelines.api.auth import TOKENS_FILE_ENV, hash_token, new_token

    token = new_token()
    print(f"token (give it to the client; it is not stored): {token}")
    print(f"line for the tokens file (${TOKENS_FILE_ENV} or --tokens-file): {hash_token(token)}")
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

    for name, fn, text in (("pause", cmd_pause, "stop a sync's automatic runs (its schedule or automation sensor)"),
                           ("resume", cmd_resume, "start them again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("sync")
        p.add_argument("--url", help=url_help)
        p.set_defaults(fn=fn)

    p = sub.add_parser("forget", help="delete the snapshot of a sync removed from YAML")
    p.add_argument("sync")
    p.add_argument("--yes", action="store_true")
    p.add_argument("--force", action="store_true", help="even if the sync is still defined (or definitions fail)")
    p.set_defaults(fn=cmd_forget)

    p = sub.add_parser("destinations", help="list the destination types and what each can do")
    p.set_defaults(fn=cmd_destinations)

    p = sub.add_parser("audiences", help="list the destination audiences syncs created or found, per account")
    p.add_argument("destination", help="a destination type, or the name of a destination declared in YAML")
    p.set_defaults(fn=cmd_audiences)

    p = sub.add_parser("preview", help="what a sync's next run would send, nothing sent or changed")
    p.add_argument("sync")
    p.add_argument("--rows", type=int, default=5, help="sample rows per operation (default 5)")
    p.add_argument("--full-resync", action="store_true", help="preview a full resend")
    p.add_argument("--allow-mass-removal", action="store_true", help="as a run allowed to pass the guard")
    p.set_defaults(fn=cmd_preview)

    p = sub.add_parser("test-sync", help="send a few members to a sync's real destination audience and show "
                                          "each one's outcome (not committed unless --commit)")
    p.add_argument("sync")
    p.add_argument("--key", action="append", help="a member's key (repeatable)")
    p.add_argument("--first", type=int, help="or the first N members the preview adds or updates")
    p.add_argument("--commit", action="store_true", help="record the members the platform accepted as held")
    p.set_defaults(fn=cmd_test_sync)

    p = sub.add_parser("quick-sync", help="a new sync for an audience, copied from the newest active sync of the "
                                           "same entity to the same destination")
    p.add_argument("audience")
    p.add_argument("--to", required=True, metavar="DESTINATION", help="a destination declared in YAML")
    p.add_argument("--name", help="the new sync's name (default <audience>_to_<destination>)")
    p.set_defaults(fn=cmd_quick_sync)

    p = sub.add_parser("api", help="serve the REST API for audience syncs (uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                                                         "needs tokens)")
    p.add_argument("--port", type=int, default=8088)
    p.add_argument("--url", help=url_help)
    p.add_argument("--tokens-file", help="a file of token hashes, one `sha256:<hex>` a line")
    p.set_defaults(fn=cmd_api)

    p = sub.add_parser("api-token", help="make an API token and the hash line for a tokens file")
    p.set_defaults(fn=cmd_api_token)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except AudiencePipelinesError as exc:
        print(f"audience-pipelines: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
