"""ml.evaluation: metrics agree with scikit-learn, the paired bootstrap is right and fast, and the
promotion gates decide as documented. Seeded synthetic data only."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from ml.config import METRICS
from ml.evaluation import (
    EvaluationResult,
    _batch,
    _problem,
    _weighted_auc,
    compute_metric,
    evaluate_candidate,
    paired_bootstrap,
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _binary(n: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and positive-class probabilities; larger separation = better model."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, _sigmoid(separation * (2 * y - 1) + rng.normal(0, 1.5, n))


@pytest.fixture(scope="module")
def clf() -> dict[str, np.ndarray]:
    y, score = _binary(500, 1.0, seed=1)
    return {"y": y, "score": score, "pred": (score > 0.5).astype(int)}


@pytest.fixture(scope="module")
def reg() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    y = rng.normal(10, 3, 400)
    return {"y": y, "pred": y + rng.normal(0.5, 2, 400)}


# --------------------------------------------------------------------------------------------------
# compute_metric


SKLEARN = {
    "accuracy": lambda y, p, s: skm.accuracy_score(y, p),
    "balanced_accuracy": lambda y, p, s: skm.balanced_accuracy_score(y, p),
    "f1": lambda y, p, s: skm.f1_score(y, p),
    "roc_auc": lambda y, p, s: skm.roc_auc_score(y, s),
    "log_loss": lambda y, p, s: skm.log_loss(y, s),
    "mae": lambda y, p, s: skm.mean_absolute_error(y, p),
    "rmse": lambda y, p, s: skm.root_mean_squared_error(y, p),
    "r2": lambda y, p, s: skm.r2_score(y, p),
}


def test_sklearn_table_covers_every_metric():
    assert set(SKLEARN) == set(METRICS)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_compute_metric_matches_sklearn(metric, clf, reg):
    data = reg if metric in {"mae", "rmse", "r2"} else clf
    expected = SKLEARN[metric](data["y"], data.get("pred"), data.get("score"))
    got = compute_metric(metric, data["y"], data.get("pred"), data.get("score"))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-12)


def test_string_labels_default_positive_is_the_larger_label(clf):
    y = np.where(clf["y"] == 1, "UP", "DOWN")  # "UP" > "DOWN": the default positive class
    pred = np.where(clf["pred"] == 1, "UP", "DOWN")
    score = clf["score"]  # P("UP")
    assert compute_metric("f1", y, pred) == pytest.approx(skm.f1_score(y, pred, pos_label="UP"))
    assert compute_metric("roc_auc", y, y_score=score) == pytest.approx(skm.roc_auc_score(y == "UP", score))
    # scikit-learn also takes the last sorted label as the positive class for a 1-D probability.
    assert compute_metric("log_loss", y, y_score=score) == pytest.approx(skm.log_loss(y, score))
    assert compute_metric("accuracy", y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert compute_metric("balanced_accuracy", list(y), list(pred)) == pytest.approx(
        skm.balanced_accuracy_score(y, pred)
    )


def test_explicit_pos_label_flips_the_positive_class(clf):
    y = np.where(clf["y"] == 1, "UP", "DOWN")
    pred = np.where(clf["pred"] == 1, "UP", "DOWN")
    p_down = 1 - clf["score"]
    assert compute_metric("f1", y, pred, pos_label="DOWN") == pytest.approx(
        skm.f1_score(y, pred, pos_label="DOWN")
    )
    assert compute_metric("roc_auc", y, y_score=p_down, pos_label="DOWN") == pytest.approx(
        compute_metric("roc_auc", y, y_score=clf["score"])
    )
    assert compute_metric("log_loss", y, y_score=p_down, pos_label="DOWN") == pytest.approx(
        compute_metric("log_loss", y, y_score=clf["score"])
    )
    # Integer labels with a non-default positive class.
    assert compute_metric("f1", clf["y"], clf["pred"], pos_label=0) == pytest.approx(
        skm.f1_score(clf["y"], clf["pred"], pos_label=0)
    )


def test_multiclass_f1_is_macro_unless_pos_label_given():
    rng = np.random.default_rng(3)
    y = rng.choice(["a", "b", "c"], 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.choice(["a", "b", "c"], 300))
    assert compute_metric("f1", y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert compute_metric("f1", y, pred, pos_label="b") == pytest.approx(
        skm.f1_score(y, pred, labels=["b"], average=None)[0]
    )
    assert compute_metric("balanced_accuracy", y, pred) == pytest.approx(
        skm.balanced_accuracy_score(y, pred)
    )


# --------------------------------------------------------------------------------------------------
# Vectorised metrics used by the bootstrap


def _identity(metric, y, pred=None, score=None, pos_label=None) -> float:
    problem = _problem(metric, y, [(pred, score, "y_pred", "y_score")], pos_label)
    return float(_batch(problem, problem.models[0])(np.ones((1, problem.n)))[0])


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_vectorised_metric_equals_compute_metric_on_full_sample(metric, clf, reg):
    data = reg if metric in {"mae", "rmse", "r2"} else clf
    args = (metric, data["y"], data.get("pred"), data.get("score"))
    assert _identity(*args) == pytest.approx(compute_metric(*args), abs=1e-9)


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "f1"])
def test_vectorised_multiclass_equals_compute_metric(metric):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.5, y, rng.integers(0, 5, 300))  # class 4 only predicted
    assert _identity(metric, y, pred) == pytest.approx(compute_metric(metric, y, pred), abs=1e-9)


def test_vectorised_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 3000).astype(bool)
    for score in (
        rng.random(3000),  # no ties
        np.round(rng.random(3000) + 0.3 * y, 1),  # heavy ties within and across classes
        rng.integers(0, 3, 3000).astype(float),  # three distinct values only
        np.full(3000, 0.5),  # all tied: 0.5
    ):
        auc = _weighted_auc(y, score)
        assert auc(np.ones((1, 3000)))[0] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-9)
        # Resample counts behave as integer sample weights.
        counts = rng.integers(0, 4, (3, 3000)).astype(float)
        expected = [skm.roc_auc_score(y, score, sample_weight=w) for w in counts]
        np.testing.assert_allclose(auc(counts), expected, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# paired_bootstrap


def test_bootstrap_is_paired_seeded_and_oriented_b_minus_a():
    y, weak = _binary(400, 0.5, seed=6)
    _, strong = _binary(400, 2.0, seed=6)
    same = paired_bootstrap("roc_auc", y, None, None, score_a=weak, score_b=weak, n_resamples=200)
    assert same.shape == (200,) and np.all(same == 0)  # same rows for both models
    d1 = paired_bootstrap("roc_auc", y, None, None, score_a=weak, score_b=strong, n_resamples=200, seed=7)
    d2 = paired_bootstrap("roc_auc", y, None, None, score_a=weak, score_b=strong, n_resamples=200, seed=7)
    np.testing.assert_array_equal(d1, d2)
    assert d1.mean() > 0  # metric(b) - metric(a), b the stronger
    full = compute_metric("roc_auc", y, y_score=strong) - compute_metric("roc_auc", y, y_score=weak)
    assert d1.mean() == pytest.approx(full, abs=0.02)


def test_bootstrap_drops_resamples_where_metric_is_undefined():
    y = np.array([1] + [0] * 9)  # one positive: many resamples miss it
    a, b = np.linspace(0, 1, 10), np.linspace(1, 0, 10)
    diffs = paired_bootstrap("roc_auc", y, None, None, score_a=a, score_b=b, n_resamples=500)
    assert 0 < diffs.size < 500
    assert np.all(np.isfinite(diffs))


@pytest.mark.parametrize("metric", ["roc_auc", "f1", "log_loss"])
def test_bootstrap_speed_5000_rows_1000_resamples(metric):
    y, a = _binary(5000, 1.0, seed=8)
    _, b = _binary(5000, 1.5, seed=9)
    kwargs = {"score_a": a, "score_b": b} if METRICS[metric][1] else {}
    pa, pb = (a > 0.5).astype(int), (b > 0.5).astype(int)
    start = time.perf_counter()
    diffs = paired_bootstrap(metric, y, pa, pb, n_resamples=1000, **kwargs)
    assert time.perf_counter() - start < 2.0
    assert diffs.size == 1000


# --------------------------------------------------------------------------------------------------
# evaluate_candidate


def _auc_pair(n: int, champ_sep: float, chall_sep: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = 2 * y - 1
    champion = _sigmoid(champ_sep * sign + rng.normal(0, 1.5, n))
    challenger = _sigmoid(chall_sep * sign + rng.normal(0, 1.5, n))
    return y, champion, challenger


def _auc_eval(y, champion, challenger, **kwargs) -> EvaluationResult:
    return evaluate_candidate(
        metric="roc_auc", y_true=y, challenger_pred=None, challenger_score=challenger,
        champion_score=champion, challenger_version=4, champion_version=3, **kwargs,
    )


def test_clearly_better_challenger_is_promoted():
    y, champion, challenger = _auc_pair(2000, 0.7, 1.6, seed=10)
    result = _auc_eval(y, champion, challenger, floor=0.6)
    assert result.verdict == "promote" and result.promoted
    assert result.ci_low > 0 and result.ci_low <= result.improvement <= result.ci_high
    assert result.improvement == pytest.approx(result.challenger - result.champion)
    assert result.champion == pytest.approx(skm.roc_auc_score(y, champion))
    assert result.n_rows == 2000
    assert all("failed" not in r for r in result.reasons)
    assert any(r.startswith("significance: 95% lower bound +") for r in result.reasons)
    assert "90% CI" in result.summary() and "95% lower bound" in result.summary()
    assert result.summary().startswith("promote: roc_auc ")


def test_identical_models_are_rejected():
    y, champion, _ = _auc_pair(1000, 1.0, 1.0, seed=11)
    result = _auc_eval(y, champion, champion.copy())
    assert result.verdict == "reject"
    assert result.improvement == 0 and result.ci_low == 0 and result.ci_high == 0
    assert any(r.startswith("significance failed: 95% lower bound +0.0000 <= 0") for r in result.reasons)


def test_slightly_better_on_few_rows_is_not_significant():
    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, 60)
    champion = y.copy()
    champion[:15] = 1 - champion[:15]  # 45/60 right
    challenger = champion.copy()
    challenger[:3] = y[:3]  # fixes three rows...
    challenger[40:42] = 1 - y[40:42]  # ...breaks two: +1/60 overall
    result = evaluate_candidate(
        metric="accuracy", y_true=y, challenger_pred=challenger, champion_pred=champion
    )
    assert result.improvement == pytest.approx(1 / 60)
    assert result.verdict == "reject"
    assert result.ci_low <= 0 < result.ci_high
    failed = [r for r in result.reasons if "failed" in r]
    assert len(failed) == 1 and failed[0].startswith("significance failed") and "alpha=0.05" in failed[0]


def test_worse_challenger_is_rejected():
    y, champion, challenger = _auc_pair(2000, 1.6, 0.7, seed=13)
    result = _auc_eval(y, champion, challenger)
    assert result.verdict == "reject"
    assert result.improvement < 0 and result.ci_high < 0
    assert any(r.startswith("min improvement failed") for r in result.reasons)
    assert any(r.startswith("significance failed") for r in result.reasons)


@pytest.mark.parametrize("challenger_better", [True, False])
def test_lower_is_better_orientation_mae(challenger_better):
    rng = np.random.default_rng(14)
    y = rng.normal(50, 10, 1500)
    good, bad = y + rng.normal(0, 1, 1500), y + rng.normal(0, 3, 1500)
    challenger, champion = (good, bad) if challenger_better else (bad, good)
    result = evaluate_candidate(
        metric="mae", y_true=y, challenger_pred=challenger, champion_pred=champion, floor=5.0
    )
    assert result.greater_is_better is False
    assert result.improvement == pytest.approx(result.champion - result.challenger)
    if challenger_better:
        assert result.verdict == "promote"
        assert result.improvement > 0 and result.ci_low > 0
        assert any(r.startswith("floor: mae") and "<= floor 5.0000" in r for r in result.reasons)
    else:
        assert result.verdict == "reject"
        assert result.improvement < 0 and result.ci_high < 0
    assert "champion - challenger" in result.table_markdown()


def test_lower_is_better_floor_fails_above():
    rng = np.random.default_rng(15)
    y = rng.normal(0, 1, 300)
    result = evaluate_candidate(metric="mae", y_true=y, challenger_pred=y + 2.0, floor=1.0)
    assert result.verdict == "reject"
    assert result.reasons[0] == "floor failed: mae 2.0000 > floor 1.0000"


def test_floor_failure_rejects_even_when_better_than_champion():
    y, champion, challenger = _auc_pair(2000, 0.7, 1.6, seed=16)
    result = _auc_eval(y, champion, challenger, floor=0.99)
    assert result.verdict == "reject"
    assert result.ci_low > 0  # significantly better, still below the floor
    assert result.reasons[0].startswith("floor failed: roc_auc ") and "< floor 0.9900" in result.reasons[0]


def test_no_champion_promotes_when_floor_passes_and_rejects_when_not():
    y, score = _binary(500, 1.5, seed=17)
    auc = skm.roc_auc_score(y, score)
    common = {"metric": "roc_auc", "y_true": y, "challenger_pred": None, "challenger_score": score}
    passed = evaluate_candidate(**common, floor=auc - 0.05)
    assert passed.verdict == "promote"
    assert passed.champion is None and passed.improvement is None and passed.ci_low is None
    assert any("no champion yet" in r for r in passed.reasons)
    assert passed.summary().startswith("promote: roc_auc ") and "no champion yet" in passed.summary()
    failed = evaluate_candidate(**common, floor=auc + 0.05)
    assert failed.verdict == "reject"
    assert failed.reasons[0].startswith("floor failed")
    unset = evaluate_candidate(**common)
    assert unset.verdict == "promote" and "no floor" in unset.reasons[0]


def test_min_improvement_gate_rejects_a_small_significant_gain():
    y, champion, challenger = _auc_pair(2000, 0.7, 1.6, seed=10)
    result = _auc_eval(y, champion, challenger, min_improvement=0.5)
    assert result.ci_low > 0
    assert result.verdict == "reject"
    failed = [r for r in result.reasons if "failed" in r]
    assert len(failed) == 1 and failed[0].startswith("min improvement failed: gain +")
    assert "< min 0.5000" in failed[0]


def test_string_labels_through_evaluate_candidate():
    rng = np.random.default_rng(18)
    y = rng.choice(["DOWN", "UP"], 800)
    champion = np.where(rng.random(800) < 0.7, y, rng.choice(["DOWN", "UP"], 800))
    challenger = np.where(rng.random(800) < 0.95, y, rng.choice(["DOWN", "UP"], 800))
    result = evaluate_candidate(metric="f1", y_true=y, challenger_pred=challenger, champion_pred=champion)
    assert result.verdict == "promote"
    assert result.challenger == pytest.approx(skm.f1_score(y, challenger, pos_label="UP"))


def test_round_trip_and_renderings():
    y, champion, challenger = _auc_pair(1000, 0.7, 1.6, seed=19)
    result = evaluate_candidate(
        metric="roc_auc", y_true=y, challenger_pred=None, challenger_score=challenger,
        champion_score=champion, challenger_version=np.int64(4), champion_version=3, floor=0.6,
    )
    d = result.to_dict()
    text = json.dumps(d)
    assert len(text) < 2000
    back = EvaluationResult.from_dict(json.loads(text))
    assert back == result
    assert isinstance(back.reasons, tuple)

    table = result.table_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| model | version | roc_auc | 90% CI | n |")
    assert rows[1].startswith("| champion | v3 | ")
    assert rows[2].startswith("| challenger | v4 | ")
    assert rows[3].startswith("| difference")
    assert f"{result.ci_low:+.4f}..{result.ci_high:+.4f}" in rows[3]
    assert "**Verdict: promote**" in table

    empty = evaluate_candidate(metric="accuracy", y_true=[0, 1, 1], challenger_pred=[0, 1, 0])
    assert EvaluationResult.from_dict(json.loads(json.dumps(empty.to_dict()))) == empty
    assert "| champion | - | none yet |" in empty.table_markdown()
    with pytest.raises(ValueError, match="missing keys"):
        EvaluationResult.from_dict({"metric": "accuracy"})


# --------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: compute_metric("auc", [0, 1], [0, 1]), "unknown metric 'auc'"),
        (lambda: compute_metric("roc_auc", [0, 1], [0, 1]), "roc_auc needs y_score"),
        (lambda: compute_metric("accuracy", [0, 1], y_score=[0.1, 0.9]), "accuracy needs y_pred"),
        (lambda: compute_metric("accuracy", [], []), "empty input"),
        (lambda: compute_metric("mae", [], []), "empty input"),
        (lambda: compute_metric("accuracy", [0, 1, 1], [0, 1]), "length mismatch.*3 rows.*2"),
        (lambda: compute_metric("roc_auc", [0, 1], y_score=[0.2]), "length mismatch"),
        (lambda: compute_metric("roc_auc", [1, 1, 1], y_score=[0.1, 0.5, 0.9], pos_label=1),
         "roc_auc is undefined: only one class"),
        (lambda: compute_metric("roc_auc", ["UP"] * 3, y_score=[0.1, 0.5, 0.9]),
         "only the label 'UP' is present; pass pos_label"),
        (lambda: compute_metric("roc_auc", [0, 1, 2], y_score=[0.1, 0.5, 0.9]), "needs binary labels"),
        (lambda: compute_metric("f1", ["a", "b"], ["a", "b"], pos_label=1), "pos_label 1 is not one"),
        (lambda: compute_metric("log_loss", [0, 1], y_score=[0.2, 1.5]), r"probabilities in \[0, 1\]"),
        (lambda: compute_metric("mae", [1.0, np.nan], [1.0, 2.0]), "NaN"),
        (lambda: compute_metric("accuracy", np.array([1, "a"], dtype=object), [1, 1]), "mix types"),
        (lambda: compute_metric("r2", [1.0], [1.0]), "fewer than two rows"),
        (lambda: paired_bootstrap("accuracy", [0, 1], [0, 1], [0]), "length mismatch.*pred_b"),
        (lambda: evaluate_candidate(metric="roc_auc", y_true=[0, 1], challenger_pred=[0, 1]),
         "roc_auc needs challenger_score"),
        (lambda: evaluate_candidate(metric="accuracy", y_true=[0, 1], challenger_pred=[0, 1],
                                    significance=0.5), "significance must be in"),
    ],
)
def test_value_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---- a model's level in production (triggers.drop_reference: served) ------------------------------


def _served(n: int, start: str = "2026-01-01", hours: int = 1, right: int | None = None) -> pd.DataFrame:
    """``n`` hourly served rows; the first ``right`` predictions are correct, the rest wrong."""
    right = n if right is None else right
    label = np.array([1, 0] * (n // 2) + [1] * (n % 2))
    prediction = np.where(np.arange(n) < right, label, 1 - label)
    return pd.DataFrame({"ts": pd.date_range(start, periods=n, freq=f"{hours}h", tz="UTC"), "label": label,
                         "prediction": prediction, "score": np.full(n, np.nan)})


def test_served_baseline_is_the_first_span_only():
    from datetime import timedelta

    from ml.evaluation import served_baseline

    rows = _served(48, right=24)  # day 1 all right, day 2 all wrong
    first = rows["ts"].min()
    value, n = served_baseline("accuracy", rows, first, timedelta(hours=23), min_rows=10)
    assert (value, n) == (1.0, 24)
    value, n = served_baseline("accuracy", rows, first, timedelta(hours=47), min_rows=10)
    assert (value, n) == (0.5, 48)


def test_served_baseline_counts_from_the_first_row_served_not_the_first_labelled():
    from datetime import timedelta

    from ml.evaluation import served_baseline

    rows = _served(48, right=24)
    # Labels of the first 12 h are not known yet: the span still starts at the first row served.
    value, n = served_baseline("accuracy", rows.iloc[12:], rows["ts"].min(), timedelta(hours=23), min_rows=10)
    assert (value, n) == (1.0, 12)


def test_served_baseline_needs_min_rows_and_a_defined_metric():
    from datetime import timedelta

    from ml.evaluation import served_baseline

    rows = _served(20)
    assert served_baseline("accuracy", rows, rows["ts"].min(), timedelta(days=1), min_rows=21) == (None, 20)
    assert served_baseline("accuracy", rows[:0], rows["ts"].min(), timedelta(days=1), min_rows=1) == (None, 0)
    one_class = rows[rows["label"] == 1].assign(score=0.7)
    assert served_baseline("roc_auc", one_class, rows["ts"].min(), timedelta(days=1), min_rows=1) == (None, 10)
