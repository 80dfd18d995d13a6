"""Per-feature data drift between a reference window and a current window, computed by Evidently.

Whether a column drifted is always Evidently's own verdict, never re-derived here. Two ways in:

* No HTML wanted (the usual case): each column goes straight through Evidently's stat-test
  machinery, the same steps :class:`~evidently.metrics.ValueDrift` runs before it draws anything
  (method and threshold resolved by ``DataDriftOptions``, NaN/inf dropped, method chosen by
  ``get_stattest``, verdict from the ``StatTest`` itself). ValueDrift would also build histograms,
  correlations and plotly charts for every column; the decision needs none of them.
* A report path given: one ``Report`` of one ``ValueDrift`` per column (not the whole
  ``DataDriftPreset``, which computes every column three times), rendered to HTML, and the verdicts
  read back from that report, so the kept report and the decision cannot disagree.

tests/test_drift.py checks that both ways give the same methods, thresholds, scores and verdicts.

``import evidently`` takes seconds and ~300 MB, so it happens inside :func:`compute_drift`: importing
this module (e.g. while Airflow parses a DAG) stays cheap.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.config import FeatureSpec

KINDS = ("numerical", "categorical")


class DriftInputError(ValueError):
    """Data that drift cannot be computed on; the message names the column and the problem."""


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: str  # "numerical" | "categorical"
    method: str  # Evidently method id actually used, e.g. "wasserstein", "ks"
    threshold: float  # threshold actually used
    score: float  # Evidently's value: a p-value or a distance, depending on the method
    drifted: bool  # Evidently's verdict

    @property
    def margin(self) -> float:
        """How far past the threshold, as |log(score / threshold)|: comparable across p-value
        methods (score below threshold) and distances (score above). 0 when not drifted."""
        if not self.drifted:
            return 0.0
        if self.score <= 0 or self.threshold <= 0:
            return math.inf
        if math.isnan(self.score):
            return 0.0
        return abs(math.log(self.score / self.threshold))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "method": self.method,
            "threshold": float(self.threshold),
            # NaN is not valid JSON; None stands for it.
            "score": float(self.score) if math.isfinite(self.score) else None,
            "drifted": bool(self.drifted),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureDrift:
        score = data["score"]
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            method=str(data["method"]),
            threshold=float(data["threshold"]),
            score=math.nan if score is None else float(score),
            drifted=bool(data["drifted"]),
        )


@dataclass(frozen=True)
class DriftResult:
    features: tuple[FeatureDrift, ...]
    drift_share: float  # drifted features / all features
    n_reference: int
    n_current: int
    prediction: FeatureDrift | None = None
    report_path: str | None = None

    def __getitem__(self, name: str) -> FeatureDrift:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def drifted_features(self) -> list[str]:
        """Names of drifted features, most drifted (furthest past its threshold) first."""
        drifted = [f for f in self.features if f.drifted]
        return [f.name for f in sorted(drifted, key=lambda f: -f.margin)]

    def summary(self) -> str:
        n_all = len(self.features)
        names = self.drifted_features
        if names:
            shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
            line = f"drift share {self.drift_share:.2f} on {len(names)}/{n_all} features: {shown}"
        else:
            line = f"no drift (0/{n_all} features)"
        if self.prediction is not None and self.prediction.drifted:
            line += f"; prediction '{self.prediction.name}' drifted"
        return line

    def verdict(self, drift_share_threshold: float | None = None) -> str:
        """One line for a person, e.g. "Drift: 3 of 8 features drifted (share 0.38 >= threshold
        0.30)". With a threshold it says which side the share is on (the trigger's own ``>=``)."""
        n_drifted, n_all = len(self.drifted_features), len(self.features)
        counted = f"{n_drifted} of {n_all} feature{'s' if n_all != 1 else ''} drifted"
        if drift_share_threshold is None:
            return f"Drift: {counted} (share {self.drift_share:.2f})" if n_drifted else f"No drift: {counted}"
        if self.drift_share >= drift_share_threshold:
            return f"Drift: {counted} (share {self.drift_share:.2f} >= threshold {drift_share_threshold:.2f})"
        return f"No drift: {counted} (share {self.drift_share:.2f} < threshold {drift_share_threshold:.2f})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": [f.to_dict() for f in self.features],
            "drift_share": float(self.drift_share),
            "n_reference": int(self.n_reference),
            "n_current": int(self.n_current),
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "report_path": self.report_path,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftResult:
        prediction = data.get("prediction")
        return cls(
            features=tuple(FeatureDrift.from_dict(f) for f in data["features"]),
            drift_share=float(data["drift_share"]),
            n_reference=int(data["n_reference"]),
            n_current=int(data["n_current"]),
            prediction=None if prediction is None else FeatureDrift.from_dict(prediction),
            report_path=data.get("report_path"),
        )


