"""``driftline``: the command line.

  driftline demo            play the scripted scenario through real DAG runs
  driftline up              Airflow (standalone) + MLflow UI + a scoring service per model, embedded state
  driftline up --celery     the production stack: PostgreSQL, Redis, MLflow server, Airflow + Celery workers
  driftline init            migrate the Airflow DB, create the store tables
  driftline env             print the environment (eval "$(driftline env)")
  driftline run DAG_ID [--conf JSON]     one real DAG run in this process (dag.test)
  driftline ingest MODEL --rows CSV [--labels CSV]   validate and store a batch (all or nothing)
  driftline quarantine MODEL (--ids ID[,ID...] | --from TS --until TS) --reason TEXT [--release]
                            take stored rows out of every window, audited
  driftline labels-arrived MODEL --rows N [--key K]  announce new labels (starts continuous training)
  driftline status MODEL    champion, challenger, previous champion, recent runs and rollbacks
  driftline replay DATA --config YAML --target COL (--period 7d | --batch-rows N)   replay a CSV through
                            Driftline's decisions beside static / every-batch / every-k baselines
  driftline publish-labels MODEL --rows N [--via redis|rest]  new-labels event to a live Airflow
  driftline trigger DAG_ID [--conf JSON]  a run through Airflow's REST API; waits, prints task states
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def _quiet_airflow() -> None:
    """In-process DAG runs print Airflow's INFO log lines (structlog, not the stdlib levels) between
    our own output; keep warnings and errors. Set before Airflow is imported; a user's value wins."""
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def _cmd_demo(args: argparse.Namespace) -> int:
    _quiet_airflow()
    from driftline import demo

    return demo.run(reset=not args.no_reset)


def _cmd_env(_: argparse.Namespace) -> int:
    from driftline.env import driftline_env

    for key, value in driftline_env().items():
        print(f"export {key}={json.dumps(value)}")
    return 0


