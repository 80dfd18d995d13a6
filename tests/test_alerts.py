"""Alerts: the one-line message for each event from the results the loop's steps return (their shapes
as ml/loop.py and ml/registry.py build them, the gate's reasons from the real gate), the `alerts:`
config section, delivery to a real webhook on 127.0.0.1 (and that a dead channel raises nothing), and
one real DAG run pair: a promotion's alert and a failed run's alert reach the model's webhook."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from ml import alerts

ROOT = Path(__file__).resolve().parent.parent
MODEL = "credit_default"
MLFLOW = "http://127.0.0.1:5000/#/models/credit_default/versions/{}"


# ---- step results, shaped as ml/loop.py returns them ---------------------------------------------


def _candidate(version: int, trigger: str = "manual") -> dict:
    return {"version": version, "mlflow_run_id": "3f2a9c", "experiment_id": "1", "strategy": "full",
            "window": {"rows": 4000, "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-07T00:00:00+00:00",
                       "content_hash": "ab12cd34"},
            "as_of": "2026-01-09T00:00:00+00:00", "trigger": trigger,
            "reasons": ["retrain requested by alice: new features"], "force": False,
            "links": {"model_version": MLFLOW.format(version)}}


def _evaluation(*, champion_version: int | None, challenger_version: int, gain: float, seed: int = 0) -> dict:
    """The real gate's verdict on a synthetic holdout where the challenger's scores are ``gain`` better
    on the positive rows (so its reasons are worded as the gate words them)."""
    from ml.evaluation import evaluate_candidate

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 800)
    champion = np.clip(0.5 * y + rng.normal(0.25, 0.3, 800), 0, 1)
    challenger = np.clip(champion + gain * y + rng.normal(0, 0.05, 800), 0, 1)
    result = evaluate_candidate(
        metric="roc_auc", y_true=y, challenger_pred=(challenger > 0.5).astype(int), challenger_score=challenger,
        champion_pred=None if champion_version is None else (champion > 0.5).astype(int),
        champion_score=None if champion_version is None else champion,
        challenger_version=challenger_version, champion_version=champion_version,
        min_improvement=0.0, significance=0.05, floor=None, n_resamples=300, seed=0, pos_label=1,
    )
    return {**result.to_dict(), "summary": result.summary(), "notes": [], "links": {}}


def test_promotion_says_version_trigger_gain_and_bound():
    evaluation = _evaluation(champion_version=6, challenger_version=7, gain=0.15)
    assert evaluation["verdict"] == "promote" and evaluation["ci_low"] > 0
    outcome = {"action": "promoted", "champion": 7, "previous_champion": 6, "forced": False,
               "links": {"model_version": MLFLOW.format(7)}}
    alert = alerts.from_outcome(MODEL, outcome, candidate=_candidate(7), evaluation=evaluation,
                                decision={"kind": "manual"}, actor="alice", reason=None)
    assert alert.event == "promoted" and alert.version == 7 and alert.champion == 7
    assert alert.summary == (
        f"credit_default v7 promoted: manual retrain, roc_auc {evaluation['improvement']:+.4f} vs v6 "
        f"(95% lower bound {evaluation['ci_low']:+.4f})"
    )
    assert alert.links == {"model_version": MLFLOW.format(7)}
    assert "\n" not in alert.line() and alert.line().endswith(f"MLflow model version: {MLFLOW.format(7)}")


def test_first_promotion_and_forced_promotion():
    first = alerts.promoted(MODEL, {"action": "promoted", "champion": 1, "previous_champion": None, "forced": False},
                            candidate=_candidate(1), evaluation=_evaluation(champion_version=None,
                                                                            challenger_version=1, gain=0))
    assert first.summary.startswith("credit_default v1 promoted: manual retrain, roc_auc 0.")
    assert first.summary.endswith(", no champion before")
    losing = _evaluation(champion_version=6, challenger_version=8, gain=-0.05)
    assert losing["verdict"] == "reject"
    forced = alerts.promoted(MODEL, {"action": "promoted", "champion": 8, "previous_champion": 6, "forced": True},
                             candidate=_candidate(8), evaluation=losing, actor="alice", reason="needs the new feature")
    assert forced.summary.endswith("; forced past the gate by alice: needs the new feature")
    assert "v8 promoted: manual retrain, roc_auc -0." in forced.summary


def test_rejection_names_the_failed_gates_and_the_champion_that_stays():
    evaluation = _evaluation(champion_version=7, challenger_version=8, gain=-0.05)
    outcome = {"action": "rejected", "champion": 7, "rejected": 8, "links": {"model_version": MLFLOW.format(8)}}
    alert = alerts.from_outcome(MODEL, outcome, candidate=_candidate(8, "time"), evaluation=evaluation)
    assert alert.event == "rejected" and alert.version == 8 and alert.champion == 7
    assert alert.summary.startswith("credit_default v8 rejected: time retrain, roc_auc -0.")
    assert "failed min improvement, significance" in alert.summary
    assert alert.summary.endswith("; champion stays v7")
    assert alert.links["model_version"].endswith("/versions/8")


def test_promotion_superseded_by_a_newer_champion_is_a_rejection():
    # registry.promote's answer when a newer version became champion while this one waited.
    outcome = {"action": "rejected", "champion": 9, "rejected": 8, "previous_champion": 7, "superseded_by": 9,
               "forced": False, "links": {"model_version": MLFLOW.format(9)}}
    alert = alerts.promoted(MODEL, outcome, candidate=_candidate(8),
                            evaluation=_evaluation(champion_version=7, challenger_version=8, gain=0.15))
    assert alert.event == "rejected"
    assert alert.summary == "credit_default v8 rejected: superseded by v9, promoted while v8 waited; champion stays v9"


def test_rollbacks_by_hand_and_by_the_guard_and_a_dry_run():
    outcome = {"action": "rolled_back", "champion": 6, "from_version": 7, "links": {"model_version": MLFLOW.format(6)}}
    by_hand = alerts.from_outcome(MODEL, outcome, actor="alice", reason="complaints from ops", automatic=False)
    assert by_hand.summary == "credit_default v7 rolled back to v6 by alice: complaints from ops"
    assert (by_hand.event, by_hand.version, by_hand.champion) == ("rolled_back", 7, 6)
    guard = "v7 roc_auc 0.712 vs v6 0.781 on 412 rows it served (allowed drop 0.020)"
    automatic = alerts.from_outcome(MODEL, outcome, actor=None, reason=guard, automatic=True)
    assert automatic.summary == f"credit_default v7 rolled back to v6 automatically by the guard: {guard}"
    assert alerts.from_outcome(MODEL, {"action": "dry_run", "champion": 7, "would_restore": 6}, actor="alice",
                               reason="x", automatic=False) is None


def test_failed_run_says_where_and_the_first_error_line():
    error = RuntimeError("credit_default: training window: 12 labelled rows, need 50\nTraceback (most recent ...")
    alert = alerts.failed(f"{MODEL}_continuous_training", "manual__2026-01-09T00:00:00+00:00", "train_candidate",
                          error, model=MODEL)
    assert alert.summary == ("credit_default_continuous_training run manual__2026-01-09T00:00:00+00:00 failed at "
                             "train_candidate: RuntimeError: credit_default: training window: 12 labelled rows, need 50")
    assert alerts.error_line("x" * 1000).endswith("…") and len(alerts.error_line("x" * 1000)) == alerts.MAX_ERROR_CHARS
    assert alerts.error_line(None).startswith("no error message")


def test_airflow_links_and_payload():
    run_url = alerts.airflow_run_url("http://airflow:8080/", f"{MODEL}_rollback", "manual__2026-01-09T00:00:00+00:00")
    assert run_url == "http://airflow:8080/dags/credit_default_rollback/runs/manual__2026-01-09T00%3A00%3A00%2B00%3A00"
    alert = alerts.failed("d", "r", "t", "boom").with_links(airflow_run=run_url, airflow_task=None)
    payload = json.loads(json.dumps(alert.payload()))
    assert payload["event"] == "failed" and payload["links"] == {"airflow_run": run_url}
    assert payload["text"] == f"d run r failed at t: boom\nAirflow run: {run_url}"


# ---- config ----------------------------------------------------------------------------------------


def _parse(alerts_yaml: str):
    from ml.config import parse_config

    data = yaml.safe_load((ROOT / "models" / f"{MODEL}.yaml").read_text())
    data["alerts"] = yaml.safe_load(alerts_yaml)
    return parse_config(data, "credit_default.yaml").alerts


def test_alerts_config_defaults_and_fields():
    from ml.config import load_config

    default = load_config(ROOT / "models" / f"{MODEL}.yaml").alerts
    assert default.on == alerts.EVENTS and default.webhook is None and default.email == ()
    # A bare `on:` is YAML 1.1's boolean true; it still means the events.
    spec = _parse("on: [promoted, rolled_back]\nwebhook: https://hooks.example.com/x\n"
                  "email: ml-team@example.com\nsmtp_conn_id: smtp_alerts\nslack_conn_id: slack_ml")
    assert spec.on == ("promoted", "rolled_back") and spec.webhook == "https://hooks.example.com/x"
    assert spec.email == ("ml-team@example.com",) and spec.slack_conn_id == "slack_ml"
    assert _parse('"on": []').on == ()


def test_readme_alerts_example_parses():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Alerts"):]
    block = section[section.index("```yaml") + len("```yaml"):]
    spec = _parse(yaml.safe_dump(yaml.safe_load(block[:block.index("```")])["alerts"]))
    assert spec.on == ("promoted", "rolled_back", "failed") and spec.webhook and spec.email


@pytest.mark.parametrize(("alerts_yaml", "problem"), [
    ("on: [promoted, promted]", "field 'alerts.on': unknown event 'promted' (did you mean 'promoted'?)"),
    ("on: [deployed]", "unknown event 'deployed'"),
    ("webhook: ftp://files.example.com/x", "field 'alerts.webhook': 'ftp://files.example.com/…' is not an http(s) URL"),
    ("webhook: hooks.example.com/x", "is not an http(s) URL"),
    ("email: [ml-team]", "field 'alerts.email': not e-mail addresses: ['ml-team']"),
    ("slack_conn_id: 'my slack'", "field 'alerts.slack_conn_id': 'my slack' is not an Airflow connection id"),
    ("smtp_conn_id: smtp_alerts", "field 'alerts.smtp_conn_id': set 'email'"),
    ("pager: on", "field 'alerts.pager'"),
])
def test_bad_alerts_config_is_refused_at_parse(alerts_yaml, problem):
    from ml.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        _parse(alerts_yaml)
    assert problem in str(caught.value)
    assert "credit_default.yaml" in str(caught.value)


# ---- delivery --------------------------------------------------------------------------------------


class _Hook:
    """A real HTTP server on 127.0.0.1 that records each POSTed JSON body and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"content_type": self.headers["Content-Type"], "body": json.loads(body)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/driftline-secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    server = _Hook()
    yield server
    server.close()


