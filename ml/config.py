"""One YAML file per model under ``models/``: what the model is, where its data lives, how it is
trained, when it is retrained and when a candidate may replace the champion.

A bad file raises :class:`ConfigError` naming the file, the field and the problem, so a typo fails
at DAG-parse time instead of in the middle of a run.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from croniter import CroniterBadCronError, CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ml.alerts import EVENTS as ALERT_EVENTS
from ml.alerts import check_webhook_url
from ml.settings import estimator_modules

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

# The gate's significance must lie strictly inside (0, SIGNIFICANCE_MAX): at >= 0.5 the one-sided
# "lower bound" (the significance quantile of the bootstrap gains) sits at or above the median, so it
# is no confidence bound. check_significance() is the one check, used by the config and the gate.
SIGNIFICANCE_MAX = 0.5

# promotion.bootstrap_samples bounds: under 100 resamples the tail quantile the gate tests is too
# coarse to mean anything; over 100000 the gate's time grows with no gain in precision that matters.
BOOTSTRAP_SAMPLES_MIN = 100
BOOTSTRAP_SAMPLES_MAX = 100_000

# Airflow's cron presets, as the continuous-training DAG's CronTriggerTimetable accepts them
# (airflow.sdk's CRON_PRESETS; copied because ml/ never imports Airflow, and a test keeps them equal).
CRON_PRESETS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}

# Evidently's drift methods (its stat-test registry, evidently.legacy.calculations.stattests) and the
# column kinds each applies to. A copy, because importing Evidently takes seconds at DAG-parse time;
# tests/test_config.py checks it equals the installed Evidently's registry.
DRIFT_METHODS: dict[str, frozenset[str]] = {
    "TVD": frozenset({"categorical"}),
    "anderson": frozenset({"numerical"}),
    "chisquare": frozenset({"categorical"}),
    "cramer_von_mises": frozenset({"numerical"}),
    "ed": frozenset({"numerical"}),
    "empirical_mmd": frozenset({"numerical"}),
    "es": frozenset({"numerical"}),
    "fisher_exact": frozenset({"categorical"}),
    "g_test": frozenset({"categorical"}),
    "hellinger": frozenset({"numerical", "categorical"}),
    "jensenshannon": frozenset({"numerical", "categorical"}),
    "kl_div": frozenset({"numerical", "categorical"}),
    "ks": frozenset({"numerical"}),
    "mannw": frozenset({"numerical"}),
    "psi": frozenset({"numerical", "categorical"}),
    "t_test": frozenset({"numerical"}),
    "wasserstein": frozenset({"numerical"}),
    "z": frozenset({"categorical"}),
}

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


def check_significance(value: float) -> float:
    """The gate's significance bound, shared by the config and :func:`ml.evaluation.evaluate_candidate`."""
    if not 0 < value < SIGNIFICANCE_MAX:  # also refuses NaN
        raise ValueError(f"significance must be in (0, {SIGNIFICANCE_MAX:g}), got {value}")
    return value


def check_schedule(schedule: str) -> str:
    """An Airflow cron preset (``@daily``, …) or a 5-field cron expression that fires at some time."""
    if schedule.startswith("@"):
        if schedule not in CRON_PRESETS:
            raise ValueError(f"unknown preset '{schedule}'; Airflow's presets are {sorted(CRON_PRESETS)}")
        return schedule
    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(
            f"'{schedule}' is not a cron expression: need 5 fields (minute hour day-of-month month "
            f"day-of-week, e.g. '0 12 * * *'), got {len(fields)}; or one of {sorted(CRON_PRESETS)}"
        )
    try:
        # A valid expression for a date that never comes (e.g. 30 February) fails here, not silently.
        croniter(schedule, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"'{schedule}' never fires (no such date)") from None
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise ValueError(f"'{schedule}' is not a valid cron expression: {exc}") from None
    return schedule


