"""P3: adaptation quality on real drift. Replays Elec2, Bike Sharing and a seeded no-drift stream
through Driftline's own decisions (:mod:`ml.replay`) beside the baselines, in one run.

  .venv/bin/python -m bench.replay            # all three; writes bench/results/replay.{json,md}, docs/bench/*.png
  .venv/bin/python -m bench.replay --smoke --out /tmp/x   # a small synthetic run (< 60 s), for CI

Real data is read from ``../shared/data`` (never copied into the repository); a data set whose file
is absent is skipped, and the section says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DRIFTLINE_SHARED", ROOT.parent / "shared"))
CONFIGS = ROOT / "bench" / "configs"
RESULTS = ROOT / "bench" / "results"
PLOTS = ROOT / "docs" / "bench"  # referenced from docs/benchmarks.md as bench/<name>.png

# Figures quoted from ../shared/README.md (not re-run here): same protocol, same features.
REFERENCE = {
    "elec2": {"static": "0.625", "every_1": "0.774 (131)", "every_4": "0.765 (32)",
              "adwin": "0.766 (35)", "evidently": "0.699 (76)"},
    "bike": {"static": "134.5", "every_1": "38.8 (101)", "every_4": "43.3 (25)",
             "adwin": "43.7 (28)", "evidently": "39.3 (78)"},
}
ELEC2_NO_CHANGE = 0.853  # "next label = last label", quoted from ../shared/README.md
ELEC2_RIVER_ARF = 0.878  # River's adaptive random forest, row by row, quoted from ../shared/README.md
# The fixed schedules of the full run ("retrain every k batches"): with the static model they draw
# the frontier each Driftline variant is measured against at its own number of retrains.
FRONTIER_EVERY = (1, 2, 3, 4, 6, 8, 12, 16)
SMOKE_EVERY = (1, 4)

# Driftline policies run beside the default (the YAML's) on every data set: each is a patch on the
# YAML. They are how the defaults were chosen, so they stay in the benchmark.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "no_backoff": {"triggers": {"rejection_backoff": None}},
    "safety_net": {"triggers": {"max_model_age": "26w"}},
    "label_free": {"triggers": {"max_relative_drop": None, "metric_floor": None, "max_model_age": None,
                                "drift_share": 0.3}},
    # Refit the candidate the gate blessed on its training rows plus the holdout (promotion.refit).
    "refit": {"promotion": {"refit": True}},
    # Retrains that answer no drift episode learn from up to 8 weeks (twice the 4-week window).
    "widen_window": {"windows": {"max_training": "8w"}},
    # Candidates judged in shadow on the next rows (min_shadow_rows labelled) instead of a holdout.
    "shadow_gate": {"promotion": {"gate": "shadow"}},
    # A river change detector on the champion's served errors as the trigger (triggers.error_detector),
    # instead of the relative drop, and beside it.
    "error_adwin": {"triggers": {"max_relative_drop": None, "error_detector": {"kind": "adwin"}}},
    "error_adwin_drop": {"triggers": {"error_detector": {"kind": "adwin"}}},
    "error_page_hinkley": {"triggers": {"max_relative_drop": None, "error_detector": {"kind": "page_hinkley"}}},
    # Levers together: when to retrain (the detector) and what to train on (refit, wider window).
    "refit_widen": {"promotion": {"refit": True}, "windows": {"max_training": "8w"}},
    "refit_error_adwin": {"promotion": {"refit": True}, "triggers": {"error_detector": {"kind": "adwin"}}},
    # Found by hand this round (selection on these same data sets; see POLICY): the wider window with a
    # one-batch cooldown, the same with refit, and refit + wider window with a 5 % relative drop.
    "widen_short_cooldown": {"windows": {"max_training": "8w"}, "triggers": {"cooldown": "1w"}},
    "refit_widen_short_cooldown": {"promotion": {"refit": True}, "windows": {"max_training": "8w"},
                                   "triggers": {"cooldown": "1w"}},
    "refit_widen_drop05": {"promotion": {"refit": True}, "windows": {"max_training": "8w"},
                           "triggers": {"max_relative_drop": 0.05}},
}

# The label-free estimate (CBPE) as a trigger beside the live-metric one: classifiers only (not Bike).
ESTIMATED_DROP: dict[str, dict[str, Any]] = {"triggers": {"estimated_drop": 0.1}}


@dataclass
class Dataset:
    name: str
    title: str
    config: str  # YAML under bench/configs
    options: dict[str, Any]
    path: Path | None = None  # a file under ../shared/data; None: made by `make`
    make: Any = None  # (directory) -> path of a CSV it wrote
    goal: str = ""
    variants: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: VARIANTS)


def _stationary_csv(directory: Path, *, periods: int = 60, rows: int = 400, seed: int = 11) -> Path:
    """The credit-default simulator with no drift phase: weekly batches from one distribution."""
    import pandas as pd

    from ml.simulator import CreditDefaultSimulator

    sim = CreditDefaultSimulator(seed=seed, rows_per_period=rows, period=timedelta(days=7),
                                 label_delay=timedelta(0), phases=())
    parts = []
    for p in range(periods):
        batch = sim.batch(p)
        parts.append(batch.features.merge(batch.labels[["row_id", "label"]], on="row_id").drop(columns="row_id"))
    path = directory / "no_drift.csv"
    pd.concat(parts, ignore_index=True).rename(columns={"label": "default"}).to_csv(path, index=False)
    return path


def _drifting_csv(directory: Path) -> Path:
    """Smoke data: a small simulator stream with covariate and concept drift from period 6 on."""
    import pandas as pd

    from ml.simulator import CreditDefaultSimulator, DriftPhase

    sim = CreditDefaultSimulator(seed=5, rows_per_period=150, period=timedelta(days=7), label_delay=timedelta(0),
                                 phases=[DriftPhase(6, covariate=1.0, concept=1.5)])
    parts = []
    for p in range(10):
        batch = sim.batch(p)
        parts.append(batch.features.merge(batch.labels[["row_id", "label"]], on="row_id").drop(columns="row_id"))
    path = directory / "smoke_drift.csv"
    pd.concat(parts, ignore_index=True).rename(columns={"label": "default"}).to_csv(path, index=False)
    return path


WEEK = timedelta(days=7)
DATASETS = [
    Dataset("elec2", "Elec2 (NSW electricity, price UP/DOWN)", "elec2.yaml",
            {"target": "class", "batch_rows": 336, "row_interval": timedelta(minutes=30)},
            path=SHARED / "data" / "elec2" / "elecNormNew.arff",
            goal="accuracy >= retrain-every-batch with at most 1/4 of its retrains",
            variants={**VARIANTS, "evaluation_reference": {"triggers": {"drop_reference": "evaluation"},
                                                           "promotion": {"significance": 0.25}},
                      "estimated_drop": ESTIMATED_DROP}),
    Dataset("bike", "Bike Sharing (hourly rentals)", "bike.yaml",
            {"target": "cnt", "time_column": "dteday", "hour_column": "hr", "period": WEEK},
            path=SHARED / "data" / "bike_sharing" / "hour.csv",
            goal="MAE <= retrain-every-batch with at most 1/3 of its retrains",
            variants={**VARIANTS, "served_reference": {"triggers": {"drop_reference": "served"},
                                                       "rollback": {"min_labelled_rows": 100}},
                      # Page-Hinkley's delta and threshold are in the error's unit: river's defaults
                      # (for 0/1 errors, spread ~0.4) scaled by 100 to bikes/hour (spread ~40).
                      "error_page_hinkley": {"triggers": {
                          "max_relative_drop": None,
                          "error_detector": {"kind": "page_hinkley", "delta": 0.5, "threshold": 5000}}},
                      # The label-free drift trigger against the same week one year back (from year 2 on).
                      "seasonal_reference": {**VARIANTS["label_free"],
                                             "windows": {"reference": "season", "season": "52w"}}}),
    Dataset("no_drift", "No drift (seeded credit-default simulator, stationary)", "no_drift.yaml",
            {"target": "default", "time_column": "ts", "period": WEEK}, make=_stationary_csv,
            goal="almost no retrains (at most 5 % of the predicted batches)",
            variants={**VARIANTS, "estimated_drop": ESTIMATED_DROP}),
]
SMOKE = Dataset("smoke", "Smoke: small simulator stream, drift from week 6", "no_drift.yaml",
                {"target": "default", "time_column": "ts", "period": WEEK, "label_delay": 1},
                make=_drifting_csv)


def _machine() -> dict[str, Any]:
    from importlib.metadata import version

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "git_commit": commit,
        "versions": {name: version(name) for name in ("scikit-learn", "numpy", "pandas", "evidently")},
    }


def _patched(raw: dict[str, Any], patch: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for section, values in patch.items():
        out.setdefault(section, {}).update(values)
    return out


def run_dataset(ds: Dataset, workdir: Path, plot_dir: Path, *, smoke: bool = False) -> dict[str, Any]:
    from ml import replay

    path = ds.make(workdir) if ds.make else ds.path
    if path is None or not Path(path).exists():
        return {"skipped": f"{ds.path} is absent (the data lives outside the repository, in ../shared/data)"}
    raw = yaml.safe_load((CONFIGS / ds.config).read_text())
    if smoke:  # a fast estimator: the smoke run checks the machinery, not the numbers
        raw["estimator"] = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 300}}
    options = replay.ReplayOptions(**{"every": SMOKE_EVERY if smoke else FRONTIER_EVERY,
                                      "every_held_out": () if smoke else (1,), **ds.options})
    frame = replay.read_table(path)
    data = replay.prepare(frame, options, raw, source=str(CONFIGS / ds.config))
    variants = {replay.DRIFTLINE: data.config}
    for name, patch in ds.variants.items():
        variants[f"{replay.DRIFTLINE}_{name}"] = replay.prepare(
            frame, options, _patched(raw, patch), source=str(CONFIGS / ds.config)).config
    started = time.perf_counter()

    def progress(b: int, total: int, strategies: list[Any]) -> None:
        if b % 20 == 0 or b == total - 1:
            counts = ", ".join(f"{s.name} {s.stats.retrains}" for s in strategies if s.stats.retrains)
            print(f"  {ds.name}: batch {b + 1}/{total} ({time.perf_counter() - started:.0f} s) retrains: {counts}",
                  file=sys.stderr, flush=True)

    result = replay.run(data, name=ds.name, variants=variants, progress=progress)
    png = replay.plot(result, plot_dir / f"replay_{ds.name}.png", title=_title(ds.title, result.metric))
    out = result.to_dict()
    out["plot"] = str(png)
    out["frontier_plot"] = str(replay.frontier_plot(result, _frontier_path(ds.name, out), title=_frontier_title(ds.title)))
    out.update(replay.frontier_summary(result))
    out["policy"] = {name: _policy(cfg) for name, cfg in variants.items()}
    if not smoke:
        out["goal"] = _goal(ds.name, result)
    return out


def _title(title: str, metric: str) -> str:
    return f"{title}: batch-prequential {metric}, weekly batches"


def _frontier_title(title: str) -> str:
    return f"{title}: Driftline against fixed retraining schedules"


def _frontier_path(name: str, res: dict[str, Any]) -> Path:
    """Beside the metric-over-time plot (a replay.json written before the frontier plot has none)."""
    return Path(res.get("frontier_plot") or Path(res["plot"]).parent / f"frontier_{name}.png")


def redraw(payload: dict[str, Any]) -> list[Path]:
    """Both pictures of every data set, from a replay.json payload alone (no replay)."""
    from ml import replay

    drawn = []
    for name, res in payload["datasets"].items():
        if "plot" not in res:
            continue
        ds = next((d for d in [*DATASETS, SMOKE] if d.name == name), None)
        title = ds.title if ds else name
        result = replay.ReplayResult.from_dict(res)
        drawn.append(replay.plot(result, res["plot"], title=_title(title, res["metric"])))
        res["frontier_plot"] = str(replay.frontier_plot(result, _frontier_path(name, res), title=_frontier_title(title)))
        drawn.append(Path(res["frontier_plot"]))
    return drawn


def _goal(name: str, result: Any) -> dict[str, Any]:
    """Whether the default Driftline policy met this data set's goal (in this run)."""
    d = result.strategy("driftline")
    if name == "elec2":
        base = result.strategy("every_1")
        met = d.metric >= base.metric and d.retrains <= base.retrains / 4
        text = (f"accuracy {d.metric:.4f} vs {base.metric:.4f} every batch; {d.retrains} retrains vs at most "
                f"{base.retrains / 4:.0f}")
    elif name == "bike":
        base = result.strategy("every_1")
        met = d.metric <= base.metric and d.retrains <= base.retrains / 3
        text = f"MAE {d.metric:.2f} vs {base.metric:.2f} every batch; {d.retrains} retrains vs at most {base.retrains / 3:.0f}"
    else:
        predicted = result.batches - result.initial_batches
        met = d.retrains <= 0.05 * predicted
        text = f"{d.retrains} retrains over {predicted} batches (at most {0.05 * predicted:.1f})"
    return {"met": bool(met), "detail": text}


