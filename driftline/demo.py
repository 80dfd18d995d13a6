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
import shutil
import sys
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


def run(reset: bool = True, out: Callable[[str], None] = print) -> int:
    from driftline import runner

    started = time.monotonic()
    runner.prepare()
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

    def deliver(period: int) -> None:
        """Store day ``period``'s applications and every label due by the end of that day."""
        batch = batches.setdefault(period, sim.batch(period))
        ctx.store.add_observations(MODEL, validate_incoming(batch.features, config), config.feature_names)
        day_end = sim.period_start(period + 1)
        due = [b.labels[b.labels["labelled_at"] < day_end] for b in batches.values()]
        for labels in due:
            if len(labels):
                ctx.store.add_labels(MODEL, validate_incoming_labels(labels, config))

    out(f"Driftline demo: model {MODEL}, state in {settings.home}")
    out(f"MLflow tracking URI: {settings.tracking_uri}\n")
    for period in range(SCENARIO[0].period):
        deliver(period)

    rows: list[dict[str, Any]] = []
    header = f"{'day':>3}  {'step':<24} {'drift':>5} {'live '+config.promotion.metric:>12}  {'trigger':<9} {'action':<11} {'champion':>8}  ok"
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
        summary = _run_summary(ctx, result.key)
        row = _timeline_row(step, result, summary, ctx)
        row["ok"] = result.ok and _matches(step.expect, row)
        rows.append(row)
        out(_format_row(row))
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
    out(header)
    out("-" * len(header))
    for row in rows:
        out(_format_row(row))
        for reason in (row["reasons"] + [f"held back: {h}" for h in row["held_back"]])[:3]:
            out(f"{'':>30}{reason[:110]}")
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


def _format_row(row: dict[str, Any]) -> str:
    drift = "-" if row["drift_share"] is None else f"{row['drift_share']:.2f}"
    live = "-" if row["live_metric"] is None else f"{row['live_metric']:.3f}"
    action = row["action"] + ("*" if row["forced"] else "")
    if row["guard"] == "rollback":
        action = f"rollback+{action}" if action != "skipped" else "rolled_back"
    champion = f"v{row['champion_version']}" if row["champion_version"] else "-"
    return (f"{row['period']:>3}  {row['step']:<24} {drift:>5} {live:>12}  {row['trigger']:<9} {action:<11} "
            f"{champion:>8}  {'yes' if row['ok'] else 'NO'}")


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
