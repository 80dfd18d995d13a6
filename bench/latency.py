"""P2: trigger-to-champion latency on a live scheduler.

What a user waits for: a new-labels event is posted (Airflow REST asset event, as a labelling job
would) and, some time later, ``models:/<m>@champion`` names the new version. This starts the real
stack on loopback (``driftline up``'s: api-server, scheduler, dag-processor, triggerer, LocalExecutor,
plus the MLflow server over HTTP), seeds a model whose champion the event's retrain will beat, posts
the event and polls MLflow for the alias. The run's task instances then split the time into
*waiting* (scheduling, queueing, start-up before the task's clock starts) and *work* (the task's own
clock, which includes the task process parsing the DAG file and importing what it needs).

Run it in its own process (Airflow reads its config once): ``.venv/bin/python -m bench.latency``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "credit_default"
CT = f"{MODEL}_continuous_training"
DRIFT_START = 6  # as in the demo: the downturn starts on day 6; by day 8 its labels are in


def _parse(ts: str | None) -> float | None:
    return datetime.fromisoformat(ts).timestamp() if ts else None


def seed(rows_per_period: int, run_ct: Callable[[dict[str, Any]], bool] | None = None) -> Any:
    """Days 0-3 and a first champion (v1), then the downturn's days 4-8 with their labels: the event's
    retrain trains on post-downturn data and beats v1. ``run_ct(conf)`` runs the continuous-training
    DAG once and says whether it succeeded: by default an in-process DAG run (before the stack starts);
    the Celery variant passes runs through the live stack's REST API."""
    from driftline import runner
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings
    from ml.simulator import CreditDefaultSimulator, DriftPhase
    from ml.validation import validate_incoming, validate_incoming_labels

    if run_ct is None:
        runner.prepare()

        def run_ct(conf: dict[str, Any]) -> bool:
            return runner.run_dag(CT, conf).ok

    settings = get_settings()
    ctx = Context.open(load_config(settings.models_dir / f"{MODEL}.yaml"), settings)
    sim = CreditDefaultSimulator(seed=7, rows_per_period=rows_per_period, phases=[DriftPhase(DRIFT_START, 1.0, 1.0)])
    batches = [sim.batch(p) for p in range(9)]

    def deliver(until: int) -> None:
        for period in range(until + 1):
            ctx.store.add_observations(MODEL, validate_incoming(batches[period].features, ctx.config),
                                       ctx.config.feature_names)
            due = batches[period].labels[batches[period].labels["labelled_at"] < sim.period_start(until + 1)]
            if len(due):
                ctx.store.add_labels(MODEL, validate_incoming_labels(due, ctx.config))

    deliver(3)
    assert run_ct({"retrain": True, "reason": "benchmark: first champion"}), "seeding run 1 failed"
    assert ctx.registry.champion() == 1, "seeding did not promote v1"
    # Day 6's run sees the downturn begin and holds (no post-drift labels yet), as in the demo; by
    # day 8 the labels from after it are in, so the event's retrain learns the new regime.
    deliver(DRIFT_START)
    assert run_ct({}), "seeding run 2 failed"
    deliver(8)
    return ctx


