"""End to end on the production stack, as ``driftline up --celery`` starts it on loopback: PostgreSQL
(three databases made for this module and dropped after), Redis (Celery broker and new-labels
messages), the MLflow tracking server on PostgreSQL with served artifacts, and Airflow as separate
processes (api-server, scheduler, dag-processor, triggerer, two Celery workers of one slot each).

Two models (``credit_default`` and a renamed copy) share the stack. In order:
(c) both run at once, one started through the REST API, the other by an asset event posted through
    the REST API; their tasks run in parallel on both workers;
(a) a forced continuous-training run triggered through the REST API by ``deploy/trigger-rest.sh``
    (curl, JWT): MLflow's API shows the champion alias moved and the stages mirror it;
(b) a new-labels message published on Redis with ``driftline publish-labels``: the asset watcher
    starts the run, which takes the event branch, with no REST call;
(d) a Celery worker SIGKILLed in the middle of ``train_candidate``: the heartbeat timeout fails the
    try, the retry runs on the other worker, the run succeeds with one consistent champion.
Each part's wall time goes to ``test-artifacts/production/timings.json`` and the terminal summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import ROOT, require_service

pytestmark = pytest.mark.production

A, B = "credit_default", "credit_default_b"
CT = "{}_continuous_training"
ARTIFACTS = ROOT / "test-artifacts" / "production"
BRANCHES = ("retrain_on_threshold", "retrain_on_schedule", "retrain_on_event", "retrain_on_demand", "skip_retraining")
RUN_TIMEOUT = 900  # one continuous-training run; generous: the machine is shared
HEARTBEAT_TIMEOUT = 40  # a killed worker's task is failed (and retried) this long after its last heartbeat
TIMINGS: dict[str, float] = {}


def _services() -> tuple[str, str]:
    from driftline import production

    pg = os.environ.get("DRIFTLINE_TEST_PG_URL", production.PG_URL)
    redis = os.environ.get("DRIFTLINE_TEST_REDIS_URL", production.REDIS_URL)
    problem = production.service_problem(pg, redis)
    require_service("PostgreSQL and Redis", problem,
                    "Both are needed for the production stack (127.0.0.1:5432 trust auth user postgres; "
                    "127.0.0.1:6379), or set DRIFTLINE_TEST_PG_URL / DRIFTLINE_TEST_REDIS_URL.")
    return pg, redis


def _model_files(folder: Path) -> Path:
    """credit_default and a renamed copy; no cron schedule, so only this test starts runs."""
    folder.mkdir()
    text = (ROOT / "models" / f"{A}.yaml").read_text()
    assert 'schedule: "@daily"' in text and f"name: {A}\n" in text
    for name in (A, B):
        body = text.replace(f"name: {A}\n", f"name: {name}\n").replace('schedule: "@daily"', "schedule: null")
        (folder / f"{name}.yaml").write_text(body)
    return folder


def _ingest(ctx, sim, until: int) -> None:
    """Rows of periods before ``until`` and every label due by its start (the store skips known ones)."""
    from ml.validation import validate_incoming, validate_incoming_labels

    cfg = ctx.config
    for period in range(until):
        batch = sim.batch(period)
        ctx.store.add_observations(cfg.name, validate_incoming(batch.features, cfg), cfg.feature_names)
        due = batch.labels[batch.labels["labelled_at"] < sim.period_start(until)]
        if len(due):
            ctx.store.add_labels(cfg.name, validate_incoming_labels(due, cfg))


def _wait(what: str, check, timeout: float, every: float = 2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _tails(stack) -> str:
    if stack.logs is None:
        return ""
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in sorted(stack.logs.glob("*.log")))


@pytest.fixture(scope="module")
def live(tmp_path_factory, request):
    pg, redis = _services()
    from driftline import channels, production, stack
    from driftline.api import AirflowApi
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings
    from ml.simulator import CreditDefaultSimulator

    started = time.monotonic()
    home = tmp_path_factory.mktemp("production")
    models = _model_files(home / "models")
    tag = uuid.uuid4().hex[:8]
    prefix = f"dltest_{tag}"
    extra = {
        "DRIFTLINE_MODELS_DIR": str(models),
        "DRIFTLINE_REDIS_CHANNEL_PREFIX": prefix,  # pub/sub channels are server-wide: keep ours apart
        "DRIFTLINE_TASK_RETRIES": "1",
        "DRIFTLINE_RETRY_DELAY_SECONDS": "3",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }
    live_stack = production.ProductionStack(stack.free_port(), stack.free_port(), workers=2, concurrency=1,
                                            pg=pg, redis=redis, db_prefix=prefix, extra_env=extra)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRIFTLINE_HOME", str(home))
        for key in ("DRIFTLINE_MODELS_DIR", "DRIFTLINE_REDIS_CHANNEL_PREFIX"):
            mp.setenv(key, extra[key])
        mp.setenv("DRIFTLINE_REDIS_URL", redis)
        mp.setenv("DRIFTLINE_STORE_URL", live_stack.urls()["store"])
        mp.setenv("MLFLOW_TRACKING_URI", live_stack.mlflow_url)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        try:
            live_stack.start()
            if not live_stack.wait_ready(600):
                pytest.fail(f"production stack did not start:\n{_tails(live_stack)}")
            TIMINGS["start stack (DBs, migrate, MLflow, Airflow, 2 workers)"] = time.monotonic() - started
            for key, value in live_stack.client_env().items():  # generated Airflow login, MLflow basic auth
                mp.setenv(key, value)
            mark = time.monotonic()
            settings = get_settings()
            contexts = {name: Context.open(load_config(models / f"{name}.yaml"), settings) for name in (A, B)}
            for seed, name in enumerate((A, B), start=11):
                _ingest(contexts[name], CreditDefaultSimulator(seed=seed), until=5)
            api = AirflowApi(live_stack.airflow_url)
            dags = {CT.format(m) for m in (A, B)}
            _wait("both continuous-training DAGs parsed", lambda: dags <= {
                d["dag_id"] for d in api.call("GET", "/api/v2/dags?dag_id_pattern=credit_default&limit=50")["dags"]
            }, 300)
            _wait("a Redis watcher subscribed on each model's channel",
                  lambda: all(channels.listeners(m, redis) >= 1 for m in (A, B)), 300)
            TIMINGS["seed data, wait for DAGs and watchers"] = time.monotonic() - mark
            yield {"stack": live_stack, "api": api, "ctx": contexts, "redis": redis, "home": home,
                   "sims": {A: CreditDefaultSimulator(seed=11), B: CreditDefaultSimulator(seed=12)}}
        finally:
            mark = time.monotonic()
            live_stack.stop()
            _keep_logs(live_stack)
            production.drop_databases(pg, list(live_stack.databases.values()))
            TIMINGS["stop and drop databases"] = time.monotonic() - mark
            TIMINGS["module wall time"] = time.monotonic() - started
            _report(request)


def _keep_logs(live_stack) -> None:
    """Process and task logs to test-artifacts/production/ (CI keeps them when something failed)."""
    if live_stack.logs is None or not live_stack.logs.exists():
        return
    target = ARTIFACTS / "logs"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(live_stack.logs, target)
    task_logs = Path(live_stack.env.get("AIRFLOW_HOME", "")) / "logs"
    if task_logs.is_dir():
        shutil.copytree(task_logs, target / "tasks", dirs_exist_ok=True)


def _report(request) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}, indent=2))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # past pytest's capture, into `make test`'s output
        reporter.write_line("")
        reporter.write_line("production e2e wall times:")
        for what, seconds in TIMINGS.items():
            reporter.write_line(f"  {seconds:7.1f} s  {what}")


# ---- helpers over the REST API ---------------------------------------------------------------------


def _new_run(api, dag_id: str, known: set[str], timeout: float) -> dict:
    return _wait(f"a new run of {dag_id}",
                 lambda: next((r for r in api.runs(dag_id) if r["dag_run_id"] not in known), None), timeout)


def _decision(api, dag_id: str, run_id: str) -> dict:
    from urllib.parse import quote

    path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/decide/xcomEntries/decision"
    return api.call("GET", path)["value"]


def _branch(api, dag_id: str, run_id: str) -> list[str]:
    states = api.task_states(dag_id, run_id)
    return [b for b in BRANCHES if states.get(b) == "success"]


def _registry(live, model: str) -> dict:
    """What MLflow's API says: champion version, stage of each version, versions by Airflow run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=live["stack"].mlflow_url, registry_uri=live["stack"].mlflow_url)
    versions = client.search_model_versions(f"name='{model}'")
    champion = client.get_model_version_by_alias(model, "champion")
    return {
        "champion": int(champion.version),
        "stages": {int(v.version): v.current_stage for v in versions},
        "by_run": {int(v.version): (v.tags or {}).get("driftline.dag_run_id") for v in versions},
        "client": client,
    }