# ---- the markdown section -----------------------------------------------------------------------


def _table(name: str, res: dict[str, Any]) -> str:
    from ml.replay import ReplayResult, frontier_gaps, label

    ref = REFERENCE.get(name)
    metric = res["metric"]
    gaps = frontier_gaps(ReplayResult.from_dict(res))
    head = f"| strategy | {metric} | retrains | promotions | rejections | failed | rollbacks | vs schedule |"
    rule = "|---|---|---|---|---|---|---|---|"
    if ref:
        head += " ../shared/README.md |"
        rule += "---|"
    lines = [head, rule]
    fmt = (lambda v: f"{v:.3f}") if metric != "mae" else (lambda v: f"{v:.1f}")
    for s in res["strategies"]:
        gap = gaps.get(s["name"])
        vs = "" if s["name"] not in gaps else "outside" if gap is None else f"{gap:+.3f}" if metric != "mae" else f"{gap:+.1f}"
        row = (f"| {label(s['name'])} | {fmt(s['metric'])} | {s['retrains']} | {s['promotions']} | "
               f"{s['rejections']} | {s['failures']} | {s['rollbacks']} | {vs} |")
        if ref:
            row += f" {ref.get(s['name'], '')} |"
        lines.append(row)
    empty = " |" * 7
    if ref:
        lines.append(f"| error-rate alarm (ADWIN), quoted |{empty} {ref['adwin']} |")
        lines.append(f"| Evidently data-drift alarm, quoted |{empty} {ref['evidently']} |")
    if name == "elec2":
        lines.append(f"| no-change predictor (next = last label), quoted | {ELEC2_NO_CHANGE} |{empty[2:]} {ELEC2_NO_CHANGE} |")
        lines.append(f"| River adaptive random forest (row by row), quoted | {ELEC2_RIVER_ARF} |{empty[2:]} "
                     f"{ELEC2_RIVER_ARF} |")
    return "\n".join(lines)