def _has_values(series: pd.Series, kind: str) -> bool:
    # Evidently drops NaN and ±inf before testing, so a column of only those has nothing to test.
    if kind == "numerical":
        return bool(np.isfinite(series.to_numpy(dtype=float, na_value=np.nan)).any())
    return bool(series.notna().any())


def _validate(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: dict[str, str],
) -> None:
    for label, frame in (("reference", reference), ("current", current)):
        if not isinstance(frame, pd.DataFrame):
            raise DriftInputError(f"{label} data must be a pandas DataFrame, got {type(frame).__name__}")
        if len(frame) == 0:
            raise DriftInputError(f"{label} data is empty (0 rows)")
    for label, frame in (("reference", reference), ("current", current)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DriftInputError(f"feature column(s) {missing} missing from {label} data")
    for name, kind in columns.items():
        for label, frame in (("reference", reference), ("current", current)):
            series = frame[name]
            if kind == "numerical" and not pd.api.types.is_numeric_dtype(series):
                raise DriftInputError(
                    f"column '{name}' is declared numerical but has dtype {series.dtype} in {label} data"
                )
            if not _has_values(series, kind):
                raise DriftInputError(f"column '{name}' is entirely null in {label} data")


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Sequence[FeatureSpec],
    *,
    num_method: str | None = None,
    cat_method: str | None = None,
    prediction_column: str | None = None,
    prediction_kind: str = "numerical",
    report_path: str | Path | None = None,
    title: str | None = None,
    drift_share_threshold: float | None = None,
) -> DriftResult:
    """Drift of each feature (and optionally the prediction) of ``current`` against ``reference``.

    ``num_method`` / ``cat_method`` are Evidently method ids for all numerical / categorical columns
    (None: Evidently picks by column type and reference size); a feature's own ``drift_method`` /
    ``drift_threshold`` override them. Raises :class:`DriftInputError` for unusable input.

    With ``report_path``, the HTML report opens with ``title`` (e.g. the model and the as-of time;
    default "Data drift" and, if ``current`` has a ``ts`` column, its newest time) and the overall
    verdict (:meth:`DriftResult.verdict`, against ``drift_share_threshold`` when given).
    """
    if title is not None and (not isinstance(title, str) or not title.strip()):
        raise DriftInputError(f"title must be a non-empty string, got {title!r}")
    if drift_share_threshold is not None and not (
        isinstance(drift_share_threshold, int | float) and 0 < drift_share_threshold <= 1
    ):
        raise DriftInputError(f"drift_share_threshold must be in (0, 1], got {drift_share_threshold!r}")
    if not features:
        raise DriftInputError("no features given")
    names = [f.name for f in features]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DriftInputError(f"feature(s) {duplicated} listed more than once")
    if prediction_kind not in KINDS:
        raise DriftInputError(f"prediction_kind must be one of {KINDS}, got {prediction_kind!r}")
    if prediction_column is not None and prediction_column in names:
        raise DriftInputError(f"prediction column '{prediction_column}' is also listed as a feature")

    columns = {f.name: f.kind for f in features}
    _validate(reference, current, columns)

    # Prediction drift only when the column is really there on both sides; absent is not an error.
    predict = (
        prediction_column is not None
        and prediction_column in reference.columns
        and prediction_column in current.columns
        and reference[prediction_column].notna().any()
        and current[prediction_column].notna().any()
    )
    if predict:
        _validate(reference, current, {prediction_column: prediction_kind})
        columns[prediction_column] = prediction_kind

    dataset_method = {"numerical": num_method, "categorical": cat_method}
    overrides = {f.name: (f.drift_method, f.drift_threshold) for f in features}
    requests: dict[str, tuple[str | None, float | None]] = {}
    for name, kind in columns.items():
        method, threshold = overrides.get(name, (None, None))
        method = method or dataset_method[kind]
        if method is not None:
            _check_method(name, kind, method)
        requests[name] = (method, threshold)

    snapshot = None
    if report_path is None:
        results = {
            name: _test_column(reference[name], current[name], name, kind, *requests[name])
            for name, kind in columns.items()
        }
    else:
        results, snapshot = _run_report(reference, current, columns, requests)

    feature_results = tuple(results[n] for n in names)
    n_drifted = sum(f.drifted for f in feature_results)
    result = DriftResult(
        features=feature_results,
        drift_share=n_drifted / len(feature_results),
        n_reference=len(reference),
        n_current=len(current),
        prediction=results[prediction_column] if predict else None,
    )
    if snapshot is None:
        return result
    path = Path(report_path)
    title = title or _default_title(current)
    header = _report_header(title, result, drift_share_threshold, reference, current)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_with_header(snapshot.get_html_str(as_iframe=False), title, header), encoding="utf-8")
    return dataclasses.replace(result, report_path=str(path))


