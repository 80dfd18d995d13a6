"""The label-free performance estimate (CBPE, ml.estimation): its arithmetic on hand cases, its
calibration on seeded synthetic scores with a known answer, the estimated-drop trigger, its config
checks, and the figure the loop's drift check gives (through the replay's in-memory adapters)."""

from __future__ import annotations

import math
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from ml.config import ConfigError, TriggerPolicy, parse_config
from ml.estimation import calibrate, estimate, expected_confusion, expected_metric
from ml.triggers import TriggerInputs, decide

sys.path.insert(0, str(Path(__file__).parent))

# ---- arithmetic ---------------------------------------------------------------------------------


def test_expected_confusion_matrix_by_hand():
    p = np.array([0.9, 0.2, 0.6, 0.3])
    pred = np.array([True, False, True, True])  # the last row predicted positive against its probability
    tp, fp, tn, fn = expected_confusion(p, pred)
    assert (tp, fp, tn, fn) == pytest.approx((1.8, 1.2, 0.8, 0.2))
    assert expected_metric("accuracy", p, pred, p) == pytest.approx(2.6 / 4)
    assert expected_metric("precision", p, pred, p) == pytest.approx(1.8 / 3.0)
    assert expected_metric("recall", p, pred, p) == pytest.approx(1.8 / 2.0)
    assert expected_metric("f1", p, pred, p) == pytest.approx(3.6 / (3.6 + 1.2 + 0.2))
    assert expected_metric("balanced_accuracy", p, pred, p) == pytest.approx((1.8 / 2.0 + 0.8 / 2.0) / 2)


def test_accuracy_is_mean_of_max_p_when_predictions_follow_the_probability():
    p = np.array([0.9, 0.2, 0.6, 0.45, 0.05])
    assert expected_metric("accuracy", p, p >= 0.5, p) == pytest.approx(np.maximum(p, 1 - p).mean())


def test_expected_auc_by_hand():
    # Scores 0.2 < 0.6 < 0.9 with positive weights p and negative weights 1 - p: the expected AUC is
    # the weighted share of (positive, negative) pairs ranked right, ties at the same row counting half.
    p = np.array([0.2, 0.6, 0.9])
    pos, neg = p, 1 - p
    right = sum(pos[i] * neg[j] * (1.0 if i > j else 0.5 if i == j else 0.0) for i in range(3) for j in range(3))
    assert expected_metric("roc_auc", p, p >= 0.5, p) == pytest.approx(right / (pos.sum() * neg.sum()))


def test_unknown_metric_and_empty_rows_are_refused():
    with pytest.raises(ValueError, match="no confidence-based estimate"):
        expected_metric("mae", [0.5], [True], [0.5])
    with pytest.raises(ValueError, match="no rows"):
        expected_metric("accuracy", [], [], [])


# ---- calibration with a known answer ------------------------------------------------------------


def calibrated_sample(rng: np.random.Generator, n: int, a: float = 2.0, b: float = 2.0):
    """True probabilities q ~ Beta(a, b); labels ~ Bernoulli(q). The model's raw score is q**3: badly
    calibrated but in the same order, so isotonic calibration can recover q."""
    q = rng.beta(a, b, size=n)
    y = (rng.random(n) < q).astype(int)
    return q, q**3, y


def test_isotonic_calibration_recovers_the_true_probability():
    rng = np.random.default_rng(0)
    _, raw, y = calibrated_sample(rng, 20_000)
    iso = calibrate(y, raw, pos_label=1)
    grid_q = np.linspace(0.1, 0.9, 9)
    # Binomial error of a rate from ~1/50 of 20,000 rows is about 0.035 at most; allow 3 of that.
    assert np.abs(iso.predict(grid_q**3) - grid_q).max() < 0.1