def _frontier_section(name: str, res: dict[str, Any]) -> list[str]:
    """What the frontier picture shows, in words, and the picture."""
    from ml.replay import ReplayResult, frontier_gaps, label, schedule_frontier

    result = ReplayResult.from_dict(res)
    metric = res["metric"]
    points = schedule_frontier(result)
    gaps = frontier_gaps(result)
    better = "above" if result.greater_is_better else "below"
    ks = ", ".join(str(k) for k in sorted(p.every for p in points if p.every is not None))
    shown = ", ".join(f"{p.tag} {_num(metric, p.metric)} ({p.retrains})" for p in points)
    ahead = [label(n) for n, g in gaps.items() if g is not None and g > 0]
    default = gaps.get("driftline")
    verdict = ("" if default is None else
               f" The default policy is {_num(metric, abs(default))} {'better' if default > 0 else 'worse'} than a "
               f"fixed schedule with as many retrains ({'beats' if default > 0 else 'does not beat'} the cron).")
    verdict += (f" Variants on the better side: {len(ahead)} of {len(gaps)}"
                + (f" ({', '.join(ahead)})." if ahead else "."))
    return [
        (f"**Against fixed schedules.** The frontier joins the static model and retrain every k batches (k = {ks}) "
         f"by their number of retrains, {metric} (retrains): {shown}. *vs schedule* in the table is a Driftline "
         f"variant's {metric} against that line at its own number of retrains, signed so that + is better "
         f"({metric} {better} the line); between the static model and the sparsest schedule the line is only a "
         f"straight guess.{verdict}"),
        "",
        f"![{name}: retrains against {metric}](bench/{_frontier_path(name, res).name})",
    ]


