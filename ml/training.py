"""Training a candidate: full retrain on a sliding window, or incremental ``partial_fit`` on the
champion. The preprocessing lives inside the logged pipeline, so ``models:/name@champion`` takes raw
feature columns."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils import get_tags

from ml.config import ModelConfig


class TrainingError(ValueError):
    """A candidate that cannot be trained (e.g. one class only, no champion to warm-start)."""


@dataclass(frozen=True)
class DataWindow:
    """What a model learned from: enough to find the rows again and to prove they did not change."""

    rows: int
    start: str  # ISO times of the first and last row
    end: str
    content_hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_pipeline(config: ModelConfig) -> Pipeline:
    """Preprocessing and estimator in one pipeline. Categorical features are encoded the way the
    estimator can take them: ordinal codes plus ``categorical_features`` where it has native support
    (HistGradientBoosting*), else one-hot, kept sparse only for estimators that accept sparse input.
    Categories unseen at fit time never fail a prediction."""
    estimator_cls = config.estimator.load_class()
    params = dict(config.estimator.params)
    defaults = estimator_cls().get_params()
    if "random_state" in defaults and "random_state" not in params:
        params["random_state"] = config.training.random_state
    native = bool(config.categorical) and "categorical_features" in defaults
    if native and "categorical_features" in params:
        raise TrainingError(
            f"{config.name}: estimator.params.categorical_features is set by Driftline from the features' "
            "kind: remove it from the YAML"
        )

    transformers = []
    if config.numerical:
        numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        transformers.append(("num", numeric, config.numerical))
    sparse_ok = True
    if config.categorical:
        impute = ("impute", SimpleImputer(strategy="constant", fill_value="missing"))
        if native:
            # Codes 0..max_bins-1 (the rarest categories share the last code past that); unseen
            # categories become NaN, which the trees route like a missing value.
            encoder = OrdinalEncoder(
                handle_unknown="use_encoded_value", unknown_value=np.nan,
                max_categories=int(params.get("max_bins", defaults.get("max_bins", 255))),
            )
            # The ColumnTransformer puts numerical columns first, then the categorical ones.
            first = len(config.numerical)
            params["categorical_features"] = list(range(first, first + len(config.categorical)))
        else:
            sparse_ok = _accepts_sparse(estimator_cls(**params))
            # Dense one-hot for estimators that refuse sparse input (they would raise TypeError at fit).
            encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=sparse_ok)
        transformers.append(("cat", Pipeline([impute, ("encode", encoder)]), config.categorical))
    preprocess = ColumnTransformer(transformers, sparse_threshold=0.3 if sparse_ok else 0.0)
    return Pipeline([("preprocess", preprocess), ("model", estimator_cls(**params))])


def _accepts_sparse(estimator: Any) -> bool:
    """scikit-learn's own declaration (estimator tags); anything that does not declare it gets dense."""
    try:
        return bool(get_tags(estimator).input_tags.sparse)
    except Exception:  # noqa: BLE001 (a third-party estimator without valid tags: assume dense only)
        return False


def _check_classes(config: ModelConfig, y: pd.Series) -> None:
    if config.task == "classification" and y.nunique() < 2:
        raise TrainingError(f"{config.name}: training window holds one class only ({y.iloc[0]!r}); cannot train")


def fit_full(config: ModelConfig, train: pd.DataFrame) -> Pipeline:
    y = train["label"]
    _check_classes(config, y)
    pipeline = build_pipeline(config)
    pipeline.fit(train[config.feature_names], _label_array(config, y))
    return pipeline


def fit_incremental(config: ModelConfig, champion: Pipeline, new_rows: pd.DataFrame) -> Pipeline:
    """Warm-start a copy of the champion: its preprocessing stays as fitted (the scaler and encoder
    define the features the estimator knows), its estimator learns from the new rows."""
    estimator = champion.named_steps.get("model")
    if estimator is None or not hasattr(estimator, "partial_fit"):
        raise TrainingError(f"{config.name}: the champion's estimator has no partial_fit; use strategy 'full'")
    candidate = copy.deepcopy(champion)
    X = candidate.named_steps["preprocess"].transform(new_rows[config.feature_names])
    y = _label_array(config, new_rows["label"])
    kwargs = {"classes": np.asarray(config.target.labels)} if config.task == "classification" else {}
    candidate.named_steps["model"].partial_fit(X, y, **kwargs)
    return candidate


def _label_array(config: ModelConfig, y: pd.Series) -> np.ndarray:
    if config.task == "regression":
        return y.astype(float).to_numpy()
    # Keep the configured label type so classes_ match target.labels exactly.
    return np.asarray(list(y), dtype=np.asarray(config.target.labels).dtype)


def predict(config: ModelConfig, model: Any, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted labels (or values) and, for binary classifiers, the positive class's probability.
    Scoring and evaluation both call this, so a stored score means the same everywhere."""
    X = frame[config.feature_names]
    prediction = np.asarray(model.predict(X))
    score = None
    if config.task == "classification" and len(config.target.labels or []) == 2 and hasattr(model, "predict_proba"):
        classes = list(model.classes_)
        positive = config.positive_label
        if positive in classes:
            score = np.asarray(model.predict_proba(X))[:, classes.index(positive)]
    return prediction, score


def data_window(frame: pd.DataFrame, config: ModelConfig) -> DataWindow:
    columns = ["row_id", "ts", *config.feature_names, "label"]
    hashed = pd.util.hash_pandas_object(frame[columns].astype(str), index=False).to_numpy()
    return DataWindow(
        rows=len(frame),
        start=pd.Timestamp(frame["ts"].min()).isoformat(),
        end=pd.Timestamp(frame["ts"].max()).isoformat(),
        content_hash=hashlib.sha256(hashed.tobytes()).hexdigest()[:16],
    )
