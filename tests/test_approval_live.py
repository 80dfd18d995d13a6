"""Human approval on a live stack: Airflow (standalone: scheduler, api-server, dag-processor,
triggerer) and the MLflow server, started as ``make up`` starts them. HITL tasks never finish
under ``dag.test()``, so this needs the real scheduler.

Four models with ``promotion.approval: required``, each a copy of ``credit_default`` with five
days of data and no champion yet (so each first candidate passes the gate and waits):

- approved, rejected (with a reason) and ignored (``approval_timeout: 20s``) answered through
  Airflow's REST API (``PATCH .../taskInstances/await_approval/-1/hitlDetails``);
- approved by a person in the browser, in Browse -> Required Actions, then the ``champion`` alias
  seen in the MLflow UI (marker ``browser``; Debian's Chromium through Playwright).
"""

from __future__ import annotations

import inspect
import json
import time

import pytest
import yaml
from helpers import ROOT
from test_browser import CHROMIUM, CHROMIUM_ARGS, _need_browser, shot

MODELS = {"approve_me": "1d", "reject_me": "1d", "ignore_me": "20s", "click_me": "1d"}
RUNNING = ("queued", "running", "scheduled", "up_for_retry", "restarting")


def _yaml(name: str, timeout: str) -> str:
    data = yaml.safe_load((ROOT / "models" / "credit_default.yaml").read_text())
    data["name"] = name
    data["promotion"] = {**data.get("promotion", {}), "approval": "required", "approval_timeout": timeout}
    data.get("triggers", {})["schedule"] = None  # only the test starts runs
    return yaml.safe_dump(data)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("approval")
    models = home / "models"
    models.mkdir()
    for name, timeout in MODELS.items():
        (models / f"{name}.yaml").write_text(_yaml(name, timeout))
    from driftline import api, runner, stack
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings
    from ml.simulator import CreditDefaultSimulator
    from ml.validation import validate_incoming, validate_incoming_labels

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRIFTLINE_HOME", str(home))
        mp.setenv("DRIFTLINE_MODELS_DIR", str(models))
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DRIFTLINE_STORE_URL"):
            mp.delenv(var, raising=False)
        ports = {name: stack.free_port() for name in ("airflow", "mlflow", "log", "trigger_log")}
        mp.setenv("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(ports["log"]))
        mp.setenv("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(ports["trigger_log"]))
        mp.setenv("DRIFTLINE_MLFLOW_UI_URL", f"http://127.0.0.1:{ports['mlflow']}")
        # On a 2-core machine shared with other work a parse of the DAG file has taken over 120 s:
        # give it room, or the DAGs are deactivated as stale mid-test.
        mp.setenv("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "900")
        mp.setenv("AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT", "1200")
        mp.setenv("AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD", "1200")
        mp.setenv("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "1200")  # a starved task is slow, not lost
        runner.reload_dags()
        settings = get_settings()
        contexts = {}
        for name in MODELS:  # five days of rows and their labels; no champion yet
            ctx = contexts[name] = Context.open(load_config(models / f"{name}.yaml"), settings)
            sim = CreditDefaultSimulator(seed=11)
            for period in range(5):
                batch = sim.batch(period)
                ctx.store.add_observations(name, validate_incoming(batch.features, ctx.config), ctx.config.feature_names)
                due = batch.labels[batch.labels["labelled_at"] < sim.period_start(5)]
                if len(due):
                    ctx.store.add_labels(name, validate_incoming_labels(due, ctx.config))
        # No scoring services here (where the stack starts them): this test is about the loop.
        extra = {"serve_port": None} if "serve_port" in inspect.signature(stack.Stack).parameters else {}
        live_stack = stack.Stack(ports["airflow"], ports["mlflow"], **extra)
        started = time.monotonic()
        live_stack.start()
        try:
            if not live_stack.wait_ready(900):  # a busy 2-core machine has taken 450 s
                logs = "\n".join((live_stack.logs / f).read_text()[-3000:] for f in ("airflow.log", "mlflow.log"))
                pytest.fail(f"stack did not start:\n{logs}")
            login = live_stack.client_env()
            client = api.AirflowApi(live_stack.airflow_url, login["DRIFTLINE_AIRFLOW_USER"],
                                    login["DRIFTLINE_AIRFLOW_PASSWORD"])
            yield {"stack": live_stack, "api": client, "contexts": contexts, "login": login,
                   "startup_seconds": time.monotonic() - started}
        finally:
            live_stack.stop()
            runner.reload_dags()


def _retry(what, timeout: float, every: float = 3):
    """``what()`` until it returns something truthy (a busy api-server may time out a call)."""
    from driftline.api import ApiError

    deadline = time.monotonic() + timeout
    while True:
        try:
            found = what()
        except (ApiError, TimeoutError, OSError):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s")
        time.sleep(every)


def trigger(client, model: str) -> dict:
    """Unpause the model's continuous training (once parsed) and trigger it: ``{"dag_id", "run_id"}``."""
    dag_id = f"{model}_continuous_training"
    _retry(lambda: client.call("GET", f"/api/v2/dags/{dag_id}"), 600)
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, {"retrain": True, "reason": f"approval test: {model}"})["dag_run_id"]
    return {"dag_id": dag_id, "run_id": run_id}


# An answer within about a second of the request races Airflow 3.3's scheduler: the task process
# that parked in awaiting_input exits "success", the answer re-queues the task, and when the scheduler
# reads that exit only afterwards it sees a queued task reported finished and fails it ("Task killed!",
# "task-state-changed-externally" in the scheduler log; seen twice in fresh-clone CI). A person never
# answers that fast: the tests answer once the request has waited this long.
SETTLE_SECONDS = 5.0


def wait_for_request(client, run: dict, timeout: float = 900) -> dict:
    """The run's task states once its approval request has waited ``SETTLE_SECONDS`` (``await_approval``
    awaiting input)."""
    since: list[float] = []

    def waiting():
        states = client.task_states(run["dag_id"], run["run_id"])
        assert client.run(run["dag_id"], run["run_id"])["state"] != "failed", (
            states, client.failures(run["dag_id"], run["run_id"]))
        if states.get("await_approval") != "awaiting_input":
            return None
        since[:] = since or [time.monotonic()]
        return states if time.monotonic() - since[0] >= SETTLE_SECONDS else None

    return _retry(waiting, timeout, every=1)


def _details(text: dict) -> dict:
    details = text.get("details")
    return json.loads(details) if isinstance(details, str) else (details or {})


@pytest.mark.integration
def test_approve_reject_and_time_out_through_the_rest_api(live):
    client, contexts = live["api"], live["contexts"]
    began = time.monotonic()
    runs = {model: trigger(client, model) for model in ("approve_me", "reject_me")}
    for model, run in runs.items():
        run["states"] = wait_for_request(client, run)
    waited = time.monotonic() - began
    # The one no one answers (timeout 20 s) starts once the others wait, so it cannot time out first.
    runs["ignore_me"] = trigger(client, "ignore_me")

    for model, run in runs.items():
        if model == "ignore_me":
            continue
        # Waiting holds no worker: the approval task is parked in awaiting_input, nothing of the run runs.
        assert not [t for t, s in run["states"].items() if s in RUNNING], run["states"]
        assert run["states"]["promote"] is None and run["states"]["not_approved"] is None
        # The request a person sees: the table, the gate's reasons and links to the version in MLflow.
        (request,) = client.approvals(run["dag_id"], run["run_id"])
        assert request["subject"].startswith(f"Promote {model} v1?")
        assert request["options"] == ["Approve", "Reject"] and request["defaults"] == ["Reject"]
        assert "### Champion vs challenger" in request["body"] and "| challenger | v1 |" in request["body"]
        assert f"{live['stack'].mlflow_url}/#/models/{model}/versions/1" in request["body"]
        assert "reason" in request["params"]
        assert contexts[model].registry.champion() is None  # nothing moved while it waits

    client.respond(runs["approve_me"]["dag_id"], runs["approve_me"]["run_id"], "await_approval", "Approve",
                   {"reason": "table checked"})
    client.respond(runs["reject_me"]["dag_id"], runs["reject_me"]["run_id"], "await_approval", "Reject",
                   {"reason": "trained on the holiday weeks"})
    # A second answer is refused: the first one stands.
    from driftline.api import ApiError

    with pytest.raises(ApiError) as twice:
        client.respond(runs["reject_me"]["dag_id"], runs["reject_me"]["run_id"], "await_approval", "Approve",
                       {"reason": "changed my mind"})
    assert twice.value.status == 409

    finished = {model: client.wait(run["dag_id"], run["run_id"], timeout=900) for model, run in runs.items()}
    assert {model: run["state"] for model, run in finished.items()} == dict.fromkeys(runs, "success"), {
        model: (client.task_states(run["dag_id"], run["run_id"]), client.failures(run["dag_id"], run["run_id"]))
        for model, run in runs.items() if finished[model]["state"] != "success"}
    states = {model: client.task_states(run["dag_id"], run["run_id"]) for model, run in runs.items()}
    user = live["login"]["DRIFTLINE_AIRFLOW_USER"]

    # Approved: promoted, recorded as the approver's move.
    assert states["approve_me"]["promote"] == "success" and states["approve_me"]["not_approved"] == "skipped"
    ctx = contexts["approve_me"]
    assert ctx.registry.champion() == 1
    info = ctx.registry.info(1)
    assert (info.tag("verdict"), info.tag("approval"), info.tag("approval_by")) == ("promoted", "approved", user)
    promoted = ctx.store.audit_log("approve_me", ["promoted"])[-1]
    assert promoted["actor"] == user and promoted["details"]["reasons"][0] == f"approved by {user}: table checked"

    # Rejected: the person's reason on the version and in the audit log, actor = that person.
    assert states["reject_me"]["not_approved"] == "success" and states["reject_me"]["promote"] == "skipped"
    ctx = contexts["reject_me"]
    assert ctx.registry.champion() is None
    info = ctx.registry.info(1)
    assert (info.tag("verdict"), info.tag("approval"), info.tag("approval_reason")) == (
        "rejected", "rejected", "trained on the holiday weeks")
    assert "trained on the holiday weeks" in ctx.registry.description(1).split("\n")[0]
    entry = ctx.store.audit_log("reject_me", ["rejected"])[-1]
    assert entry["actor"] == user
    assert entry["details"]["reasons"][0] == f"rejected by {user} at approval: trained on the holiday weeks"
    run_entry = ctx.store.audit_log("reject_me", ["run"])[-1]
    assert run_entry["details"]["action"] == "rejected" and "holiday weeks" in run_entry["details"]["approval"]

    # No answer within 20 s: rejected, recorded as timed out, by no person.
    assert states["ignore_me"]["not_approved"] == "success" and states["ignore_me"]["promote"] == "skipped"
    ctx = contexts["ignore_me"]
    assert ctx.registry.champion() is None
    assert ctx.registry.info(1).tag("approval") == "timed_out"
    entry = ctx.store.audit_log("ignore_me", ["rejected"])[-1]
    assert entry["actor"] == "driftline-approval-timeout"
    assert entry["details"]["reasons"][0] == "no approval within 20s: rejected (approval timed out)"
    print(f"\nstack start {live['startup_seconds']:.0f} s; two runs to awaiting_input {waited:.0f} s; "
          f"whole test {time.monotonic() - began:.0f} s")


@pytest.mark.browser
def test_a_person_approves_in_required_actions_and_mlflow_shows_the_new_champion(live):
    _need_browser()
    from playwright.sync_api import sync_playwright

    client, stack, ctx = live["api"], live["stack"], live["contexts"]["click_me"]
    run = trigger(client, "click_me")
    wait_for_request(client, run)
    base = stack.airflow_url
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        try:
            page.goto(base + "/")
            page.locator("input[name=username]").fill(live["login"]["DRIFTLINE_AIRFLOW_USER"])
            page.locator("input[name=password]").fill(live["login"]["DRIFTLINE_AIRFLOW_PASSWORD"])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{base}/", timeout=60_000)
            # Browse -> Required Actions lists the waiting request; its subject opens it.
            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="Required Actions").click()
            page.wait_for_url(f"{base}/required_actions**")
            subject = page.get_by_text("Promote click_me v1?").first
            subject.wait_for()
            shot(page, "11-required-actions")
            subject.click()
            page.get_by_text("Champion vs challenger").first.wait_for()
            page.locator("textarea, input[name=element_reason], [name=reason]").first.fill("looks right to me")
            shot(page, "12-approval-form")
            page.get_by_role("button", name="Approve").click()
            finished = client.wait(run["dag_id"], run["run_id"], timeout=600)
            assert finished["state"] == "success", client.task_states(run["dag_id"], run["run_id"])
            assert ctx.registry.champion() == 1
            # MLflow's UI shows the alias on the approved version.
            page.goto(f"{stack.mlflow_url}/#/models/click_me/versions/1")
            page.get_by_text("champion").first.wait_for()
            assert "approved by" in page.locator("body").inner_text()
            shot(page, "13-mlflow-approved-champion")
        finally:
            browser.close()
    entry = ctx.store.audit_log("click_me", ["promoted"])[-1]
    assert entry["actor"] == live["login"]["DRIFTLINE_AIRFLOW_USER"]
    assert entry["details"]["reasons"][0].endswith("looks right to me")