@pytest.mark.parametrize("metric", ["accuracy", "f1", "roc_auc"])
def test_estimate_matches_the_realised_metric_under_covariate_shift(metric):
    """Calibrate on one population, estimate on another where the label still follows the score
    (covariate shift, CBPE's case): the estimate lands within a few standard errors of the realised
    metric, with the standard error computed from the sample; the naive guess (the calibration rows'
    own metric) does not."""
    rng = np.random.default_rng(42)
    _, cal_raw, cal_y = calibrated_sample(rng, 20_000, 2.0, 2.0)
    _, cur_raw, cur_y = calibrated_sample(rng, 20_000, 0.6, 0.6)  # more rows near 0 and 1: easier
    pred = (cur_raw >= 0.5**3).astype(int)
    result = estimate(metric, calibration_labels=cal_y, calibration_scores=cal_raw, current_predictions=pred,
                      current_scores=cur_raw, pos_label=1, min_calibration_rows=100)
    assert result.note is None and result.rows == 20_000 and result.calibration_rows == 20_000
    realised = {"accuracy": lambda: accuracy_score(cur_y, pred), "f1": lambda: f1_score(cur_y, pred),
                "roc_auc": lambda: roc_auc_score(cur_y, cur_raw)}[metric]()
    # Sampling error of the realised metric (labels drawn around their expectation): binomial for the
    # rates; Hanley & McNeil's for AUC.
    n = len(cur_y)
    if metric == "roc_auc":
        a, n1 = realised, cur_y.sum()
        n0 = n - n1
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        se = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    else:
        se = math.sqrt(realised * (1 - realised) / n)
    assert abs(result.value - realised) < 4 * se + 0.01  # + the calibration's own error
    cal_pred = (cal_raw >= 0.5**3).astype(int)
    naive = {"accuracy": accuracy_score(cal_y, cal_pred), "f1": f1_score(cal_y, cal_pred),
             "roc_auc": roc_auc_score(cal_y, cal_raw)}[metric]
    assert abs(naive - realised) > 3 * abs(result.value - realised)


def test_estimate_says_why_it_cannot_run():
    few = estimate("accuracy", calibration_labels=[0, 1] * 10, calibration_scores=[0.2, 0.8] * 10,
                   current_predictions=[1], current_scores=[0.7], pos_label=1, min_calibration_rows=50)
    assert few.value is None and "20 labelled rows" in few.note and "min_calibration_rows (50)" in few.note
    one_class = estimate("accuracy", calibration_labels=[0] * 60, calibration_scores=np.linspace(0, 1, 60),
                         current_predictions=[1], current_scores=[0.7], pos_label=1, min_calibration_rows=50)
    assert one_class.value is None and "one class only" in one_class.note
    nothing = estimate("accuracy", calibration_labels=[0, 1] * 30, calibration_scores=[0.2, 0.8] * 30,
                       current_predictions=[], current_scores=[], pos_label=1, min_calibration_rows=50)
    assert nothing.value is None and "no current rows" in nothing.note


# ---- the trigger --------------------------------------------------------------------------------


FACTS = {
    "has_champion": True, "metric": "accuracy", "greater_is_better": True, "reference_metric": 0.80,
    "estimated_metric": 0.78, "calibration_rows": 500, "new_labels": 1000,
    "model_age": timedelta(days=3), "since_last_retrain": timedelta(days=3),
}


def rules(**kwargs) -> TriggerPolicy:
    return TriggerPolicy(**{"drift_share": None, "estimated_drop": 0.05, "min_calibration_rows": 200, **kwargs})


def test_estimated_drop_fires_when_the_estimate_falls_far_enough():
    decision = decide(rules(), TriggerInputs(**{**FACTS, "estimated_metric": 0.74}))
    assert decision.kind == "threshold"
    assert "estimated accuracy 0.740" in decision.reasons[0] and "7.5% worse than at promotion (0.800)" in decision.reasons[0]
    assert decision.not_run == ()


def test_estimated_drop_stays_quiet_within_the_allowed_drop():
    decision = decide(rules(), TriggerInputs(**FACTS))  # 2.5 % worse, 5 % allowed
    assert decision.kind == "none" and decision.reasons == () and decision.not_run == ()


def test_estimated_drop_for_a_lower_is_better_metric():
    facts = {**FACTS, "metric": "log_loss", "greater_is_better": False, "reference_metric": 0.40}
    assert decide(rules(), TriggerInputs(**{**facts, "estimated_metric": 0.43})).kind == "threshold"
    assert decide(rules(), TriggerInputs(**{**facts, "estimated_metric": 0.41})).kind == "none"


def test_estimated_drop_is_held_back_by_cooldown():
    decision = decide(rules(cooldown="7d"), TriggerInputs(**{**FACTS, "estimated_metric": 0.70}))
    assert decision.kind == "none" and decision.reasons and "cooldown" in decision.held_back[0]


