"""Alerts through Airflow's notifiers: the Airflow side of :mod:`ml.alerts`.

:func:`on_outcome` is the ``on_success_callback`` of the tasks that move the registry (promote,
reject, the guard's and the hand-made rollback); :func:`on_failure` is every Driftline task's
``on_failure_callback``. Both run in the task's own process after its state is settled (Airflow runs
callbacks after the task finished and logs, never raises, a callback's error), so an alert can
neither fail nor retry a step; :class:`AlertNotifier` also catches its own errors per channel, so one
dead channel does not silence the others.

Channels: the task log and the ``driftline.alerts`` logger (always); a JSON webhook (``alerts.webhook``
or ``DRIFTLINE_ALERT_WEBHOOK``, stdlib only); Slack (``alerts.slack_conn_id``, needs
apache-airflow-providers-slack) and e-mail (``alerts.email``, needs apache-airflow-providers-smtp),
each imported only when configured.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import urllib.request
from html import escape
from typing import Any

from airflow.sdk import BaseNotifier

from ml import alerts
from ml.config import AlertsSpec, ModelConfig

log = logging.getLogger("driftline.alerts")

WEBHOOK_ENV = "DRIFTLINE_ALERT_WEBHOOK"
UI_URL_ENV = "DRIFTLINE_AIRFLOW_UI_URL"
DEFAULT_UI_URL = "http://127.0.0.1:8080"
# A webhook that does not answer within this holds the worker no longer (the task is already done).
WEBHOOK_TIMEOUT_SECONDS = 10

PROVIDERS = {"slack": "apache-airflow-providers-slack", "smtp": "apache-airflow-providers-smtp"}

# The step each notifier reports on, and how it reads what happened.
STEPS = ("promote", "reject", "guard_rollback", "rollback")


def airflow_ui_url() -> str:
    """Where people open the Airflow UI: DRIFTLINE_AIRFLOW_UI_URL, else the api-server's base URL
    (``driftline up`` sets AIRFLOW__API__BASE_URL), else the local default."""
    return (os.environ.get(UI_URL_ENV) or os.environ.get("AIRFLOW__API__BASE_URL") or DEFAULT_UI_URL).rstrip("/")


def default_webhook() -> str | None:
    """DRIFTLINE_ALERT_WEBHOOK, for every model whose YAML names no webhook; a bad value is logged
    and ignored (an alert setting must not take the DAGs down)."""
    raw = os.environ.get(WEBHOOK_ENV, "").strip()
    if not raw:
        return None
    try:
        return alerts.check_webhook_url(raw)
    except ValueError as exc:
        log.error("%s ignored: %s", WEBHOOK_ENV, exc)
        return None


def missing_providers(spec: AlertsSpec) -> list[str]:
    """The provider packages the configured channels need and this environment lacks."""
    wanted = {"slack": bool(spec.slack_conn_id), "smtp": bool(spec.email)}
    return [PROVIDERS[name] for name, on in wanted.items()
            if on and importlib.util.find_spec(f"airflow.providers.{name}") is None]


def post_json(url: str, payload: dict[str, Any], timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> int:
    """POST ``payload`` as JSON; the HTTP status, or an error (urllib raises for >= 400)."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "driftline-alerts"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # the scheme is checked at parse: http(s) only
        return response.status


class AlertNotifier(BaseNotifier):
    """One model's alerts for one step (``promote``, ``reject``, ``guard_rollback``, ``rollback``)
    or for failures (``failed``)."""

    def __init__(self, config: ModelConfig, step: str) -> None:
        super().__init__()
        if step not in (*STEPS, "failed"):
            raise ValueError(f"unknown alert step {step!r}")
        self.model = config.name
        self.spec = config.alerts
        self.step = step

    def notify(self, context: Any) -> None:
        try:
            alert = self.build(context)
        except Exception:  # an alert must never fail the step
            log.exception("%s: no alert for %s (could not read what happened)", self.model, self.step)
            return
        if alert is not None and alert.event in self.spec.on:
            deliver(alert, self.spec, context)

    def build(self, context: Any) -> alerts.Alert | None:
        ti = context["ti"]
        dag_run = context.get("dag_run")
        base = airflow_ui_url()
        links = {"airflow_run": alerts.airflow_run_url(base, ti.dag_id, ti.run_id),
                 "airflow_task": alerts.airflow_task_url(base, ti.dag_id, ti.run_id, ti.task_id)}
        if self.step == "failed":
            error = context.get("exception")
            if type(error).__name__ == "AirflowFailException" and error.__cause__ is not None:
                error = error.__cause__  # the DAG wraps errors that would fail again; name the real one
            alert = alerts.failed(ti.dag_id, ti.run_id, ti.task_id, error, model=self.model)
            return alert.with_links(**links)
        outcome = ti.xcom_pull(task_ids=ti.task_id)
        params = context.get("params") or {}
        actor = (getattr(dag_run, "triggering_user_name", None) or str(getattr(dag_run, "run_type", ""))) or None
        facts: dict[str, Any] = {"actor": actor, "reason": params.get("reason") or None}
        if self.step in ("promote", "reject") and ti.task_id.endswith("_challenger"):
            judged = ti.xcom_pull(task_ids="shadow_gate", key="shadow") or {}  # the shadow gate's verdict
            facts |= {"candidate": judged.get("candidate"), "evaluation": judged.get("evaluation"), "decision": None}
        elif self.step in ("promote", "reject"):
            facts |= {"candidate": ti.xcom_pull(task_ids="train_candidate"),
                      "evaluation": ti.xcom_pull(task_ids="evaluate_candidate"),
                      "decision": ti.xcom_pull(task_ids="decide", key="decision")}
        elif self.step == "guard_rollback":
            guard = ti.xcom_pull(task_ids="guard_champion", key="guard") or {}
            facts |= {"automatic": True, "reason": guard.get("reason"), "actor": None}
        alert = alerts.from_outcome(self.model, outcome, **facts)
        return None if alert is None else alert.with_links(**links)