def _assert_consistent(reg: dict) -> None:
    """Exactly one version in Production, and it is the one the champion alias names."""
    production = [v for v, stage in reg["stages"].items() if stage == "Production"]
    assert production == [reg["champion"]], reg["stages"]


# ---- the tests, in order: each builds on the registry state the one before left ------------------


def test_two_models_run_at_once_on_two_workers(live):
    started = time.monotonic()
    api, stack = live["api"], live["stack"]
    from driftline import channels

    known = {m: {r["dag_run_id"] for r in api.runs(CT.format(m))} for m in (A, B)}
    run_a = api.trigger(CT.format(A), {"retrain": True, "reason": "e2e: first champion of A"})["dag_run_id"]
    # B by an asset event posted through the REST API: the event starts its run.
    message, answer = channels.publish_rest(B, 800, key=f"e2e-rest-{uuid.uuid4().hex[:6]}", api=api)
    assert answer["extra"]["key"] == message["key"] and answer["extra"]["from_rest_api"] is True
    run_b = _new_run(api, CT.format(B), known[B], 120)["dag_run_id"]
    runs = {A: run_a, B: run_b}

    # Watch which worker's process tree runs each task, until both runs finish.
    seen: set[tuple[str, str]] = set()  # (model, worker)
    together: list[dict[str, str]] = []  # moments when both models had a task running, by worker
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        now: dict[str, str] = {}
        for model, run_id in runs.items():
            for ti in api.task_instances(CT.format(model), run_id):
                worker = stack.worker_of(ti["pid"]) if ti["state"] == "running" and ti["pid"] else None
                if worker:
                    seen.add((model, worker))
                    now[model] = worker
        if len(now) == 2:
            together.append(now)
        if all(api.run(CT.format(m), r)["state"] in ("success", "failed") for m, r in runs.items()):
            break
        time.sleep(1)
    for model, run_id in runs.items():
        state = api.run(CT.format(model), run_id)["state"]
        assert state == "success", f"{model}: {state} {api.task_states(CT.format(model), run_id)}\n{_tails(stack)}"

    assert {worker for _, worker in seen} == {"worker1", "worker2"}, seen
    # One slot per worker: two tasks running at the same moment are on two workers.
    assert any(set(moment.values()) == {"worker1", "worker2"} for moment in together), together
    assert _branch(api, CT.format(A), run_a) == ["retrain_on_demand"]
    assert _branch(api, CT.format(B), run_b) == ["retrain_on_event"]
    assert api.run(CT.format(B), run_b)["run_type"] == "asset_triggered"
    for model in (A, B):
        reg = _registry(live, model)
        assert reg["champion"] == 1 and reg["by_run"][1] == f"{CT.format(model)}/{runs[model]}"
        _assert_consistent(reg)
    event = live["ctx"][B].store.audit_log(B, ["run"])[-1]["details"]
    assert event["trigger"] == "event" and event["action"] == "promoted", event
    TIMINGS["(c) two models at once on two workers"] = time.monotonic() - started


