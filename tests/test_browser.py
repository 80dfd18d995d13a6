"""The UIs people live in, driven in a real browser: Debian's Chromium through Playwright, against
Airflow (standalone: api-server, scheduler, dag-processor, triggerer) and the MLflow server started
on loopback exactly as ``make up`` starts them.

A person logs in, opens MLflow from the plugin's navigation entry (by mouse and by keyboard), triggers
continuous training by hand through the form (force, with a reason), sees the run succeed and the
branch taken in the graph, follows the plugin's link to the MLflow version page (champion alias, the
champion-vs-challenger table) and to the drift report, then rolls back through the rollback form and
sees the alias return to the previous version in MLflow.
Screenshots of every step go to ``test-artifacts/browser/``; with DRIFTLINE_UPDATE_SCREENSHOTS=1
they also replace the ones under ``docs/screenshots/`` that the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT, require_service

CHROMIUM = os.environ.get("DRIFTLINE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
DOCS = ROOT / "docs" / "screenshots"
MODEL = "credit_default"
CT, ROLLBACK = f"{MODEL}_continuous_training", f"{MODEL}_rollback"

pytestmark = pytest.mark.browser


def _need_browser() -> None:
    require_service("Chromium", None if Path(CHROMIUM).exists() else f"{CHROMIUM} missing",
                    "Install Debian's package: apt-get install chromium (CI does this in .ci/run).")
    try:
        import playwright  # noqa: F401
    except ImportError:
        require_service("Playwright", "not installed", "pip install playwright (make test installs it)")


class Api:
    """Airflow REST API v2 with a JWT, for waiting on runs (the UI is what the test checks)."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base
        self.token = self.call("POST", "/auth/token", {"username": user, "password": password})["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=20")["dag_runs"]

    def wait_new_run(self, dag_id: str, known: set[str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                runs = self.runs(dag_id)
            except (TimeoutError, urllib.error.URLError):  # a busy api-server: ask again until the deadline
                time.sleep(3)
                continue
            for run in runs:
                if run["dag_run_id"] not in known and run["state"] in ("success", "failed"):
                    return run
            time.sleep(3)
        raise AssertionError(f"no new finished run of {dag_id} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    _need_browser()
    home = tmp_path_factory.mktemp("browser")
    from driftline import runner, stack
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings
    from ml.simulator import CreditDefaultSimulator
    from ml.validation import validate_incoming, validate_incoming_labels

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRIFTLINE_HOME", str(home))
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DRIFTLINE_STORE_URL", "DRIFTLINE_MODELS_DIR"):
            mp.delenv(var, raising=False)
        ports = {name: stack.free_port() for name in ("airflow", "mlflow", "log", "trigger_log")}
        mp.setenv("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(ports["log"]))
        mp.setenv("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(ports["trigger_log"]))
        mp.setenv("DRIFTLINE_MLFLOW_UI_URL", f"http://127.0.0.1:{ports['mlflow']}")
        # Seed five days of data and a first champion (v1) with a real DAG run, before the servers start.
        runner.reload_dags()
        runner.prepare()
        settings = get_settings()
        ctx = Context.open(load_config(settings.models_dir / f"{MODEL}.yaml"), settings)
        sim = CreditDefaultSimulator(seed=11)
        for period in range(5):
            batch = sim.batch(period)
            ctx.store.add_observations(MODEL, validate_incoming(batch.features, ctx.config), ctx.config.feature_names)
            due = batch.labels[batch.labels["labelled_at"] < sim.period_start(5)]
            if len(due):
                ctx.store.add_labels(MODEL, validate_incoming_labels(due, ctx.config))
        assert runner.run_dag(CT, {"retrain": True, "reason": "seed v1"}).ok
        assert ctx.registry.champion() == 1
        live_stack = stack.Stack(ports["airflow"], ports["mlflow"])
        started = time.monotonic()
        live_stack.start()
        try:
            if not live_stack.wait_ready(420):
                logs = "\n".join((live_stack.logs / f).read_text()[-3000:] for f in ("airflow.log", "mlflow.log"))
                pytest.fail(f"stack did not start:\n{logs}")
            login = live_stack.client_env()  # the admin password `make up` generated for this state folder
            yield {"stack": live_stack, "ctx": ctx, "login": login,
                   "api": Api(live_stack.airflow_url, login["DRIFTLINE_AIRFLOW_USER"], login["DRIFTLINE_AIRFLOW_PASSWORD"]),
                   "startup_seconds": time.monotonic() - started}
        finally:
            live_stack.stop()
            runner.reload_dags()


@pytest.fixture(scope="module")
def page(live):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.set_default_timeout(60_000)
        yield tab
        browser.close()


def shot(page, name: str) -> None:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("DRIFTLINE_UPDATE_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / path.name)


def trigger_through_form(page, base: str, dag_id: str, *, toggles: list[str], fields: dict[str, str], name: str):
    page.goto(f"{base}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    for toggle in toggles:
        box = dialog.locator(f"input[name=element_{toggle}]")
        box.locator("xpath=ancestor::label[1]").click()  # the visible switch; the input itself is hidden
        assert box.is_checked(), f"could not switch on {toggle}"
    for field, value in fields.items():
        dialog.locator(f"input[name=element_{field}]").fill(value)
    shot(page, name)
    dialog.get_by_role("button", name="Trigger", exact=True).click()


def extra_link(page, base: str, dag_id: str, run_id: str, task_id: str, name: str) -> str:
    page.goto(f"{base}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/details")
    link = page.get_by_role("link", name=name, exact=True)
    link.wait_for()
    return link.get_attribute("href")


def open_mlflow_from_nav(page, mlflow_url: str, *, keyboard: bool) -> None:
    """Open Browse, choose MLflow models, and check that MLflow's registry page opens (a new tab)."""
    browse = page.get_by_role("button", name="Browse")
    entry = page.get_by_role("menuitem", name="MLflow models")
    if keyboard:
        browse.focus()
        page.keyboard.press("Enter")
        entry.wait_for()
        for _ in range(page.get_by_role("menuitem").count()):  # arrow down to the entry, as a person would
            if entry.get_attribute("data-highlighted") is not None:
                break
            page.keyboard.press("ArrowDown")
        assert entry.get_attribute("data-highlighted") is not None, "keyboard never reached MLflow models"
    else:
        browse.click()
        shot(page, "01b-nav-mlflow-models")
    with page.expect_popup(timeout=15_000) as opened:
        if keyboard:
            page.keyboard.press("Enter")
        else:
            entry.click()
    mlflow = opened.value
    try:
        mlflow.wait_for_url(f"{mlflow_url}/**")
        assert mlflow.url.startswith(f"{mlflow_url}/") and mlflow.url.endswith("#/models"), mlflow.url
        mlflow.get_by_text(MODEL).first.wait_for()  # the registry lists the seeded model
    finally:
        mlflow.close()
    page.keyboard.press("Escape")  # close the menu if it is still open


def test_trigger_form_graph_links_and_rollback_in_the_browser(live, page):
    api, ctx, stack = live["api"], live["ctx"], live["stack"]
    base = stack.airflow_url

    # Log in (SimpleAuthManager, the login `make up` generated for this state folder).
    page.goto(base + "/")
    page.locator("input[name=username]").fill(live["login"]["DRIFTLINE_AIRFLOW_USER"])
    page.locator("input[name=password]").fill(live["login"]["DRIFTLINE_AIRFLOW_PASSWORD"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/", timeout=60_000)
    shot(page, "01-airflow-home")

    # The plugin's navigation entry, Browse > MLflow models, opens the registry: by mouse, then keyboard.
    open_mlflow_from_nav(page, stack.mlflow_url, keyboard=False)
    open_mlflow_from_nav(page, stack.mlflow_url, keyboard=True)

    # Trigger continuous training by hand through the form: force, with a reason.
    known = {run["dag_run_id"] for run in api.runs(CT)}
    reason = "browser test: promote past the gate"
    trigger_through_form(page, base, CT, toggles=["force"], fields={"reason": reason}, name="02-trigger-form")
    run = api.wait_new_run(CT, known, timeout=600)
    assert run["state"] == "success", run
    assert run["conf"]["force"] is True and run["conf"]["reason"] == reason

    # The graph shows the branch taken: the manual branch ran, the others were skipped.
    page.goto(f"{base}/dags/{CT}/runs/{run['dag_run_id']}")
    page.get_by_role("button", name="Show Graph (Press g)").click()
    node = page.locator(".react-flow__node[data-id=retrain_on_demand]")
    node.wait_for()
    page.wait_for_timeout(1500)  # let the layout settle for the screenshot
    shot(page, "03-graph-branch-taken")
    states = {task: page.locator(f".react-flow__node[data-id={task}]").inner_text()
              for task in ("retrain_on_demand", "retrain_on_threshold", "skip_retraining", "promote", "reject")}
    assert states["retrain_on_demand"].strip().endswith("success"), states
    assert states["retrain_on_threshold"].strip().endswith("skipped"), states
    assert states["skip_retraining"].strip().endswith("skipped"), states
    assert states["promote"].strip().endswith("success"), states

    # The plugin's link on the promote task opens the version page in MLflow.
    new_champion = ctx.registry.champion()
    assert new_champion == 2
    href = extra_link(page, base, CT, run["dag_run_id"], "promote", "MLflow model version")
    assert href.endswith(f"/#/models/{MODEL}/versions/{new_champion}")
    shot(page, "04-task-extra-links")
    page.goto(href)
    page.get_by_text("Champion vs challenger").first.wait_for()
    body = page.locator("body").inner_text()
    assert "champion" in body and "Why this version exists" in body and reason in body
    shot(page, "05-mlflow-version-champion")

    # ... and the drift report link on train_candidate opens the HTML artifact of the candidate's run.
    report = extra_link(page, base, CT, run["dag_run_id"], "train_candidate", "Evidently drift report")
    assert report.endswith("/artifactPath/drift/drift.html")
    page.goto(report)
    page.get_by_text("drift.html").first.wait_for()
    shot(page, "06-mlflow-drift-report")

    # Roll back through the rollback form; MLflow shows the alias back on v1.
    known = {r["dag_run_id"] for r in api.runs(ROLLBACK)}
    trigger_through_form(page, base, ROLLBACK, toggles=[], fields={"reason": "browser test: roll back"},
                         name="07-rollback-form")
    rollback = api.wait_new_run(ROLLBACK, known, timeout=300)
    assert rollback["state"] == "success", rollback
    assert ctx.registry.champion() == 1
    page.goto(f"{stack.mlflow_url}/#/models/{MODEL}/versions/1")
    page.get_by_text("champion").first.wait_for()
    shot(page, "08-mlflow-after-rollback")
    page.goto(f"{stack.mlflow_url}/#/models/{MODEL}")
    page.get_by_text("Version 2").first.wait_for()
    page.get_by_text("Version 2").first.scroll_into_view_if_needed()  # the versions table, not the header
    shot(page, "09-mlflow-registry-list")
    assert ctx.registry.info(2).tag("verdict") == "rolled_back"
    # The rolled-back version's page says first who took it back and why; previous-champion names
    # it, so "roll back to previous" would undo the rollback.
    page.goto(f"{stack.mlflow_url}/#/models/{MODEL}/versions/2")
    page.get_by_text("v2 rolled back to v1").first.wait_for()
    body = page.locator("body").inner_text()
    assert "browser test: roll back" in body and "previous-champion" in body, body[:2000]
    shot(page, "10-mlflow-rolled-back-version")
    assert ctx.registry.version_for("previous-champion") == 2
