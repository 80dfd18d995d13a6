"""The credit-default stream: reproducible, shaped like the model config, and drifting as documented.

Real scikit-learn and scipy, no mocks. The AUC thresholds are those of the simulator's docstring;
the values measured for seed 0 sit well inside them (see the comments in the tests).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, ks_2samp
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.config import load_config
from ml.simulator import (
    COVARIATE_MOVED,
    COVARIATE_UNMOVED,
    EMPLOYMENT_TYPES,
    FEATURES,
    HOME_OWNERSHIP,
    Batch,
    CreditDefaultSimulator,
    DriftPhase,
)

CONFIG = load_config(Path(__file__).resolve().parent.parent / "models" / "credit_default.yaml")
NUMERICAL = CONFIG.numerical
CATEGORICAL = CONFIG.categorical
DRIFT = [DriftPhase(6, covariate=1, concept=1)]


def _frames(sim: CreditDefaultSimulator, periods: range | list[int]) -> tuple[pd.DataFrame, pd.Series]:
    batches = [sim.batch(p) for p in periods]
    features = pd.concat([b.features for b in batches], ignore_index=True)
    labels = pd.concat([b.labels for b in batches], ignore_index=True)
    assert (features["row_id"] == labels["row_id"]).all()
    return features[list(FEATURES)], labels["label"]


def _fit(sim: CreditDefaultSimulator, periods: range | list[int]) -> Pipeline:
    # The same estimator as models/credit_default.yaml, in the usual scaler + one-hot pipeline.
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), NUMERICAL),
            ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(C=1.0, max_iter=500))])
    return model.fit(*_frames(sim, periods))


def _auc(model: Pipeline, sim: CreditDefaultSimulator, period: int) -> float:
    x, y = _frames(sim, [period])
    return float(roc_auc_score(y, model.predict_proba(x)[:, 1]))


# -- reproducibility ---------------------------------------------------------------------------------


def test_same_seed_and_period_gives_identical_frames() -> None:
    sim = CreditDefaultSimulator(seed=7, phases=DRIFT)
    first = sim.batch(3)
    sim.batch(9)  # other periods in between must not disturb period 3
    again = sim.batch(3)
    fresh = CreditDefaultSimulator(seed=7, phases=DRIFT).batch(3)
    for other in (again, fresh):
        pd.testing.assert_frame_equal(first.features, other.features)
        pd.testing.assert_frame_equal(first.labels, other.labels)
    drifted = sim.batch(8)
    pd.testing.assert_frame_equal(
        drifted.features, CreditDefaultSimulator(seed=7, phases=DRIFT).batch(8).features
    )


def test_different_seeds_and_periods_differ() -> None:
    a = CreditDefaultSimulator(seed=0).batch(2).features
    b = CreditDefaultSimulator(seed=1).batch(2).features
    c = CreditDefaultSimulator(seed=0).batch(3).features
    for other in (b, c):
        assert not np.allclose(a["income"], other["income"])
        assert (a["age"] != other["age"]).mean() > 0.5
    assert set(a["row_id"]).isdisjoint(b["row_id"])


def test_row_ids_unique_across_periods_and_stable() -> None:
    sim = CreditDefaultSimulator(seed=3, rows_per_period=200)
    ids = pd.concat([sim.batch(p).features["row_id"] for p in range(10)])
    assert ids.is_unique and len(ids) == 2000
    assert sim.batch(4).features["row_id"].iloc[17] == "s3-p4-00017"


def test_phases_before_the_first_drift_are_untouched() -> None:
    # A drift scenario replays the quiet stream exactly until its first phase starts.
    quiet = CreditDefaultSimulator(seed=5)
    drifting = CreditDefaultSimulator(seed=5, phases=DRIFT)
    for period in (0, 5):
        pd.testing.assert_frame_equal(quiet.batch(period).features, drifting.batch(period).features)
        pd.testing.assert_frame_equal(quiet.batch(period).labels, drifting.batch(period).labels)


def test_concept_drift_alone_changes_labels_not_features() -> None:
    quiet = CreditDefaultSimulator(seed=2).batch(4)
    concept = CreditDefaultSimulator(seed=2, phases=[DriftPhase(4, concept=1)]).batch(4)
    pd.testing.assert_frame_equal(quiet.features, concept.features)
    assert (quiet.labels["label"] != concept.labels["label"]).mean() > 0.05


# -- schema --------------------------------------------------------------------------------------------


def test_features_follow_the_model_config() -> None:
    assert list(FEATURES) == CONFIG.feature_names
    assert CONFIG.target.labels == [0, 1]
    assert set(COVARIATE_MOVED) | set(COVARIATE_UNMOVED) == set(FEATURES)
    assert not set(COVARIATE_MOVED) & set(COVARIATE_UNMOVED)


def test_batch_schema_and_value_ranges() -> None:
    sim = CreditDefaultSimulator(seed=0, phases=DRIFT)
    for period in (1, 7):  # before and after the drift
        batch = sim.batch(period)
        assert isinstance(batch, Batch) and batch.period == period
        f, y = batch.features, batch.labels
        assert list(f.columns) == ["row_id", "ts", *FEATURES]
        assert list(y.columns) == ["row_id", "label", "labelled_at"]
        assert len(f) == len(y) == 800
        assert f["row_id"].map(type).eq(str).all() and f["row_id"].is_unique
        assert str(f["ts"].dtype) == "datetime64[ns, UTC]"
        assert str(y["labelled_at"].dtype) == "datetime64[ns, UTC]"
        for name in ("age", "late_payments_12m", "open_credit_lines"):
            assert f[name].dtype == np.int64, name
        for name in ("income", "debt_ratio", "credit_utilization", "loan_amount"):
            assert f[name].dtype == np.float64, name
        assert f[list(FEATURES)].notna().all().all()  # documented: no missing values

        assert f["age"].between(18, 80).all()
        assert (f["income"] > 0).all() and f["income"].median() > 15_000
        assert f["debt_ratio"].between(0, 1.6).all()
        assert f["credit_utilization"].between(0, 1).all()
        assert f["late_payments_12m"].between(0, 12).all()
        assert (f["open_credit_lines"] >= 0).all()
        assert (f["loan_amount"] >= 500).all()
        assert set(f["employment_type"]) == set(EMPLOYMENT_TYPES)
        assert set(f["home_ownership"]) == set(HOME_OWNERSHIP)
        assert f[NUMERICAL].nunique().min() > 5  # counts vary enough to be treated as numerical


def test_correlations_make_sense() -> None:
    f, _ = _frames(CreditDefaultSimulator(seed=0), range(4))
    corr = f[NUMERICAL].corr(method="spearman")
    assert corr.loc["age", "income"] > 0.1
    assert corr.loc["income", "loan_amount"] > 0.3
    assert corr.loc["credit_utilization", "late_payments_12m"] > 0.2
    assert corr.loc["age", "open_credit_lines"] > 0.1
    by_job = f.groupby("employment_type")
    assert by_job["age"].median()["retired"] > 60
    assert by_job["income"].median()["unemployed"] < 0.6 * by_job["income"].median()["salaried"]
    assert (
        f.loc[f["home_ownership"] == "own", "age"].mean() > f.loc[f["home_ownership"] == "rent", "age"].mean()
    )


def test_timestamps_inside_the_period_and_labels_after_the_delay() -> None:
    delay = timedelta(hours=30)
    sim = CreditDefaultSimulator(seed=1, period=timedelta(hours=6), label_delay=delay)
    for period in (0, 3):
        batch = sim.batch(period)
        ts, labels = batch.features["ts"], batch.labels
        start, end = sim.period_start(period), sim.period_start(period + 1)
        assert end - start == timedelta(hours=6)
        assert (ts >= start).all() and (ts < end).all()
        assert ts.is_monotonic_increasing and ts.max() - ts.min() > timedelta(hours=5)  # spread out
        assert (labels["row_id"] == batch.features["row_id"]).all()
        # Documented: no jitter, every label arrives exactly `label_delay` after its row.
        assert (labels["labelled_at"] - ts == pd.Timedelta(delay)).all()
        assert set(labels["label"].unique()) <= {0, 1} and labels["label"].dtype == np.int64


def test_start_is_normalised_to_utc_and_naive_start_is_refused() -> None:
    paris = timezone(timedelta(hours=1))
    sim = CreditDefaultSimulator(start=datetime(2026, 3, 1, 1, 0, tzinfo=paris))
    assert sim.period_start(2) == datetime(2026, 3, 3, tzinfo=UTC)
    assert sim.period_start(2).tzinfo == UTC
    assert sim.batch(0).features["ts"].min() >= pd.Timestamp("2026-03-01", tz="UTC")
    with pytest.raises(ValueError, match="timezone-aware"):
        CreditDefaultSimulator(start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="period"):
        CreditDefaultSimulator().batch(-1)


def test_base_rate_is_plausible() -> None:
    _, quiet = _frames(CreditDefaultSimulator(seed=0), range(5))
    assert 0.10 <= quiet.mean() <= 0.20  # documented ~15 %
    _, drifted = _frames(CreditDefaultSimulator(seed=0, phases=DRIFT), range(6, 9))
    assert 0.15 <= drifted.mean() <= 0.35  # documented ~23 %: the downturn raises defaults


# -- phases ----------------------------------------------------------------------------------------------


def test_phase_at_picks_the_active_phase() -> None:
    late, early = DriftPhase(10, covariate=0.5), DriftPhase(4, covariate=1, concept=1)
    sim = CreditDefaultSimulator(phases=[late, early])  # any order
    zero = sim.phase_at(0)
    assert (zero.covariate, zero.concept) == (0.0, 0.0)
    assert sim.phase_at(3) == zero
    assert sim.phase_at(4) is early and sim.phase_at(9) is early
    assert sim.phase_at(10) is late and sim.phase_at(500) is late
    assert CreditDefaultSimulator().phase_at(7) == zero
    with pytest.raises(ValueError, match="same period"):
        CreditDefaultSimulator(phases=[DriftPhase(3), DriftPhase(3, concept=1)])


# -- model quality and drift -------------------------------------------------------------------------------


def test_quiet_stream_is_learnable_in_the_documented_range() -> None:
    sim = CreditDefaultSimulator(seed=0)
    auc = _auc(_fit(sim, range(4)), sim, 4)
    assert 0.75 <= auc <= 0.85, auc  # seed 0: 0.817


def test_concept_drift_costs_the_old_model_and_a_retrain_wins_back() -> None:
    sim = CreditDefaultSimulator(seed=0, phases=DRIFT)
    pre = _fit(sim, range(4))  # the champion, trained before the drift
    post = _fit(sim, [6, 7])  # a retrain on post-drift data only (half as many rows)
    pre_auc, post_auc = _auc(pre, sim, 8), _auc(post, sim, 8)
    # Seed 0: pre 0.778, post 0.869, a gap of 0.091; the contract asks for >= 0.05.
    assert post_auc - pre_auc >= 0.05, (pre_auc, post_auc)
    assert pre_auc < _auc(pre, sim, 4) - 0.02  # the champion itself got worse, too
    assert post_auc >= 0.75


def test_covariate_drift_moves_the_documented_features_only() -> None:
    sim = CreditDefaultSimulator(seed=0, phases=DRIFT)
    before, after = sim.batch(2).features, sim.batch(7).features
    for name in NUMERICAL:
        p = ks_2samp(before[name], after[name], method="asymp").pvalue
        if name in COVARIATE_MOVED:
            assert p < 1e-6, (name, p)
        else:
            assert p > 1e-3, (name, p)
    assert len([n for n in NUMERICAL if n in COVARIATE_UNMOVED]) >= 3

    # Directions and sizes, as documented.
    assert after["income"].median() < 0.85 * before["income"].median()
    assert after["loan_amount"].median() > 1.2 * before["loan_amount"].median()
    assert after["credit_utilization"].mean() > before["credit_utilization"].mean() + 0.07
    assert after["debt_ratio"].median() > before["debt_ratio"].median() + 0.08

    def mix(name: str) -> pd.DataFrame:
        return pd.DataFrame(
            {"before": before[name].value_counts(), "after": after[name].value_counts()}
        ).fillna(0)

    jobs = mix("employment_type")
    assert chi2_contingency(jobs.to_numpy()).pvalue < 1e-6
    share = jobs / jobs.sum()
    assert share.loc["salaried", "after"] < share.loc["salaried", "before"] - 0.05
    assert share.loc["unemployed", "after"] > share.loc["unemployed", "before"] + 0.03
    assert chi2_contingency(mix("home_ownership").to_numpy()).pvalue > 1e-3


def test_covariate_strength_scales_the_shift() -> None:
    def median_income(strength: float) -> float:
        sim = CreditDefaultSimulator(seed=4, phases=[DriftPhase(0, covariate=strength)])
        return float(sim.batch(1).features["income"].median())

    assert median_income(0) > median_income(0.5) > median_income(1) > median_income(2)