def test_forced_run_through_rest_moves_champion_and_stage(live):
    started = time.monotonic()
    api, stack = live["api"], live["stack"]
    before = _registry(live, A)
    _assert_consistent(before)
    reason = "e2e: forced through REST"
    env = {**os.environ, "AIRFLOW_URL": stack.airflow_url, "POLL_SECONDS": "3", "TIMEOUT_SECONDS": str(RUN_TIMEOUT)}
    out = subprocess.run(["bash", str(ROOT / "deploy" / "trigger-rest.sh"), CT.format(A),
                          json.dumps({"force": True, "reason": reason})],
                         env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT + 60, check=False)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{_tails(stack)}"
    lines = out.stdout.splitlines()
    run_id = next(line.split("=", 1)[1] for line in lines if line.startswith("run_id="))
    assert "state=success" in lines
    tasks = {parts[1]: parts[2] for parts in (line.split() for line in lines if line.startswith("task "))}
    assert tasks["retrain_on_demand"] == "success" and tasks["promote"] == "success" and tasks["reject"] == "skipped"
    run = api.run(CT.format(A), run_id)
    assert run["conf"]["force"] is True and run["conf"]["reason"] == reason

    after = _registry(live, A)
    new = after["champion"]
    assert new != before["champion"] and after["by_run"][new] == f"{CT.format(A)}/{run_id}"
    assert after["stages"][new] == "Production" and after["stages"][before["champion"]] == "Archived"
    previous = after["client"].get_model_version_by_alias(A, "previous-champion")
    assert int(previous.version) == before["champion"]
    _assert_consistent(after)
    TIMINGS["(a) forced run through REST (curl script)"] = time.monotonic() - started


