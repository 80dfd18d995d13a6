"""``driftline demo``: the whole loop, through real DAG runs, on the embedded default.

One simulated day per period for the ``credit_default`` model. Each period: the day's applications
are stored and batch-scored by the champion (``credit_default_score``), the labels that came due
arrive, and ``credit_default_continuous_training`` runs. The script expects, in order:

bootstrap v1 (by hand) -> quiet days, no retrain -> a downturn (covariate + concept drift) that is
detected at once but held until labelled rows from after it exist -> a threshold retrain, trained
on data since the drift, promoted -> a scheduled retrain that does not beat the champion, rejected
-> a new-labels event retrain -> a forced promotion of a model trained on stale data -> the guard
rolls it back automatically.

Online scoring follows the registry: a ``driftline serve`` process runs beside the days on the same
state. Around the two runs that move the champion (day 13's forced promotion, day 15's rollback)
requests are sent before and after the run; the answers name the version that made them, and the
service's own load time of the new version says how long after the move it answered.

It prints a timeline, writes ``$DRIFTLINE_HOME/demo-summary.json``, checks that the MLflow registry
agrees with the timeline, and exits non-zero if any expected step did not happen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODEL = "credit_default"
SEED = 7
DRIFT_START = 6  # the downturn begins on this simulated day
HISTORY = 4  # days 0..3 exist before the first champion


@dataclass
class Step:
    period: int
    label: str
    expect: str
    conf: dict[str, Any] = field(default_factory=dict)
    announce_labels: bool = False
    online: bool = False  # requests to the live scoring service before and after this run


# What must happen, in order (period = simulated day; the run happens at the end of that day).
SCENARIO = [
    Step(3, "bootstrap", "manual/promoted", {"retrain": True, "reason": "bootstrap the first champion"}),
    Step(4, "quiet", "none/skipped"),
    Step(5, "quiet", "none/skipped"),
    Step(6, "drift begins", "none/skipped:drift"),
    Step(7, "drift, labels pending", "none/skipped:drift"),
    Step(8, "drift, labels in", "threshold/promoted"),
    Step(9, "quiet after retrain", "none/skipped"),
    Step(10, "quiet", "none/skipped"),
    Step(11, "model age", "time/rejected"),
    Step(12, "new labels announced", "event/*", announce_labels=True),
    Step(13, "forced stale model", "manual/promoted:forced",
         {"force": True, "reason": "demo: force a model trained on pre-downturn data",
          "train_until": "DRIFT_START"}, online=True),
    Step(14, "guard waits for labels", "*/*"),
    Step(15, "guard", "*/*:rolled_back", online=True),
]
ONLINE_REQUESTS = 8  # one row each, before and after each online step's run
# How long the service may take to answer with the new champion after its run ends. The promise is a
# poll (2 s) plus a load; the machine this runs on may be busy.
SWAP_TIMEOUT = 60.0


def _reset(home) -> None:
    # serving/: a spool left by an earlier demo's service must not be written into the new store.
    for name in ("store.db", "mlflow.db", "mlartifacts", "reports", "serving", "demo-summary.json"):
        path = home / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _matches(expect: str, row: dict[str, Any]) -> bool:
    main, _, extra = expect.partition(":")
    trigger, action = main.split("/")
    if trigger != "*" and row["trigger"] != trigger:
        return False
    if action != "*" and row["action"] != action:
        return False
    if extra == "drift":
        return (row["drift_share"] or 0) >= 0.3
    if extra == "forced":
        return bool(row.get("forced"))
    if extra == "rolled_back":
        return row.get("guard") == "rollback"
    return True


def _say(line: str) -> None:
    print(line, flush=True)  # a row per day as it finishes, also when piped (| tee)


def run(reset: bool = True, out: Callable[[str], None] = _say) -> int:
    from driftline import runner

    started = time.monotonic()
    # Migrating Airflow's DB and importing Airflow and MLflow take a while before the first row: say so.
    out(f"Driftline demo: model {MODEL}. Preparing Airflow's metadata DB and MLflow ...")
    runner.prepare()
    import logging

    import mlflow  # noqa: F401  (imported here so that its logger exists to be quieted)

    # "Creating initial MLflow database tables..." on every fresh store is not news to a viewer.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings

    settings = get_settings()
    if reset:
        _reset(settings.home)
    config = load_config(settings.models_dir / f"{MODEL}.yaml")
    ctx = Context.open(config, settings)
    if ctx.registry.exists():
        out(f"{MODEL} already has registered versions in {settings.tracking_uri}; run with --reset")
        return 2
    # Started now, so that its start-up overlaps the first days; it waits (503) for a first champion.
    service = LiveService(settings.home / "logs" / "demo-serve.log")
    try:
        return _play(ctx, config, settings, service, started, out)
    finally:
        service.stop()


def _play(ctx, config, settings, service: LiveService, started: float, out: Callable[[str], None]) -> int:
    from driftline import runner
    from ml.simulator import CreditDefaultSimulator, DriftPhase
    from ml.validation import validate_incoming, validate_incoming_labels

    sim = CreditDefaultSimulator(seed=SEED, rows_per_period=800, phases=[DriftPhase(DRIFT_START, 1.0, 1.0)])
    batches: dict[int, Any] = {}
    delivered_until: list[Any] = [None]  # labels known before this time are stored already

    def deliver(period: int) -> None:
        """Store day ``period``'s applications and the labels that became known during that day
        (days are delivered in order: each label is stored once, not again every later day)."""
        if period not in batches:
            batches[period] = sim.batch(period)
        batch = batches[period]
        ctx.store.add_observations(MODEL, validate_incoming(batch.features, config), config.feature_names)
        day_end = sim.period_start(period + 1)
        for b in batches.values():
            known = b.labels["labelled_at"] < day_end
            if delivered_until[0] is not None:
                known &= b.labels["labelled_at"] >= delivered_until[0]
            if known.any():
                ctx.store.add_labels(MODEL, validate_incoming_labels(b.labels[known], config))
        delivered_until[0] = day_end

    out(f"State in {settings.home}; MLflow tracking URI: {settings.tracking_uri}")
    out("One row per simulated day, a few seconds each: the champion scores the day's applications,")
    out("the labels due arrive, and one real continuous-training DAG run decides what to do.")
    out(f"Online scoring: driftline serve {MODEL} at {service.url}, following the champion alias.\n")
    for period in range(SCENARIO[0].period):
        deliver(period)

    rows: list[dict[str, Any]] = []
    header = format_header(config.promotion.metric)
    out(header)
    out("-" * len(header))
    for step in SCENARIO:
        deliver(step.period)
        if ctx.registry.champion() is not None:
            score = runner.run_dag(f"{MODEL}_score")
            if not score.ok:
                out(f"scoring failed on day {step.period}: {score.task_states}")
                return 1
        if step.announce_labels:
            labelled = ctx.store.count_labels(MODEL, ts_after=sim.period_start(step.period - 1),
                                              known_at=sim.period_start(step.period + 1))
            announced = runner.run_dag(f"{MODEL}_new_labels", {"rows": max(labelled, 1), "key": f"demo-day-{step.period}"})
            if not announced.ok:
                out(f"announcing labels failed: {announced.task_states}")
                return 1
        requests = _online_rows(batches[step.period].features) if step.online else []
        before = _online_phase(ctx, service, requests, f"d{step.period}-before") if step.online else None
        conf = dict(step.conf)
        if conf.get("train_until") == "DRIFT_START":
            conf["train_until"] = sim.period_start(DRIFT_START).isoformat()
        result = runner.run_dag(f"{MODEL}_continuous_training", conf)
        if step.announce_labels:
            # This run is the one the announcement asked for: it consumes the asset event, as a
            # scheduler's asset-triggered run would, so `make up` starts no run for it later.
            runner.consume_queued_asset_events(f"{MODEL}_continuous_training", result.run_id)
        summary = _run_summary(ctx, result.key)
        row = _timeline_row(step, result, summary, ctx)
        row["ok"] = result.ok and _matches(step.expect, row)
        if before is not None:
            row["online"] = _online_after(ctx, service, requests, before, result.key, f"d{step.period}-after")
            row["ok"] = row["ok"] and row["online"]["ok"]
        rows.append(row)
        out(format_row(row))
        if row.get("online"):
            for line in wrap("online", online_text(row["online"])):
                out(line)
        if not result.ok:
            out(f"  run failed: {result.task_states}")

    checks = _check_registry(ctx, rows)
    elapsed = time.monotonic() - started
    missing = [f"day {r['period']} {r['step']}: expected {r['expected']}, got {r['trigger']}/{r['action']}"
               + (f"; online: {online_text(r['online'])}" if r.get("online") and not r["online"]["ok"] else "")
               for r in rows if not r["ok"]]
    online = [{"period": r["period"], "step": r["step"], **r["online"]} for r in rows if r.get("online")]
    summary = {
        "model": MODEL,
        "tracking_uri": settings.tracking_uri,
        "store_url": settings.store_url,
        "reports_dir": str(settings.reports_dir / MODEL),
        "wall_time_seconds": round(elapsed, 1),
        "steps": rows,
        "registry_checks": checks,
        "serving": {"url": service.url, "log": str(service.log_path), "online_steps": online},
        "ok": not missing and all(c["ok"] for c in checks),
    }
    (settings.home / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    out("\nTimeline (one real continuous-training DAG run per simulated day):")
    for line in timeline(rows, config.promotion.metric):
        out(line)
    out("")
    for check in checks:
        out(f"registry check: {'ok ' if check['ok'] else 'FAIL'} {check['what']}")
    out(f"\nDrift reports: {settings.reports_dir / MODEL}")
    out(f"Summary: {settings.home / 'demo-summary.json'}  ({elapsed:.0f} s)")
    if not summary["ok"]:
        out("\nDEMO FAILED:\n  " + "\n  ".join(missing + [c["what"] for c in checks if not c["ok"]]))
        return 1
    out("\nEvery expected step happened. Open the UIs and the scoring service on this state with:  make up")
    return 0


# ---- online scoring beside the days -----------------------------------------------------------------


class LiveService:
    """``driftline serve MODEL`` as a person runs it, a subprocess on the demo's state (its store and
    registry) on a free loopback port; the default alias poll."""

    def __init__(self, log_path) -> None:
        from driftline.stack import LOOPBACK, free_port

        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.cli", "serve", MODEL, "--host", LOOPBACK, "--port", str(port)],
            env=os.environ.copy(), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str) -> dict[str, Any] | None:
        """The JSON answer (a 503's too: "no model yet" is an answer), None if it does not answer."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                return json.loads(exc.read() or b"{}")
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def predict(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row's answer: ``{"status", "version"}`` (status None if nothing answered)."""
        request = urllib.request.Request(self.url + "/predict", data=json.dumps({"rows": [row]}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return {"status": response.status, "version": json.load(response).get("version")}
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, "version": None}
        except OSError:
            return {"status": None, "version": None}

    def wait(self, until: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.2)
        return True

    def stop(self) -> None:
        """SIGTERM: running requests finish and the queued predictions are written, then it exits."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


# The service stores every row it answers, with the time its request arrived: today's clock, long after
# the simulated days. Left in the windows, they would be the newest rows and move the runs' data time
# (as_of) to today; the demo quarantines them (audited, `driftline quarantine --release` puts them back).
ONLINE_QUARANTINE_REASON = "demo: online requests carry today's clock, not the simulated day's"


def _online_rows(features) -> list[dict[str, Any]]:
    """The day's first applications as request rows (JSON values: NaN becomes null)."""
    records = json.loads(features.drop(columns=["row_id", "ts"]).head(ONLINE_REQUESTS).to_json(orient="records"))
    return records


def _online_phase(ctx, service: LiveService, rows: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    """Send ``rows`` one request each; wait until they are stored, then quarantine them (see above)."""
    written_before = ((service.get("/health") or {}).get("writer") or {}).get("written", 0)
    keys = [f"online-{tag}-{i}" for i in range(len(rows))]
    answers = [service.predict({"key": key, **row}) for key, row in zip(keys, rows, strict=True)]
    answered = [a for a in answers if a["status"] == 200]
    stored = service.wait(lambda: ((service.get("/health") or {}).get("writer") or {}).get("written", 0)
                          >= written_before + len(answered), timeout=30)
    quarantined = ctx.store.quarantine(MODEL, ids=keys, reason=ONLINE_QUARANTINE_REASON, actor="demo")
    versions = sorted({a["version"] for a in answered})
    return {"requests": len(answers), "failed": len(answers) - len(answered), "versions": versions,
            "stored": stored, "quarantined": quarantined.rows + quarantined.already}


def _online_after(ctx, service: LiveService, rows: list[dict[str, Any]], before: dict[str, Any], run_key: str,
                  tag: str) -> dict[str, Any]:
    """After the run: when the service loaded the new champion (its /model ``loaded_at``), how long
    after the run's registry move began (the move's intent entry in the audit log), and the answers
    to the same rows sent again."""
    from datetime import datetime

    from ml.registry import INTENT_PROMOTE, INTENT_ROLLBACK

    champion = ctx.registry.champion()
    swapped = service.wait(lambda: (service.get("/model") or {}).get("version") == champion, SWAP_TIMEOUT)
    model = service.get("/model") or {}
    moves = [e for e in ctx.store.audit_log(MODEL, [INTENT_PROMOTE, INTENT_ROLLBACK])
             if e["run_id"] == run_key and e["version"] == champion]
    moved_at = moves[-1]["at"] if moves else None
    loaded_at = datetime.fromisoformat(model["loaded_at"]) if swapped and model.get("loaded_at") else None
    after = _online_phase(ctx, service, rows, tag)
    from_version = before["versions"][0] if len(before["versions"]) == 1 else None
    result = {
        "before": before, "after": after, "from_version": from_version, "to_version": champion,
        "move": moves[-1]["action"] if moves else None,
        "moved_at": moved_at.isoformat() if moved_at else None,
        "loaded_at": loaded_at.isoformat() if loaded_at else None,
        "swap_seconds": round((loaded_at - moved_at).total_seconds(), 2) if loaded_at and moved_at else None,
    }
    result["ok"] = bool(
        swapped and moved_at and from_version is not None and from_version != champion
        and after["versions"] == [champion] and not before["failed"] and not after["failed"]
        and before["stored"] and after["stored"]
        and before["quarantined"] == before["requests"] and after["quarantined"] == after["requests"])
    return result


def online_text(online: dict[str, Any]) -> str:
    """One online step in words, e.g. "v2 answered 8/8 requests before the run; the champion alias moved
    to v5 and the service was serving it 1.4 s later (hot swap, no restart); v5 answered 8/8 requests
    after". The seconds: from the move's intent entry to the service's own load time of the version."""
    def answered(phase: dict[str, Any]) -> str:
        versions = "/".join(f"v{v}" for v in phase["versions"]) or "no version"
        return f"{versions} answered {phase['requests'] - phase['failed']}/{phase['requests']} requests"

    before, after = online["before"], online["after"]
    move = "went back" if online.get("move") == "rollback_requested" else "moved"
    if online.get("swap_seconds") is not None:
        swap = (f"the champion alias {move} to v{online['to_version']} and the service was serving it "
                f"{online['swap_seconds']:.1f} s later (hot swap, no restart)")
    else:
        swap = f"the service did not load v{online['to_version']} within {SWAP_TIMEOUT:.0f} s"
    text = f"{answered(before)} before the run; {swap}; {answered(after)} after"
    if not (before["stored"] and after["stored"]):
        text += "; NOT ALL STORED"
    return text


def _run_summary(ctx, key: str) -> dict[str, Any]:
    entries = [e for e in ctx.store.audit_log(MODEL, ["run"]) if e["run_id"] == key]
    return entries[-1]["details"] if entries else {}


def _timeline_row(step: Step, result, summary: dict[str, Any], ctx) -> dict[str, Any]:
    forced = False
    promoted = [e for e in ctx.store.audit_log(MODEL, ["promoted"]) if e["run_id"] == result.key]
    if promoted:
        forced = bool((promoted[-1]["details"] or {}).get("forced"))
    return {
        "period": step.period,
        "step": step.label,
        "expected": step.expect,
        "as_of": summary.get("as_of"),
        "drift_share": summary.get("drift_share"),
        "live_metric": summary.get("live_metric"),
        "trigger": summary.get("trigger", "?"),
        "action": summary.get("action", "failed" if not result.ok else "?"),
        "reasons": summary.get("reasons", []),
        "held_back": summary.get("held_back", []),
        "candidate_version": summary.get("candidate_version"),
        "evaluation": summary.get("evaluation"),
        "guard": summary.get("guard"),
        "guard_reason": summary.get("guard_reason"),
        "forced": forced,
        "champion_version": summary.get("champion_version"),
        "dag_run_id": result.key,
        "branch": result.branch_taken(
            ["retrain_on_threshold", "retrain_on_schedule", "retrain_on_event", "retrain_on_demand", "skip_retraining"]
        ),
        "report_path": summary.get("report_path"),
    }


DETAIL_INDENT = " " * 5  # detail lines sit under the step column
DETAIL_WIDTH = 110  # and wrap at a word boundary here, never cut mid-word
ACTION_WIDTH = 10  # "promoted*" is the widest action; the guard has its own column


def format_header(metric: str) -> str:
    """The timeline's column titles; ``format_row`` lines up under them."""
    return (f"{'day':>3}  {'step':<24} {'drift':>5} {'live ' + metric:>12}  {'trigger':<9} "
            f"{'action':<{ACTION_WIDTH}} {'guard':<8} {'champion':>8}  ok")


def format_row(row: dict[str, Any]) -> str:
    """One timeline row: the day, what the run decided and did, and who is champion after it."""
    drift = "-" if row["drift_share"] is None else f"{row['drift_share']:.2f}"
    live = "-" if row["live_metric"] is None else f"{row['live_metric']:.3f}"
    action = row["action"] + ("*" if row.get("forced") else "")
    guard = "rollback" if row.get("guard") == "rollback" else "-"
    champion = f"v{row['champion_version']}" if row["champion_version"] else "-"
    return (f"{row['period']:>3}  {row['step']:<24} {drift:>5} {live:>12}  {row['trigger']:<9} "
            f"{action:<{ACTION_WIDTH}} {guard:<8} {champion:>8}  {'yes' if row['ok'] else 'NO'}")


def gate_text(row: dict[str, Any]) -> str | None:
    """What the evaluation gate said about the run's candidate, in words; None without a candidate.
    A forced promotion says both halves: the gate's verdict and that a person overrode it."""
    summary = row.get("evaluation")
    if not summary:
        return None
    verdict, _, numbers = str(summary).partition(": ")
    if verdict == "reject":
        head = "rejected by the gate, promoted by force" if row.get("forced") else "rejected by the gate"
    elif verdict == "promote":
        head = "passed the gate"  # promoted (or superseded: the action column says which)
    else:  # a verdict this text does not know: show it as it is rather than guess
        head = verdict
    return f"{head}: {numbers}" if numbers else head


def guard_text(row: dict[str, Any]) -> str:
    """The rollback guard's verdict and its reason, e.g. "keep, no previous champion"."""
    action = row.get("guard") or "keep"
    reason = row.get("guard_reason")
    return f"{action}, {reason}" if reason else action


def _guard_key(row: dict[str, Any]) -> tuple[str, str]:
    # The verdict without its numbers: "v2 ... 0.884 vs v1 0.775 on 797 rows" day after day is the
    # same verdict, said once; a new kind of reason (or a rollback) is news.
    return (row.get("guard") or "keep", re.sub(r"\d+(\.\d+)?", "#", row.get("guard_reason") or ""))


def wrap(label: str, text: str, width: int = DETAIL_WIDTH) -> list[str]:
    """``label: text`` indented under the step column, wrapped at word boundaries; continuation
    lines line up under the text."""
    head = f"{DETAIL_INDENT}{label}: "
    return textwrap.wrap(text, width=width, initial_indent=head, subsequent_indent=" " * len(head),
                         break_long_words=False, break_on_hyphens=False) or [head.rstrip()]


def detail_lines(row: dict[str, Any], previous: dict[str, Any] | None = None) -> list[str]:
    """The lines under a timeline row that say why: the decision's reasons, what held a retrain
    back and the gate's verdict, after the guard's verdict when it differs from the previous row's;
    then what live traffic saw, on the days the demo sent requests."""
    lines: list[str] = []
    # In the order the run did it: the guard is the run's first task.
    if previous is None or _guard_key(previous) != _guard_key(row):
        lines += wrap("guard", guard_text(row))
    for reason in row.get("reasons") or []:
        lines += wrap("why", reason)
    for held in row.get("held_back") or []:
        lines += wrap("held back", held)
    gate = gate_text(row)
    if gate:
        lines += wrap("evaluation", gate)
    if row.get("online"):
        lines += wrap("online", online_text(row["online"]))
    return lines


def timeline(rows: list[dict[str, Any]], metric: str) -> list[str]:
    """The whole timeline: header, then each row with its detail lines."""
    header = format_header(metric)
    out = [header, "-" * len(header)]
    previous = None
    for row in rows:
        out.append(format_row(row))
        out += detail_lines(row, previous)
        previous = row
    if any(row.get("forced") for row in rows):
        out.append("* promoted by force: a person overrode the gate (the guard still watches it)")
    return out


def _check_registry(ctx, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The registry must tell the same story as the timeline."""
    registry = ctx.registry
    checks = []

    def check(ok: bool, what: str) -> None:
        checks.append({"ok": bool(ok), "what": what})

    champion = registry.champion()
    final = rows[-1]["champion_version"] if rows else None
    check(champion == final, f"champion alias is v{champion}, timeline ends with v{final}")
    versions = {v.version: v for v in registry.versions()}
    for row in rows:
        version = row["candidate_version"]
        if version is None:
            continue
        verdict = versions[version].tag("verdict")
        expected = {"promoted": ("promoted", "rolled_back"), "rejected": ("rejected",)}.get(row["action"], ())
        check(verdict in expected, f"v{version} verdict tag '{verdict}' matches timeline action '{row['action']}'")
    rolled = [r for r in rows if r["guard"] == "rollback"]
    for row in rolled:
        check(any(v.tag("verdict") == "rolled_back" for v in versions.values()),
              f"a version is tagged rolled_back after day {row['period']}")
    stage_ok = all(
        (v.stage == "Production") == (v.version == champion) for v in versions.values()
    )
    check(stage_ok, "stage mirror: only the champion is in Production")
    check(versions[champion].stage == "Production" if champion else False, f"v{champion} is in Production")
    return checks


def main(argv: list[str] | None = None) -> int:
    return run(reset="--no-reset" not in (argv or sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