def _policy(config: Any) -> str:
    """The policy in one line, as the YAML spells it."""
    from ml.config import format_duration

    def show(value: Any) -> str:
        return format_duration(value) if isinstance(value, timedelta) else str(value)

    t, p, r = config.triggers, config.promotion, config.rollback
    parts = [f"{k}: {show(v)}" for k, v in t.model_dump().items()
             if v not in (None, False, 0, timedelta(0)) and k not in ("on_new_labels", "schedule")]
    rollback = f"auto, allowed drop {r.allowed_drop}" if r.auto else "off"
    gate = f"shadow on {p.min_shadow_rows} labelled rows, " if p.gate == "shadow" else ""
    w = config.windows
    window = f"; window up to {format_duration(w.max_training)} when no drift is seen" if w.max_training else ""
    refit = "; refit on training + holdout once blessed" if p.refit else ""
    season = f"; drift reference one season back ({format_duration(w.season)})" if w.reference == "season" else ""
    return (f"triggers {', '.join(parts) or 'none'}; holdout {format_duration(w.holdout)}{window}{season}; gate "
            f"{gate}min improvement {p.min_improvement}, significance {p.significance}{refit}; rollback {rollback}")


def _intro(command: str, seconds: float, ks: str) -> list[str]:
    return [
        "## P3: adaptation quality on real drift (replay)",
        "",
        ("`driftline replay` (also `python -m driftline.replay_cli`) replays a time-ordered CSV or ARFF file batch by batch "
         "through the continuous-training loop itself: each batch is scored by the score step and each step is "
         "`ml.loop.run_cycle`, the DAG's own steps (rollback guard, window validation, Evidently drift, the "
         "trigger decision, training, the paired-bootstrap gate, promote or reject, record), with in-memory "
         "adapters for the store, the registry (the same `Registry` moves over a dict) and the tracker "
         "(`ml/memory.py`), so a two-year replay takes minutes. `tests/test_parity.py` checks that a stream "
         "played through real `dag.test()` runs and through the replay decides alike at every step. The same run "
         f"replays the baselines: a static model, retrain every k batches (k = {ks}), and retrain every "
         "batch on Driftline's candidate window (the newest `windows.holdout` left out, as Driftline leaves it "
         "out to judge the candidate). The static model and the fixed schedules, joined by their number of "
         "retrains, are the *schedule frontier*: what a cron of each size gets. Each data set's picture puts "
         "every Driftline variant beside it."),
        "",
        ("Protocol (batch-prequential, as in `../shared/README.md`): one-week batches; the first 4 train the "
         "first model; each later batch is predicted by each strategy's current model, then its labels are "
         "revealed, then the strategy may act; every retrain learns from the last 4 weeks of labelled rows; "
         "scikit-learn `HistGradientBoosting*` with default parameters. A *retrain* is a model trained after the "
         "first one; for Driftline that is a candidate, whether the gate promotes it or not. Metric: accuracy "
         "(Elec2, no-drift) or MAE (Bike) over every predicted row."),
        "",
        ("Since the replay runs the loop (it used to be a second copy of it), Elec2 and Bike give the figures "
         "the copy gave, for every variant, to the retrain: running the real steps first showed two defects "
         "of the loop that the copy did not have, fixed in the loop: the first champion scored its own "
         "training rows (stored before it existed) as if it had served them, and with no champion a drift "
         "check against the span before made the first model a drift retrain on one week. The no-drift "
         "stream's figures moved a little for every strategy, baselines included: its categorical features "
         "now reach HistGradientBoosting as native categoricals instead of a one-hot encoding."),
        "",
        (f"Reproduce: `{command}` ({seconds / 60:.0f} min on this machine), then `.venv/bin/python -m bench.report` "
         "to rebuild this page. One data set by hand:"),
        "",
        "```",
        "driftline replay ../shared/data/elec2/elecNormNew.arff --config bench/configs/elec2.yaml \\",
        "    --target class --batch-rows 336 --row-interval 30m --every 1,2,4,8 --plot elec2.png \\",
        "    --frontier-plot elec2_frontier.png --decisions elec2_decisions.csv",
        "driftline replay ../shared/data/bike_sharing/hour.csv --config bench/configs/bike.yaml \\",
        "    --target cnt --time dteday --hour-column hr --period 7d --every 1,2,4,8 --plot bike.png \\",
        "    --frontier-plot bike_frontier.png --decisions bike_decisions.csv",
        "```",
    ]


