"""P1: what a drift check costs. Driftline's drift step against a plain Evidently ``DataDriftPreset``
(the way tutorials use it) and against the near-limit, scipy two-sample tests on the same columns.

Same seeded data for every contender: reference and current windows of equal size, 20 numeric
columns (or 14 numeric + 6 categorical), drift injected in a few known columns. Contenders:

* ``driftline``       ``ml.drift.compute_drift`` with no report kept (Evidently's stat tests, no Report)
* ``driftline_html``  the same with ``report_path`` (a ValueDrift Report, HTML written to disk)
* ``preset``          ``Report([DataDriftPreset()]).run(current, reference)``, nothing else
* ``scipy``           ``scipy.stats.ks_2samp`` per numeric column, ``chi2_contingency`` per categorical
                      one, p < 0.05 = drifted

Each contender runs in a fresh subprocess per case (imports and a warm-up on 2,000 rows happen
before the clock starts). Wall and CPU time are taken around the one call; peak memory is the
process's peak resident set size (VmHWM) during the call, after resetting it through
``/proc/self/clear_refs`` (Linux), next to the resident size just before the call. The preset's
per-column verdicts come from its own run: the per-column drift table it computes and renders
(legacy ``DataDriftTable``; ``DriftedColumnsCount`` counts the same verdicts, checked), and the
preset's ``ValueDrift`` scores are checked against that table.

Run: ``.venv/bin/python -m bench.drift_cost`` (minutes; the preset alone takes minutes at 1M rows)
or ``--smoke`` (tiny sizes, all in one subprocess, into a temp dir unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
NAME = "drift_cost"
COMMAND = f".venv/bin/python -m bench.{NAME}"
METHODS = ("driftline", "driftline_html", "preset", "scipy")
SIZES = (10_000, 100_000, 1_000_000)
SMOKE_SIZES = (1_500,)
CASES = ("numeric", "mixed")
SEED = 2024
P_VALUE = 0.05  # the scipy contender's significance level
WARMUP_ROWS = 2_000
GOAL_RATIO = 5.0

# Numeric column i uses NUMERIC_KINDS[i % 10]; drift is injected only where listed in DRIFT.
NUMERIC_KINDS = (
    "normal", "lognormal", "exponential", "uniform", "student_t",
    "poisson", "bimodal", "three_values", "gamma", "beta",
)
N_NUMERIC = {"numeric": 20, "mixed": 14}
CATEGORIES = {"cat0": 3, "cat1": 5, "cat2": 10, "cat3": 30, "cat4": 100, "cat5": 2}
DRIFT = {
    "numeric": ("x00", "x01", "x06", "x07", "x10"),
    "mixed": ("x00", "x06", "cat0", "cat3"),
}


# --- data ------------------------------------------------------------------------------------


def _numeric(rng: np.random.Generator, kind: str, n: int, drift: bool, wide: bool) -> np.ndarray:
    scale = 1.5 if drift and wide else 1.0  # x10 (a normal) drifts by spread, not by location
    if kind == "normal":
        return rng.normal(0.5 if drift and not wide else 0.0, scale, n)
    if kind == "lognormal":
        return rng.lognormal(0.0, 0.75, n) * (1.3 if drift else 1.0)
    if kind == "exponential":
        return rng.exponential(1.0, n)
    if kind == "uniform":
        return rng.uniform(0.0, 1.0, n)
    if kind == "student_t":
        return rng.standard_t(5, n)
    if kind == "poisson":
        return rng.poisson(4.0, n).astype(float)
    if kind == "bimodal":
        upper = rng.random(n) < (0.8 if drift else 0.5)
        return np.where(upper, rng.normal(2.0, 1.0, n), rng.normal(-2.0, 1.0, n))
    if kind == "three_values":  # at most 5 distinct values: Evidently picks Jensen-Shannon, not Wasserstein
        return rng.choice([0.0, 1.0, 2.0], n, p=[0.2, 0.3, 0.5] if drift else [0.5, 0.3, 0.2])
    if kind == "gamma":
        return rng.gamma(2.0, 2.0, n)
    if kind == "beta":
        return rng.beta(2.0, 5.0, n)
    raise ValueError(kind)


def _categorical(rng: np.random.Generator, levels: int, n: int, drift: bool) -> np.ndarray:
    labels = np.array([f"level_{i:03d}" for i in range(levels)], dtype=object)
    weights = 1.0 / np.arange(1, levels + 1)  # Zipf-like: a few common levels, a long tail
    if drift:
        weights = weights[::-1]
    return labels[rng.choice(levels, n, p=weights / weights.sum())]


def make_frames(case: str, n: int, seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Reference and current windows (n rows each) and each column's kind."""
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; expected one of {CASES}")
    rng = np.random.default_rng(seed)
    frames = []
    for window in ("reference", "current"):
        data: dict[str, np.ndarray] = {}
        for i in range(N_NUMERIC[case]):
            name = f"x{i:02d}"
            drift = window == "current" and name in DRIFT[case]
            data[name] = _numeric(rng, NUMERIC_KINDS[i % len(NUMERIC_KINDS)], n, drift, wide=i == 10)
        if case == "mixed":
            for name, levels in CATEGORIES.items():
                data[name] = _categorical(rng, levels, n, window == "current" and name in DRIFT[case])
        frames.append(pd.DataFrame(data))
    kinds = {c: ("numerical" if c.startswith("x") else "categorical") for c in frames[0].columns}
    return frames[0], frames[1], kinds