@pytest.fixture
def alert_log():
    """What the driftline.alerts logger said (Airflow's logging setup routes around pytest's caplog)."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger, handler = logging.getLogger("driftline.alerts"), Keep(level=logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _said(records, level: str = "INFO") -> str:
    return "\n".join(r.getMessage() for r in records if r.levelname == level)


def _alert() -> alerts.Alert:
    outcome = {"action": "rolled_back", "champion": 6, "from_version": 7, "links": {"model_version": MLFLOW.format(6)}}
    return alerts.rolled_back(MODEL, outcome, actor="alice", reason="ops", automatic=False)


def test_webhook_delivery_to_a_local_server(hook, monkeypatch, alert_log):
    from driftline import notify

    monkeypatch.delenv(notify.WEBHOOK_ENV, raising=False)
    spec = _parse(f"webhook: {hook.url}")
    results = notify.deliver(_alert(), spec)
    assert results == {"log": "ok", "webhook": "ok"}
    assert len(hook.received) == 1 and hook.received[0]["content_type"] == "application/json"
    body = hook.received[0]["body"]
    assert body["event"] == "rolled_back" and body["version"] == 7 and body["champion"] == 6
    assert body["summary"] == "credit_default v7 rolled back to v6 by alice: ops"
    assert body["links"]["model_version"] == MLFLOW.format(6) and MLFLOW.format(6) in body["text"]
    assert [r.getMessage() for r in alert_log] == [f"alert: {_alert().line()}"]


def test_default_webhook_from_the_environment(hook, monkeypatch):
    from driftline import notify

    monkeypatch.setenv(notify.WEBHOOK_ENV, hook.url)
    assert notify.deliver(_alert(), _parse("{}"))["webhook"] == "ok" and len(hook.received) == 1
    # A bad value is ignored (logged), not sent anywhere and not raised.
    monkeypatch.setenv(notify.WEBHOOK_ENV, "file:///etc/passwd")
    assert "webhook" not in notify.deliver(_alert(), _parse("{}"))


def test_a_dead_channel_raises_nothing_and_hides_the_token(monkeypatch, alert_log):
    from driftline import notify

    monkeypatch.delenv(notify.WEBHOOK_ENV, raising=False)
    failing = _Hook(status=500)
    try:
        spec = _parse(f"webhook: {failing.url}")
        results = notify.deliver(_alert(), spec)
        assert results["webhook"].startswith("HTTPError: HTTP Error 500")
    finally:
        failing.close()
    # Nothing listens there any more: refused, still no exception.
    assert notify.deliver(_alert(), spec)["webhook"].startswith("URLError")
    warnings = _said(alert_log, "WARNING")
    assert "alert not sent by webhook to http://127.0.0.1/…" in warnings and "secret-token" not in warnings


def test_email_through_the_smtp_provider_to_a_local_server(monkeypatch):
    """apache-airflow-providers-smtp's SmtpNotifier, through an Airflow connection (from the
    environment), to a real SMTP server on 127.0.0.1 (stdlib smtpd, Python 3.11)."""
    import asyncore
    import warnings

    from driftline import notify

    pytest.importorskip("airflow.providers.smtp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        smtpd = pytest.importorskip("smtpd")
    received: list[tuple] = []

    class Server(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            received.append((mailfrom, rcpttos, data))

    server = Server(("127.0.0.1", 0), None, decode_data=True)
    threading.Thread(target=asyncore.loop, kwargs={"timeout": 0.1, "count": 100}, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": server.socket.getsockname()[1],
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "driftline@example.com"}}))
    monkeypatch.delenv(notify.WEBHOOK_ENV, raising=False)
    try:
        # A reason with Jinja braces is sent as written, not rendered.
        alert = alerts.rolled_back(MODEL, {"action": "rolled_back", "champion": 6, "from_version": 7,
                                           "links": {"model_version": MLFLOW.format(6)}},
                                   actor="alice", reason="see {{ ticket }}", automatic=False)
        results = notify.deliver(alert, _parse("email: [ml-oncall@example.com]\nsmtp_conn_id: smtp_alerts"))
    finally:
        server.close()
    assert results == {"log": "ok", "email": "ok"}
    (sender, recipients, data), = received
    assert sender == "driftline@example.com" and recipients == ["ml-oncall@example.com"]
    assert "Subject: [driftline] credit_default v7 rolled back to v6 by alice: see {{ ticket }}" in data


def test_provider_channel_without_its_package_is_logged_not_raised(monkeypatch, alert_log):
    import importlib.util

    from driftline import notify

    monkeypatch.delenv(notify.WEBHOOK_ENV, raising=False)
    spec = _parse("slack_conn_id: slack_ml")
    results = notify.deliver(_alert(), spec)
    if importlib.util.find_spec("airflow.providers.slack") is None:
        assert results["slack"] == ("apache-airflow-providers-slack is not installed "
                                    "(pip install apache-airflow-providers-slack)")
        assert notify.missing_providers(spec) == ["apache-airflow-providers-slack"]
        assert "pip install apache-airflow-providers-slack" in _said(alert_log, "ERROR")
    else:  # installed: no connection slack_ml here, so it fails, and says so
        assert results["slack"] != "ok"


def test_notifier_that_cannot_read_the_run_logs_and_returns(alert_log):
    from driftline import notify
    from ml.config import load_config

    notifier = notify.on_outcome(load_config(ROOT / "models" / f"{MODEL}.yaml"), "promote")
    notifier.notify({})  # no task instance in the context
    assert "credit_default: no alert for promote" in _said(alert_log, "ERROR")


class _TaskInstance:
    """Only what the notifier reads from Airflow's RuntimeTaskInstance: ids and XComs (the real one
    runs in test_dag_runs_deliver_promotion_and_failure_alerts_to_the_webhook)."""

    def __init__(self, dag_id: str, task_id: str, xcoms: dict) -> None:
        self.dag_id, self.task_id, self.run_id, self.xcoms = dag_id, task_id, "manual__2026-01-09T00:00:00+00:00", xcoms

    def xcom_pull(self, task_ids: str, key: str = "return_value"):
        return self.xcoms.get((task_ids, key))


class _DagRun:
    triggering_user_name = "alice"
    run_type = "manual"


def test_notifier_reads_each_steps_result_and_the_reason_from_the_run(monkeypatch):
    """The guard's rollback takes its reason from guard_champion's "guard" XCom; a rollback by hand
    from the run's params and user; a rejection from the candidate and evaluation XComs."""
    from driftline import notify
    from ml.config import load_config

    monkeypatch.setenv(notify.UI_URL_ENV, "http://airflow.example:8080/")
    config = load_config(ROOT / "models" / f"{MODEL}.yaml")
    rolled = {"action": "rolled_back", "champion": 6, "from_version": 7, "links": {"model_version": MLFLOW.format(6)}}
    guard = {"action": "rollback", "champion": 7, "target": 6, "reason": "v7 roc_auc 0.712 vs v6 0.781"}
    ti = _TaskInstance(f"{MODEL}_continuous_training", "rollback_champion",
                       {("rollback_champion", "return_value"): rolled, ("guard_champion", "guard"): guard})
    alert = notify.on_outcome(config, "guard_rollback").build({"ti": ti, "dag_run": _DagRun(), "params": {}})
    assert alert.summary == "credit_default v7 rolled back to v6 automatically by the guard: v7 roc_auc 0.712 vs v6 0.781"
    assert alert.links["airflow_task"] == (f"http://airflow.example:8080/dags/{MODEL}_continuous_training/runs/"
                                           "manual__2026-01-09T00%3A00%3A00%2B00%3A00/tasks/rollback_champion")

    ti = _TaskInstance(f"{MODEL}_rollback", "roll_back", {("roll_back", "return_value"): rolled})
    alert = notify.on_outcome(config, "rollback").build(
        {"ti": ti, "dag_run": _DagRun(), "params": {"target": "previous", "reason": "complaints", "dry_run": False}})
    assert alert.summary == "credit_default v7 rolled back to v6 by alice: complaints"

    evaluation = _evaluation(champion_version=7, challenger_version=8, gain=-0.05)
    ti = _TaskInstance(f"{MODEL}_continuous_training", "reject", {
        ("reject", "return_value"): {"action": "rejected", "champion": 7, "rejected": 8, "links": {}},
        ("train_candidate", "return_value"): _candidate(8, "event"),
        ("evaluate_candidate", "return_value"): evaluation})
    alert = notify.on_outcome(config, "reject").build({"ti": ti, "dag_run": _DagRun(), "params": {}})
    assert alert.summary.startswith("credit_default v8 rejected: event retrain, roc_auc -0.")