def _strategies(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in res["strategies"]}


def _num(metric: str, value: float) -> str:
    return f"{value:.1f}" if metric == "mae" else f"{value:.3f}"


def _goals(results: dict[str, Any]) -> list[str]:
    rows = ["| data set | goal | Driftline (default policy) | met |", "|---|---|---|---|"]
    for res in results.values():
        if "goal" in res:
            rows.append(f"| {res['title']} | {res['goal_text']} | {res['goal']['detail']} | "
                        f"{'yes' if res['goal']['met'] else '**no**'} |")
    return rows


def _findings(results: dict[str, Any]) -> list[str]:
    """What the variants show, with this run's numbers only."""
    real = {n: r for n, r in results.items() if "skipped" not in r}
    out: list[str] = []

    def each(fn: Any) -> str:
        parts = [(n, fn(_strategies(r), r["metric"])) for n, r in real.items()]
        return "; ".join(f"{n}: {text}" for n, text in parts if text)

    def run(s: dict, m: str, name: str) -> str:
        v = s[name]
        rejected = f", {v['rejections']} rejected" if name.startswith("driftline") else ""
        return f"{_num(m, v['metric'])} ({v['retrains']} retrains{rejected})"

    def gap(s: dict, m: str) -> str:
        if not {"every_1_held_out", "every_4", "every_8", "driftline"} <= set(s):
            return ""
        return (f"every batch {_num(m, s['every_1']['metric'])}, every batch without the newest holdout "
                f"{_num(m, s['every_1_held_out']['metric'])}, every 4 batches {run(s, m, 'every_4')}, "
                f"every 8 {run(s, m, 'every_8')}, Driftline {run(s, m, 'driftline')}")

    def last_retrains() -> str:
        from ml.replay import label

        parts = []
        for n, r in real.items():
            s = _strategies(r)
            shown = [(v, [e["batch"] for e in s[v]["events"] if e["kind"] == "retrain"]) for v in
                     ("driftline", "driftline_evaluation_reference", "driftline_served_reference") if v in s]
            if len(shown) == 2:
                parts.append(f"{n}: " + " vs ".join(f"{label(v)} at batch {b[-1] + 1 if b else '-'}" for v, b in shown)
                             + f" of {r['batches']}")
        return "; ".join(parts)

    def versus(name: str) -> Any:
        def show(s: dict, m: str) -> str:
            return f"{run(s, m, name)} vs {run(s, m, 'driftline')}" if name in s and "driftline" in s else ""
        return show

    text = each(gap)
    if text:
        out.append(f"- **Where the gap to retrain-every-batch comes from.** {text}. Leaving the newest 2 days out "
                   "of every training window, as Driftline's candidates must (the gate needs rows neither model "
                   "saw), costs only the difference between the first two numbers; the rest of the gap is "
                   "retraining less often, at the moments the triggers pick. On both real data sets Driftline "
                   "lands at or below what a fixed schedule of about the same size gets.")
    text = each(versus("driftline_no_backoff"))
    if text:
        out.append(f"- **Rejection backoff** (new: `triggers.rejection_backoff`), without it vs with it (the "
                   f"default): {text}. After a rejection the champion has just beaten a model trained on the "
                   "newest data; the backoff waits before trying again and restarts a time rule's count, which "
                   "is what keeps the *safety net* variant to a couple of candidates on the stationary stream.")
    text = each(versus("driftline_safety_net"))
    if text:
        out.append(f"- **A max-age safety net** (`max_model_age: 26w`) vs none (the default): {text}. It is the "
                   "only rule that fires on the stationary stream, and on the real data it did not pay in this "
                   "run.")
    text = "; ".join(part for part in (each(versus("driftline_evaluation_reference")),
                                       each(versus("driftline_served_reference"))) if part)
    if text:
        out.append(f"- **What the relative drop is measured against** (new: `triggers.drop_reference`), the other "
                   f"choice vs each data set's default: {text}. With `evaluation` (the champion's score on the "
                   "2-day holdout at promotion) a champion promoted on an easy holdout gets a bar it falls 10 % "
                   "below at once, and one promoted on a hard holdout a bar it rarely reaches: on Elec2 that champion "
                   f"served on for months (last retrain, {last_retrains()}). `served` (its accuracy over "
                   "its first week serving) is a steadier level on Elec2. On Bike it is worse: demand grows "
                   "through the two years, so a week's MAE is no level to hold a model to, and the holdout "
                   "evaluation stays Bike's default.")
    text = each(versus("driftline_label_free"))
    if text:
        out.append(f"- **Label-free trigger**: an Evidently data-drift alarm (drift share >= 0.3 of features, "
                   f"`ml/config.py`'s default) instead of the performance rule, vs the default: {text}. It is "
                   "silent on Elec2 until the Victoria columns stop being constant, then fires every few weeks; "
                   "on Bike the weather and seasons keep it busy.")
    text = each(versus("driftline_estimated_drop"))
    if text:
        out.append(f"- **Label-free estimate as a trigger** (new: `triggers.estimated_drop: 0.1`, CBPE, beside "
                   f"the default's live-metric rule; classifiers only, so not Bike) vs the default: {text}. This "
                   "replay reveals each batch's labels with the batch, so the estimate sees nothing the live "
                   "metric does not see at the same step; its use is labels that come late (how close it comes "
                   "to the realised metric: the *Label-free performance estimate* section).")
    levers = (
        ("driftline_refit", ("**Refit after the gate** (`promotion.refit: true`): once the gate passes a candidate, "
         "the same estimator is fitted again on its training rows plus the holdout and that refit is promoted, so "
         "the champion has seen the newest 2 days")),
        ("driftline_widen_window", ("**Wider window when no drift is seen** (`windows.max_training: 8w`): a "
         "retrain that answers no drift episode learns from up to 8 weeks instead of 4")),
        ("driftline_shadow_gate", ("**Shadow gate** (`promotion.gate: shadow`): the candidate learns every "
         "labelled row and is judged on the rows that come next, scored in shadow, once `min_shadow_rows` of "
         "them are labelled; no holdout is given up, promotion waits")),
        ("driftline_error_adwin", ("**Error-rate change detection** (`triggers.error_detector: {kind: adwin}`, "
         "river's ADWIN on the champion's served errors) instead of the relative drop")),
        ("driftline_error_adwin_drop", "**ADWIN beside the relative drop**"),
        ("driftline_error_page_hinkley", ("**Page-Hinkley** (`{kind: page_hinkley}`, river's defaults; Bike's "
         "scaled to bikes per hour) instead of the relative drop")),
        ("driftline_seasonal_reference", ("**Seasonal drift reference** (`windows.reference: season`, "
         "`season: 52w`, with the label-free drift trigger) vs the label-free trigger against the champion's "
         "training rows")),
        ("driftline_refit_widen", "**Refit and the wider window together**"),
        ("driftline_refit_error_adwin", "**Refit with ADWIN beside the relative drop**"),
        ("driftline_widen_short_cooldown", "**Wider window, cooldown one batch** (`cooldown: 1w`)"),
        ("driftline_refit_widen_short_cooldown", "**Refit, wider window, cooldown one batch**"),
        ("driftline_refit_widen_drop05", "**Refit, wider window, relative drop 5 %** (`max_relative_drop: 0.05`)"),
    )
    for name, what in levers:
        base = "driftline_label_free" if name == "driftline_seasonal_reference" else "driftline"
        parts = []
        for n, r in real.items():
            s, m = _strategies(r), r["metric"]
            if name in s and base in s:
                vs = (r.get("vs_schedule") or {}).get(name)
                signed = "n/a" if vs is None else (f"{vs:+.1f}" if m == "mae" else f"{vs:+.4f}")
                parts.append(f"{n}: {run(s, m, name)} vs {run(s, m, base)}, vs schedule {signed}")
        if parts:
            out.append(f"- {what}: " + "; ".join(parts) + ".")
    return out