def data_hash(reference: pd.DataFrame, current: pd.DataFrame) -> str:
    """Fingerprint of both windows, so the report can show every contender saw the same data."""
    digest = [int(pd.util.hash_pandas_object(f, index=True).sum()) for f in (reference, current)]
    return f"{digest[0] & 0xFFFFFFFFFFFF:012x}-{digest[1] & 0xFFFFFFFFFFFF:012x}"


# --- contenders: run (timed) and verdicts (not timed) ----------------------------------------

Verdicts = dict[str, dict[str, Any]]


def _features(kinds: dict[str, str]) -> list[Any]:
    from ml.config import FeatureSpec

    return [FeatureSpec(name=c, kind=k) for c, k in kinds.items()]


def _run_driftline(reference, current, kinds, workdir: Path) -> Any:
    from ml.drift import compute_drift

    return compute_drift(reference, current, _features(kinds))


def _run_driftline_html(reference, current, kinds, workdir: Path) -> Any:
    from ml.drift import compute_drift

    return compute_drift(reference, current, _features(kinds), report_path=workdir / "drift.html")


def _verdicts_driftline(result, kinds) -> Verdicts:
    return {f.name: {"method": f.method, "threshold": f.threshold, "score": f.score, "drifted": f.drifted}
            for f in result.features}


def _run_preset(reference, current, kinds, workdir: Path) -> Any:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    return Report([DataDriftPreset()]).run(current, reference)


def _verdicts_preset(snapshot, kinds) -> Verdicts:
    from evidently.legacy.metrics import DataDriftTable

    from ml.drift import _method_id

    # The preset's per-column drift table, computed inside its run() and cached in its context:
    # this lookup returns the cached result (same fingerprint), it computes nothing.
    table, _ = snapshot.context.get_legacy_metric(DataDriftTable(), None, None)
    data = snapshot.dict()
    count = next(m["value"]["count"] for m in data["metrics"] if m["config"]["type"].endswith("DriftedColumnsCount"))
    value_drift = {m["config"]["column"]: m["value"] for m in data["metrics"]
                   if m["config"]["type"].endswith("ValueDrift")}
    verdicts = {}
    for name, col in table.drift_by_columns.items():
        kind = {"num": "numerical", "cat": "categorical"}.get(col.column_type, col.column_type)
        if kind != kinds[name]:
            raise RuntimeError(f"preset typed column {name} as {kind}, the benchmark declares {kinds[name]}")
        if value_drift[name] != col.drift_score:
            raise RuntimeError(f"preset ValueDrift and drift table disagree on {name}")
        verdicts[name] = {"method": _method_id(col.stattest_name), "threshold": col.stattest_threshold,
                          "score": float(col.drift_score), "drifted": bool(col.drift_detected)}
    if count != sum(v["drifted"] for v in verdicts.values()):
        raise RuntimeError("preset DriftedColumnsCount disagrees with its drift table")
    return verdicts


