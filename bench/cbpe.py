"""Label-free performance estimate (CBPE, :mod:`ml.estimation`): how close is the estimate to the
metric the labels later show? Per weekly batch, side by side with the two naive guesses a system
without an estimate makes.

  .venv/bin/python -m bench.cbpe            # simulator + Elec2; writes bench/results/cbpe.{json,md}
  .venv/bin/python -m bench.cbpe --smoke    # a small simulator stream (seconds), into a temporary folder

Protocol (batch-prequential, the replay's: weekly batches, 4 initial batches, a 4-week window, the
bench config's estimator through :func:`ml.training.fit_full`). A model trains on the window's rows
except its newest 2 days (the gate's holdout), either once (``static``) or every 4 batches
(``every 4``). Before batch ``b``'s labels are used, three numbers say how the model will do on it:

* **CBPE**: :func:`ml.estimation.estimate`, calibrated on the rows :func:`ml.loop.estimate_performance`
  takes (labelled rows newer than the model's training data, before batch ``b``, at most the 4-week
  window), computed on batch ``b``'s scores only;
* **at promotion**: the model's metric on its holdout when it was trained (what ``max_relative_drop``
  compares with, and what a system without labels assumes still holds);
* **last labelled**: its metric on those same calibration rows (the newest labelled level).

Then the batch's labels give the realised metric; each column's error is |guess - realised|,
averaged over batches (MAE). Data sets: the seeded credit-default simulator (:mod:`ml.simulator`)
with a covariate-shift phase and then a concept-drift phase (CBPE can follow the first, not the
second), and Elec2 (``../shared/data``; skipped when absent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DRIFTLINE_SHARED", ROOT.parent / "shared"))
CONFIGS = ROOT / "bench" / "configs"
RESULTS = ROOT / "bench" / "results"

WINDOW = 4  # batches a model trains on (the replay's 4-week window)
INITIAL = 4  # batches before the first prediction
HOLDOUT = 2 / 7  # the newest 2 days of a weekly batch: the gate's holdout
MIN_CALIBRATION_ROWS = 100  # triggers.min_calibration_rows' default
METRICS = ("accuracy", "roc_auc", "f1")
SCHEDULES = {"static": None, "every 4": 4}
GUESSES = ("cbpe", "at_promotion", "last_labelled")
# Simulator phases: quiet, then covariate shift (who applies changes; P(default | features) does not),
# then concept drift on top (P(default | features) changes: no score-based estimate can see it).
SIM_PHASES = ((0, "no drift"), (20, "covariate shift"), (40, "covariate + concept drift"))


def simulator_batches(periods: int = 60, rows: int = 1000, seed: int = 7) -> tuple[list[pd.DataFrame], list[str]]:
    from ml.simulator import CreditDefaultSimulator, DriftPhase

    phases = [DriftPhase(20, covariate=1.0), DriftPhase(40, covariate=1.0, concept=1.0)]
    sim = CreditDefaultSimulator(seed=seed, rows_per_period=rows, period=timedelta(days=7),
                                 label_delay=timedelta(0), phases=phases)
    batches = []
    for p in range(periods):
        batch = sim.batch(p)
        batches.append(batch.features.merge(batch.labels[["row_id", "label"]], on="row_id"))
    names = [next(name for start, name in reversed(SIM_PHASES) if p >= start) for p in range(periods)]
    return batches, names


def elec2_batches(path: Path) -> list[pd.DataFrame]:
    from ml.replay import read_table

    frame = read_table(path).rename(columns={"class": "label"})
    return [frame.iloc[i:i + 336].reset_index(drop=True) for i in range(0, len(frame) - 335, 336)]


def _metric(metric: str, y: np.ndarray, pred: np.ndarray, score: np.ndarray, pos: Any) -> float | None:
    from ml.evaluation import compute_metric

    try:
        return float(compute_metric(metric, y, pred, score, pos_label=pos))
    except ValueError:  # e.g. one class only in a batch: no realised metric to compare with
        return None


def run_stream(config: Any, batches: list[pd.DataFrame], every: int | None) -> list[dict[str, Any]]:
    """Per predicted batch: the realised metric and each guess, for every metric in METRICS."""
    from ml.estimation import estimate
    from ml.training import fit_full, predict

    pos = config.positive_label
    rows: list[dict[str, Any]] = []
    model = None
    reference: dict[str, float | None] = {}
    unseen_from = 0  # first batch the model did not train on (its holdout is the tail of the one before)
    # The model's (labels, predictions, scores) per batch it did not train on (-1: its holdout): each
    # batch is scored once per model, then reused as calibration rows for the batches after it.
    scored: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def score(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pred, prob = predict(config, model, frame)
        return frame["label"].to_numpy(), np.asarray(pred), np.asarray(prob)

    for b in range(INITIAL, len(batches)):
        if model is None or (every is not None and (b - INITIAL) % every == 0):
            window = batches[b - WINDOW:b]
            cut = len(window[-1]) - round(len(window[-1]) * HOLDOUT)
            train = pd.concat([*window[:-1], window[-1].iloc[:cut]], ignore_index=True)
            model = fit_full(config, train)
            scored = {-1: score(window[-1].iloc[cut:])}
            reference = {m: _metric(m, *scored[-1], pos) for m in METRICS}
            unseen_from = b
        scored[b] = score(batches[b])
        # Calibration: rows newer than the model's training data, before batch b, at most WINDOW batches.
        keys = ([-1] if b - WINDOW < unseen_from else []) + list(range(max(unseen_from, b - WINDOW), b))
        cal_y, cal_pred, cal_score = (np.concatenate([scored[k][i] for k in keys]) for i in range(3))
        y, pred, prob = scored[b]
        out: dict[str, Any] = {"batch": b, "calibration_rows": len(cal_y)}
        for m in METRICS:
            est = estimate(m, calibration_labels=cal_y, calibration_scores=cal_score, current_predictions=pred,
                           current_scores=prob, pos_label=pos, min_calibration_rows=MIN_CALIBRATION_ROWS)
            out[m] = {"realised": _metric(m, y, pred, prob, pos), "cbpe": est.value, "at_promotion": reference[m],
                      "last_labelled": _metric(m, cal_y, cal_pred, cal_score, pos)}
        rows.append(out)
    return rows


def errors(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """MAE of each guess against the realised metric, over batches where every guess and the
    realised metric exist (so the columns are compared on the same batches)."""
    usable = [r[metric] for r in rows if all(r[metric][k] is not None for k in ("realised", *GUESSES))]
    if not usable:
        return {"batches": 0, **{g: None for g in GUESSES}}
    return {"batches": len(usable),
            **{g: float(np.mean([abs(r[g] - r["realised"]) for r in usable])) for g in GUESSES}}


def bench_dataset(name: str, title: str, config_file: str, batches: list[pd.DataFrame],
                  phases: list[str] | None = None) -> dict[str, Any]:
    from ml.config import parse_config

    config = parse_config(yaml.safe_load((CONFIGS / config_file).read_text()), str(CONFIGS / config_file))
    out: dict[str, Any] = {"name": name, "title": title, "batches": len(batches), "rows": sum(map(len, batches)),
                           "schedules": {}}
    for schedule, every in SCHEDULES.items():
        started = time.perf_counter()
        rows = run_stream(config, batches, every)
        summary: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 1),
                                   "mae": {m: errors(rows, m) for m in METRICS}, "per_batch": rows}
        if phases is not None:
            summary["by_phase"] = {
                phase: {m: errors([r for r in rows if phases[r["batch"]] == phase], m) for m in METRICS}
                for phase in dict.fromkeys(phases[INITIAL:])
            }
        out["schedules"][schedule] = summary
        print(f"  {name} {schedule}: accuracy MAE " + ", ".join(
            f"{g} {summary['mae']['accuracy'][g]:.4f}" for g in GUESSES if summary["mae"]["accuracy"][g] is not None),
              file=sys.stderr, flush=True)
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "## Label-free performance estimate (CBPE)",
        "",
        "How close is Driftline's label-free estimate (`triggers.estimated_drop`, `ml/estimation.py`) to the",
        "metric the labels later show? Per weekly batch: a model trained on a 4-week window (its newest 2 days",
        "held out, as the gate does), once (`static`) or every 4 batches; before the batch's labels are used,",
        "**CBPE** estimates its metric from the batch's scores alone (isotonic calibration on the labelled rows",
        "the model did not train on, at most the last 4 batches, as `ml.loop.estimate_performance` takes them);",
        "**at promotion** assumes its holdout metric at training still holds; **last labelled** assumes the",
        "metric on those calibration rows. The cells are the mean absolute error against the realised metric",
        "(lower is better; **bold**: the best of the three).",
        "",
        f"Command: `{data['command']}` ({data['seconds']:.0f} s, commit `{data['git_commit'][:10]}`).",
        "",
    ]
    for ds in data["datasets"]:
        if "skipped" in ds:
            lines += [f"### {ds['title']}", "", f"Skipped: {ds['skipped']}", ""]
            continue
        lines += [f"### {ds['title']}", "", f"{ds['rows']} rows, {ds['batches']} batches.", "",
                  "| model | metric | batches | CBPE | at promotion | last labelled |", "|---|---|---|---|---|---|"]
        for schedule, res in ds["schedules"].items():
            for m in METRICS:
                e = res["mae"][m]
                best = min((e[g] for g in GUESSES if e[g] is not None), default=None)
                cells = [f"**{_fmt(e[g])}**" if e[g] is not None and e[g] == best else _fmt(e[g]) for g in GUESSES]
                lines.append(f"| {schedule} | {m} | {e['batches']} | " + " | ".join(cells) + " |")
        lines.append("")
        phased = {s: r["by_phase"] for s, r in ds["schedules"].items() if "by_phase" in r}
        if phased:
            lines += ["By phase (accuracy MAE):", "", "| model | phase | batches | CBPE | at promotion | last labelled |",
                      "|---|---|---|---|---|---|"]
            for schedule, by_phase in phased.items():
                for phase, res in by_phase.items():
                    e = res["accuracy"]
                    lines.append(f"| {schedule} | {phase} | {e['batches']} | "
                                 + " | ".join(_fmt(e[g]) for g in GUESSES) + " |")
            lines.append("")
    lines += [
        "Reading it: CBPE assumes the label still follows the score as it did on the calibration rows. Under",
        "covariate shift (who is scored changes) that holds and the estimate follows the batch: there the",
        "static model's *at promotion* guess is off by about 0.1 while CBPE stays near its no-drift error.",
        "Under concept drift it cannot hold until the new labels reach the calibration rows (they roll with the",
        "served labels, at most 4 batches back), and no label-free number sees the change before that. Every",
        "batch's calibration here includes the batch just before it, so *last labelled* is a strong guess on",
        "slowly changing data; CBPE matches or beats it on most rows, and its use is the time before those",
        "labels exist (`triggers.estimated_drop`).",
        "",
    ]
    return "\n".join(lines)


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a small simulator stream only (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    args = parser.parse_args(argv)
    if args.out is None:  # a smoke run never overwrites the real results
        args.out = Path(tempfile.mkdtemp(prefix="cbpe_smoke_")) if args.smoke else RESULTS
    started = time.perf_counter()
    datasets = []
    sim, phases = simulator_batches(periods=10, rows=300) if args.smoke else simulator_batches()
    datasets.append(bench_dataset("simulator", "Credit-default simulator (seeded; covariate shift from week 20, "
                                  "concept drift from week 40)", "no_drift.yaml", sim, phases))
    if not args.smoke:
        path = SHARED / "data" / "elec2" / "elecNormNew.arff"
        if path.exists():
            datasets.append(bench_dataset("elec2", "Elec2 (NSW electricity, price UP/DOWN)", "elec2.yaml",
                                          elec2_batches(path)))
        else:
            datasets.append({"name": "elec2", "title": "Elec2", "skipped": f"{path} is absent"})
    data = {"benchmark": "cbpe", "smoke": args.smoke,
            "command": ".venv/bin/python -m bench.cbpe" + (" --smoke" if args.smoke else ""),
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "git_commit": _commit(),
            "seconds": time.perf_counter() - started, "datasets": datasets}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cbpe.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "cbpe.md").write_text(markdown(data))
    print(f"wrote {args.out / 'cbpe.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
