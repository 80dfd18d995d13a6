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


# --- categorical features with many values (one-hot is sparse there; HistGradientBoosting refuses sparse)

PLANS = [f"plan_{i}" for i in range(10)]


def _plans_frame(n: int, seed: int, plans: list[str] = PLANS) -> pd.DataFrame:
    """The outcome depends mostly on `plan`, so a model that ignored it would score badly."""
    rng = np.random.default_rng(seed)
    plan_index = rng.integers(0, len(plans), n)
    tenure = rng.uniform(0, 60, n)
    frame = pd.DataFrame({
        "row_id": [f"r{seed}-{i}" for i in range(n)],
        "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min"),
        "tenure_months": tenure,
        "plan": [plans[i] for i in plan_index],
    })
    frame["churned"] = ((plan_index % 2 == 1) ^ (rng.random(n) < 0.05)).astype(int)  # odd plans churn
    frame["amount"] = plan_index * 10.0 + tenure * 0.1 + rng.normal(0, 1, n)
    return frame


def _readme_model_yaml() -> dict:
    """The README's own "Add a model" example, read from the README so the two cannot drift apart."""
    text = (SHIPPED.parent.parent / "README.md").read_text()
    section = text[text.index("## Add a model"):]
    block = section[section.index("```yaml") + len("```yaml"):]
    return yaml.safe_load(block[:block.index("```")])


def _plan_config(estimator: str, params: dict | None = None, task: str = "classification",
                 strategy: str = "full") -> ModelConfig:
    data = _readme_model_yaml()
    data["estimator"] = {"class": estimator, "params": params or {}}
    data["training"] = {"strategy": strategy}
    if task == "regression":
        data.update(task="regression", target={"name": "amount"}, promotion={"metric": "mae"})
    return parse_config(data, "test-plan-config")


def _labelled(config: ModelConfig, frame: pd.DataFrame) -> pd.DataFrame:
    window = frame.rename(columns={config.target.name: "label"})
    return validate_window(window, config, window="training", require_labels=True)


def _unseen_rows(config: ModelConfig) -> pd.DataFrame:
    rows = _labelled(config, _plans_frame(4, seed=99))
    rows["plan"] = ["plan_brand_new", None, "plan_brand_new", "plan_3"]  # unseen and missing
    return rows


def _check_fitted_predicts(config: ModelConfig, model: Pipeline, holdout: pd.DataFrame) -> None:
    labels, scores = predict(config, model, holdout)
    if config.task == "classification":
        # Odd plans churn: only a model that learned from the categorical column gets this right.
        assert compute_metric("accuracy", holdout["label"].tolist(), y_pred=labels) > 0.85
        assert scores is not None and np.all((scores >= 0) & (scores <= 1))
    else:
        assert compute_metric("mae", holdout["label"].tolist(), y_pred=labels) < 8  # spread of plan effect is 90
    unseen = _unseen_rows(config)
    labels, scores = predict(config, model, unseen)
    assert len(labels) == len(unseen)
    if config.task == "classification":
        assert set(np.unique(labels)) <= {0, 1}
        assert np.all((scores >= 0) & (scores <= 1))
    else:
        assert np.all(np.isfinite(labels))


def test_readme_example_is_histgradientboosting_with_a_categorical_plan():
    # The cases below reuse this example; if the README changes its example, look at them again.
    data = _readme_model_yaml()
    assert data["estimator"]["class"] == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert {"name": "plan", "kind": "categorical"}.items() <= data["features"][1].items()


@pytest.mark.parametrize(
    "estimator, params, task",
    [
        ("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 50}, "classification"),
        ("sklearn.ensemble.HistGradientBoostingRegressor", {"max_iter": 50}, "regression"),
        ("sklearn.linear_model.LogisticRegression", {"max_iter": 500}, "classification"),
        ("sklearn.ensemble.RandomForestClassifier", {"n_estimators": 20}, "classification"),
        ("sklearn.linear_model.SGDClassifier", {"loss": "log_loss"}, "classification"),
    ],
)
def test_categorical_feature_with_many_values_trains_and_predicts(estimator, params, task):
    config = _plan_config(estimator, params, task)
    train, holdout = _labelled(config, _plans_frame(1500, seed=1)), _labelled(config, _plans_frame(400, seed=2))
    model = fit_full(config, train)
    _check_fitted_predicts(config, model, holdout)


@pytest.mark.parametrize("estimator", ["sklearn.ensemble.HistGradientBoostingClassifier",
                                       "sklearn.ensemble.HistGradientBoostingRegressor"])
def test_histgradientboosting_uses_its_native_categorical_support(estimator):
    task = "regression" if estimator.endswith("Regressor") else "classification"
    config = _plan_config(estimator, {"max_iter": 20}, task)
    model = fit_full(config, _labelled(config, _plans_frame(600, seed=3)))
    # Features reach the trees as [tenure_months, plan]: plan is one ordinal-coded categorical column.
    assert model.named_steps["model"].is_categorical_.tolist() == [False, True]
    assert model.named_steps["preprocess"].transform(_plans_frame(5, seed=4)).shape == (5, 2)


def test_histgradientboosting_with_more_categories_than_bins():
    plans = [f"plan_{i}" for i in range(300)]  # more than max_bins (255): the rarest share one code
    config = _plan_config("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 10})
    model = fit_full(config, _labelled(config, _plans_frame(3000, seed=5, plans=plans)))
    labels, _ = predict(config, model, _unseen_rows(config))
    assert len(labels) == 4


def test_dense_one_hot_for_estimators_without_sparse_support():
    # GaussianNB declares no sparse support: the one-hot columns must reach it dense.
    config = _plan_config("sklearn.naive_bayes.GaussianNB")
    model = fit_full(config, _labelled(config, _plans_frame(600, seed=6)))
    X = model.named_steps["preprocess"].transform(_plans_frame(5, seed=7))
    assert isinstance(X, np.ndarray) and X.shape == (5, 1 + len(PLANS))


def test_categorical_features_in_params_is_refused():
    config = _plan_config("sklearn.ensemble.HistGradientBoostingClassifier", {"categorical_features": [1]})
    with pytest.raises(TrainingError, match="categorical_features is set by Driftline"):
        build_pipeline(config)


@pytest.mark.parametrize(
    "estimator, params, task",
    [
        ("sklearn.linear_model.SGDClassifier", {"loss": "log_loss"}, "classification"),
        ("sklearn.linear_model.SGDRegressor", {}, "regression"),
    ],
)
def test_incremental_training_with_a_many_valued_categorical(estimator, params, task):
    config = _plan_config(estimator, params, task, strategy="incremental")
    champion = fit_full(config, _labelled(config, _plans_frame(1500, seed=8)))
    new_rows = pd.concat([_labelled(config, _plans_frame(300, seed=9)), _unseen_rows(config)], ignore_index=True)
    candidate = fit_incremental(config, champion, new_rows)
    assert candidate.named_steps["model"].t_ > champion.named_steps["model"].t_
    _check_fitted_predicts(config, candidate, _labelled(config, _plans_frame(400, seed=10)))