def _run_scipy(reference, current, kinds, workdir: Path) -> Verdicts:
    from scipy import stats

    out: Verdicts = {}
    for name, kind in kinds.items():
        ref, cur = reference[name].dropna(), current[name].dropna()
        if kind == "numerical":
            p = float(stats.ks_2samp(ref.to_numpy(), cur.to_numpy()).pvalue)
            method = "ks_2samp"
        else:
            levels = pd.Index(ref.unique()).union(pd.Index(cur.unique()))
            table = np.vstack([ref.value_counts().reindex(levels, fill_value=0).to_numpy(),
                               cur.value_counts().reindex(levels, fill_value=0).to_numpy()])
            p = float(stats.chi2_contingency(table).pvalue)
            method = "chi2_contingency"
        out[name] = {"method": method, "threshold": P_VALUE, "score": p, "drifted": p < P_VALUE}
    return out


CONTENDERS: dict[str, tuple[Callable[..., Any], Callable[[Any, dict[str, str]], Verdicts]]] = {
    "driftline": (_run_driftline, _verdicts_driftline),
    "driftline_html": (_run_driftline_html, _verdicts_driftline),
    "preset": (_run_preset, _verdicts_preset),
    "scipy": (_run_scipy, lambda verdicts, kinds: verdicts),
}


