"""What to tell people when the registry moves or a run fails: one line and its links, built from the
result a step returned (see :mod:`ml.loop`: ``promote``, ``reject``, ``rollback``).

Pure: no Airflow, no network. :mod:`driftline.notify` delivers an :class:`Alert` (task log, webhook,
Slack, e-mail); a model's ``alerts:`` section (:class:`ml.config.AlertsSpec`) says which events and where.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlsplit

# The events a model's `alerts.on` may name.
EVENTS: tuple[str, ...] = ("promoted", "rejected", "rolled_back", "failed")

# Link key -> what a person reads next to it.
LINK_NAMES = {
    "model_version": "MLflow model version",
    "airflow_run": "Airflow run",
    "airflow_task": "Airflow task log",
}

# An error line longer than this is cut: an alert is a pointer to the log, not the log.
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class Alert:
    event: str  # one of EVENTS
    model: str | None
    summary: str  # one line, says what happened and why
    version: int | None = None  # the version the event is about (promoted, rejected, demoted)
    champion: int | None = None  # the champion after the event
    links: dict[str, str] = field(default_factory=dict)

    def with_links(self, **links: str | None) -> Alert:
        return replace(self, links={**self.links, **{k: v for k, v in links.items() if v}})

    def line(self) -> str:
        """The summary and its links on one line (the task log, Python logging)."""
        return " | ".join([self.summary, *(f"{LINK_NAMES.get(k, k)}: {url}" for k, url in self.links.items())])

    def text(self) -> str:
        """The summary, then one link per line (chat, e-mail)."""
        return "\n".join([self.summary, *(f"{LINK_NAMES.get(k, k)}: {url}" for k, url in self.links.items())])

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body. ``text`` makes it readable as-is by Slack- or Mattermost-style
        incoming webhooks; the other fields are for a program."""
        return {"text": self.text(), "event": self.event, "model": self.model, "summary": self.summary,
                "version": self.version, "champion": self.champion, "links": dict(self.links)}


def check_webhook_url(url: str) -> str:
    """An http(s) URL with a host; anything else (a typo, ``file:``, a bare host) is refused."""
    parts = urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact(url)!r} is not an http(s) URL (e.g. https://hooks.example.com/driftline)")
    return str(url).strip()


def redact(url: str) -> str:
    """Scheme and host only: a webhook's path and query often hold its secret token."""
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.hostname}/…" if parts.hostname else "<not a URL>"


def airflow_run_url(base: str, dag_id: str, run_id: str) -> str:
    # The Airflow 3 UI's routes (as RuntimeTaskInstance.log_url builds them).
    return f"{base.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id)}"


def airflow_task_url(base: str, dag_id: str, run_id: str, task_id: str) -> str:
    return f"{airflow_run_url(base, dag_id, run_id)}/tasks/{quote(task_id)}"


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def _gain(evaluation: dict[str, Any] | None) -> str | None:
    """e.g. "roc_auc +0.0120 vs v6 (95% lower bound +0.0040)"; "> 0" always means the challenger is better."""
    if not evaluation:
        return None
    metric = evaluation.get("metric", "metric")
    if evaluation.get("champion") is None or evaluation.get("improvement") is None:
        return f"{metric} {evaluation['challenger']:.4f}, no champion before"
    text = f"{metric} {_signed(evaluation['improvement'])} vs v{evaluation.get('champion_version')}"
    if evaluation.get("ci_low") is None:
        return f"{text} (no bootstrap interval)"
    level = 100 * (1 - float(evaluation.get("significance", 0.05)))
    return f"{text} ({level:g}% lower bound {_signed(evaluation['ci_low'])})"


def _failed_gates(evaluation: dict[str, Any] | None) -> list[str]:
    """The gate names from the reasons the gate gave, e.g. "min improvement failed: …"."""
    return [r.split(" failed", 1)[0] for r in (evaluation or {}).get("reasons", []) if " failed" in r.split(":")[0]]


def _why(candidate: dict[str, Any] | None, decision: dict[str, Any] | None) -> str | None:
    kind = (candidate or {}).get("trigger") or (decision or {}).get("kind")
    return f"{kind} retrain" if kind else None