def test_redis_message_starts_the_event_branch(live):
    started = time.monotonic()
    api, stack = live["api"], live["stack"]
    # A new day of rows and labels, so the cooldown after the forced run has passed in data time.
    _ingest(live["ctx"][A], live["sims"][A], until=6)
    known = {r["dag_run_id"] for r in api.runs(CT.format(A))}
    key = f"e2e-redis-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DRIFTLINE_REDIS_URL": live["redis"]}
    out = subprocess.run([str(Path(sys.executable).with_name("driftline")), "publish-labels", A, "--rows", "700",
                          "--key", key, "--source", "e2e"], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["listeners"] >= 1

    run = _new_run(api, CT.format(A), known, 120)
    assert run["run_type"] == "asset_triggered"
    run = api.wait(CT.format(A), run["dag_run_id"], timeout=RUN_TIMEOUT)
    run_id = run["dag_run_id"]
    assert run["state"] == "success", f"{api.task_states(CT.format(A), run_id)}\n{_tails(stack)}"
    assert _branch(api, CT.format(A), run_id) == ["retrain_on_event"]
    decision = _decision(api, CT.format(A), run_id)
    assert decision["kind"] == "event" and "700 labelled rows" in decision["summary"], decision
    from urllib.parse import quote

    upstream = api.call("GET", f"/api/v2/dags/{CT.format(A)}/dagRuns/{quote(run_id, safe='')}/upstreamAssetEvents")
    extra = upstream["asset_events"][0]["extra"]
    assert extra["from_trigger"] is True and json.loads(extra["payload"]["data"])["key"] == key
    stored = live["ctx"][A].store.audit_log(A, ["run"])[-1]["details"]
    assert stored["trigger"] == "event" and stored["action"] in ("promoted", "rejected"), stored
    _assert_consistent(_registry(live, A))
    TIMINGS["(b) Redis message -> event branch"] = time.monotonic() - started


def test_worker_killed_mid_training_is_retried(live):
    started = time.monotonic()
    api, stack = live["api"], live["stack"]
    dag_id = CT.format(B)
    before = _registry(live, B)
    run_id = api.trigger(dag_id, {"force": True, "reason": "e2e: worker killed mid-training"})["dag_run_id"]

    def training_worker():
        if api.run(dag_id, run_id)["state"] in ("success", "failed"):
            raise AssertionError(f"run finished before train_candidate was seen running: "
                                 f"{api.task_states(dag_id, run_id)}")
        ti = next(t for t in api.task_instances(dag_id, run_id) if t["task_id"] == "train_candidate")
        return stack.worker_of(ti["pid"]) if ti["state"] == "running" and ti["pid"] else None

    victim = _wait("train_candidate running on a worker", training_worker, RUN_TIMEOUT, every=0.5)
    stack.kill_worker(victim)
    killed_at = time.monotonic()
    run = api.wait(dag_id, run_id, timeout=RUN_TIMEOUT)
    assert run["state"] == "success", f"{api.task_states(dag_id, run_id)}\n{_tails(stack)}"
    TIMINGS["(d) from the kill to the run's success"] = time.monotonic() - killed_at

    from urllib.parse import quote

    tries = api.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/train_candidate/tries")
    states = {t["try_number"]: t["state"] for t in tries["task_instances"]}
    assert states == {1: "failed", 2: "success"}, states
    timeouts = api.call("GET", f"/api/v2/eventLogs?event={quote('heartbeat timeout')}&dag_id={dag_id}&limit=20")
    assert any(e["run_id"] == run_id and e["task_id"] == "train_candidate" for e in timeouts["event_logs"]), timeouts

    after = _registry(live, B)
    mine = [v for v, by in after["by_run"].items() if by == f"{dag_id}/{run_id}"]
    assert len(mine) == 1, f"the retry registered a second version: {after['by_run']}"
    assert after["champion"] == mine[0] != before["champion"]
    assert after["stages"][before["champion"]] == "Archived"
    _assert_consistent(after)
    TIMINGS["(d) worker killed mid-training, retried"] = time.monotonic() - started