POLICY = """\
### Where the goal stands (issue 10), and what to use

Goal: above the schedule frontier at its own retrain count (Elec2 +0.005 accuracy, Bike 1.0 MAE
better), a budget (Elec2 >= 0.774 with <= 33 retrains, Bike <= 40.5 MAE with <= 34), at most 2
retrains without drift. In this run (the table above; every figure is a row of it):

| goal | Elec2 | Bike | no drift |
|---|---|---|---|
| above the frontier | **not met**: best *refit, wider window, drop 5 %* +0.0044 (0.766, 23 retrains); *refit + wider window* +0.002; the default -0.001 | **met**: *wider window, cooldown one batch* +2.9 (40.4, 27); *wider window* +2.6; *refit, wider window, cooldown one batch* +2.2; the default -1.1 | |
| budget | **not met**: best 0.766 with 23 retrains (the frontier gives 0.765 at 32) | **met**: *wider window, cooldown one batch* 40.4 MAE with 27 retrains | |
| quiet | | | **met**: 0 retrains (default), at most 2 for every variant |

*One configuration for both* comes from two levers, each sound on its own terms: **refit after the
gate** (`promotion.refit: true`: the blessed candidate is fitted again on its rows plus the holdout, so
no labelled row is given up) and **a wider window when no drift is seen** (`windows.max_training`,
twice `windows.training`: a stable world gives more rows, a drift episode still trains from its onset).
Together, with a one-batch cooldown, they sit above the frontier on both real data sets (Elec2 +0.002,
Bike +2.2) and train nothing on the stationary stream. That is what we recommend trying first on a
new model; we have not made it the default of `bench/configs/*.yaml` because the evidence is thin:

- **Selection on the same data.** The last three variants of each table (*widen short cooldown*,
  *refit widen short cooldown*, *refit widen drop05*) were picked after about a dozen hand-tried
  combinations on these same two data sets (listed below); their margins over the frontier are
  optimistic by that much. The levers were defined before; the combinations were not.
- **The levers disagree between data sets.** The wider window alone costs Elec2 0.019 (a volatile
  market: 8-week-old prices mislead) and gains Bike 2.6 MAE (a slowly growing demand: more weeks help).
  Refit alone costs both a little in this run (Elec2 -0.005, Bike -0.7). A user picks by the
  kind of drift they expect: *volatile* (Elec2-like: keep the 4-week window, refit) or *slowly moving*
  (Bike-like: widen to 8 weeks); on data not in `../shared/`, replay a month of your own first
  (`driftline replay --decisions`).
- **Why Elec2 stays short of +0.005.** Its regime moves week to week: a performance trigger acts one
  batch after a drop is measured, so it trails the change it answers, while a fixed schedule every 3
  batches (43 retrains, 0.774) simply never lets a model get old. No trigger here sees a change before
  its labels do (the label-free estimate and the drift alarm only say the inputs moved; on Elec2 they
  move all the time). The no-change predictor's 0.853 shows how much is in label autocorrelation,
  which no feature-based weekly batch model here uses.
- **Levers that did not pay here:** the shadow gate (Bike -4.2: a candidate waits for 200 labelled rows
  in shadow while the champion keeps serving), ADWIN on the served errors (as many retrains as
  the relative drop or more, for no better score), Page-Hinkley (Bike +0.8 with half the retrains,
  Elec2 -0.015), the seasonal reference on Bike (-3.7,
  worse than the same label-free trigger against the champion's training rows, -2.1), the label-free estimate as a
  trigger (labels arrive with the batch in this replay, so it cannot be earlier than the live metric).

Exploration this round (same replay code; each row is `bench/configs/<data set>.yaml` patched; Elec2
accuracy / Bike MAE (retrains), vs the frontier):

| patch | Elec2 | Bike |
|---|---|---|
| refit, drop 5 % | 0.760 (24), -0.003 | |
| refit, cooldown 1w | 0.753 (15), -0.005 | |
| refit, wider window, drop 5 %, cooldown 1w | 0.766 (23), +0.004 | |
| refit, wider window, no rejection backoff | 0.760 (15), +0.002 | |
| refit, wider window, drop 5 %, no backoff | 0.764 (29), -0.000 | |
| wider window (12w) | | 41.3 (24), +2.5 |
| wider window, ADWIN beside the drop | | 42.1 (33), +0.4 |
| wider window, drop 5 % | | 41.3 (32), +1.3 |

### Policy defaults and why

The default is chosen for the things every run separates: few candidates, none trained for nothing
on a stationary stream, and no large loss against a schedule of similar size.
It is the same in the three `bench/configs/*.yaml` except where said (durations assume weekly
batches: scale them with your cadence):

```yaml
windows:   {holdout: 2d}
triggers:  {drift_share: null, max_relative_drop: 0.1, max_model_age: null, cooldown: 2w, rejection_backoff: 4w,
            drop_reference: evaluation}   # Elec2: served
promotion: {significance: 0.25}           # Elec2: 0.45
rollback:  {allowed_drop: 0.05}           # accuracy; Bike: 4.0 (MAE, bikes per hour)
```

- **Performance rule, not the drift alarm**: the label-free variant trains more candidates for a
  worse Elec2 accuracy, and on Bike for an MAE no better than retraining every 4 batches with fewer
  retrains.
- **Cooldown 2 batches, rejection backoff 4 batches**: without them a weekly metric this noisy trains a
  candidate about every other week, most of them rejected (first row of the exploratory replays below).
- **No max age**: it costs candidates on the stationary stream and did not pay on the real data here.
  It remains the right addition where a stuck champion is worse than a wasted candidate.
- **Holdout 2 days, significance 0.25**: the holdout is data every candidate gives up; 2 days keep that
  small, and on 2 days of rows a one-sided 95 % bound rejects most real gains. **Elec2: the served
  level and significance 0.45** (promote when the candidate is better on the holdout at all): each
  alone did nothing or harm there, together they gained 1.4 points for 3 more retrains (rows below). **Rollback allowed drop
  0.05** (4 bikes/h on Bike): a weekly accuracy moves by more than 0.02 on noise alone, and each
  rollback brings back an older model.

`ml/config.py`'s own defaults are unchanged: the DAG models set their policy explicitly (e.g.
`models/credit_default.yaml`, daily batches), and these durations only make sense for a weekly cadence.

Exploratory replays that led here (same replay code, policies patched by hand while choosing; not
regenerated by the command above; gate significance 0.05 and rollback allowed drop 0.02 unless said):

| policy | Elec2 accuracy (retrains, rejected) | Bike MAE (retrains, rejected) | no drift retrains |
|---|---|---|---|
| drop 10 %, max age 8w (Bike 4w), holdout 7d, no cooldown | 0.765 (59, 36) | 42.1 (73, 41) | |
| drop 10 %, cooldown 2w, holdout 7d | 0.743 (15, 4) | 43.3 (33, 13) | |
| drop 10 %, cooldown 2w, holdout 2d | 0.758 (41, 24) | 44.1 (32, 11) | |
| + max age 12w, significance 0.25, allowed drop 0.05 | 0.754 (34, 13) | 42.5 (36, 10) | 9 |
| + rejection backoff 4w (age counted from the data) | 0.751 (27, 13) | 44.2 (32, 7) | 10 |
| + age counted from the last rejection | 0.752 (27, 12) | 45.2 (30, 7) | 4 |
| same, no max age (Bike allowed drop 0.05) | 0.746 (14, 7) | 45.2 (30, 7) | 0 |
| the defaults above (Bike: `bench/configs/bike.yaml`), drop measured against the first week served (`drop_reference: served`; Bike: from 100 rows) | 0.706 (21, 8) | 51.2 (22, 5) | |
| the defaults above, significance 0.45 (drop against the evaluation) | 0.746 (14, 7) | 45.3 (26, 3) | |
| the defaults above, both (Elec2's default now) | 0.760 (17, 5) | | 0 |
| Elec2's default, no rejection backoff | 0.749 (29, 11) | | |
"""