def promoted(model: str, outcome: dict[str, Any], *, candidate: dict[str, Any] | None = None,
             evaluation: dict[str, Any] | None = None, decision: dict[str, Any] | None = None,
             actor: str | None = None, reason: str | None = None) -> Alert:
    """From :func:`ml.loop.promote`'s result (``action`` "promoted"), the candidate it promoted and the
    gate's evaluation. A promotion that found a newer champion (``action`` "rejected") is a rejection."""
    if outcome.get("action") == "rejected":
        return rejected(model, outcome, candidate=candidate, evaluation=evaluation, decision=decision)
    version = outcome["champion"]
    parts = [p for p in (_why(candidate, decision), _gain(evaluation)) if p]
    summary = f"{model} v{version} promoted" + (f": {', '.join(parts)}" if parts else "")
    if outcome.get("refit_of") is not None:
        summary += (f"; a refit of v{outcome['refit_of']} (which the gate judged) on its training rows plus the "
                    "holdout")
    if outcome.get("forced"):
        summary += f"; forced past the gate by {actor or 'a person'}" + (f": {reason}" if reason else "")
    if (outcome.get("approval") or {}).get("line"):  # a person approved it (promotion.approval: required)
        summary += f"; {outcome['approval']['line']}"
    return Alert("promoted", model, summary, version=version, champion=version, links=_mlflow(outcome))


def rejected(model: str, outcome: dict[str, Any], *, candidate: dict[str, Any] | None = None,
             evaluation: dict[str, Any] | None = None, decision: dict[str, Any] | None = None) -> Alert:
    """From :func:`ml.loop.reject`'s result (or a promotion superseded by a newer champion)."""
    version = outcome.get("rejected", (candidate or {}).get("version"))
    champion = outcome.get("champion")
    if outcome.get("superseded_by") is not None:
        parts = [f"superseded by v{outcome['superseded_by']}, promoted while v{version} waited"]
    elif (outcome.get("approval") or {}).get("line"):  # passed the gate, not approved by a person
        parts = [outcome["approval"]["line"], ", ".join(p for p in (_why(candidate, decision), _gain(evaluation)) if p)]
    else:
        parts = [", ".join(p for p in (_why(candidate, decision), _gain(evaluation)) if p)]
        gates = _failed_gates(evaluation)
        if gates:
            parts.append(f"failed {', '.join(gates)}")
    stays = f"champion stays v{champion}" if champion is not None else "no champion"
    what = "rejected"
    if outcome.get("canary"):  # it had been answering a share of live requests (serving.canary_fraction)
        canary = outcome["canary"]
        parts.insert(0, f"it answered {canary['rows']} of the {canary['paired_rows']} labelled rows judged")
        stays = f"champion v{champion} answers every request again" if champion is not None else stays
        what = "canary aborted"
    summary = f"{model} v{version} {what}: {'; '.join([p for p in parts if p] + [stays])}"
    return Alert("rejected", model, summary, version=version, champion=champion, links=_mlflow(outcome))


def rolled_back(model: str, outcome: dict[str, Any], *, actor: str | None, reason: str | None,
                automatic: bool) -> Alert | None:
    """From :func:`ml.loop.rollback`'s result; None for a dry run (nothing moved)."""
    if outcome.get("action") != "rolled_back":
        return None
    to, demoted = outcome["champion"], outcome.get("from_version")
    who = "automatically by the guard" if automatic else f"by {actor or 'a person'}"
    head = f"{model} v{demoted} rolled back to v{to}" if demoted is not None else f"{model} rolled back to v{to}"
    summary = f"{head} {who}" + (f": {reason}" if reason else "")
    return Alert("rolled_back", model, summary, version=demoted, champion=to, links=_mlflow(outcome))


def failed(dag_id: str, run_id: str, task_id: str, error: BaseException | str | None,
           model: str | None = None) -> Alert:
    """A run that failed: where, and the first line of the error (the task log has the rest)."""
    summary = f"{dag_id} run {run_id} failed at {task_id}: {error_line(error)}"
    return Alert("failed", model, summary)


def error_line(error: BaseException | str | None) -> str:
    if error is None:
        return "no error message (see the task log)"
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else ""
    if isinstance(error, BaseException):
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


def from_outcome(model: str, outcome: dict[str, Any] | None, **facts: Any) -> Alert | None:
    """The alert for whatever a promote, reject or rollback step did (None: nothing moved)."""
    action = (outcome or {}).get("action")
    if action == "promoted":
        return promoted(model, outcome, **_only(facts, "candidate", "evaluation", "decision", "actor", "reason"))
    if action == "rejected":
        return rejected(model, outcome, **_only(facts, "candidate", "evaluation", "decision"))
    if action == "rolled_back":
        return rolled_back(model, outcome, actor=facts.get("actor"), reason=facts.get("reason"),
                           automatic=bool(facts.get("automatic")))
    return None


def _only(facts: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: facts[name] for name in names if name in facts}


def _mlflow(outcome: dict[str, Any]) -> dict[str, str]:
    url = (outcome.get("links") or {}).get("model_version")
    return {"model_version": url} if url else {}