def test_estimated_drop_not_run_with_too_few_calibration_rows():
    facts = TriggerInputs(**{**FACTS, "estimated_metric": 0.5, "calibration_rows": 150})
    decision = decide(rules(), facts)
    assert decision.kind == "none"  # an estimate from 150 rows is not acted on ...
    assert decision.not_run == (("estimated_drop: not run, 150 labelled rows the champion did not train on to "
                                 "calibrate its scores < triggers.min_calibration_rows (200)"),)  # ... and says so


def test_estimated_drop_not_run_says_why_there_is_no_estimate():
    facts = TriggerInputs(**{**FACTS, "estimated_metric": None, "estimate_note": "cannot calibrate: one class"})
    assert decide(rules(), facts).not_run == ("estimated_drop: not run, cannot calibrate: one class",)
    no_ref = TriggerInputs(**{**FACTS, "reference_metric": None})
    assert decide(rules(), no_ref).not_run == ("estimated_drop: not run, no reference level for the champion yet",)
    off = decide(rules(estimated_drop=None), TriggerInputs(**{**FACTS, "calibration_rows": 0}))
    assert off.not_run == ()


# ---- config -------------------------------------------------------------------------------------


def config(task: str = "classification", labels=(0, 1), metric: str = "accuracy", **triggers):
    raw = {"name": "m", "task": task, "features": [{"name": "x", "kind": "numerical"}], "target": {"name": "y"},
           "estimator": {"class": "sklearn.linear_model.LogisticRegression" if task == "classification"
                         else "sklearn.linear_model.Ridge"},
           "promotion": {"metric": metric}, "triggers": triggers}
    if labels:
        raw["target"]["labels"] = list(labels)
    return parse_config(raw, "m.yaml")


def test_config_accepts_estimated_drop_for_a_binary_classifier():
    cfg = config(estimated_drop=0.05, min_calibration_rows=300)
    assert cfg.triggers.estimated_drop == 0.05 and cfg.triggers.min_calibration_rows == 300
    assert config().triggers.estimated_drop is None  # off by default


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"task": "regression", "labels": None, "metric": "mae", "estimated_drop": 0.1},
     ("field 'triggers.estimated_drop': the label-free estimate (CBPE) calibrates a classifier's probabilities; "
      "a regression model has none")),
    ({"labels": ("a", "b", "c"), "estimated_drop": 0.1},
     "field 'triggers.estimated_drop': the label-free estimate (CBPE) needs a binary classifier"),
    ({"estimated_drop": 0}, "field 'triggers.estimated_drop': Input should be greater than 0"),
    ({"estimated_drop": 1.0}, "field 'triggers.estimated_drop': Input should be less than 1"),
    ({"min_calibration_rows": 1}, "field 'triggers.min_calibration_rows': Input should be greater than or equal to 2"),
])
def test_config_refuses_what_cbpe_cannot_do(kwargs, message):
    with pytest.raises(ConfigError) as err:
        config(**kwargs)
    assert message in str(err.value)


# ---- the loop's drift check, through the replay's in-memory adapters ------------------------------


def test_drift_check_estimates_the_champions_metric_and_the_rule_acts_on_it():
    from test_replay import prepared, raw_config, stream

    from ml import replay

    raw = raw_config(metric_floor=None, max_relative_drop=None, estimated_drop=0.5, min_calibration_rows=50)
    data = prepared(stream(batches=8), raw, every=(4,))
    result = replay.run(data, variants={"driftline": data.config})
    steps = result.steps["driftline"]
    first = next(s for s in steps if s["champion"] is not None and s["batch"] > 3)
    # Right after the first promotion only the gate's 36 h holdout (36 rows) is known the champion did
    # not train on: too few to calibrate, and the decision says the rule did not run.
    assert first["estimated_metric"] is None
    later = [s for s in steps if s["estimated_metric"] is not None]
    assert later, "no estimate once the served rows were labelled"
    for s in later:  # a stationary, separable stream: the estimate is a real accuracy near the live one
        assert 0.5 <= s["estimated_metric"] <= 1.0
        assert abs(s["estimated_metric"] - s["live_metric"]) < 0.2
    assert all(s["trigger"] != "threshold" for s in steps)  # nothing fell by half