def _time_range(frame: pd.DataFrame) -> str:
    if "ts" not in frame.columns or not frame["ts"].notna().any():
        return ""
    return f", {_fmt_time(frame['ts'].min())} to {_fmt_time(frame['ts'].max())}"


def _fmt_time(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M %Z").strip()


def _default_title(current: pd.DataFrame) -> str:
    if "ts" in current.columns and current["ts"].notna().any():
        return f"Data drift as of {_fmt_time(current['ts'].max())}"
    return "Data drift"


def _report_header(
    title: str,
    result: DriftResult,
    drift_share_threshold: float | None,
    reference: pd.DataFrame,
    current: pd.DataFrame,
) -> str:
    """What a person should read first: title, the overall verdict, which features drifted, the windows."""
    esc = html.escape
    drifted = result.drift_share >= drift_share_threshold if drift_share_threshold is not None else bool(
        result.drifted_features
    )
    color = "#b3261e" if drifted else "#1e6b32"
    verdict_style = f"margin:4px 0;font-size:18px;font-weight:bold;color:{color}"
    lines = [
        f'<h1 style="margin:0 0 8px;font-size:24px">{esc(title)}</h1>',
        f'<p id="driftline-verdict" style="{verdict_style}">{esc(result.verdict(drift_share_threshold))}</p>',
    ]
    if result.drifted_features:
        lines.append(f'<p style="margin:4px 0">Drifted, most first: {esc(", ".join(result.drifted_features))}</p>')
    if result.prediction is not None:
        p = result.prediction
        state = "drifted" if p.drifted else "did not drift"
        lines.append(f'<p style="margin:4px 0">Prediction {esc(repr(p.name))} {state} '
                     f"({esc(p.method)} {p.score:.3g}, threshold {p.threshold:.3g})</p>")
    lines.append(
        f'<p style="margin:4px 0;color:#555">Current: {result.n_current} rows{esc(_time_range(current))}. '
        f"Reference: {result.n_reference} rows{esc(_time_range(reference))}.</p>"
    )
    return ('<header id="driftline-header" style="font-family:Helvetica,Arial,sans-serif;padding:16px 24px;'
            'border-bottom:1px solid #ddd">' + "".join(lines) + "</header>")


def _with_header(page: str, title: str, header: str) -> str:
    """Evidently's page has no <title> and its dashboard's own title is empty (``group_widget(title="")``
    in Snapshot.get_html_str); put ours in plain HTML above the dashboard, readable even without JS."""
    for tag in ("<head>", "<body>"):
        if page.count(tag) != 1:
            raise RuntimeError(f"Evidently's HTML has {page.count(tag)} {tag} tags; cannot add the report header")
    page = page.replace("<head>", f"<head>\n<title>{html.escape(title)}</title>", 1)
    return page.replace("<body>", f"<body>\n{header}", 1)


def _test_column(
    reference: pd.Series,
    current: pd.Series,
    name: str,
    kind: str,
    method: str | None,
    threshold: float | None,
) -> FeatureDrift:
    """Evidently's drift verdict for one column without a Report: the decision part of
    ``get_one_column_drift`` in evidently/legacy/calculations/data_drift.py (which ValueDrift
    calls), step for step, minus the histograms, correlations and charts it builds for display."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.legacy.options.data_drift import DataDriftOptions

    column_type = ColumnType.Numerical if kind == "numerical" else ColumnType.Categorical
    # Built exactly as ValueDriftCalculation builds it, so method and threshold resolve the same way.
    options = DataDriftOptions(all_features_stattest=method, all_features_threshold=threshold)
    requested = options.get_feature_stattest_func(name, column_type.value)
    resolved_threshold = options.get_threshold(name, column_type.value)
    reference, current = _drop_missing(reference), _drop_missing(current)
    if requested is None:
        stattest = _default_stattest(reference, current, column_type)
    else:
        stattest = get_stattest(reference, current, column_type, requested)
    result = stattest(reference, current, column_type, resolved_threshold)
    return FeatureDrift(
        name=name,
        kind=kind,
        method=stattest.name,
        threshold=float(result.actual_threshold),
        score=float(result.drift_score),
        drifted=bool(result.drifted),
    )


def _drop_missing(series: pd.Series) -> pd.Series:
    """What get_one_column_drift does before testing, ``series.replace([-inf, inf], nan).dropna()``,
    skipping the replace where it provably matches nothing: it compares every value with +-inf,
    which for a column of strings costs several times the drop itself."""
    kind = series.dtype.kind if isinstance(series.dtype, np.dtype) else None  # plain NumPy dtypes only
    if kind in ("i", "u") or (kind == "f" and not np.isinf(series.to_numpy()).any()):
        return series.dropna()
    # Only strings (and gaps) cannot equal inf. Other object columns keep the replace, which may
    # also change their dtype (e.g. Python ints become int64), exactly as in Evidently.
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) == "string":
        return series.dropna()
    return series.replace([-np.inf, np.inf], np.nan).dropna()


# Rows of each window shown to Evidently's method chooser first: one more than its small-sample limit.
_CHOOSER_PREFIX = 1001


def _default_stattest(reference: pd.Series, current: pd.Series, column_type: Any) -> Any:
    """The StatTest Evidently picks when no method is given, chosen by Evidently's own chooser.

    The chooser (``_get_default_stattest`` in evidently/legacy/calculations/stattests/registry.py)
    sees the data only through two facts: whether the reference has more than 1,000 rows, and
    whether both windows together hold at most 2, at most 5 or more distinct values. It finds the
    second by hashing every value of both windows (twice for large numerical columns), which at 1M
    rows costs more than the drift test itself. Prefixes of 1,001 rows keep the reference on the
    same side of 1,000 rows; if they already show more than 5 distinct values, so do the full
    windows, and the chooser takes the same branch on the prefixes as on the full data. Otherwise
    the chooser gets the full data.
    """
    from evidently.legacy.calculations.stattests import get_stattest

    ref_head, cur_head = reference.iloc[:_CHOOSER_PREFIX], current.iloc[:_CHOOSER_PREFIX]
    if pd.concat([ref_head, cur_head]).nunique() > 5:
        return get_stattest(ref_head, cur_head, column_type, None)
    return get_stattest(reference, current, column_type, None)


def _run_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: dict[str, str],
    requests: dict[str, tuple[str | None, float | None]],
) -> tuple[dict[str, FeatureDrift], Any]:
    """One Report of per-column ValueDrift metrics; the verdicts read back from it, and its snapshot."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    metrics = [ValueDrift(column=name, method=m, threshold=t) for name, (m, t) in requests.items()]
    # Explicit lists for every column type: Evidently then infers nothing, and numeric-looking
    # categorical values stay categorical.
    definition = DataDefinition(
        numerical_columns=[c for c, k in columns.items() if k == "numerical"],
        categorical_columns=[c for c, k in columns.items() if k == "categorical"],
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )
    selected = list(columns)
    # include_tests=True makes each ValueDrift attach one test whose status is Evidently's
    # drift_detected (FAIL = drifted); see ValueDriftCalculation.calculate in
    # evidently/metrics/column_statistics.py. That flag comes from each method's own function in
    # evidently/legacy/calculations/stattests/*.py, which also fixes the direction (ks: p <= t,
    # chisquare/z/...: p < t, wasserstein/jensenshannon/psi: d >= t, ed: d > t; "TVD" is a
    # permutation p-value, p < t). No other metric is in this report.
    report = Report(metrics, include_tests=True)
    # New API order: current first, reference second.
    snapshot = report.run(
        Dataset.from_pandas(current.loc[:, selected], data_definition=definition),
        Dataset.from_pandas(reference.loc[:, selected], data_definition=definition),
    )
    return _read_snapshot(snapshot.dict(), columns), snapshot


def _stattest_registry() -> dict[str, dict[Any, Any]]:
    # Evidently's method registry (id -> {column type -> StatTest}); the new API has no public
    # equivalent, and ValueDrift looks methods up in this same table.
    from evidently.legacy.calculations.stattests import registry

    return registry._registered_stat_tests


def _check_method(column: str, kind: str, method: str) -> None:
    """Fail before the (slow) report run if Evidently has no such method for this column type."""
    tests = _stattest_registry().get(method)
    if tests is None:
        raise DriftInputError(
            f"column '{column}': unknown drift method '{method}'; "
            f"Evidently knows {sorted(_stattest_registry())}"
        )
    allowed = sorted({t.value for t in tests})
    short = {"numerical": "num", "categorical": "cat"}[kind]
    if short not in allowed:
        raise DriftInputError(
            f"column '{column}': drift method '{method}' does not apply to {kind} columns "
            f"(it takes {allowed})"
        )


def _method_id(reported: str) -> str:
    """Evidently reports an auto-chosen method by its display name ("K-S p_value") and an explicit
    one by its id ("ks"); map both to the id."""
    registry = _stattest_registry()
    if reported in registry:
        return reported
    for name, tests in registry.items():
        if any(t.display_name == reported for t in tests.values()):
            return name
    return reported


def _read_snapshot(data: dict[str, Any], columns: dict[str, str]) -> dict[str, FeatureDrift]:
    verdicts: dict[str, bool] = {}
    for test in data.get("tests", []):
        metric_id = (test.get("metric_config") or {}).get("metric_id")
        if metric_id is not None and test.get("status") in ("FAIL", "SUCCESS"):
            verdicts[metric_id] = test["status"] == "FAIL"
    results: dict[str, FeatureDrift] = {}
    for metric in data["metrics"]:
        config = metric.get("config") or {}
        column = config.get("column")
        if column not in columns:
            continue
        if metric["id"] not in verdicts:
            raise RuntimeError(f"Evidently reported no drift verdict for column '{column}'")
        results[column] = FeatureDrift(
            name=column,
            kind=columns[column],
            method=_method_id(str(config["method"])),
            threshold=float(config["threshold"]),
            score=float(metric["value"]),
            drifted=verdicts[metric["id"]],
        )
    missing = [c for c in columns if c not in results]
    if missing:
        raise RuntimeError(f"Evidently returned no drift value for column(s) {missing}")
    return results
