"""``driftline``: the command line.

  driftline demo            play the scripted scenario through real DAG runs
  driftline up              Airflow (standalone) + MLflow UI on the embedded state
  driftline init            migrate the Airflow DB, create the store tables
  driftline env             print the environment (eval "$(driftline env)")
  driftline run DAG_ID [--conf JSON]     one real DAG run in this process (dag.test)
  driftline ingest MODEL --rows CSV [--labels CSV]   validate and store a batch
  driftline labels-arrived MODEL --rows N [--key K]  announce new labels (starts continuous training)
  driftline status MODEL    champion, challenger, previous champion, last decisions
"""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
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
    from driftline import runner

    runner.prepare()
    result = runner.run_dag(args.dag_id, json.loads(args.conf) if args.conf else {}, quiet=not args.verbose)
    print(json.dumps({"run_id": result.key, "state": result.state, "tasks": result.task_states}, indent=2))
    return 0 if result.ok else 1


def _load(model: str):
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings

    settings = get_settings()
    config = load_config(settings.models_dir / f"{model}.yaml")
    return config, Context.open(config, settings)


def _cmd_ingest(args: argparse.Namespace) -> int:
    import pandas as pd

    from ml.validation import validate_incoming, validate_incoming_labels

    config, ctx = _load(args.model)
    # Validate everything first: a bad file stores nothing.
    rows = validate_incoming(pd.read_csv(args.rows), config, what=args.rows) if args.rows else None
    labels = validate_incoming_labels(pd.read_csv(args.labels), config) if args.labels else None
    if rows is not None:
        print(f"stored {ctx.store.add_observations(config.name, rows, config.feature_names)} new rows")
    if labels is not None:
        print(f"stored {ctx.store.add_labels(config.name, labels)} new labels")
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

    config, ctx = _load(args.model)
    if not ctx.registry.exists():
        print(f"{config.name}: no registered versions yet")
        return 0
    for alias in (reg.CHAMPION, reg.CHALLENGER, reg.PREVIOUS):
        print(f"{alias:>18}: v{ctx.registry.version_for(alias)}")
    for entry in ctx.store.audit_log(config.name, ["run"])[-args.last:]:
        d = entry["details"]
        print(f"  {d.get('as_of', '')[:16]}  drift {d.get('drift_share') or 0:.2f}  trigger {d.get('trigger'):<9} "
              f"action {d.get('action'):<9} champion v{d.get('champion_version')}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from driftline import stack

    return stack.up(airflow_port=args.airflow_port, mlflow_port=args.mlflow_port)


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
    ingest = sub.add_parser("ingest", help="validate and store a batch of rows and/or labels")
    ingest.add_argument("model")
    ingest.add_argument("--rows", help="CSV with row_id, ts and the feature columns")
    ingest.add_argument("--labels", help="CSV with row_id, label, labelled_at")
    ingest.set_defaults(func=_cmd_ingest)
    arrived = sub.add_parser("labels-arrived", help="announce new labelled rows (starts continuous training)")
    arrived.add_argument("model")
    arrived.add_argument("--rows", type=int, required=True)
    arrived.add_argument("--key", help="idempotency key (default: the run id)")
    arrived.set_defaults(func=_cmd_labels_arrived)
    status = sub.add_parser("status", help="aliases and recent decisions of a model")
    status.add_argument("model")
    status.add_argument("--last", type=int, default=10)
    status.set_defaults(func=_cmd_status)
    up = sub.add_parser("up", help="Airflow UI + MLflow UI on the embedded state (Ctrl-C stops both)")
    up.add_argument("--airflow-port", type=int, default=8080)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.set_defaults(func=_cmd_up)
    args = parser.parse_args(argv)
    from driftline import env

    env.apply()
    try:
        return args.func(args)
    except (ValueError, RuntimeError, KeyError) as exc:
        print(f"driftline: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
