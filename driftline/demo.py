"""``driftline demo``: the whole loop, through real DAG runs, on the embedded default.

One simulated day per period for the ``credit_default`` model. Each period: the day's applications
are stored and batch-scored by the champion (``credit_default_score``), the labels that came due
arrive, and ``credit_default_continuous_training`` runs. The script expects, in order:

bootstrap v1 (by hand) -> quiet days, no retrain -> a downturn (covariate + concept drift) that is
detected at once but held until labelled rows from after it exist -> a threshold retrain, trained
on data since the drift, promoted -> a scheduled retrain that does not beat the champion, rejected
-> a new-labels event retrain -> a forced promotion of a model trained on stale data -> the guard
rolls it back automatically.

It prints a timeline, writes ``$DRIFTLINE_HOME/demo-summary.json``, checks that the MLflow registry
agrees with the timeline, and exits non-zero if any expected step did not happen.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
import time
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
          "train_until": "DRIFT_START"}),
    Step(14, "guard waits for labels", "*/*"),
    Step(15, "guard", "*/*:rolled_back"),
]


def _reset(home) -> None:
    for name in ("store.db", "mlflow.db", "mlartifacts", "reports", "demo-summary.json"):
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
    from ml.simulator import CreditDefaultSimulator, DriftPhase
    from ml.validation import validate_incoming, validate_incoming_labels

    settings = get_settings()
    if reset:
        _reset(settings.home)
    config = load_config(settings.models_dir / f"{MODEL}.yaml")
    ctx = Context.open(config, settings)
    if ctx.registry.exists():
        out(f"{MODEL} already has registered versions in {settings.tracking_uri}; run with --reset")
        return 2
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
    out("the labels due arrive, and one real continuous-training DAG run decides what to do.\n")
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
        rows.append(row)
        out(format_row(row))
        if not result.ok:
            out(f"  run failed: {result.task_states}")

    checks = _check_registry(ctx, rows)
    elapsed = time.monotonic() - started
    missing = [f"day {r['period']} {r['step']}: expected {r['expected']}, got {r['trigger']}/{r['action']}"
               for r in rows if not r["ok"]]
    summary = {
        "model": MODEL,
        "tracking_uri": settings.tracking_uri,
        "store_url": settings.store_url,
        "reports_dir": str(settings.reports_dir / MODEL),
        "wall_time_seconds": round(elapsed, 1),
        "steps": rows,
        "registry_checks": checks,
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
    out("\nEvery expected step happened. Open the UIs on this state with:  make up")
    return 0


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
    back and the gate's verdict, after the guard's verdict when it differs from the previous row's."""
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