LEFT_OUT = """### Left out, and why

- **The registry and the store** are not replayed (champion in memory): the decisions are the same
  functions, and a two-year replay through MLflow would take hours.
- **ADWIN, the Evidently alarm of the reference table, the no-change predictor and River's adaptive
  random forest** are quoted from `../shared/README.md`, not re-run (Driftline's own ADWIN and
  Page-Hinkley rows use river's detectors, as a trigger inside the loop). The
  no-change predictor's 0.853 on Elec2 comes from label autocorrelation (the next half-hour's label is
  usually the last one), which no feature-based batch model here uses.
"""


def markdown(results: dict[str, Any], *, smoke: bool, command: str, seconds: float) -> str:
    from ml.replay import label

    ks = sorted({int(s["name"].split("_")[1]) for res in results.values() for s in res.get("strategies", [])
                 if re.fullmatch(r"every_\d+", s["name"])})
    lines = _intro(command, seconds, ", ".join(map(str, ks)) or "none")
    if smoke:
        lines += ["", ("**Smoke run** (tiny synthetic stream, fast estimator): checks the machinery; the numbers "
                       "mean nothing.")]
    for name, res in results.items():
        lines += ["", f"### {res.get('title', name)}", ""]
        if "skipped" in res:
            lines.append(f"Skipped: {res['skipped']}.")
            continue
        config = Path(res["configs"]["driftline"]["source"]).name
        lines.append(f"{res['rows']} rows, {res['batches']} batches of {res['period']}, "
                     f"{res['batches'] - res['initial_batches']} predicted; label delay {res['label_delay']} "
                     f"batch(es). Driftline policies (`bench/configs/{config}`, variants patch it):")
        lines += [""] + [f"- {label(n)}: {text}" for n, text in res["policy"].items()]
        lines += ["", _table(name, res), ""]
        if "goal" in res:
            goal = res["goal"]
            lines.append(f"Goal ({res['goal_text']}): **{'met' if goal['met'] else 'not met'}**: {goal['detail']}.")
            lines.append("")
        lines += _frontier_section(name, res) + ["", f"![{name}](bench/{Path(res['plot']).name})"]
    if not smoke:
        lines += ["", "### Goals", "", *_goals(results), "", "### What the variants show", "", *_findings(results),
                  "", POLICY, LEFT_OUT]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a small synthetic run (< 60 s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where replay.json and replay.md go")
    parser.add_argument("--only", help="comma-separated data sets (elec2, bike, no_drift)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite replay.md and both plots of each data set (metric over time, retrains against "
                             "the metric) from the replay.json already in --out (no replay)")
    args = parser.parse_args(argv)
    if args.markdown_only:
        payload = json.loads((args.out / "replay.json").read_text())
        redraw(payload)  # replay.json itself is left as it is
        (args.out / "replay.md").write_text(markdown(payload["datasets"], smoke=payload["smoke"],
                                                     command=payload["command"], seconds=payload["seconds"]))
        print(f"wrote {args.out / 'replay.md'} and the plots")
        return 0
    if args.smoke and args.out.resolve() == RESULTS.resolve():
        parser.error("--smoke writes to a temporary directory: give --out DIR (never over the real results)")
    datasets = [SMOKE] if args.smoke else DATASETS
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        unknown = wanted - {d.name for d in datasets}
        if unknown:
            parser.error(f"--only: unknown data set(s) {sorted(unknown)}; choose from {[d.name for d in datasets]}")
        datasets = [d for d in datasets if d.name in wanted]
    plot_dir = args.out if args.smoke else PLOTS
    args.out.mkdir(parents=True, exist_ok=True)
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    results: dict[str, Any] = {}
    # One thread per fit: the machines are shared and small, and OpenMP threads fighting over two
    # cores made each HistGradientBoosting fit several times slower. The numbers do not depend on it.
    with threadpool_limits(1), tempfile.TemporaryDirectory() as tmp:
        for ds in datasets:
            print(f"{ds.name}: replaying ...", file=sys.stderr, flush=True)
            res = run_dataset(ds, Path(tmp), plot_dir, smoke=args.smoke)
            res.update(title=ds.title, goal_text=ds.goal)
            results[ds.name] = res
    seconds = time.perf_counter() - started
    command = ".venv/bin/python -m bench.replay" + (" --smoke --out DIR" if args.smoke else "")
    payload = {"benchmark": "replay", "smoke": args.smoke, "seconds": round(seconds, 1), "machine": _machine(),
               "command": command, "datasets": results}
    (args.out / "replay.json").write_text(json.dumps(payload, indent=1, default=str))
    (args.out / "replay.md").write_text(markdown(results, smoke=args.smoke, command=command, seconds=seconds))
    print(f"wrote {args.out / 'replay.json'} and {args.out / 'replay.md'} ({seconds:.0f} s)")
    for name, res in results.items():
        if "skipped" in res:
            print(f"{name}: skipped: {res['skipped']}")
        elif "goal" in res:
            print(f"{name}: goal {'met' if res['goal']['met'] else 'not met'}: {res['goal']['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
