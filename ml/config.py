"""One YAML file per model under ``models/``: what the model is, where its data lives, how it is
trained, when it is retrained and when a candidate may replace the champion.

A bad file raises :class:`ConfigError` naming the file, the field and the problem, so a typo fails
at DAG-parse time instead of in the middle of a run.
"""

from __future__ import annotations

import importlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Columns the store adds to every window; a feature may not take one of these names.
RESERVED_COLUMNS = frozenset(
    {"row_id", "ts", "prediction", "score", "model_version", "label", "labelled_at", "scored_at"}
)

# Metric name -> (greater is better, needs a probability score rather than a label).
METRICS: dict[str, tuple[bool, bool]] = {
    "accuracy": (True, False),
    "balanced_accuracy": (True, False),
    "f1": (True, False),
    "roc_auc": (True, True),
    "log_loss": (False, True),
    "mae": (False, False),
    "rmse": (False, False),
    "r2": (True, False),
}
CLASSIFICATION_METRICS = {"accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss"}
REGRESSION_METRICS = {"mae", "rmse", "r2"}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(ValueError):
    """A model config that cannot be used; the message names file, field and problem."""


def parse_duration(value: str | float | timedelta) -> timedelta:
    """``"90m"``, ``"12h"``, ``"7d"``, ``"2w"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    raise ValueError(f"not a duration: {value!r} (use e.g. '30m', '12h', '7d', '2w')")


def format_duration(value: timedelta) -> str:
    """Compact and readable: exact units when they fit ("4d", "12h"), else one decimal ("4.2d")."""
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    for unit in ("d", "h", "m"):
        if abs(seconds) >= _UNIT_SECONDS[unit]:
            return f"{seconds / _UNIT_SECONDS[unit]:.1f}{unit}"
    return f"{seconds:.0f}s"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Duration = timedelta


class FeatureSpec(_Strict):
    name: str
    kind: Literal["numerical", "categorical"]
    # Optional per-feature drift test; None means the dataset-wide method.
    drift_method: str | None = None
    drift_threshold: float | None = Field(default=None, gt=0)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_COLUMNS:
            raise ValueError(f"'{name}' is reserved for the store's own columns")
        return name


class TargetSpec(_Strict):
    name: str
    # Known label values (classification); a label outside them is a bad batch.
    labels: list[Any] | None = None


class DataSpec(_Strict):
    # None: the store from DRIFTLINE_STORE_URL / DRIFTLINE_HOME.
    store_url: str | None = None


class EstimatorSpec(_Strict):
    class_path: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def load_class(self) -> type:
        module_name, _, attr = self.class_path.rpartition(".")
        if not module_name:
            raise ValueError(f"'{self.class_path}' is not a dotted class path")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import '{self.class_path}': {exc}") from exc


class TrainingSpec(_Strict):
    strategy: Literal["full", "incremental"] = "full"
    random_state: int = 0


class WindowsSpec(_Strict):
    current: Duration = timedelta(days=1)
    training: Duration = timedelta(days=7)
    holdout: Duration = timedelta(days=1)
    # Reference for drift: the champion's own training window, or a fixed span before `current`.
    reference: Literal["champion_training"] | Duration = "champion_training"

    @field_validator("current", "training", "holdout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_validator("reference", mode="before")
    @classmethod
    def _reference(cls, value: Any) -> Any:
        return value if value == "champion_training" else parse_duration(value)


class TriggerPolicy(_Strict):
    schedule: str | None = "@daily"
    drift_share: float | None = Field(default=0.3, gt=0, le=1)
    # Dataset-wide drift methods (Evidently ids); None lets Evidently pick by column type and size.
    num_method: str | None = None
    cat_method: str | None = None
    prediction_drift: bool = False
    metric_floor: float | None = None
    max_relative_drop: float | None = Field(default=None, gt=0, lt=1)
    # What max_relative_drop measures the live metric against: "evaluation", the champion's score on
    # the holdout when it was promoted; or "served", its metric over its first windows.current of
    # served rows once rollback.min_labelled_rows of them are labelled (the evaluation until then).
    drop_reference: Literal["evaluation", "served"] = "evaluation"
    max_model_age: Duration | None = None
    cooldown: Duration = timedelta(0)
    # After the gate rejected a candidate, hold automatic retrains back this long, and count the
    # champion's age (max_model_age) from that rejection: the champion has just beaten a model
    # trained on the newest data, so retraining again at once mostly repeats that. None: neither.
    rejection_backoff: Duration | None = None
    min_new_labels: int = Field(default=0, ge=0)
    on_new_labels: bool = True

    @field_validator("max_model_age", "cooldown", "rejection_backoff", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)


class PromotionGate(_Strict):
    metric: str = "accuracy"
    min_improvement: float = Field(default=0.0, ge=0)
    significance: float = Field(default=0.05, gt=0, lt=1)
    floor: float | None = None
    bootstrap_samples: int = Field(default=1000, ge=100)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown metric '{metric}'; choose one of {sorted(METRICS)}")
        return metric


class RollbackGuard(_Strict):
    auto: bool = True
    allowed_drop: float = Field(default=0.02, ge=0)
    min_labelled_rows: int = Field(default=200, ge=1)


class ModelConfig(_Strict):
    name: str
    description: str = ""
    task: Literal["classification", "regression"]
    data: DataSpec = DataSpec()
    features: list[FeatureSpec] = Field(min_length=1)
    target: TargetSpec
    estimator: EstimatorSpec
    training: TrainingSpec = TrainingSpec()
    windows: WindowsSpec = WindowsSpec()
    triggers: TriggerPolicy = TriggerPolicy()
    promotion: PromotionGate = PromotionGate()
    rollback: RollbackGuard = RollbackGuard()
    # Set by the loader: the YAML file this config came from.
    source: str | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, name: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
            raise ValueError("must be lower-case letters, digits and '_', starting with a letter")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"features: duplicated names {duplicates}")
        if self.target.name in names:
            raise ValueError(f"target.name: '{self.target.name}' is also listed as a feature")
        metric = self.promotion.metric
        allowed = CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS
        if metric not in allowed:
            raise ValueError(f"promotion.metric: '{metric}' does not fit task '{self.task}'")
        if self.task == "classification" and not self.target.labels:
            raise ValueError("target.labels: a classification model must list its label values")
        if self.task == "classification" and METRICS[metric][1] and len(self.target.labels or []) != 2:
            raise ValueError(f"promotion.metric: '{metric}' needs exactly two target.labels")
        try:
            cls = self.estimator.load_class()
        except ValueError as exc:
            raise ValueError(f"estimator.class: {exc}") from exc
        if self.training.strategy == "incremental" and not hasattr(cls, "partial_fit"):
            raise ValueError(
                f"training.strategy: 'incremental' needs an estimator with partial_fit; "
                f"{self.estimator.class_path} has none (use 'full', or e.g. SGDClassifier)"
            )
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numerical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numerical"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    @property
    def positive_label(self) -> Any:
        """For binary classification: the last of ``target.labels`` (scores are its probability)."""
        return (self.target.labels or [None])[-1]

    @property
    def greater_is_better(self) -> bool:
        return METRICS[self.promotion.metric][0]

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy, as logged with each candidate."""
        return self.model_dump(mode="json", by_alias=True)


# Cross-field checks raise "<field>: <problem>"; report that field, not "(top level)".
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.DOTALL)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        named = None if item["loc"] else _FIELD_PREFIX.match(message)
        if named:
            field, message = named.groups()
        parts.append(f"field '{field}': {message}")
    return "; ".join(parts)


def parse_config(data: Any, source: str = "<config>") -> ModelConfig:
    """Validate a mapping (already read from YAML) into a :class:`ModelConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ModelConfig.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    config = parse_config(data, str(path))
    if config.name != path.stem:
        raise ConfigError(f"{path}: field 'name': '{config.name}' must match the file name '{path.stem}'")
    return config


def load_all(models_dir: str | Path) -> list[ModelConfig]:
    """Every ``*.yaml`` under ``models_dir``, sorted by name. Any bad file raises."""
    return [load_config(p) for p in sorted(Path(models_dir).glob("*.yaml"))]
