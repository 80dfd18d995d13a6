"""Training on simulator data with real scikit-learn: full fits, incremental fits, prediction scores
and the data-window fingerprint."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline

from ml.config import ModelConfig, load_config, parse_config
from ml.evaluation import compute_metric
from ml.simulator import CreditDefaultSimulator
from ml.training import TrainingError, build_pipeline, data_window, fit_full, fit_incremental, predict
from ml.validation import validate_window

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "credit_default.yaml"
CONFIG = load_config(SHIPPED)
SIM = CreditDefaultSimulator(seed=0, rows_per_period=400)


def _window(periods) -> pd.DataFrame:
    batches = [SIM.batch(p) for p in periods]
    frame = pd.concat([b.features.merge(b.labels[["row_id", "label"]], on="row_id") for b in batches],
                      ignore_index=True)
    return validate_window(frame, CONFIG, window="training", require_labels=True)


def _config(**changes) -> ModelConfig:
    data = yaml.safe_load(SHIPPED.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    return parse_config(data, "test-config")


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return _window(range(3))


@pytest.fixture(scope="module")
def holdout() -> pd.DataFrame:
    return _window([3])


@pytest.fixture(scope="module")
def champion(train) -> Pipeline:
    return fit_full(CONFIG, train)


@pytest.fixture(scope="module")
def sgd_config():
    return _config(
        estimator={"class": "sklearn.linear_model.SGDClassifier", "params": {"loss": "log_loss", "random_state": 0}},
        training__strategy="incremental",
    )


def test_build_pipeline_shape():
    pipeline = build_pipeline(CONFIG)
    assert list(pipeline.named_steps) == ["preprocess", "model"]
    model = pipeline.named_steps["model"]
    assert isinstance(model, LogisticRegression)
    assert model.C == 1.0 and model.max_iter == 500
    assert model.random_state == CONFIG.training.random_state  # filled in when the params do not set it
    columns = {name: cols for name, _, cols in pipeline.named_steps["preprocess"].transformers}
    assert columns == {"num": CONFIG.numerical, "cat": CONFIG.categorical}


def test_build_pipeline_keeps_explicit_random_state(sgd_config):
    cfg = _config(training__random_state=7)
    assert build_pipeline(cfg).named_steps["model"].random_state == 7
    explicit = _config(estimator={"class": "sklearn.linear_model.SGDClassifier", "params": {"random_state": 3}},
                       training__random_state=7)
    assert build_pipeline(explicit).named_steps["model"].random_state == 3


def test_fit_full_reaches_a_sane_auc(champion, holdout):
    labels, scores = predict(CONFIG, champion, holdout)
    auc = compute_metric("roc_auc", holdout["label"].tolist(), y_score=scores, pos_label=CONFIG.positive_label)
    assert auc > 0.7
    accuracy = compute_metric("accuracy", holdout["label"].tolist(), y_pred=labels)
    assert accuracy > 0.75  # base rate ~16 %: at least as good as always saying "no default"


def test_fit_full_is_deterministic(train, holdout, champion):
    again = fit_full(CONFIG, train)
    np.testing.assert_array_equal(predict(CONFIG, again, holdout)[1], predict(CONFIG, champion, holdout)[1])


def test_predict_returns_labels_and_positive_class_scores(champion, holdout):
    labels, scores = predict(CONFIG, champion, holdout)
    assert labels.shape == scores.shape == (len(holdout),)
    assert set(np.unique(labels)) <= {0, 1}
    assert len(np.unique(labels)) == 2
    assert np.all((scores >= 0) & (scores <= 1))
    assert list(champion.classes_) == [0, 1]
    proba = champion.predict_proba(holdout[CONFIG.feature_names])
    np.testing.assert_allclose(scores, proba[:, 1])
    assert np.array_equal(labels, champion.classes_[proba.argmax(axis=1)])


def test_scores_follow_the_configured_positive_label(train, holdout, champion):
    reversed_cfg = _config(target={"name": "default", "labels": [1, 0]})
    assert reversed_cfg.positive_label == 0
    model = fit_full(reversed_cfg, train)
    _, scores = predict(reversed_cfg, model, holdout)
    _, default_scores = predict(CONFIG, champion, holdout)
    # The score is now P(repaid): the complement of P(default) for the same fit.
    np.testing.assert_allclose(scores, 1 - default_scores, atol=1e-9)
    auc = compute_metric("roc_auc", holdout["label"].tolist(), y_score=scores, pos_label=0)
    assert auc > 0.7


def test_predict_no_score_for_a_model_without_predict_proba(train, holdout):
    cfg = _config(estimator={"class": "sklearn.svm.LinearSVC", "params": {}}, promotion__metric="accuracy")
    model = fit_full(cfg, train)
    labels, scores = predict(cfg, model, holdout)
    assert scores is None
    assert set(np.unique(labels)) <= {0, 1}


def test_fit_incremental_changes_coef_and_keeps_champion(sgd_config, train, holdout):
    champion = fit_full(sgd_config, train)
    assert isinstance(champion.named_steps["model"], SGDClassifier)
    coef = champion.named_steps["model"].coef_.copy()
    n_iter = champion.named_steps["model"].t_
    scaler_mean = champion.named_steps["preprocess"].named_transformers_["num"]["scale"].mean_.copy()

    candidate = fit_incremental(sgd_config, champion, holdout)

    assert candidate is not champion
    assert candidate.named_steps["model"] is not champion.named_steps["model"]
    assert not np.allclose(candidate.named_steps["model"].coef_, coef)
    assert candidate.named_steps["model"].t_ > n_iter
    # the champion passed in is untouched, preprocessing included
    np.testing.assert_array_equal(champion.named_steps["model"].coef_, coef)
    assert champion.named_steps["model"].t_ == n_iter
    np.testing.assert_array_equal(
        champion.named_steps["preprocess"].named_transformers_["num"]["scale"].mean_, scaler_mean
    )
    # the candidate keeps the champion's fitted preprocessing
    np.testing.assert_array_equal(
        candidate.named_steps["preprocess"].named_transformers_["num"]["scale"].mean_, scaler_mean
    )
    labels, scores = predict(sgd_config, candidate, holdout)
    assert set(np.unique(labels)) <= {0, 1}
    assert list(candidate.classes_) == [0, 1]
    assert np.all((scores >= 0) & (scores <= 1))


def test_fit_incremental_accepts_one_class_batch(sgd_config, train, holdout):
    champion = fit_full(sgd_config, train)
    only_defaults = holdout[holdout["label"] == 1]
    candidate = fit_incremental(sgd_config, champion, only_defaults)
    assert list(candidate.named_steps["model"].classes_) == [0, 1]


def test_fit_incremental_without_partial_fit(champion, holdout):
    with pytest.raises(TrainingError) as info:
        fit_incremental(CONFIG, champion, holdout)
    assert "credit_default" in str(info.value)
    assert "no partial_fit" in str(info.value)
    assert "strategy 'full'" in str(info.value)


def test_fit_incremental_without_a_model_step(holdout):
    with pytest.raises(TrainingError, match="no partial_fit"):
        fit_incremental(CONFIG, Pipeline([("preprocess", build_pipeline(CONFIG).named_steps["preprocess"])]), holdout)


@pytest.mark.parametrize("only", [0, 1])
def test_one_class_training_window(train, only):
    one_class = train[train["label"] == only]
    with pytest.raises(TrainingError) as info:
        fit_full(CONFIG, one_class)
    message = str(info.value)
    assert "credit_default" in message
    assert "one class only" in message
    assert str(only) in message


def test_data_window(train):
    window = data_window(train, CONFIG)
    assert window.rows == len(train) == 1200
    assert pd.Timestamp(window.start) == train["ts"].min()
    assert pd.Timestamp(window.end) == train["ts"].max()
    assert window.start.endswith("+00:00")
    assert len(window.content_hash) == 16
    assert set(window.to_dict()) == {"rows", "start", "end", "content_hash"}


def test_data_window_hash_is_stable(train):
    first = data_window(train, CONFIG)
    assert data_window(train.copy(deep=True), CONFIG) == first
    assert data_window(_window(range(3)), CONFIG) == first  # rebuilt from the seed
    with_extra = train.assign(prediction=1, score=0.5)  # columns outside the fingerprint do not count
    assert data_window(with_extra, CONFIG).content_hash == first.content_hash


@pytest.mark.parametrize(
    "column, change",
    [
        ("income", lambda v: v + 100.0),
        ("employment_type", lambda v: "retired" if v != "retired" else "salaried"),
        ("label", lambda v: 1 - v),
        ("row_id", lambda v: v + "x"),
        ("ts", lambda v: v + pd.Timedelta(microseconds=1)),
    ],
)
def test_data_window_hash_changes_with_one_value(train, column, change):
    changed = train.copy()
    changed.at[17, column] = change(changed.at[17, column])
    assert data_window(changed, CONFIG).content_hash != data_window(train, CONFIG).content_hash
    assert data_window(changed, CONFIG).rows == len(train)


def test_data_window_hash_changes_with_one_row_fewer(train):
    assert data_window(train.iloc[:-1], CONFIG).content_hash != data_window(train, CONFIG).content_hash


def test_fit_full_does_not_modify_the_window(train):
    before = copy.deepcopy(train)
    fit_full(CONFIG, train)
    pd.testing.assert_frame_equal(train, before)