def _cmd_init(_: argparse.Namespace) -> int:
    from driftline import runner
    from ml.settings import get_settings
    from ml.store import Store

    runner.prepare()
    settings = get_settings()
    Store(settings.store_url)
    print(f"Airflow DB migrated; store ready at {settings.store_url}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if not args.verbose:
        _quiet_airflow()
    from driftline import runner

    runner.prepare()
    result = runner.run_dag(args.dag_id, json.loads(args.conf) if args.conf else {}, quiet=not args.verbose)
    print(json.dumps({"run_id": result.key, "state": result.state, "tasks": result.task_states}, indent=2))
    return 0 if result.ok else 1


def _model_yaml(model: str):
    """The model's YAML under the models folder. The argument is a model name, never a path: a
    name like '../x' would load a YAML from anywhere."""
    import re

    from ml.config import ConfigError
    from ml.settings import get_settings

    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", model):
        raise ConfigError(f"model {model!r}: a model name (lower-case letters, digits, _), not a path; "
                          "the models are the YAML files in DRIFTLINE_MODELS_DIR")
    return get_settings().models_dir / f"{model}.yaml"


def _load(model: str):
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings

    config = load_config(_model_yaml(model))
    return config, Context.open(config, get_settings())


def _open_store(model: str):
    """The model's config and its store, without the loop's imports (MLflow and friends): ingest and
    quarantine only need the database."""
    from ml.config import load_config
    from ml.settings import get_settings
    from ml.store import Store

    settings = get_settings()
    config = load_config(_model_yaml(model))
    url = config.data.store_url or settings.store_url
    with _store_errors(url):
        return config, Store(url)


class _DatabaseError(Exception):
    """A store error, already put in one line (what, where) for the user; no SQL, no row values."""

    def __init__(self, line: str, exit_code: int) -> None:
        super().__init__(line)
        self.exit_code = exit_code


def _database_error(exc: Exception, url: str | None = None) -> _DatabaseError:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DataError, IntegrityError

    orig = getattr(exc, "orig", None) or exc
    # The driver's first line says what; later lines (DETAIL, SQL, parameters) hold the row values.
    what = (str(orig).strip().splitlines() or [""])[0][:300]
    try:
        where = f"store {make_url(url).render_as_string(hide_password=True)}" if url else "store"
    except Exception:  # noqa: BLE001 (an unparsable URL is the error being reported; never echo a password)
        where = "store (DRIFTLINE_STORE_URL or data.store_url)"
    # The database refused the data (a user error, like a validation error); anything else (unreachable,
    # no permission) is the environment's.
    code = 2 if isinstance(exc, (DataError, IntegrityError)) else 1
    return _DatabaseError(f"{where}: {type(orig).__name__}: {what}", code)


@contextmanager
def _store_errors(url: str) -> Iterator[None]:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        raise _database_error(exc, url) from None


def _cmd_ingest(args: argparse.Namespace) -> int:
    """Two passes over the files, each holding one chunk at a time: first validate every chunk of both
    files (nothing is written), then write them chunk by chunk in one transaction, so a refusal by the
    store (a conflicting re-send, a label before its row) rolls back both files."""
    from datetime import UTC, datetime
    from pathlib import Path

    from ml.validation import validate_csv

    files = [(kind, path) for kind, path in (("rows", args.rows), ("labels", args.labels)) if path]
    if not files:
        raise ValueError("ingest: give --rows CSV, --labels CSV or both")
    if args.chunk_rows < 1:
        raise ValueError(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    for _, path in files:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such file")
    config, store = _open_store(args.model)
    now = datetime.now(UTC)  # one "now" for both passes: a row valid in the first is valid in the second

    def chunks(kind: str, path: str):
        return validate_csv(path, config, kind=kind, chunk_rows=args.chunk_rows, now=now)

    totals = {kind: sum(len(chunk) for chunk in chunks(kind, path)) for kind, path in files}
    with _store_errors(store.url), store.batch(config.name, config.feature_names) as writer:
        for kind, path in files:
            for chunk in chunks(kind, path):
                (writer.add_observations if kind == "rows" else writer.add_labels)(chunk)
    for kind, path in files:
        counts = writer.rows if kind == "rows" else writer.labels
        print(f"{path}: {totals[kind]} {kind}: stored {counts.new} new, {counts.already_stored} already stored")
    return 0


def _cli_time(value: str | None, flag: str):
    import pandas as pd

    from ml.validation import parse_times

    if value is None:
        return None
    parsed = parse_times(pd.Series([value], dtype=object)).iloc[0]
    if pd.isna(parsed):
        raise ValueError(f"{flag}: not an ISO 8601 time: {value!r} (e.g. 2026-01-31T00:00:00Z)")
    return parsed.to_pydatetime()


def _cmd_quarantine(args: argparse.Namespace) -> int:
    import getpass

    ids = None if args.ids is None else [i.strip() for i in args.ids.split(",") if i.strip()]
    ts_from, ts_until = _cli_time(args.ts_from, "--from"), _cli_time(args.ts_until, "--until")
    if (ids is None) == (ts_from is None and ts_until is None):
        raise ValueError("quarantine: give --ids, or --from and/or --until, not both")
    if ids == []:
        raise ValueError("--ids: no row id given")
    try:
        actor = args.actor or getpass.getuser()
    except (KeyError, OSError):  # no login name (e.g. a container's numeric user)
        actor = "unknown"
    config, store = _open_store(args.model)
    selection = {"ids": ids, "ts_from": ts_from, "ts_until": ts_until, "reason": args.reason, "actor": actor}
    with _store_errors(store.url):
        if args.release:
            print(f"{config.name}: released {store.release(config.name, **selection)} row(s) from quarantine")
        else:
            result = store.quarantine(config.name, **selection)
            shown = ", ".join(result.ids[:10]) + (", ..." if result.rows > 10 else "")
            print(f"{config.name}: quarantined {result.rows} row(s)" + (f": {shown}" if result.rows else "")
                  + (f" ({result.already} already quarantined)" if result.already else ""))
        newest = store.latest_ts(config.name)
    print(f"{config.name}: newest row in the windows now {newest.isoformat() if newest else 'none'}")
    return 0


def _cmd_labels_arrived(args: argparse.Namespace) -> int:
    """Runs the model's ``<model>_new_labels`` DAG, which records the event and updates the asset
    that starts continuous training (on a live scheduler: at once)."""
    from driftline import runner

    runner.prepare()
    conf = {"rows": args.rows, "key": args.key}
    result = runner.run_dag(f"{args.model}_new_labels", conf)
    print(json.dumps({"run_id": result.key, "state": result.state}, indent=2))
    return 0 if result.ok else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from ml import registry as reg

    if args.last < 1:
        raise ValueError(f"--last must be at least 1, got {args.last}")
    config, ctx = _load(args.model)
    if not ctx.registry.exists():
        print(f"{config.name}: no registered versions yet")
        return 0
    for alias in (reg.CHAMPION, reg.CHALLENGER, reg.PREVIOUS):
        print(f"{alias:>18}: {_version(ctx.registry.version_for(alias))}")
    runs = ctx.store.audit_log(config.name, ["run"])[-args.last:]
    print(f"recent runs ({len(runs)}):" if runs else "recent runs: none")
    for entry in runs:
        print("  " + _run_line(entry["details"] or {}))
    rollbacks = ctx.store.audit_log(config.name, [ROLLBACK_ACTION])[-args.last:]
    print(f"rollbacks ({len(rollbacks)}):" if rollbacks else "rollbacks: none")
    for entry in rollbacks:
        print("  " + _rollback_line(entry))
    return 0


# The audit action ml.registry.Registry.rollback writes: one entry per rollback, on the restored version.
ROLLBACK_ACTION = "rolled_back"


def _version(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def _run_line(d: dict) -> str:
    drift = d.get("drift_share")
    return (f"{(d.get('as_of') or '')[:16]:<16}  drift {'-' if drift is None else f'{drift:.2f}':>4}  "
            f"trigger {d.get('trigger') or '-':<9} action {d.get('action') or '-':<9} "
            f"champion {_version(d.get('champion_version'))}")


def _rollback_line(entry: dict) -> str:
    """Who, when, from which version to which, and why."""
    d = entry["details"] or {}
    at = entry["at"]
    when = at.strftime("%Y-%m-%d %H:%M UTC") if at is not None else "-"
    who = entry["actor"] or ("the rollback guard" if d.get("automatic") else "unknown")
    how = "automatic" if d.get("automatic") else "by hand"
    line = f"{when}  {_version(d.get('from_version'))} -> {_version(entry['version'])}  by {who} ({how})"
    if entry.get("run_id"):
        line += f", run {entry['run_id']}"
    return line + f": {d.get('reason') or 'no reason given'}"


def _cmd_publish_labels(args: argparse.Namespace) -> int:
    """A new-labels event for a live Airflow: on Redis (the asset's watcher starts the run) or as an
    asset event through the REST API. Message format: ml/messages.py and the README."""
    from driftline import channels

    if args.via == "redis":
        message, listeners = channels.publish_redis(args.model, args.rows, key=args.key, source=args.source)
        print(json.dumps({"via": "redis", "channel": channels.messages.channel(args.model), "listeners": listeners,
                          "message": message}, indent=2))
        if listeners == 0:
            print("driftline: nobody listens on that channel (is the triggerer up with DRIFTLINE_REDIS_URL "
                  "set?); pub/sub keeps nothing, so no run will start. Try --via rest.", file=sys.stderr)
            return 1
        return 0
    message, answer = channels.publish_rest(args.model, args.rows, key=args.key, source=args.source)
    print(json.dumps({"via": "rest", "asset_event_id": answer.get("id"), "message": message}, indent=2))
    return 0


def _cmd_trigger(args: argparse.Namespace) -> int:
    from driftline.api import AirflowApi

    api = AirflowApi()
    run = api.trigger(args.dag_id, json.loads(args.conf) if args.conf else {})
    print(f"triggered {args.dag_id} run {run['dag_run_id']}", flush=True)
    if args.no_wait:
        return 0
    run = api.wait(args.dag_id, run["dag_run_id"], timeout=args.timeout)
    print(json.dumps({"run_id": run["dag_run_id"], "state": run["state"],
                      "tasks": api.task_states(args.dag_id, run["dag_run_id"])}, indent=2))
    if run["state"] == "success":
        return 0
    # "failed" alone sends a person to the UI to find out which task and why: say both here.
    failures = api.failures(args.dag_id, run["dag_run_id"])
    for failure in failures:
        print(f"failed: {failure['task_id']} (try {failure['try_number']}): {failure['error']}", file=sys.stderr)
    if not failures:
        print(f"failed: run {run['dag_run_id']} is {run['state']} but no task failed "
              "(timed out, or marked failed by hand?)", file=sys.stderr)
    return 1


def _cmd_replay(args: argparse.Namespace) -> int:
    from driftline.replay_cli import run_from_args

    return run_from_args(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from driftline import serve

    return serve.run(args.model, host=args.host, port=args.port, workers=args.workers,
                     poll_seconds=args.poll_seconds, flush_seconds=args.flush_seconds,
                     webhook_poll_seconds=args.webhook_poll_seconds, webhook_url=args.webhook_url)


def _cmd_up(args: argparse.Namespace) -> int:
    serve_port = None if args.no_serve else args.serve_port
    if args.celery:
        from driftline import production

        return production.up(airflow_port=args.airflow_port, mlflow_port=args.mlflow_port, workers=args.workers,
                             serve_port=serve_port)
    from driftline import stack

    return stack.up(airflow_port=args.airflow_port, mlflow_port=args.mlflow_port, serve_port=serve_port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="driftline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="play the scripted scenario through real DAG runs")
    demo.add_argument("--no-reset", action="store_true", help="keep the existing state (fails if the model exists)")
    demo.set_defaults(func=_cmd_demo)
    sub.add_parser("env", help="print the environment").set_defaults(func=_cmd_env)
    sub.add_parser("init", help="migrate the Airflow DB and create the store").set_defaults(func=_cmd_init)
    run = sub.add_parser("run", help="one real DAG run in this process")
    run.add_argument("dag_id")
    run.add_argument("--conf", help="JSON params, e.g. '{\"retrain\": true, \"reason\": \"why\"}'")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)
    ingest = sub.add_parser("ingest", help="validate and store a batch of rows and/or labels (all or nothing)")
    ingest.add_argument("model")
    ingest.add_argument("--rows", help="CSV with row_id, ts and the feature columns")
    ingest.add_argument("--labels", help="CSV with row_id, label, labelled_at")
    ingest.add_argument("--chunk-rows", type=int, default=50_000,
                        help="rows read, validated and written at a time; bounds memory [50000]")
    ingest.set_defaults(func=_cmd_ingest)
    quarantine = sub.add_parser("quarantine", help="take stored rows out of every window (audited; --release undoes)")
    quarantine.add_argument("model")
    quarantine.add_argument("--ids", help="comma-separated row ids")
    quarantine.add_argument("--from", dest="ts_from", metavar="TS", help="rows with ts at or after TS (ISO 8601)")
    quarantine.add_argument("--until", dest="ts_until", metavar="TS", help="rows with ts at or before TS (ISO 8601)")
    quarantine.add_argument("--reason", required=True, help="why (kept with the rows and in the audit log)")
    quarantine.add_argument("--actor", help="who (default: your login name)")
    quarantine.add_argument("--release", action="store_true", help="put the selected rows back into the windows")
    quarantine.set_defaults(func=_cmd_quarantine)
    arrived = sub.add_parser("labels-arrived", help="announce new labelled rows (starts continuous training)")
    arrived.add_argument("model")
    arrived.add_argument("--rows", type=int, required=True)
    arrived.add_argument("--key", help="idempotency key (default: the run id)")
    arrived.set_defaults(func=_cmd_labels_arrived)
    status = sub.add_parser("status", help="aliases, recent runs and rollbacks of a model")
    status.add_argument("model")
    status.add_argument("--last", type=int, default=10, help="how many runs and rollbacks to show")
    status.set_defaults(func=_cmd_status)
    up = sub.add_parser("up", help="Airflow UI + MLflow UI + a scoring service per model on the embedded state "
                                   "(Ctrl-C stops them all)")
    up.add_argument("--airflow-port", type=int, default=8080)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.add_argument("--serve-port", type=int, default=8000,
                    help="the first model's scoring service (driftline serve); the next models take the ports "
                         "after it [8000]")
    up.add_argument("--no-serve", action="store_true", help="start no scoring service")
    up.add_argument("--celery", action="store_true",
                    help="the production stack: PostgreSQL (DRIFTLINE_PG_URL), Redis (DRIFTLINE_REDIS_URL), MLflow "
                         "server, Airflow api-server, scheduler, dag-processor, triggerer and Celery workers")
    up.add_argument("--workers", type=int, default=int(os.environ.get("DRIFTLINE_WORKERS", "2")),
                    help="Celery workers with --celery [DRIFTLINE_WORKERS or 2]")
    up.set_defaults(func=_cmd_up)
    publish = sub.add_parser("publish-labels", help="send a new-labels event to a live Airflow (Redis or REST)")
    publish.add_argument("model")
    publish.add_argument("--rows", type=int, required=True, help="how many labelled rows arrived")
    publish.add_argument("--key", help="idempotency key (default: a hash of the message)")
    publish.add_argument("--source", help="who or what labelled them (kept with the event)")
    publish.add_argument("--via", choices=["redis", "rest"], default="redis",
                         help="redis: publish on the model's channel (DRIFTLINE_REDIS_URL); rest: POST an asset event "
                              "(DRIFTLINE_AIRFLOW_URL, _USER, _PASSWORD)")
    publish.set_defaults(func=_cmd_publish_labels)
    trigger = sub.add_parser("trigger", help="trigger a DAG run through Airflow's REST API and wait for it")
    trigger.add_argument("dag_id")
    trigger.add_argument("--conf", help="JSON params, e.g. '{\"force\": true, \"reason\": \"why\"}'")
    trigger.add_argument("--no-wait", action="store_true")
    trigger.add_argument("--timeout", type=float, default=1800)
    trigger.set_defaults(func=_cmd_trigger)
    serve = sub.add_parser("serve", help="HTTP scoring service on MODEL@champion; follows the alias (hot swap)")
    serve.add_argument("model")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes; each follows the alias")
    serve.add_argument("--poll-seconds", type=float, default=2.0, help="how often to read the champion alias")
    serve.add_argument("--webhook-poll-seconds", type=float, default=30.0,
                       help="the poll while an MLflow webhook is registered (DRIFTLINE_SERVE_WEBHOOK_SECRET set)")
    serve.add_argument("--webhook-url", default=None,
                       help="the URL MLflow calls (default http://HOST:PORT/webhooks/mlflow; or "
                            "DRIFTLINE_SERVE_WEBHOOK_URL)")
    serve.add_argument("--flush-seconds", type=float, default=0.2,
                       help="how long predictions queue before one store write")
    serve.set_defaults(func=_cmd_serve)
    from driftline.replay_cli import DESCRIPTION as REPLAY_DESCRIPTION
    from driftline.replay_cli import add_arguments as replay_arguments

    replay = sub.add_parser("replay", help="replay a time-ordered CSV through Driftline's decisions and baselines",
                            description=REPLAY_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    replay_arguments(replay)
    replay.set_defaults(func=_cmd_replay)
    args = parser.parse_args(argv)
    from driftline import env

    env.apply()
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return args.func(args)
    except _DatabaseError as exc:
        print(f"driftline: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SQLAlchemyError as exc:  # one line, never the SQL and row values SQLAlchemy's text carries
        error = _database_error(exc)
        print(f"driftline: error: {error}", file=sys.stderr)
        return error.exit_code
    except (ValueError, RuntimeError, KeyError, TimeoutError) as exc:
        print(f"driftline: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