# ---- real DAG runs ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_dag_runs_deliver_promotion_and_failure_alerts_to_the_webhook(tmp_path, monkeypatch, hook):
    """A bootstrap retrain promotes v1 through a real dag.test() run: the model's webhook gets one
    `promoted` alert with the version and its links; then a rollback to an unknown version fails the
    rollback DAG's run, and its `failed` alert names the task and the error."""
    from driftline import runner
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings
    from ml.simulator import CreditDefaultSimulator
    from ml.validation import validate_incoming, validate_incoming_labels

    models = tmp_path / "models"
    models.mkdir()
    config = yaml.safe_load((ROOT / "models" / f"{MODEL}.yaml").read_text())
    config["alerts"] = {"on": ["promoted", "rejected", "rolled_back", "failed"], "webhook": hook.url}
    (models / f"{MODEL}.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DRIFTLINE_HOME", str(tmp_path))
    monkeypatch.setenv("DRIFTLINE_MODELS_DIR", str(models))
    monkeypatch.setenv("DRIFTLINE_AIRFLOW_UI_URL", "http://airflow.example:8080")
    for var in ("MLFLOW_TRACKING_URI", "DRIFTLINE_STORE_URL", "DRIFTLINE_ALERT_WEBHOOK"):
        monkeypatch.delenv(var, raising=False)
    runner.reload_dags()
    try:
        runner.prepare()
        settings = get_settings()
        ctx = Context.open(load_config(settings.models_dir / f"{MODEL}.yaml"), settings)
        sim = CreditDefaultSimulator(seed=11)
        for period in range(5):
            batch = sim.batch(period)
            ctx.store.add_observations(MODEL, validate_incoming(batch.features, ctx.config), ctx.config.feature_names)
            labels = batch.labels[batch.labels["labelled_at"] < sim.period_start(5)]
            if len(labels):
                ctx.store.add_labels(MODEL, validate_incoming_labels(labels, ctx.config))

        promoted = runner.run_dag(f"{MODEL}_continuous_training", {"retrain": True, "reason": "bootstrap"})
        assert promoted.ok, promoted.task_states
        assert ctx.registry.champion() == 1
        assert [r["body"]["event"] for r in hook.received] == ["promoted"]
        body = hook.received[0]["body"]
        assert body["version"] == 1 and body["model"] == MODEL
        assert body["summary"].startswith("credit_default v1 promoted: manual retrain, roc_auc ")
        assert body["links"]["model_version"].endswith("/#/models/credit_default/versions/1")
        run_url = alerts.airflow_run_url("http://airflow.example:8080", promoted.dag_id, promoted.run_id)
        assert body["links"]["airflow_run"] == run_url
        assert body["links"]["airflow_task"] == f"{run_url}/tasks/promote"

        failed = runner.run_dag(f"{MODEL}_rollback", {"target": "999", "reason": "typo"})
        assert not failed.ok and failed.task_states["resolve_target"] == "failed"
        assert [r["body"]["event"] for r in hook.received] == ["promoted", "failed"]
        body = hook.received[1]["body"]
        # The error the step raised, not the AirflowFailException the DAG wraps it in.
        assert body["summary"].startswith(f"credit_default_rollback run {failed.run_id} failed at resolve_target: "
                                          "RegistryError: credit_default has no version 999")
        assert body["links"]["airflow_task"].endswith("/tasks/resolve_target")
        assert ctx.registry.champion() == 1
    finally:
        runner.reload_dags()
        shutil.rmtree(tmp_path / "mlartifacts", ignore_errors=True)