def check_drift_method(method: str, kind: str | None = None) -> str:
    """An Evidently drift method id, applicable to ``kind`` columns when given."""
    if method not in DRIFT_METHODS:
        close = difflib.get_close_matches(method, DRIFT_METHODS, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(f"unknown drift method '{method}'{hint}; Evidently's are {sorted(DRIFT_METHODS)}")
    if kind is not None and kind not in DRIFT_METHODS[method]:
        fitting = sorted(m for m, kinds in DRIFT_METHODS.items() if kind in kinds)
        raise ValueError(f"drift method '{method}' does not apply to {kind} columns; use one of {fitting}")
    return method


def _positive(value: timedelta | None, *, allow_zero: bool = False) -> timedelta | None:
    if value is not None and (value < timedelta(0) or (value == timedelta(0) and not allow_zero)):
        raise ValueError(f"must be {'>= 0' if allow_zero else 'positive'}, got {format_duration(value)}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Duration = timedelta


class FeatureSpec(_Strict):
    name: str
    kind: Literal["numerical", "categorical"]
    # Optional per-feature drift test; None means the dataset-wide method.
    drift_method: str | None = None
    drift_threshold: float | None = Field(default=None, gt=0)
    # Optional value checks, read by data validation: bounds of a numerical feature, the allowed
    # values of a categorical one (as text: the store holds categorical values as strings).
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)
    categories: tuple[str, ...] | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_COLUMNS:
            raise ValueError(f"'{name}' is reserved for the store's own columns")
        return name

    @field_validator("drift_method")
    @classmethod
    def _known_method(cls, method: str | None) -> str | None:
        return None if method is None else check_drift_method(method)

    @field_validator("min", "max", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # pydantic would read true/false as 1/0 and "5" as 5; a bound must be written as a number.
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"must be a number, got {value!r}")
        return value

    @field_validator("categories", mode="before")
    @classmethod
    def _category_texts(cls, values: Any) -> Any:
        if values is None:
            return None
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"must be a list of values, got {type(values).__name__}")  # noqa: TRY004 (pydantic reports ValueError only)
        texts = []
        for value in values:
            # YAML reads yes/no/on/off as booleans and ~ as null: the user meant text, so say so.
            if isinstance(value, bool) or value is None:
                raise ValueError(f"{value!r} is not a category value; write it in quotes")
            if isinstance(value, (int, float)):
                value = str(value)  # as the store turns numbers in a categorical column into text
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not a category value (text or number)")  # noqa: TRY004 (pydantic reports ValueError only)
            texts.append(value)
        if not texts:
            raise ValueError("must list at least one value (or be left out)")
        duplicates = sorted({t for t in texts if texts.count(t) > 1})
        if duplicates:
            raise ValueError(f"duplicated values {duplicates}")
        return tuple(texts)

    @model_validator(mode="after")
    def _fits_kind(self) -> FeatureSpec:
        if self.drift_method is not None:
            try:
                check_drift_method(self.drift_method, self.kind)
            except ValueError as exc:
                raise ValueError(f"drift_method: {exc}") from None
        if self.kind == "categorical":
            for bound in ("min", "max"):
                if getattr(self, bound) is not None:
                    raise ValueError(f"{bound}: only a numerical feature has bounds; '{self.name}' is categorical")
        elif self.categories is not None:
            raise ValueError(
                f"categories: only a categorical feature lists its values; '{self.name}' is numerical"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: {self.min:g} is above max {self.max:g} for '{self.name}'")
        return self


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

    @field_validator("class_path")
    @classmethod
    def _allowed(cls, class_path: str) -> str:
        _check_allowed(class_path)
        return class_path

    @model_validator(mode="after")
    def _known_params(self) -> EstimatorSpec:
        try:
            estimator = self.load_class()
        except ValueError as exc:
            raise ValueError(f"class: {exc}") from None
        parameters = inspect.signature(estimator).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return self  # takes any keyword: nothing to check names against
        valid = sorted(p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL)
        unknown = sorted(set(self.params) - set(valid))
        if unknown:
            problems = []
            for name in unknown:
                close = difflib.get_close_matches(name, valid, n=3)
                problems.append(f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            raise ValueError(
                f"params: {self.class_path} has no parameter {', '.join(problems)}; "
                f"its parameters are {valid}"
            )
        # Values too (C: -1, max_iter: "many"): scikit-learn estimators declare their parameters'
        # constraints and check them when fit starts; check them now, without data.
        validate = getattr(estimator, "_validate_params", None)
        if callable(validate) and self.params:
            try:
                estimator(**self.params)._validate_params()
            except (ValueError, TypeError) as exc:
                raise ValueError(f"params: {' '.join(str(exc).split())}") from None
        return self

    def load_class(self) -> type:
        """Import the estimator class; only from an allowed module (checked before importing)."""
        _check_allowed(self.class_path)
        module_name, _, attr = self.class_path.rpartition(".")
        try:
            estimator = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import '{self.class_path}': {exc}") from exc
        if not isinstance(estimator, type):
            raise ValueError(f"'{self.class_path}' is a {type(estimator).__name__}, not a class")  # noqa: TRY004 (pydantic reports ValueError only)
        return estimator


_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def _check_allowed(class_path: str) -> None:
    """Refuse a class outside the allowed modules before anything imports it."""
    if not _CLASS_PATH.fullmatch(class_path):
        raise ValueError(f"'{class_path}' is not a dotted class path (e.g. sklearn.linear_model.Ridge)")
    allowed = estimator_modules()
    if not any(class_path.startswith(prefix + ".") for prefix in allowed):
        raise ValueError(
            f"'{class_path}' is not from an allowed module ({', '.join(allowed)}); "
            f"add its package to DRIFTLINE_ESTIMATOR_MODULES to allow it"
        )


class TrainingSpec(_Strict):
    strategy: Literal["full", "incremental"] = "full"
    random_state: int = 0
    # Fewer labelled rows than this in a training window and no candidate is trained (a model from a
    # handful of rows is noise); a drift-triggered retrain is held back until the drift has this many.
    min_rows: int = Field(default=50, ge=1)


class WindowsSpec(_Strict):
    current: Duration = timedelta(days=1)
    training: Duration = timedelta(days=7)
    holdout: Duration = timedelta(days=1)
    # Reference for drift: the champion's own training window, a fixed span before `current`, or
    # "season": the same span as `current` one `season` back, so a pattern that comes back every
    # cycle (summer, the weekend) is not drift (see ml.loop.load_reference for the fallback).
    reference: Literal["champion_training", "season"] | Duration = "champion_training"
    season: Duration | None = None
    # A full retrain that answers no drift episode learns from up to this much labelled history
    # (not before the last drift onset on record) instead of `training`: with nothing changed, older
    # rows are more data, not stale data. None: always `training`.
    max_training: Duration | None = None

    @field_validator("current", "training", "holdout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return _positive(parse_duration(value))

    @field_validator("max_training", mode="before")
    @classmethod
    def _optional_duration(cls, value: Any) -> Any:
        return None if value is None else _positive(parse_duration(value))

    @field_validator("reference", mode="before")
    @classmethod
    def _reference(cls, value: Any) -> Any:
        return value if value in ("champion_training", "season") else _positive(parse_duration(value))

    @field_validator("season", mode="before")
    @classmethod
    def _season(cls, value: Any) -> Any:
        return None if value is None else _positive(parse_duration(value))

    @model_validator(mode="after")
    def _season_with_reference(self) -> WindowsSpec:
        if self.reference == "season" and self.season is None:
            raise ValueError("season: windows.reference 'season' needs windows.season, the cycle length (e.g. 52w, 7d)")
        if self.season is not None and self.reference != "season":
            now = format_duration(self.reference) if isinstance(self.reference, timedelta) else self.reference
            raise ValueError(f"season: only used with windows.reference 'season' (reference is '{now}')")
        if self.season is not None and self.season < self.current:
            # One cycle back must lie wholly before the current window, or the reference overlaps it.
            raise ValueError(f"season: windows.season ({format_duration(self.season)}) must be at least "
                             f"windows.current ({format_duration(self.current)})")
        return self

    @model_validator(mode="after")
    def _holdout_inside_training(self) -> WindowsSpec:
        # The holdout is the newest part of the labelled span; training is the rest before it.
        if self.holdout >= self.training:
            raise ValueError(
                f"holdout: windows.holdout ({format_duration(self.holdout)}) must be shorter than the "
                f"training window (windows.training, {format_duration(self.training)})"
            )
        if self.max_training is not None and self.max_training < self.training:
            raise ValueError(
                f"max_training: windows.max_training ({format_duration(self.max_training)}) widens the training "
                f"window, so it must be at least windows.training ({format_duration(self.training)})"
            )
        return self


def _count(low: int) -> Any:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return None if ok else f"must be a whole number >= {low}"
    return check


def _number(low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False) -> Any:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return "must be a number"
        if (value <= low if open_low else value < low) or (
                high is not None and (value >= high if open_high else value > high)):
            span = f"{'(' if open_low else '['}{low:g}, {'inf)' if high is None else f'{high:g}' + (')' if open_high else ']')}"
            return f"must be in {span}"
        return None
    return check


def _only(*allowed: Any, why: str) -> Any:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be {' or '.join(repr(a) for a in allowed)} ({why})"
    return check


def _whole(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) else "must be a whole number"


# triggers.error_detector kinds: the river.drift class, and each parameter it takes with its check
# (and river's default). A copy: importing river takes seconds at DAG-parse time; tests/test_config.py
# checks the names and defaults against the installed river's signatures.
ERROR_DETECTORS: dict[str, tuple[str, dict[str, tuple[Any, Any]]]] = {
    "adwin": ("ADWIN", {
        "delta": (_number(0, 1, open_low=True, open_high=True), 0.002),
        "clock": (_count(1), 32),
        "max_buckets": (_count(1), 5),
        "min_window_length": (_count(1), 5),
        "grace_period": (_count(1), 10),
    }),
    "page_hinkley": ("PageHinkley", {
        "min_instances": (_count(1), 30),
        "delta": (_number(0), 0.005),
        "threshold": (_number(0, open_low=True), 50.0),
        "alpha": (_number(0, 1, open_low=True), 1 - 0.0001),
        # river's default is "both"; a fall in the error is no reason to retrain, so only "up" is taken.
        "mode": (_only("up", why="only a rise in the error is a reason to retrain"), "both"),
    }),
    "kswin": ("KSWIN", {
        "alpha": (_number(0, 1, open_low=True, open_high=True), 0.005),
        "window_size": (_count(2), 100),
        "stat_size": (_count(1), 30),
        "seed": (_whole, None),
    }),
}
# Set when the YAML leaves them out: the detector is recomputed from the stored stream each run, so
# it must give the same answer every time (KSWIN samples at random), and Page-Hinkley watches rises.
_DETECTOR_OVERRIDES: dict[str, dict[str, Any]] = {"page_hinkley": {"mode": "up"}, "kswin": {"seed": 0}}


class ErrorDetectorSpec(_Strict):
    """``triggers.error_detector``: a river change detector on the champion's served errors.
    Written flat in the YAML (``{kind: adwin, delta: 0.002}``): every key but ``kind`` and
    ``min_rows`` is a parameter of the river detector, checked here at parse."""

    kind: Literal["adwin", "page_hinkley", "kswin"]
    # Fewer labelled rows served by the champion since its promotion and the detector does not run
    # (the decision says so): a change in a handful of errors is noise.
    min_rows: int = Field(default=100, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        if isinstance(data, str):  # `error_detector: adwin`
            return {"kind": data}
        if isinstance(data, dict):
            own = {"kind", "min_rows", "params"}
            params = {**(data.get("params") or {}), **{k: v for k, v in data.items() if k not in own}}
            return {**{k: v for k, v in data.items() if k in own}, "params": params}
        return data

    @model_validator(mode="after")
    def _known_params(self) -> ErrorDetectorSpec:
        name, table = ERROR_DETECTORS[self.kind]
        for key, value in self.params.items():
            if key not in table:
                close = difflib.get_close_matches(str(key), table, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"'{key}' is not a parameter of {self.kind}{hint}; river's {name} takes "
                                 f"{sorted(table)} (and kind, min_rows)")
            problem = table[key][0](value)
            if problem:
                raise ValueError(f"{self.kind} parameter '{key}' {problem}, got {value!r}")
        if self.kind == "kswin":
            window, stat = (self.params.get(k, table[k][1]) for k in ("window_size", "stat_size"))
            if stat >= window:
                raise ValueError(f"kswin parameter 'stat_size' ({stat}) must be smaller than 'window_size' ({window})")
        return self

    @property
    def detector_name(self) -> str:
        return ERROR_DETECTORS[self.kind][0]

    def river_params(self) -> dict[str, Any]:
        """The keyword arguments for river's detector class."""
        return {**_DETECTOR_OVERRIDES.get(self.kind, {}), **self.params}


class TriggerPolicy(_Strict):
    schedule: str | None = "@daily"
    drift_share: float | None = Field(default=0.3, gt=0, le=1)
    # Dataset-wide drift methods (Evidently ids); None lets Evidently pick by column type and size.
    num_method: str | None = None
    cat_method: str | None = None
    prediction_drift: bool = False
    metric_floor: float | None = None
    max_relative_drop: float | None = Field(default=None, gt=0, lt=1)
    # Fewer newly labelled rows than this and the live metric is too noisy to act on: the floor and
    # relative-drop rules do not run (the decision says so).
    min_live_rows: int = Field(default=50, ge=1)
    # What max_relative_drop measures the live metric against: "evaluation", the champion's score on
    # the holdout when it was promoted; or "served", its metric over its first windows.current of
    # served rows once rollback.min_labelled_rows of them are labelled (the evaluation until then).
    drop_reference: Literal["evaluation", "served"] = "evaluation"
    # Label-free rule (CBPE, ml/estimation.py): retrain when the champion's metric *estimated* from
    # its calibrated scores on the current rows (no labels needed) is this fraction worse than the
    # level max_relative_drop compares with (drop_reference). Binary classification only. None: off.
    estimated_drop: float | None = Field(default=None, gt=0, lt=1)
    # Fewer labelled rows the champion did not train on than this and its scores are not calibrated
    # (isotonic regression on a handful of rows is noise): no estimate, and the rule says it did not run.
    min_calibration_rows: int = Field(default=100, ge=2)
    max_model_age: Duration | None = None
    cooldown: Duration = timedelta(0)
    # After the gate rejected a candidate, hold automatic retrains back this long, and count the
    # champion's age (max_model_age) from that rejection: the champion has just beaten a model
    # trained on the newest data, so retraining again at once mostly repeats that. None: neither.
    rejection_backoff: Duration | None = None
    min_new_labels: int = Field(default=0, ge=0)
    on_new_labels: bool = True
    # Retrain when a change detector (river's ADWIN, Page-Hinkley or KSWIN) finds the champion's
    # error rising on the rows it served (ml/detectors.py). None: off.
    error_detector: ErrorDetectorSpec | None = None

    @field_validator("max_model_age", "rejection_backoff", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        # None switches the rule off; 0 would mean "always", which is not what either rule is for.
        return None if value is None else _positive(parse_duration(value))

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cooldown(cls, value: Any) -> Any:
        return _positive(parse_duration(value), allow_zero=True)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str | None) -> str | None:
        return None if schedule is None else check_schedule(schedule)

    @field_validator("num_method")
    @classmethod
    def _num_method(cls, method: str | None) -> str | None:
        return None if method is None else check_drift_method(method, "numerical")

    @field_validator("cat_method")
    @classmethod
    def _cat_method(cls, method: str | None) -> str | None:
        return None if method is None else check_drift_method(method, "categorical")


# The answers a person can give to an approval request (promotion.approval: required), in the words
# of Airflow's own ApprovalOperator; no answer within approval_timeout counts as APPROVAL_REJECT.
APPROVAL_APPROVE, APPROVAL_REJECT = "Approve", "Reject"


class PromotionGate(_Strict):
    metric: str = "accuracy"
    # "holdout": each candidate is judged at once on the newest labelled span, which it does not
    # train on. "shadow": it trains on every labelled row, becomes `challenger`, and is scored beside
    # the champion on the rows that come next; once min_shadow_rows of those are labelled, the same
    # paired bootstrap judges both on them. No other candidate is trained while one is in shadow.
    gate: Literal["holdout", "shadow"] = "holdout"
    min_shadow_rows: int = Field(default=200, ge=1)
    min_improvement: float = Field(default=0.0, ge=0)
    significance: float = 0.05
    floor: float | None = None
    bootstrap_samples: int = Field(default=1000, ge=BOOTSTRAP_SAMPLES_MIN, le=BOOTSTRAP_SAMPLES_MAX)
    # Fewer labelled rows than this in the holdout and the gate gives no verdict (the run fails).
    min_holdout_rows: int = Field(default=30, ge=1)
    # Once the gate blesses a candidate, fit the same estimator again on its training rows plus the
    # holdout it was judged on and promote that version (a refit of the blessed one): the newest rows
    # are no longer given up for the gate. False: the blessed candidate itself is promoted.
    refit: bool = False
    # "required": a candidate that passed the gate waits for a person to approve it in Airflow's
    # Required Actions page before it is promoted; no answer within approval_timeout rejects it.
    approval: Literal["required", "none"] = "none"
    approval_timeout: Duration = timedelta(days=1)

    @field_validator("approval", mode="before")
    @classmethod
    def _approval_text(cls, value: Any) -> Any:
        # YAML reads a bare `none` as text but `null` / `false` as None / False: say what is meant.
        if value is None or isinstance(value, bool):
            raise ValueError(f"write 'required' or 'none', got {value!r}")
        return value

    @field_validator("approval_timeout", mode="before")
    @classmethod
    def _approval_timeout(cls, value: Any) -> timedelta:
        return _positive(parse_duration(value))

    @model_validator(mode="after")
    def _timeout_needs_approval(self) -> PromotionGate:
        if "approval_timeout" in self.model_fields_set and self.approval != "required":
            raise ValueError("approval_timeout: only used with approval: required (approval is 'none')")
        return self

    @field_validator("significance")
    @classmethod
    def _significance(cls, value: float) -> float:
        # The gate's own check: a value it would refuse after training must fail here, at parse.
        return check_significance(value)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown metric '{metric}'; choose one of {sorted(METRICS)}")
        return metric

    @model_validator(mode="after")
    def _shadow_rows_need_shadow_gate(self) -> PromotionGate:
        if "min_shadow_rows" in self.model_fields_set and self.gate != "shadow":
            raise ValueError(f"min_shadow_rows: only used with gate: shadow (gate is '{self.gate}')")
        return self


class ServingSpec(_Strict):
    """``driftline serve``: what the online service does besides answering with the champion."""

    # While a `challenger` exists, it scores the same requests; its predictions are stored (for the
    # shadow gate), never returned.
    shadow: bool = False
    # While a `challenger` awaits the shadow gate, this share of rows (chosen by a hash of the row's
    # key, so a key always goes the same way) is answered by it instead of the champion; the
    # champion's prediction on those rows is stored beside them, so the shadow gate judges both on
    # them once labelled and promotes or aborts. 0: off. Below 1: the champion always keeps traffic.
    canary_fraction: float = Field(default=0.0, allow_inf_nan=False)

    @field_validator("canary_fraction", mode="before")
    @classmethod
    def _fraction_not_bool(cls, value: Any) -> Any:
        # YAML's `yes` / `true` would otherwise pass as 1.0.
        if isinstance(value, bool):
            raise ValueError(f"expected a share of requests, 0 <= x < 1 (e.g. 0.1), got {value!r}")  # noqa: TRY004 (pydantic reports ValueError)
        return value

    @field_validator("canary_fraction")
    @classmethod
    def _fraction_range(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"{value:g} is negative: a share of requests is 0 <= x < 1 (0: off)")
        if value >= 1:
            raise ValueError(f"{value:g}: at 1 or more every request goes to the challenger and the champion it is "
                             "judged against serves none; use a share below 1 (e.g. 0.1)")
        return value


class RollbackGuard(_Strict):
    auto: bool = True
    allowed_drop: float = Field(default=0.02, ge=0)
    min_labelled_rows: int = Field(default=200, ge=1)


_CONN_ID = re.compile(r"[A-Za-z0-9_.-]{1,250}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class AlertsSpec(_Strict):
    """Who is told when this model is promoted, rejected, rolled back, or a run fails. The task log
    always gets one line per event in ``on``; the channels below are optional."""

    on: tuple[str, ...] = ALERT_EVENTS
    # A generic JSON POST (stdlib, no extra package); DRIFTLINE_ALERT_WEBHOOK when unset.
    webhook: str | None = None
    # An Airflow connection (its secret stays in Airflow): apache-airflow-providers-slack's notifier.
    slack_conn_id: str | None = None
    # Addresses for apache-airflow-providers-smtp's notifier, through smtp_conn_id (Airflow's default).
    email: tuple[str, ...] = ()
    smtp_conn_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean true: take it back as the field it meant.
        if isinstance(data, dict) and any(key is True for key in data):
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("on", "email", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("on")
    @classmethod
    def _known_events(cls, events: tuple[str, ...]) -> tuple[str, ...]:
        for event in events:
            if event not in ALERT_EVENTS:
                close = difflib.get_close_matches(str(event), ALERT_EVENTS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"unknown event '{event}'{hint}; the events are {list(ALERT_EVENTS)}")
        return tuple(dict.fromkeys(events))

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        return None if url is None else check_webhook_url(url)

    @field_validator("slack_conn_id", "smtp_conn_id")
    @classmethod
    def _conn_id(cls, conn_id: str | None) -> str | None:
        if conn_id is not None and not _CONN_ID.fullmatch(conn_id):
            raise ValueError(f"'{conn_id}' is not an Airflow connection id (letters, digits, '_', '-', '.')")
        return conn_id

    @field_validator("email")
    @classmethod
    def _addresses(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in addresses if not _EMAIL.fullmatch(str(a))]
        if bad:
            raise ValueError(f"not e-mail addresses: {bad}")
        return addresses

    @model_validator(mode="after")
    def _smtp_needs_email(self) -> AlertsSpec:
        if self.smtp_conn_id and not self.email:
            raise ValueError("smtp_conn_id: set 'email' (the addresses to send to) too")
        return self


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
    alerts: AlertsSpec = AlertsSpec()
    serving: ServingSpec = ServingSpec()
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
        if self.triggers.estimated_drop is not None:
            # CBPE reads a classifier's probabilities; a regression model has none to calibrate.
            if self.task != "classification":
                raise ValueError(
                    "triggers.estimated_drop: the label-free estimate (CBPE) calibrates a classifier's "
                    f"probabilities; a {self.task} model has none (use max_relative_drop on labelled rows)"
                )
            if len(self.target.labels or []) != 2:
                raise ValueError("triggers.estimated_drop: the label-free estimate (CBPE) needs a binary "
                                 f"classifier (exactly two target.labels), got {len(self.target.labels or [])}")
        try:
            cls = self.estimator.load_class()
        except ValueError as exc:
            raise ValueError(f"estimator.class: {exc}") from exc
        if self.promotion.refit and self.promotion.gate != "holdout":
            raise ValueError(f"promotion.refit: refits a candidate on the holdout it was judged on; the "
                             f"'{self.promotion.gate}' gate keeps no holdout (its candidate learns every row)")
        if self.promotion.approval == "required" and self.promotion.gate != "holdout":
            # The shadow gate promotes from its own step, which has no approval task before it.
            raise ValueError(f"promotion.approval: a person approves a candidate the holdout gate passed; "
                             f"the '{self.promotion.gate}' gate promotes without asking (use gate: holdout)")
        if self.serving.canary_fraction > 0 and self.promotion.gate != "shadow":
            # Only the shadow gate leaves a challenger waiting to be judged on served rows; under the
            # holdout gate a challenger is judged (and promoted or rejected) in the run that trained
            # it, so users would get answers from a candidate no gate had passed, and nothing would
            # ever judge those answers.
            raise ValueError(f"serving.canary_fraction: the canary's rows are judged by promotion.gate: shadow; "
                             f"the '{self.promotion.gate}' gate judges a candidate at once on its holdout "
                             "(set promotion.gate: shadow, or canary_fraction: 0)")
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


# Cross-field checks raise "<field>: <problem>"; report that field (under the model that checked it,
# e.g. "features.3.min"), not the model itself.
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.DOTALL)


def _field_names() -> frozenset[str]:
    models = (ModelConfig, FeatureSpec, TargetSpec, DataSpec, EstimatorSpec, TrainingSpec, WindowsSpec,
              TriggerPolicy, ErrorDetectorSpec, PromotionGate, RollbackGuard, AlertsSpec)
    names = {field.alias or name for model in models for name, field in model.model_fields.items()}
    return frozenset(names | {name for model in models for name in model.model_fields})


# Only a real field name counts as such a prefix (not e.g. an environment variable's name).
_MODEL_FIELDS = _field_names()


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        named = _FIELD_PREFIX.match(message) if item["type"] == "value_error" else None
        if named and named.group(1).split(".")[0] in _MODEL_FIELDS:
            sub, message = named.groups()
            field = sub if field == "(top level)" else f"{field}.{sub}"
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


def load_models(models_dir: str | Path) -> tuple[list[ModelConfig], dict[str, str]]:
    """Every ``*.yaml`` under ``models_dir``: the good configs sorted by name, and for each bad file
    (by path) its error on one line. One bad file must not take every other model's DAGs with it."""
    configs: list[ModelConfig] = []
    errors: dict[str, str] = {}
    for path in sorted(Path(models_dir).glob("*.yaml")):
        try:
            configs.append(load_config(path))
        except ConfigError as exc:
            errors[str(path)] = " ".join(str(exc).split())
    return configs, errors


def load_all(models_dir: str | Path) -> list[ModelConfig]:
    """Every ``*.yaml`` under ``models_dir``, sorted by name. Any bad file raises (fail fast)."""
    return [load_config(p) for p in sorted(Path(models_dir).glob("*.yaml"))]