# --- measuring, inside the worker process ----------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) for this process; False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    try:
        return _status_kb("VmHWM") / 1024
    except (OSError, RuntimeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    try:
        return _status_kb("VmRSS") / 1024
    except (OSError, RuntimeError):
        return float("nan")


def measure(
    case: str, n: int, methods: list[str], repeats: int, workdir: Path, warmup: bool = True
) -> list[dict[str, Any]]:
    reference, current, kinds = make_frames(case, n)
    fingerprint = data_hash(reference, current)
    small = make_frames(case, min(WARMUP_ROWS, n), seed=SEED + 1)
    out = []
    for method in methods:
        run, read = CONTENDERS[method]
        t0 = time.perf_counter()
        if warmup:
            run(small[0], small[1], small[2], workdir)  # imports and lazy set-up, off the clock
        warmup_s = time.perf_counter() - t0
        walls, cpus, peaks, starts, verdicts = [], [], [], [], None
        for _ in range(repeats):
            result = None
            gc.collect()
            resettable = _reset_peak()
            starts.append(_rss_mb())
            w0, c0 = time.perf_counter(), time.process_time()
            result = run(reference, current, kinds, workdir)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            # VmHWM is synced from per-thread RSS counters lazily, so it can trail VmRSS by a
            # few pages; the peak is at least what was resident at either end of the run.
            peaks.append(max(_peak_mb(), _rss_mb(), starts[-1]))
            got = read(result, kinds)
            if verdicts is not None and got != verdicts:
                raise RuntimeError(f"{method} gave different results on a repeat")
            verdicts = got
            del result
        out.append({
            "case": case, "rows": n, "method": method, "repeats": repeats,
            "wall_s": min(walls), "cpu_s": min(cpus), "wall_s_all": walls, "cpu_s_all": cpus,
            "peak_rss_mb": max(peaks), "rss_before_mb": min(starts),
            "peak_over_start_mb": max(p - s for p, s in zip(peaks, starts)),
            "memory_method": "VmHWM after clear_refs" if resettable else "ru_maxrss (whole process)",
            "warmup_s": warmup_s, "data_hash": fingerprint, "columns": verdicts,
        })
        gc.collect()
    return out


def _worker(spec_path: Path, out_path: Path) -> None:
    jobs = json.loads(spec_path.read_text())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for job in jobs:
            rows += measure(job["case"], job["rows"], job["methods"], job["repeats"], Path(tmp), job["warmup"])
    out_path.write_text(json.dumps(rows))


# --- orchestration, in the parent ------------------------------------------------------------


def _spawn(jobs: list[dict[str, Any]], tmp: Path) -> list[dict[str, Any]]:
    """Run the jobs in one fresh worker process and return its measurements."""
    tag = "_".join(f"{j['case']}-{j['rows']}-{'+'.join(j['methods'])}" for j in jobs)[:150]
    spec, out = tmp / f"{tag}.spec.json", tmp / f"{tag}.out.json"
    spec.write_text(json.dumps(jobs))
    # Evidently's Jensen-Shannon sums over a Python set of category labels, whose order follows the
    # per-process string-hash seed: fixed, so scores from different processes compare bit for bit.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, "-m", f"bench.{NAME}", "--worker", str(spec), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {tag} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _repeats(n: int) -> int:
    return 3 if n <= 10_000 else 2 if n <= 100_000 else 1


def compare(rows: list[dict[str, Any]]) -> None:
    """Per-column agreement of every contender with the preset of the same case and size."""
    presets = {(r["case"], r["rows"]): r for r in rows if r["method"] == "preset"}
    for row in rows:
        preset = presets.get((row["case"], row["rows"]))
        if preset is None:
            continue
        if row["data_hash"] != preset["data_hash"]:
            raise RuntimeError(f"{row['method']} saw different data than the preset ({row['case']}, {row['rows']})")
        cols = preset["columns"]
        if set(row["columns"]) != set(cols):
            raise RuntimeError(f"{row['method']} reported other columns than the preset")
        row["n_columns"] = len(cols)
        row["agree_with_preset"] = sum(row["columns"][c]["drifted"] == cols[c]["drifted"] for c in cols)
        row["disagreements"] = sorted(c for c in cols if row["columns"][c]["drifted"] != cols[c]["drifted"])
        row["same_method_threshold_score_as_preset"] = all(
            (row["columns"][c]["method"], row["columns"][c]["threshold"], row["columns"][c]["score"])
            == (cols[c]["method"], cols[c]["threshold"], cols[c]["score"]) for c in cols
        )
        row["drifted"] = sorted(c for c in cols if row["columns"][c]["drifted"])
        row["wall_ratio_preset_over_this"] = preset["wall_s"] / row["wall_s"]
        row["cpu_ratio_preset_over_this"] = preset["cpu_s"] / row["cpu_s"]


def goal(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The issue's goal at the largest size: driftline >= 5x faster than the preset, identical
    per-column verdicts, no more peak memory. "Faster" must hold on wall time and on CPU time: on
    this shared machine either can be distorted (other jobs' load; threads)."""
    out = {}
    for case in CASES:
        by = {r["method"]: r for r in rows if r["case"] == case and r["rows"] == n}
        if "driftline" not in by or "preset" not in by:
            continue
        d, p = by["driftline"], by["preset"]
        checks = {
            "wall_ratio": d["wall_ratio_preset_over_this"],
            "cpu_ratio": d["cpu_ratio_preset_over_this"],
            "faster_5x_wall": d["wall_ratio_preset_over_this"] >= GOAL_RATIO,
            "faster_5x_cpu": d["cpu_ratio_preset_over_this"] >= GOAL_RATIO,
            "preset_wall_over_cpu": p["wall_s"] / p["cpu_s"],
            "identical_verdicts": d["agree_with_preset"] == d["n_columns"],
            "identical_methods_thresholds_scores": d["same_method_threshold_score_as_preset"],
            "peak_rss_mb": d["peak_rss_mb"], "preset_peak_rss_mb": p["peak_rss_mb"],
            "no_more_peak_memory": d["peak_rss_mb"] <= p["peak_rss_mb"],
        }
        checks["met"] = all(checks[k] for k in ("faster_5x_wall", "faster_5x_cpu", "identical_verdicts",
                                                 "no_more_peak_memory"))
        out[case] = checks
    return {"rows": n, "target_ratio": GOAL_RATIO, "cases": out}


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem_gb = _meminfo_gb()
    except OSError:
        mem_gb = None
    return {
        "cpu": cpu or platform.processor(), "cores": os.cpu_count(), "memory_gb": mem_gb,
        "platform": platform.platform(), "python": platform.python_version(),
        "evidently": version("evidently"), "pandas": pd.__version__, "numpy": np.__version__,
        "scipy": version("scipy"), "load_average_start": list(os.getloadavg()),
    }


def _meminfo_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    raise OSError("no MemTotal")


# --- report ----------------------------------------------------------------------------------

LABELS = {
    "driftline": "Driftline (no HTML)",
    "driftline_html": "Driftline, HTML kept",
    "preset": "DataDriftPreset",
    "scipy": "scipy KS / chi²",
}


def _rows_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n % 1000 == 0 else str(n))


def markdown(data: dict[str, Any]) -> str:
    rows, m = data["results"], data["machine"]
    lines = [
        "## Drift-check cost",
        "",
        ("Driftline's drift step against a plain Evidently `DataDriftPreset` "
         "(`Report([DataDriftPreset()]).run(current, reference)`, as tutorials use it) and against "
         "scipy two-sample tests (KS per numeric column, chi² per categorical one, p < 0.05) on the "
         "same data in the same run. Reference and current have equal size; *numeric* is 20 numeric "
         f"columns (drift injected in {', '.join(DRIFT['numeric'])}), *mixed* is 14 numeric + 6 "
         f"categorical (drift in {', '.join(DRIFT['mixed'])}). ") + (
            "Smoke run: all contenders in one process, one repeat each, no warm-up (imports are on "
            "the clock), so these times mean nothing. " if data["smoke"] else
            "Each contender runs in a fresh process per case; imports and a warm-up on 2,000 rows "
            "are off the clock. Times are the best of the repeats (3 at 10k, 2 at 100k, 1 at 1M). "
        ) + ("Peak RSS is the process's peak resident memory during the call (VmHWM, reset through "
             "`/proc/self/clear_refs` just before it), so it includes the data and the imports already "
             "loaded; *over start* is that peak minus the resident memory just before the call."),
        "",
        ("*Agree* counts columns whose drift verdict equals the preset's own per-column verdict (its "
        "drift table, the one its HTML shows and `DriftedColumnsCount` counts). *Speed-up* is the "
        "preset's wall time divided by the contender's, with the CPU-time ratio in brackets. This "
        "machine is shared, so wall times carry other jobs' load; CPU time counts all of a "
        "process's threads (NumPy/pandas sometimes use both cores, so CPU can exceed wall)."),
        "",
        "| Case | Rows | Contender | Wall s | CPU s | Peak RSS MB | Over start MB | Agree | Speed-up |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        agree = f"{r['agree_with_preset']}/{r['n_columns']}" if "agree_with_preset" in r else "–"
        if r["method"] == "preset":
            speed = "1×"
        elif "wall_ratio_preset_over_this" in r:
            speed = f"{r['wall_ratio_preset_over_this']:.1f}× ({r['cpu_ratio_preset_over_this']:.1f}×)"
        else:
            speed = "–"
        lines.append(
            f"| {r['case']} | {_rows_label(r['rows'])} | {LABELS[r['method']]} | {r['wall_s']:.2f} | "
            f"{r['cpu_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['peak_over_start_mb']:.0f} | {agree} | {speed} |"
        )
    lines += ["", ("Disagreements with the preset, and whether Driftline reproduced the preset's method, "
              "threshold and score exactly:"), ""]
    for r in rows:
        if r["method"] == "preset" or "disagreements" not in r:
            continue
        same = r["same_method_threshold_score_as_preset"]
        note = ("identical method, threshold and score for every column" if same else
                "methods or scores differ from the preset's")
        dis = ", ".join(
            f"{c} (flagged {'here' if r['columns'][c]['drifted'] else 'by the preset'} only; "
            f"{'drift injected' if c in DRIFT[r['case']] else 'no drift injected'})"
            for c in r["disagreements"]
        ) or "none"
        lines.append(f"- {r['case']} {_rows_label(r['rows'])}, {LABELS[r['method']]}: disagreements: {dis}"
                     + (f"; {note}" if r["method"].startswith("driftline") else ""))
    g = data["goal"]
    if g is None:
        lines += ["", "Smoke run: the goal (at 1M rows) is judged only on a full run."]
    else:
        lines += ["", (f"**Goal at {_rows_label(g['rows'])} rows** (Driftline ≥ {GOAL_RATIO:g}× faster "
                       "than the preset, identical per-column verdicts, no more peak memory):"), ""]
        for case, c in g["cases"].items():
            verdict = "**met**" if c["met"] else "**not met**"
            load_note = (
                f" (the preset's wall time was {c['preset_wall_over_cpu']:.1f}× its CPU time here: other "
                "jobs' load stretched it, so the CPU ratio is the conservative figure)"
                if c["preset_wall_over_cpu"] > 1.3 else ""
            )
            lines.append(
                f"- {case}: {verdict} — {c['wall_ratio']:.1f}× faster in wall time and "
                f"{c['cpu_ratio']:.1f}× in CPU time{load_note}; verdicts "
                f"{'identical' if c['identical_verdicts'] else 'NOT identical'} "
                f"({'same' if c['identical_methods_thresholds_scores'] else 'different'} methods, "
                "thresholds and scores), peak RSS "
                f"{c['peak_rss_mb']:.0f} MB vs the preset's {c['preset_peak_rss_mb']:.0f} MB."
            )
        if not g["cases"]:
            lines.append("- not measured in this run.")
    lines += [
        "",
        ("Nothing is sampled: every contender sees every row. (Driftline's method chooser looks at "
        "1,001-row prefixes only to pick the method when they already decide Evidently's choice; the "
        "tests in tests/test_drift.py show it picks what Evidently picks on the full data.) "
        "The scipy rows are the near-limit for speed, not verdicts to match: a p-value test at 0.05 "
        "flags about one column in twenty without any drift by chance, and on large samples it also "
        "flags differences too small to matter, while Evidently's defaults above 1,000 rows are "
        "distances with fixed thresholds."),
        "",
        f"Command: `{data['command']}`" + (" (smoke run: tiny sizes, not a result)" if data["smoke"] else ""),
        "",
        (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, {m['platform']}; Python "
        f"{m['python']}, Evidently {m['evidently']}, pandas {m['pandas']}, NumPy {m['numpy']}, SciPy "
        f"{m['scipy']}. Shared with other jobs: load average {m['load_average_start'][0]:.1f} at the "
        f"start, {m['load_average_end'][0]:.1f} at the end. Total run {data['elapsed_s'] / 60:.1f} min."),
        "",
    ]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """NaN/inf (not valid JSON) as None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one process (< 60 s)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="rows per window")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the goal and the Markdown from an earlier run's JSON (next to it)")
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    if args.render:
        data = json.loads(args.render.read_text())
        data["goal"] = None if data["smoke"] else goal(data["results"], max(data["sizes"]))
        _write(data, args.render.parent)
        return 0
    if args.out is None:
        # A smoke run never overwrites the real results.
        args.out = Path(tempfile.mkdtemp(prefix="drift_cost_smoke_")) if args.smoke else ROOT / "bench" / "results"
    sizes = args.sizes or (SMOKE_SIZES if args.smoke else SIZES)
    started = time.perf_counter()
    info = machine()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            # One process for everything: the smoke run checks the machinery, and each fresh
            # process pays Evidently's import (seconds) again.
            # No warm-up either: smoke timings include imports and mean nothing.
            jobs = [{"case": c, "rows": n, "methods": list(METHODS), "repeats": 1, "warmup": False}
                    for n in sizes for c in args.cases]
            results += _spawn(jobs, Path(tmp))
        else:
            for n in sizes:
                for case in args.cases:
                    for method in METHODS:
                        print(f"{case} {n} rows: {method} ...", file=sys.stderr, flush=True)
                        results += _spawn([{"case": case, "rows": n, "methods": [method],
                                            "repeats": _repeats(n), "warmup": True}], Path(tmp))
    compare(results)
    info["load_average_end"] = list(os.getloadavg())
    command = COMMAND + (" --smoke" if args.smoke else "")
    if args.sizes:
        command += " --sizes " + " ".join(map(str, args.sizes))
    if args.cases != list(CASES):
        command += " --cases " + " ".join(args.cases)
    data = {
        "benchmark": NAME, "command": command, "smoke": args.smoke, "machine": info,
        "sizes": list(sizes), "cases": args.cases, "methods": list(METHODS), "seed": SEED,
        "drifted_columns": {c: list(DRIFT[c]) for c in args.cases}, "sampled": None,
        "elapsed_s": time.perf_counter() - started, "results": results,
    }
    # Smoke sizes and timings (imports on the clock) say nothing about the goal.
    data["goal"] = None if args.smoke else goal(results, max(sizes))
    _write(data, args.out)
    return 0


def _write(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(_plain(data), indent=1, allow_nan=False))
    (out / f"{NAME}.md").write_text(markdown(data))
    print(markdown(data))
    print(f"wrote {out / (NAME + '.json')} and {out / (NAME + '.md')}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
