"""Label-free performance estimate (CBPE, confidence-based performance estimation), on scikit-learn.

Labels arrive late; the champion's scores on the rows it serves arrive at once. If its
probabilities are *calibrated* (of the rows scored 0.8, 80 % are positive), each row's probability
says how likely its prediction is right, and summing those gives the *expected* confusion matrix of
a batch without one label:

* a row predicted positive with calibrated probability ``p`` adds ``p`` to TP and ``1 - p`` to FP;
* a row predicted negative adds ``1 - p`` to TN and ``p`` to FN.

Accuracy, balanced accuracy, precision, recall and F1 follow from those four sums (accuracy is
the mean of ``p`` or ``1 - p``, whichever the prediction stands for: ``max(p, 1 - p)`` when the
model predicts the side its calibrated probability favours). ROC AUC is the area under the expected
ROC curve: at every threshold on the model's own score, the expected true- and false-positive rates
from the same sums, which is the weighted AUC of each row counted as a positive with weight ``p``
and as a negative with weight ``1 - p``. Log loss is its expectation under ``p``.

The scores are calibrated with :class:`sklearn.isotonic.IsotonicRegression` on labelled rows the
champion did not train on (see :func:`ml.loop.estimate_performance` for which rows). The method is
NannyML's (its documentation describes it); this is an independent implementation that needs only
scikit-learn. What it can and cannot see: it follows a change in *who* is scored (covariate shift:
more rows in regions where the model is unsure); it cannot see a change in how the label follows
the features (concept drift) until labels arrive, since the calibration is from before the change.

Binary classification only: a regression model has no probabilities to calibrate (the config
refuses ``triggers.estimated_drop`` for one), and a multiclass one is not supported here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

# Metrics the expected confusion matrix (or expected ROC curve) gives; the gate's classification
# metrics plus precision and recall.
ESTIMABLE = frozenset({"accuracy", "balanced_accuracy", "f1", "precision", "recall", "roc_auc", "log_loss"})
# log_loss clips probabilities as scikit-learn does, so a score of exactly 0 or 1 costs a finite amount.
_EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class Estimate:
    """The estimated metric on the current rows, or why there is none (``note``)."""

    metric: str
    value: float | None
    rows: int = 0  # current rows estimated on
    calibration_rows: int = 0  # labelled rows the scores were calibrated on
    note: str | None = None  # why value is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(labels: Any, scores: Any, pos_label: Any) -> IsotonicRegression:
    """Isotonic map from the model's positive-class score to the observed positive rate. Raises
    ValueError when the rows cannot calibrate (no rows, one class only, scores not finite)."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape[0] == 0 or y.shape[0] != s.shape[0]:
        raise ValueError(f"calibration needs one score per labelled row, got {s.shape[0]} scores for {y.shape[0]} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("calibration scores contain NaN or infinite values")
    positive = (y == pos_label).astype(np.float64)
    if positive.min() == positive.max():
        raise ValueError(f"the calibration rows hold one class only ({'all' if positive[0] else 'no'} rows are {pos_label!r})")
    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, positive)


def expected_confusion(probability: np.ndarray, predicted_positive: np.ndarray) -> tuple[float, float, float, float]:
    """(TP, FP, TN, FN) expected from calibrated probabilities and the model's own predictions."""
    p = np.asarray(probability, dtype=np.float64)
    pred = np.asarray(predicted_positive, dtype=bool)
    return float(p[pred].sum()), float((1 - p[pred]).sum()), float((1 - p[~pred]).sum()), float(p[~pred].sum())


def _ratio(num: float, den: float) -> float:
    # The realised metrics' convention for an empty denominator (scikit-learn's zero_division=0).
    return num / den if den > 0 else 0.0


def expected_metric(metric: str, probability: Any, predicted_positive: Any, scores: Any) -> float:
    """The metric's expected value over rows whose positive class has calibrated ``probability``,
    the model predicting ``predicted_positive`` and scoring ``scores`` (its raw positive score)."""
    if metric not in ESTIMABLE:
        raise ValueError(f"metric '{metric}' has no confidence-based estimate; estimable: {sorted(ESTIMABLE)}")
    p = np.asarray(probability, dtype=np.float64)
    if p.size == 0:
        raise ValueError("no rows to estimate on")
    tp, fp, tn, fn = expected_confusion(p, predicted_positive)
    if metric == "accuracy":
        return (tp + tn) / p.size
    if metric == "precision":
        return _ratio(tp, tp + fp)
    if metric == "recall":
        return _ratio(tp, tp + fn)
    if metric == "f1":
        return _ratio(2 * tp, 2 * tp + fp + fn)
    if metric == "balanced_accuracy":
        return (_ratio(tp, tp + fn) + _ratio(tn, tn + fp)) / 2
    s = np.asarray(scores, dtype=np.float64)
    if metric == "log_loss":
        q = np.clip(s, _EPS, 1 - _EPS)
        return float(np.mean(-(p * np.log(q) + (1 - p) * np.log(1 - q))))
    # roc_auc: each row once as a positive (weight p) and once as a negative (weight 1 - p), ranked by
    # the model's own score: the area under the expected ROC curve.
    if p.sum() <= 0 or (1 - p).sum() <= 0:
        raise ValueError("expected ROC AUC is undefined: the calibrated probabilities expect one class only")
    truth = np.r_[np.ones_like(p), np.zeros_like(p)]
    return float(roc_auc_score(truth, np.r_[s, s], sample_weight=np.r_[p, 1 - p]))


def cannot_estimate(metric: str, calibration_rows: int, current_rows: int, min_calibration_rows: int) -> Estimate | None:
    """The refusals that need no scores (so a caller can skip loading the model): None when an
    estimate may be tried."""
    if metric not in ESTIMABLE:
        return Estimate(metric, None, current_rows, calibration_rows, f"metric '{metric}' has no confidence-based estimate")
    if calibration_rows < min_calibration_rows:
        return Estimate(metric, None, current_rows, calibration_rows,
                        f"{calibration_rows} labelled rows the champion did not train on "
                        f"< triggers.min_calibration_rows ({min_calibration_rows})")
    if current_rows == 0:
        return Estimate(metric, None, 0, calibration_rows, "no current rows to estimate on")
    return None


def estimate(metric: str, *, calibration_labels: Any, calibration_scores: Any, current_predictions: Any,
             current_scores: Any, pos_label: Any, min_calibration_rows: int) -> Estimate:
    """CBPE end to end: calibrate on the labelled rows, estimate ``metric`` on the current ones.
    A case it cannot judge (too few or one-class calibration rows, no current rows) comes back as an
    :class:`Estimate` with ``value`` None and the reason in ``note``, never as a made-up number."""
    n_cal = len(calibration_labels)
    n_cur = len(current_scores)
    refused = cannot_estimate(metric, n_cal, n_cur, min_calibration_rows)
    if refused is not None:
        return refused
    try:
        iso = calibrate(calibration_labels, calibration_scores, pos_label)
    except ValueError as exc:
        return Estimate(metric, None, n_cur, n_cal, f"cannot calibrate: {exc}")
    scores = np.asarray(current_scores, dtype=np.float64)
    probability = iso.predict(scores)
    predicted_positive = np.asarray(current_predictions) == pos_label
    try:
        value = expected_metric(metric, probability, predicted_positive, scores)
    except ValueError as exc:
        return Estimate(metric, None, n_cur, n_cal, str(exc))
    return Estimate(metric, value, n_cur, n_cal)
