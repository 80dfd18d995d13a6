"""Holdout evaluation and the promotion gate: may a candidate replace the champion?

Both models are scored on the same holdout rows; the difference is judged with a *paired*
bootstrap (each resample draws one set of row indices and scores both models on it), which is far
tighter than comparing two independent intervals because row difficulty cancels out.

Confidence convention (used everywhere: fields, reasons, summary, table)
-----------------------------------------------------------------------
With ``significance = a`` the bootstrap distribution of the improvement gives

* ``ci_low``  = its ``a`` quantile: the one-sided ``(1 - a)`` **lower bound** (e.g. "95% lower bound");
* ``ci_high`` = its ``1 - a`` quantile: the one-sided ``(1 - a)`` upper bound.

Together they form the two-sided ``(1 - 2a)`` percentile interval (90% for ``a = 0.05``), and that
is how it is labelled ("90% CI"). The significance gate is exactly ``ci_low > 0``: a one-sided test
at level ``a`` that the challenger is better. Both bounds are in the "improvement" orientation,
where > 0 means "challenger better" (for lower-is-better metrics, champion - challenger).

Pure numpy / scikit-learn: nothing here imports Airflow or MLflow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from sklearn import metrics as skm

from ml.config import METRICS, check_significance

__all__ = ["EvaluationResult", "compute_metric", "evaluate_candidate", "paired_bootstrap"]

_REGRESSION = frozenset({"mae", "rmse", "r2"})
_NEEDS_POSITIVE = frozenset({"f1", "roc_auc", "log_loss"})
# Cap on resample-count cells held at once (rows x resamples), ~8 MB of float64: bounds memory on
# big holdouts while keeping each chunk large enough for numpy to be efficient.
_CHUNK_CELLS = 1_000_000

# --------------------------------------------------------------------------------------------------
# Input validation and encoding


@dataclass
class _Model:
    pred: np.ndarray | None  # class codes (classification) or floats (regression)
    score: np.ndarray | None  # probability / score of the positive class


@dataclass
class _Problem:
    metric: str
    n: int
    truth: np.ndarray  # class codes (classification) or floats (regression)
    n_classes: int
    pos: int | None  # code of the positive class; None = not applicable, or macro F1
    models: list[_Model]


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")


def _vector(name: str, values: Any, n: int | None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:  # a single column is still one value per row
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one value per row (1-D), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"empty input: {name} has no rows, nothing to evaluate")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"length mismatch: y_true has {n} rows but {name} has {arr.shape[0]}")
    return arr


def _floats(name: str, values: Any, n: int | None) -> np.ndarray:
    arr = _vector(name, values, n)
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got values like {arr[:3].tolist()}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _sorted_labels(arrays: Sequence[np.ndarray]) -> list[Any]:
    seen: set[Any] = set()
    for arr in arrays:
        seen.update(arr.tolist())  # Python scalars: "UP" and np.str_("UP") are the same label
    try:
        return sorted(seen)
    except TypeError:
        raise ValueError(
            f"labels mix types that cannot be ordered: {sorted(map(repr, seen))[:6]}"
        ) from None


def _encode(arr: np.ndarray, index: dict[Any, int]) -> np.ndarray:
    return np.fromiter((index[v] for v in arr.tolist()), dtype=np.intp, count=arr.shape[0])


def _positive(metric: str, labels: list[Any], pos_label: Any) -> Any | None:
    """The positive class: given, or the larger of exactly two labels. None means macro F1."""
    if pos_label is not None:
        if pos_label not in labels and len(labels) >= 2:
            # Same rule as scikit-learn: most likely a type slip such as 1 vs "1".
            raise ValueError(f"pos_label {pos_label!r} is not one of the labels {labels}")
        return pos_label
    if len(labels) == 2:
        return labels[-1]
    if len(labels) > 2:
        if metric == "f1":
            return None
        raise ValueError(
            f"{metric} needs binary labels, found {len(labels)} ({labels[:6]}); "
            f"pass pos_label for a one-vs-rest score"
        )
    raise ValueError(
        f"cannot tell the positive class for {metric}: only the label {labels[0]!r} is present; "
        f"pass pos_label"
    )


def _problem(
    metric: str,
    y_true: Any,
    models: Sequence[tuple[Any, Any, str, str]],
    pos_label: Any,
) -> _Problem:
    """Validate y_true and each (pred, score, pred_name, score_name); encode labels once for all."""
    _check_metric(metric)
    if y_true is None:
        raise ValueError("empty input: y_true is None")
    needs_score = METRICS[metric][1]
    for pred, score, pred_name, score_name in models:
        if needs_score and score is None:
            raise ValueError(
                f"{metric} needs {score_name} (probability of the positive class), got None"
            )
        if not needs_score and pred is None:
            raise ValueError(f"{metric} needs {pred_name} (predicted labels/values), got None")

    if metric in _REGRESSION:
        truth = _floats("y_true", y_true, None)
        n = truth.shape[0]
        out = [_Model(_floats(pn, p, n), None) for p, _, pn, _ in models]
        return _Problem(metric, n, truth, 0, None, out)

    raw_truth = _vector("y_true", y_true, None)
    n = raw_truth.shape[0]
    raw_preds = [None if needs_score else _vector(pn, p, n) for p, _, pn, _ in models]
    scores = [_floats(sn, s, n) if needs_score else None for _, s, _, sn in models]
    if metric == "log_loss":
        for (_, _, _, sn), s in zip(models, scores, strict=True):
            if s.min() < 0 or s.max() > 1:
                raise ValueError(f"log_loss needs probabilities in [0, 1]; {sn} has values outside")
    # Predicted labels join the label set: a class the model predicts but the holdout lacks still
    # counts for accuracy/F1, as in scikit-learn.
    labels = _sorted_labels([raw_truth, *(p for p in raw_preds if p is not None)])
    index = {label: i for i, label in enumerate(labels)}
    pos_value = _positive(metric, labels, pos_label) if metric in _NEEDS_POSITIVE else None
    pos = None if pos_value is None else index.get(pos_value, -1)  # -1: positive class absent
    truth = _encode(raw_truth, index)
    out = [
        _Model(None if p is None else _encode(p, index), s)
        for p, s in zip(raw_preds, scores, strict=True)
    ]
    return _Problem(metric, n, truth, len(labels), pos, out)


# --------------------------------------------------------------------------------------------------
# Point metrics (scikit-learn itself, so the reported numbers are the familiar ones)


def _point(problem: _Problem, model: _Model) -> float:
    metric, truth, pred, score, pos = (
        problem.metric, problem.truth, model.pred, model.score, problem.pos
    )
    with warnings.catch_warnings():
        # Classes predicted but absent from y_true are a normal holdout situation, not news.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        if metric == "accuracy":
            value = skm.accuracy_score(truth, pred)
        elif metric == "balanced_accuracy":
            value = skm.balanced_accuracy_score(truth, pred)
        elif metric == "f1":
            if pos is None:
                value = skm.f1_score(truth, pred, average="macro", zero_division=0.0)
            else:
                value = skm.f1_score(truth == pos, pred == pos, zero_division=0.0)
        elif metric == "roc_auc":
            positives = int(np.count_nonzero(truth == pos))
            if positives in (0, problem.n):
                raise ValueError(
                    "roc_auc is undefined: only one class is present in y_true "
                    f"({positives} positive of {problem.n} rows)"
                )
            value = skm.roc_auc_score(truth == pos, score)
        elif metric == "log_loss":
            value = skm.log_loss((truth == pos).astype(int), score, labels=[0, 1])
        elif metric == "mae":
            value = skm.mean_absolute_error(truth, pred)
        elif metric == "rmse":
            value = skm.root_mean_squared_error(truth, pred)
        else:  # r2
            if problem.n < 2:
                raise ValueError("r2 is undefined for fewer than two rows")
            value = skm.r2_score(truth, pred)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{metric} is undefined on this sample (got {value})")
    return value


def compute_metric(
    metric: str, y_true: Any, y_pred: Any = None, y_score: Any = None, *, pos_label: Any = None
) -> float:
    """One metric from :data:`ml.config.METRICS` on one sample.

    Label metrics (accuracy, balanced_accuracy, f1, mae, rmse, r2) read ``y_pred``; score metrics
    (roc_auc, log_loss) read ``y_score``, the probability of the positive class. The positive class
    (f1, roc_auc, log_loss) is ``pos_label`` or else the larger of the two labels; labels may be
    ints or strings. With more than two labels, f1 is macro-averaged unless ``pos_label`` is given
    (then it is that class's one-vs-rest F1); roc_auc/log_loss then require ``pos_label``.
    Raises ValueError for bad input or an undefined metric (e.g. roc_auc with one class).
    """
    problem = _problem(metric, y_true, [(y_pred, y_score, "y_pred", "y_score")], pos_label)
    return _point(problem, problem.models[0])


# --------------------------------------------------------------------------------------------------
# Vectorised metrics over many resamples at once
#
# A resample is a row of counts C[r, i] = times row i was drawn. Every metric here is a function of
# count-weighted sums, so a chunk of resamples costs a few (resamples x rows) array operations
# instead of thousands of scikit-learn calls. Undefined resamples come out as NaN.



def served_baseline(
    metric: str,
    labelled: Any,
    first_served: Any,
    span: Any,
    min_rows: int,
    *,
    pos_label: Any = None,
) -> tuple[float | None, int]:
    """A model's level in production: ``metric`` over the labelled rows it served within ``span``
    of ``first_served`` (the time of the first row it served). ``labelled``: rows it served whose
    labels are known, with ``ts, label, prediction, score``. Returns ``(value, rows)``; ``value`` is
    None below ``min_rows`` rows (too few to be a level) or where the metric is undefined on them.

    Why not the holdout score at promotion: that is a few days of rows, and a lucky or unlucky draw
    there makes a relative-drop trigger fire every time or never (see docs/benchmarks.md, P3)."""
    rows = labelled[labelled["ts"] <= first_served + span]
    if len(rows) < min_rows:
        return None, len(rows)
    scores = rows["score"].to_numpy(dtype=float)
    try:
        value = compute_metric(metric, rows["label"], rows["prediction"].to_numpy(),
                               None if np.isnan(scores).any() else scores, pos_label=pos_label)
    except ValueError:
        return None, len(rows)
    return value, len(rows)

def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _weighted_auc(y_bin: np.ndarray, score: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """ROC AUC for count-weighted rows: P(score_pos > score_neg) + 0.5 P(tie).

    Exactly the Mann-Whitney statistic that ``roc_auc_score`` computes, ties included. Each
    positive row wins against the weight of negatives strictly below its score and half-wins
    against those tied with it; with negatives sorted once, both are two lookups into a running
    sum of negative weights. Counts are integers, so everything up to the final division is exact.
    """
    pos_rows = np.flatnonzero(y_bin)
    neg_rows = np.flatnonzero(~y_bin)
    pos_rows = pos_rows[np.argsort(score[pos_rows], kind="stable")]  # monotone lookups: cache-friendly
    neg_rows = neg_rows[np.argsort(score[neg_rows], kind="stable")]
    neg_scores = score[neg_rows]
    below = np.searchsorted(neg_scores, score[pos_rows], side="left")  # negatives < score
    up_to = np.searchsorted(neg_scores, score[pos_rows], side="right")  # negatives <= score

    def auc(counts: np.ndarray) -> np.ndarray:
        neg_cum = np.zeros((counts.shape[0], neg_rows.size + 1))
        np.cumsum(counts[:, neg_rows], axis=1, out=neg_cum[:, 1:])
        pos_w = counts[:, pos_rows]
        # below + 0.5 * ties == 0.5 * (below + up_to)
        wins = 0.5 * np.einsum("ij,ij->i", pos_w, neg_cum[:, below] + neg_cum[:, up_to])
        return _safe_div(wins, pos_w.sum(axis=1) * neg_cum[:, -1])

    return auc


@dataclass
class _Stat:
    """A metric as count-weighted column sums plus a final step.

    All columns of both models go through one (resamples x rows) @ (rows x k) product: reading the
    count matrix once is what costs, so stacking the sums is nearly free.
    """

    columns: np.ndarray  # rows x k per-row quantities
    finish: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (sums r x k, counts r x n) -> r


def _cols(*vectors: np.ndarray) -> np.ndarray:
    return np.column_stack([np.asarray(v, dtype=np.float64) for v in vectors])


def _stat(problem: _Problem, model: _Model) -> _Stat:
    """The metric per resample from the counts, NaN where undefined."""
    metric, truth, pred, score, pos, n = (
        problem.metric, problem.truth, model.pred, model.score, problem.pos, problem.n
    )
    if metric == "accuracy":
        return _Stat(_cols(truth == pred), lambda s, c: s[:, 0] / n)
    if metric == "balanced_accuracy":
        k = problem.n_classes
        true_1h = np.eye(k)[truth]

        def balanced(s: np.ndarray, c: np.ndarray) -> np.ndarray:
            # Mean recall over classes present in this resample's y_true, as scikit-learn does.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanmean(_safe_div(s[:, k:], s[:, :k]), axis=1)

        return _Stat(np.hstack([true_1h, true_1h * (truth == pred)[:, None]]), balanced)
    if metric == "f1" and pos is not None:
        t, p = truth == pos, pred == pos
        # No positives at all in truth or prediction: F1 is undefined (sklearn would say 0).
        return _Stat(
            _cols(t & p, ~t & p, t & ~p),
            lambda s, c: _safe_div(2 * s[:, 0], 2 * s[:, 0] + s[:, 1] + s[:, 2]),
        )
    if metric == "f1":
        k = problem.n_classes
        true_1h, pred_1h = np.eye(k)[truth], np.eye(k)[pred]

        def macro_f1(s: np.ndarray, c: np.ndarray) -> np.ndarray:
            # Average over classes seen (true or predicted) in this resample, as scikit-learn does.
            both, true_k, pred_k = s[:, :k], s[:, k : 2 * k], s[:, 2 * k :]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanmean(_safe_div(2 * both, true_k + pred_k), axis=1)

        return _Stat(np.hstack([true_1h * pred_1h, true_1h, pred_1h]), macro_f1)
    if metric == "roc_auc":
        auc = _weighted_auc(truth == pos, score)
        return _Stat(np.empty((n, 0)), lambda s, c: auc(c))
    if metric == "log_loss":
        eps = np.finfo(np.float64).eps  # scikit-learn's clipping, so full-sample values agree
        p_true = np.where(truth == pos, score, 1.0 - score)
        return _Stat(_cols(-np.log(np.clip(p_true, eps, 1 - eps))), lambda s, c: s[:, 0] / n)
    err = pred - truth
    if metric == "mae":
        return _Stat(_cols(np.abs(err)), lambda s, c: s[:, 0] / n)
    if metric == "rmse":
        return _Stat(_cols(err**2), lambda s, c: np.sqrt(s[:, 0] / n))
    # r2: centre on the full-sample mean first so the sum-of-squares subtraction stays accurate.
    centred = truth - truth.mean()

    def r2(s: np.ndarray, c: np.ndarray) -> np.ndarray:
        sq_err, total_sq, total = s[:, 0], s[:, 1], s[:, 2]
        ss_tot = total_sq - total**2 / n
        ss_tot = np.where(ss_tot > 1e-12 * total_sq, ss_tot, 0.0)  # constant y_true: undefined
        return 1.0 - _safe_div(sq_err, ss_tot)

    return _Stat(_cols(err**2, centred**2, centred), r2)


def _batch(problem: _Problem, model: _Model) -> Callable[[np.ndarray], np.ndarray]:
    """counts (resamples x rows) -> metric per resample, for one model."""
    stat = _stat(problem, model)
    return lambda counts: stat.finish(counts @ stat.columns, counts)


def _resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """size x n matrix: how often each row is drawn in each resample (n draws with replacement)."""
    idx = rng.integers(0, n, size=(size, n))
    idx += (np.arange(size) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def _bootstrap(problem: _Problem, n_resamples: int, seed: int) -> np.ndarray:
    """metric(model 1) - metric(model 0) per resample, undefined resamples dropped."""
    first, second = (_stat(problem, m) for m in problem.models)
    columns = np.hstack([first.columns, second.columns])
    split = first.columns.shape[1]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _CHUNK_CELLS // problem.n))
    out = []
    for start in range(0, n_resamples, chunk):
        counts = _resample_counts(rng, problem.n, min(chunk, n_resamples - start))
        sums = counts @ columns
        # Same counts for both models: that is what makes the comparison paired.
        out.append(second.finish(sums[:, split:], counts) - first.finish(sums[:, :split], counts))
    diffs = np.concatenate(out)
    return diffs[np.isfinite(diffs)]


def paired_bootstrap(
    metric: str,
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    *,
    score_a: Any = None,
    score_b: Any = None,
    n_resamples: int = 1000,
    seed: int = 0,
    pos_label: Any = None,
) -> np.ndarray:
    """Bootstrap distribution of ``metric(b) - metric(a)`` (raw metric orientation).

    Each resample draws row indices with replacement and scores both models on the same rows.
    Resamples where the metric is undefined for either model (e.g. one class only for roc_auc,
    constant y_true for r2, no positives at all for binary f1) are dropped, so the result may be
    shorter than ``n_resamples``. Labels and the positive class are fixed once on the full sample.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    problem = _problem(
        metric,
        y_true,
        [(pred_a, score_a, "pred_a", "score_a"), (pred_b, score_b, "pred_b", "score_b")],
        pos_label,
    )
    return _bootstrap(problem, n_resamples, seed)


# --------------------------------------------------------------------------------------------------
# The promotion decision


def _num(x: float) -> str:
    return f"{x:.4f}" if x == 0 or 1e-3 <= abs(x) < 1e6 else f"{x:.4g}"


def _signed(x: float) -> str:
    return f"{x:+.4f}" if x == 0 or 1e-3 <= abs(x) < 1e6 else f"{x:+.4g}"


def _pct(x: float) -> str:
    return f"{100 * x:.10g}%"


@dataclass(frozen=True)
class EvaluationResult:
    """Outcome of :func:`evaluate_candidate`; see the module docstring for the CI convention.

    ``improvement``, ``ci_low`` and ``ci_high`` are signed so that > 0 means "challenger better".
    ``ci_low``/``ci_high`` are the ``significance`` and ``1 - significance`` bootstrap quantiles:
    each a one-sided ``1 - significance`` bound, together a two-sided ``1 - 2*significance`` CI.
    """

    metric: str
    greater_is_better: bool
    n_rows: int
    challenger_version: int | None
    champion_version: int | None
    challenger: float
    champion: float | None
    improvement: float | None
    ci_low: float | None
    ci_high: float | None
    significance: float
    min_improvement: float
    floor: float | None
    verdict: str
    reasons: tuple[str, ...]

    @property
    def promoted(self) -> bool:
        return self.verdict == "promote"

    @property
    def bound_label(self) -> str:
        """e.g. "95% lower bound": the one-sided bound the significance gate tests."""
        return f"{_pct(1 - self.significance)} lower bound"

    @property
    def interval_label(self) -> str:
        """e.g. "90% CI": the two-sided coverage of ci_low..ci_high."""
        return f"{_pct(1 - 2 * self.significance)} CI"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (it travels through Airflow XCom)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [str(v) for v in value]
            elif isinstance(value, (bool, np.bool_)):
                value = bool(value)
            elif isinstance(value, (int, np.integer)):
                value = int(value)
            elif isinstance(value, (float, np.floating)):
                value = float(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationResult:
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in d]
        if missing:
            raise ValueError(f"EvaluationResult.from_dict: missing keys {missing}")
        values = {name: d[name] for name in names}  # unknown keys ignored: newer writers may add some
        values["reasons"] = tuple(values["reasons"])
        return cls(**values)

    def table_markdown(self) -> str:
        """Champion / challenger / difference table plus the verdict, for a model version description."""
        m = self.metric

        def version(v: int | None) -> str:
            return "-" if v is None else f"v{v}"

        if self.greater_is_better:
            diff_label = "difference (challenger - champion; > 0 = challenger better)"
        else:
            diff_label = f"difference (champion - challenger; {m} lower is better, > 0 = challenger better)"
        if self.champion is None:
            champion_row = f"| champion | - | none yet | | {self.n_rows} |"
            diff_row = f"| {diff_label} | | - | - | {self.n_rows} |"
        else:
            ci = "-" if self.ci_low is None else f"{_signed(self.ci_low)}..{_signed(self.ci_high)}"
            champion_row = f"| champion | {version(self.champion_version)} | {_num(self.champion)} | | {self.n_rows} |"
            diff_row = f"| {diff_label} | | {_signed(self.improvement)} | {ci} | {self.n_rows} |"
        lines = [
            f"| model | version | {m} | {self.interval_label} | n |",
            "|---|---|---|---|---|",
            champion_row,
            f"| challenger | {version(self.challenger_version)} | {_num(self.challenger)} | | {self.n_rows} |",
            diff_row,
            "",
            f"**Verdict: {self.verdict}**",
            "",
            *(f"- {reason}" for reason in self.reasons),
        ]
        if self.champion is not None:
            lines += [
                "",
                (
                    f"CI: percentile paired bootstrap over the holdout rows; its lower end is the "
                    f"one-sided {self.bound_label}, which must be > 0 to promote."
                ),
            ]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line, e.g. "promote: roc_auc 0.7810 vs champion 0.7500 (+0.0310, 95% lower bound ...)"."""
        head = f"{self.verdict}: {self.metric} {_num(self.challenger)}"
        if self.champion is None:
            floor = "no floor" if self.floor is None else f"floor {_num(self.floor)}"
            return f"{head}, no champion yet ({floor}, n={self.n_rows})"
        if self.ci_low is None:
            ci = "no bootstrap interval"
        else:
            ci = (
                f"{self.bound_label} {_signed(self.ci_low)}, "
                f"{self.interval_label} {_signed(self.ci_low)}..{_signed(self.ci_high)}"
            )
        return (
            f"{head} vs champion {_num(self.champion)} "
            f"({_signed(self.improvement)}, {ci}, n={self.n_rows})"
        )


def evaluate_candidate(
    *,
    metric: str,
    y_true: Any,
    challenger_pred: Any,
    challenger_score: Any = None,
    champion_pred: Any = None,
    champion_score: Any = None,
    challenger_version: int | None = None,
    champion_version: int | None = None,
    min_improvement: float = 0.0,
    significance: float = 0.05,
    floor: float | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    pos_label: Any = None,
) -> EvaluationResult:
    """Score challenger (and champion, if any) on the same holdout rows and apply the gates.

    All must pass to promote:

    1. floor (if set): challenger metric >= floor (greater-is-better) or <= floor (lower-is-better);
    2. no champion (``champion_pred`` and ``champion_score`` both None): the floor alone decides;
    3. with a champion: point improvement >= ``min_improvement`` AND the one-sided
       ``(1 - significance)`` lower bound of the improvement (``ci_low``, the ``significance``
       quantile of the paired-bootstrap distribution) is > 0.

    ``reasons`` lists every gate's outcome; a failing gate's reason starts with "<gate> failed:".
    """
    _check_metric(metric)
    check_significance(significance)  # the same bound the config enforces at parse time
    if not min_improvement >= 0:
        raise ValueError(f"min_improvement must be >= 0, got {min_improvement}")
    if floor is not None and not math.isfinite(floor):
        raise ValueError(f"floor must be a finite number, got {floor}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")

    greater_is_better = METRICS[metric][0]
    has_champion = champion_pred is not None or champion_score is not None
    models = [(challenger_pred, challenger_score, "challenger_pred", "challenger_score")]
    if has_champion:
        models.insert(0, (champion_pred, champion_score, "champion_pred", "champion_score"))
    # One problem for both models, so labels and the positive class are shared.
    problem = _problem(metric, y_true, models, pos_label)
    challenger = _point(problem, problem.models[-1])

    reasons: list[str] = []
    passed = True
    if floor is not None:
        ok = challenger >= floor if greater_is_better else challenger <= floor
        good, bad = (">=", "<") if greater_is_better else ("<=", ">")
        if ok:
            reasons.append(f"floor: {metric} {_num(challenger)} {good} floor {_num(floor)}")
        else:
            reasons.append(f"floor failed: {metric} {_num(challenger)} {bad} floor {_num(floor)}")
        passed &= ok

    common: dict[str, Any] = {
        "metric": metric,
        "greater_is_better": greater_is_better,
        "n_rows": problem.n,
        "challenger_version": None if challenger_version is None else int(challenger_version),
        "champion_version": None if champion_version is None else int(champion_version),
        "challenger": challenger,
        "significance": float(significance),
        "min_improvement": float(min_improvement),
        "floor": None if floor is None else float(floor),
    }
    if not has_champion:
        if floor is None:
            reasons.append("no champion yet and no floor: the first candidate is promoted")
        else:
            reasons.append("no champion yet: the floor alone decides")
        return EvaluationResult(
            **common,
            champion=None,
            improvement=None,
            ci_low=None,
            ci_high=None,
            verdict="promote" if passed else "reject",
            reasons=tuple(reasons),
        )

    champion = _point(problem, problem.models[0])
    sign = 1.0 if greater_is_better else -1.0
    improvement = sign * (challenger - champion) + 0.0  # + 0.0 turns -0.0 into 0.0
    orientation = "" if greater_is_better else f" (champion - challenger: {metric} is lower-is-better)"
    if improvement >= min_improvement:
        reasons.append(
            f"min improvement: gain {_signed(improvement)}{orientation} >= min {_num(min_improvement)}"
        )
    else:
        reasons.append(
            f"min improvement failed: gain {_signed(improvement)}{orientation} "
            f"< min {_num(min_improvement)}"
        )
        passed = False

    gains = sign * _bootstrap(problem, n_resamples, seed) + 0.0
    bound = f"{_pct(1 - significance)} lower bound"
    interval = f"{_pct(1 - 2 * significance)} CI"
    if gains.size == 0:
        ci_low = ci_high = None
        reasons.append(
            f"significance failed: {metric} is undefined in all {n_resamples} bootstrap resamples"
        )
        passed = False
    else:
        ci_low = float(np.quantile(gains, significance))
        ci_high = float(np.quantile(gains, 1 - significance))
        used = (
            f"{n_resamples} resamples"
            if gains.size == n_resamples
            else f"{gains.size} of {n_resamples} resamples defined"
        )
        detail = f"paired bootstrap, {used}, {interval} {_signed(ci_low)}..{_signed(ci_high)}"
        if ci_low > 0:
            reasons.append(f"significance: {bound} {_signed(ci_low)} > 0 ({detail})")
        else:
            reasons.append(
                f"significance failed: {bound} {_signed(ci_low)} <= 0, gain not significant "
                f"at alpha={significance:g} ({detail})"
            )
            passed = False

    return EvaluationResult(
        **common,
        champion=champion,
        improvement=improvement,
        ci_low=ci_low,
        ci_high=ci_high,
        verdict="promote" if passed else "reject",
        reasons=tuple(reasons),
    )