def deliver(alert: alerts.Alert, spec: AlertsSpec, context: Any | None = None) -> dict[str, str]:
    """Send ``alert`` on every configured channel; returns each channel's result ("ok" or the
    error), each failure logged and none raised."""
    results = {"log": "ok"}
    # Python logging from the task's process goes to the task log too.
    log.info("alert: %s", alert.line())
    webhook = spec.webhook or default_webhook()
    if webhook:
        results["webhook"] = _attempt("webhook", alert, lambda: post_json(webhook, alert.payload()),
                                      where=alerts.redact(webhook))
    missing = missing_providers(spec)
    if spec.slack_conn_id:
        if PROVIDERS["slack"] in missing:
            results["slack"] = _absent("slack", alert)
        else:
            results["slack"] = _attempt("slack", alert, lambda: _slack(spec, alert, context),
                                        where=f"connection {spec.slack_conn_id}")
    if spec.email:
        if PROVIDERS["smtp"] in missing:
            results["email"] = _absent("smtp", alert)
        else:
            results["email"] = _attempt("email", alert, lambda: _email(spec, alert, context),
                                        where=", ".join(spec.email))
    return results


def _attempt(channel: str, alert: alerts.Alert, send: Any, where: str) -> str:
    try:
        send()
    except Exception as exc:  # noqa: BLE001 (a dead channel must not fail the step or the others)
        log.warning("alert not sent by %s to %s: %s: %s (%s)", channel, where, type(exc).__name__, exc, alert.summary)
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def _absent(provider: str, alert: alerts.Alert) -> str:
    message = f"{PROVIDERS[provider]} is not installed (pip install {PROVIDERS[provider]})"
    log.error("alert not sent by %s: %s (%s)", provider, message, alert.summary)
    return message


def _slack(spec: AlertsSpec, alert: alerts.Alert, context: Any) -> None:
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    # notify(), not __call__: our text is not a Jinja template (a reason may contain "{{").
    SlackWebhookNotifier(slack_webhook_conn_id=spec.slack_conn_id, text=alert.text(),
                         timeout=WEBHOOK_TIMEOUT_SECONDS).notify(context or {})


def _email(spec: AlertsSpec, alert: alerts.Alert, context: Any) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    lines = [f"<p>{escape(alert.summary)}</p>", "<ul>"]
    lines += [f'<li><a href="{escape(url)}">{escape(alerts.LINK_NAMES.get(key, key))}</a></li>'
              for key, url in alert.links.items()]
    kwargs = {"smtp_conn_id": spec.smtp_conn_id} if spec.smtp_conn_id else {}
    SmtpNotifier(to=list(spec.email), subject=f"[driftline] {alert.summary}"[:200],
                 html_content="\n".join([*lines, "</ul>"]), **kwargs).notify(context or {})


def on_outcome(config: ModelConfig, step: str) -> AlertNotifier:
    """The ``on_success_callback`` of a task that moves the registry."""
    if step not in STEPS:
        raise ValueError(f"unknown alert step {step!r}; one of {STEPS}")
    return AlertNotifier(config, step)


def on_failure(config: ModelConfig) -> AlertNotifier:
    """Every task's ``on_failure_callback``: runs once the task failed for good (not on a retry)."""
    for package in missing_providers(config.alerts):
        # Said at parse too (the DAG processor's log), not only when the first alert is lost.
        log.error("%s: alerts configured for a channel whose package is missing: pip install %s", config.name, package)
    return AlertNotifier(config, "failed")