def breakdown(event_at: float, run: dict[str, Any], tis: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task that ran: wait = its start minus when it could start (the previous finished task's
    end, or the run's queueing for the first one); work = its own clock."""
    # Skipped branches get a start and an end too, both at the skip: only tasks that ran count.
    ran = sorted((t for t in tis if t["state"] in ("success", "failed") and t.get("start_date") and t.get("end_date")),
                 key=lambda t: _parse(t["start_date"]))
    ready = _parse(run.get("queued_at")) or _parse(run["start_date"])
    tasks = []
    for ti in ran:
        start, end = _parse(ti["start_date"]), _parse(ti["end_date"])
        tasks.append({"task": ti["task_id"], "state": ti["state"], "wait_s": round(max(0.0, start - ready), 2),
                      "work_s": round(end - start, 2)})
        ready = max(ready, end)
    return {
        "event_to_run_queued_s": round((_parse(run.get("queued_at")) or _parse(run["start_date"])) - event_at, 2),
        "tasks": tasks,
        "wait_s": round(sum(t["wait_s"] for t in tasks), 2),
        "work_s": round(sum(t["work_s"] for t in tasks), 2),
    }


def dag_import_seconds(repeats: int = 3) -> dict[str, float]:
    """What a task process pays before its own code runs when nothing is preloaded: importing the DAG
    file in a fresh interpreter (best of ``repeats``), and ``airflow.sdk`` alone for scale."""
    timed = "import time, runpy; t = time.perf_counter(); {body}; print(time.perf_counter() - t)"
    bodies = {"dag_file": f"runpy.run_path({str(ROOT / 'dags' / 'driftline_dags.py')!r})",
              "airflow_sdk_only": "import airflow.sdk"}
    out: dict[str, float] = {}
    for label, body in bodies.items():
        runs = [float(subprocess.run([sys.executable, "-c", timed.format(body=body)], capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1]) for _ in range(repeats)]
        out[label] = round(min(runs), 2)
    return out


def wait_parsed(api: Any, timeout: float) -> None:
    """Until the DAG processor has parsed the DAG file (the new-labels asset gets an id then)."""
    from driftline import channels

    deadline = time.monotonic() + timeout
    while True:
        try:
            api.asset_id(channels.messages.asset_name(MODEL))
            return
        except KeyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def measure(stack, ctx, timeout: float) -> dict[str, Any]:
    from driftline import channels
    from driftline.api import AirflowApi

    api = AirflowApi(stack.airflow_url)
    wait_parsed(api, 300)
    api.unpause(CT)
    # A running deployment has warm executor workers; a fresh one starts them (and, with Driftline's
    # config, the fork server's preload) on its first task. Pay that once, measured apart, first.
    warm_started = time.time()
    warm = api.trigger(f"{MODEL}_score")
    warm = api.wait(f"{MODEL}_score", warm["dag_run_id"], timeout=timeout)
    warm_up_s = round(time.time() - warm_started, 2)
    known = {r["dag_run_id"] for r in api.runs(CT)}
    before = ctx.registry.champion()
    event_at = time.time()
    channels.publish_rest(MODEL, 800, key=f"bench-{int(event_at)}", source="bench.latency", api=api)
    champion_at = None
    while time.time() - event_at < timeout:
        if ctx.registry.champion() != before:
            champion_at = time.time()
            break
        time.sleep(0.5)
    new = [r for r in api.runs(CT) if r["dag_run_id"] not in known]
    if not new:
        raise RuntimeError(f"the event started no {CT} run within {timeout:.0f} s")
    run = api.wait(CT, new[-1]["dag_run_id"], timeout=timeout)
    result = breakdown(event_at, run, api.task_instances(CT, run["dag_run_id"]))
    result.update({
        "run_state": run["state"],
        "champion_before": before,
        "champion_after": ctx.registry.champion(),
        "event_to_champion_s": None if champion_at is None else round(champion_at - event_at, 2),
        "event_to_run_end_s": round(_parse(run["end_date"]) - event_at, 2),
        "first_task_after_start_s": warm_up_s,  # the warm-up: scoring DAG run on a cold stack
        "warm_up_state": warm["state"],
        "branch": next((t["task"] for t in result["tasks"] if t["task"].startswith("retrain_on_")), None),
    })
    return result


# Side by side: Airflow's own process start-up versus Driftline's shipped airflow.cfg (LocalExecutor
# workers from a fork server that preloaded driftline.preload), each on a fresh stack and state.
VARIANTS = {
    "airflow_defaults": {"AIRFLOW__SCHEDULER__MP_START_METHOD": "fork"},
    "driftline": {},
    "celery": {},  # driftline up --celery: PostgreSQL, Redis, two Celery workers (skipped without them)
}
LABELS = {"airflow_defaults": "LocalExecutor, Airflow's default fork start-up",
          "driftline": "LocalExecutor, Driftline's config (fork server preloads `driftline.preload`)",
          "celery": "CeleryExecutor, 2 workers, PostgreSQL (`driftline up --celery`; workers preload `driftline.preload`)"}


def table(runs: dict[str, dict[str, Any]]) -> str:
    names = list(runs)
    head = "| task | " + " | ".join(f"{n}: waiting (s) | {n}: work (s)" for n in names) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(names)]
    tasks = [t["task"] for t in runs[names[-1]]["tasks"]]
    for task in tasks:
        cells = []
        for name in names:
            found = next((t for t in runs[name]["tasks"] if t["task"] == task), None)
            cells += [f"{found['wait_s']:.1f}", f"{found['work_s']:.1f}"] if found else ["-", "-"]
        lines.append(f"| `{task}` | " + " | ".join(cells) + " |")
    lines.append("| **all tasks** | " + " | ".join(f"**{runs[n]['wait_s']:.1f}** | **{runs[n]['work_s']:.1f}**"
                                                  for n in names) + " |")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def markdown(results: dict[str, Any], command: str) -> str:
    skipped = "".join(f"\n{LABELS[n]}: skipped, {r['skipped']}.\n" for n, r in results["runs"].items() if "skipped" in r)
    runs = {n: r for n, r in results["runs"].items() if "skipped" not in r}
    rows = "\n".join(
        f"| {LABELS[name]} | {_seconds(r['event_to_run_queued_s'])} | {_seconds(r['event_to_champion_s'])} | "
        f"{_seconds(r['event_to_run_end_s'])} | `{r['branch']}` | "
        f"{'met' if r['event_to_champion_s'] is not None and r['event_to_champion_s'] < 60 else 'not met'} | "
        f"{_seconds(r['first_task_after_start_s'])} |"
        for name, r in runs.items())
    ratio = ""
    if {"airflow_defaults", "driftline"} <= runs.keys() and all(runs[n]["event_to_champion_s"]
                                                              for n in ("airflow_defaults", "driftline")):
        ratio = (f"\nDriftline's config cuts event → champion by "
                 f"{runs['airflow_defaults']['event_to_champion_s'] / runs['driftline']['event_to_champion_s']:.1f}× "
                 f"in this run.\n")
    imports = results["dag_import_s"]
    return f"""\
## P2: trigger-to-champion latency

A new-labels event posted through Airflow's REST API (as a labelling job would) until
`models:/{MODEL}@champion` names the new version in MLflow, on the live stack `make up` starts
(api-server, scheduler, dag-processor, triggerer; MLflow server over HTTP; SQLite) and, for the
Celery variant, the one `driftline up --celery` starts (the same processes plus two Celery workers,
Redis as broker, PostgreSQL for Airflow, MLflow and the store), with the
simulator's default size ({results['rows_per_period']} rows a day, 4-day training window). Each
variant gets a fresh state and stack in the same benchmark run. Command: `{command}`.
Machine: {results['machine']}.

| variant | event → run queued | event → champion alias visible | event → run finished | branch | goal < 60 s | warm-up: first run on a cold stack |
|---|---:|---:|---:|---|---|---:|
{rows}
{skipped}{ratio}
The warm-up is a one-task scoring run right after the stack starts, before the event: executor
workers (and, with Driftline's config, the fork server and its preload) start on the first task, and
a running deployment has paid that long before its next event.

Where the time goes. *Waiting* = scheduling, queueing and process start-up before the task's clock
starts; *work* = the task's clock, which includes its process importing the DAG file and what the
task touches:

{table(runs)}

Importing the DAG file in a fresh interpreter costs {imports['dag_file']:.1f} s (`airflow.sdk` alone
{imports['airflow_sdk_only']:.1f} s; the file imports `ml.loop` lazily, so parsing it does not load
pandas, scikit-learn or MLflow). Without a preload, each task process imports those again when its
task first touches `ml.loop`.

The largest cut was not in Airflow's configuration: both variants run from the venv `make install`
builds, which writes bytecode at install time. This machine kind sets `PYTHONDONTWRITEBYTECODE` and
uv writes no `.pyc` by default, so before that every task process compiled MLflow, Airflow and pandas
from source (`compile()` was 3.2 s of one 6 s task). Measured that way on 2026-11-22 (load 4 to 10,
not this run): 662.6 s with Airflow's defaults, 80.8 s with Driftline's config.
"""


def event_only_models(home: Path) -> Path:
    """The shipped model YAML without its daily schedule, in ``home``: unpausing a cron-scheduled DAG
    (catch-up off) starts the latest past cron point's run at once, which would retrain and move the
    champion before the event does, so the benchmark would time the wrong run."""
    import yaml

    spec = yaml.safe_load((ROOT / "models" / f"{MODEL}.yaml").read_text())
    spec["triggers"]["schedule"] = None
    models = home / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / f"{MODEL}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return models


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One measurement on a fresh state folder and stack (this process: Airflow reads config once)."""
    # Killed from outside (a timeout, Ctrl-C in the parent): still stop the stack in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    home = Path(tempfile.mkdtemp(prefix="driftline-bench-latency-"))
    os.environ["DRIFTLINE_HOME"] = str(home)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DRIFTLINE_STORE_URL", "DRIFTLINE_MODELS_DIR",
                "AIRFLOW_HOME"):
        os.environ.pop(var, None)
    os.environ.update(VARIANTS[variant])
    os.environ["DRIFTLINE_MODELS_DIR"] = str(event_only_models(home))
    if variant == "celery":
        return run_celery(args)
    from driftline import env, stack

    ports = {name: stack.free_port() for name in ("airflow", "mlflow", "log", "trigger_log")}
    os.environ["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(ports["log"])
    os.environ["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(ports["trigger_log"])
    os.environ["DRIFTLINE_TASK_RETRIES"] = "0"
    env.apply()
    # Quiet Airflow in this process's seeding runs; the servers below keep their INFO task logs.
    level = os.environ.pop("AIRFLOW__LOGGING__LOGGING_LEVEL", None)
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    seed(args.rows_per_period)
    os.environ.pop("AIRFLOW__LOGGING__LOGGING_LEVEL")
    if level is not None:
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = level
    live = stack.Stack(ports["airflow"], ports["mlflow"], stack.free_port())
    started = time.monotonic()
    live.start()
    try:
        if not live.wait_ready(600):
            raise RuntimeError(f"stack did not start; see {live.logs}")
        stack_start = round(time.monotonic() - started, 1)
        # Read the registry over HTTP, as the tasks do.
        os.environ["MLFLOW_TRACKING_URI"] = live.mlflow_url
        return measure_on(live, stack_start, args.timeout)
    finally:
        live.stop()


def measure_on(live: Any, stack_start: float, timeout: float) -> dict[str, Any]:
    """:func:`measure` on a started stack, with the model's context from the environment."""
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings

    ctx = Context.open(load_config(get_settings().models_dir / f"{MODEL}.yaml"))
    result = measure(live, ctx, timeout)
    result["stack_start_s"] = stack_start
    result["logs"] = str(live.logs)
    return result


def run_celery(args: argparse.Namespace) -> dict[str, Any]:
    """The production stack (``driftline up --celery``) on databases made for this run and dropped
    after. Its Airflow database is PostgreSQL, so the seeding runs go through the live stack too."""
    from driftline import production, stack
    from driftline.api import AirflowApi

    pg, redis = production.pg_url(), production.redis_url()
    problem = production.service_problem(pg, redis)
    if problem:
        return {"skipped": f"PostgreSQL or Redis not reachable ({problem})"}
    prefix = f"dlbench_{uuid.uuid4().hex[:8]}"
    live = production.ProductionStack(stack.free_port(), stack.free_port(), workers=2, pg=pg, redis=redis,
                                      serve_port=stack.free_port(), db_prefix=prefix, extra_env={"DRIFTLINE_TASK_RETRIES": "0",
                                                                   "DRIFTLINE_REDIS_CHANNEL_PREFIX": prefix})
    os.environ["DRIFTLINE_STORE_URL"] = live.urls()["store"]
    os.environ["MLFLOW_TRACKING_URI"] = live.mlflow_url
    started = time.monotonic()
    try:
        live.start()
        if not live.wait_ready(600):
            raise RuntimeError(f"production stack did not start; see {live.logs}")
        stack_start = round(time.monotonic() - started, 1)
        os.environ.update(live.client_env())  # its generated Airflow login and MLflow basic-auth credentials
        api = AirflowApi(live.airflow_url)
        wait_parsed(api, 300)
        api.unpause(CT)

        def run_ct(conf: dict[str, Any]) -> bool:
            run = api.trigger(CT, conf)
            return api.wait(CT, run["dag_run_id"], timeout=args.timeout)["state"] == "success"

        seed(args.rows_per_period, run_ct)
        return measure_on(live, stack_start, args.timeout)
    finally:
        live.stop()
        production.drop_databases(pg, list(live.databases.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--rows-per-period", type=int, default=800)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--smoke", action="store_true", help="Driftline's config only (one stack, not two)")
    parser.add_argument("--only", help=f"comma-separated variants ({', '.join(VARIANTS)}); default: all")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # one child run
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        args.json.write_text(json.dumps(run_variant(args, args.variant)))
        return 0

    variants = ["driftline"] if args.smoke else list(VARIANTS)
    if args.only:
        variants = [v.strip() for v in args.only.split(",")]
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            parser.error(f"--only: unknown variant(s) {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "rows_per_period": args.rows_per_period,
        "dag_import_s": dag_import_seconds(1 if args.smoke else 3),
        "runs": {},
    }
    for variant in variants:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([sys.executable, "-m", "bench.latency", "--variant", variant, "--json", out.name,
                            "--rows-per-period", str(args.rows_per_period), "--timeout", str(args.timeout)],
                           cwd=ROOT, check=True)
            results["runs"][variant] = json.loads(Path(out.name).read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(results, indent=2))
    command = ".venv/bin/python -m bench.latency" + (" --smoke" if args.smoke else "")
    (args.out / "latency.md").write_text(markdown(results, command))
    print(markdown(results, command))
    return 0 if all(r.get("run_state") == "success" or "skipped" in r for r in results["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
