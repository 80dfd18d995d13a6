"""Checks a window of data before anything uses it.

A bad batch stops the run with an error naming the window, the column and the problem; nothing is
trained or promoted from it. Returns a copy with numerical features coerced to float and
categorical ones to strings, so every later step sees the same dtypes.
"""

from __future__ import annotations

import pandas as pd

from ml.config import ModelConfig


class DataValidationError(ValueError):
    """A window or batch that must not reach a model."""


def validate_window(
    frame: pd.DataFrame,
    config: ModelConfig,
    *,
    window: str,
    require_labels: bool = False,
    min_rows: int = 1,
) -> pd.DataFrame:
    def fail(problem: str) -> None:
        raise DataValidationError(f"{config.name}: {window} window: {problem}")

    missing = [name for name in config.feature_names if name not in frame.columns]
    if missing:
        fail(f"required column(s) missing: {', '.join(missing)}")
    if len(frame) < min_rows:
        fail(f"{len(frame)} row(s), at least {min_rows} needed" if len(frame) else "empty (no rows)")

    clean = frame.copy()
    for name in config.numerical:
        coerced = pd.to_numeric(clean[name], errors="coerce")
        bad = clean[name].notna() & coerced.isna()
        if bad.any():
            examples = ", ".join(repr(v) for v in clean.loc[bad, name].unique()[:3])
            fail(f"column '{name}' is numerical but holds {int(bad.sum())} non-numeric value(s): {examples}")
        clean[name] = coerced.astype(float)
    for name in config.categorical:
        clean[name] = clean[name].map(lambda v: None if pd.isna(v) else str(v)).astype(object)

    all_null = [name for name in config.feature_names if clean[name].isna().all()]
    if all_null:
        fail(f"column(s) entirely null: {', '.join(all_null)}")

    if require_labels:
        if "label" not in clean.columns or clean["label"].isna().any():
            fail("rows without a label where labels are required")
        clean["label"] = check_labels(clean["label"], config, window=window)
    return clean


def check_labels(values: pd.Series, config: ModelConfig, *, window: str) -> pd.Series:
    """Labels must be known classes (classification) or finite numbers (regression)."""
    if config.task == "regression":
        coerced = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & coerced.isna()
        if bad.any():
            raise DataValidationError(
                f"{config.name}: {window} window: {int(bad.sum())} non-numeric label(s), "
                f"e.g. {values[bad].iloc[0]!r}"
            )
        return coerced.astype(float)
    known = list(config.target.labels or [])
    # Labels may come back from JSON as another type (1 vs "1"); match by value, then by text.
    by_text = {str(label): label for label in known}
    # Return the configured value itself (1.0 or True -> 1), not the incoming one.
    mapped = values.map(lambda v: known[known.index(v)] if v in known else by_text.get(str(v), _UNKNOWN))
    unknown = mapped.map(lambda v: v is _UNKNOWN)
    if unknown.any():
        examples = sorted({repr(v) for v in values[unknown]})[:3]
        raise DataValidationError(
            f"{config.name}: {window} window: {int(unknown.sum())} label(s) not in target.labels "
            f"{known}: {', '.join(examples)}"
        )
    return mapped


_UNKNOWN = object()


def validate_incoming(frame: pd.DataFrame, config: ModelConfig, *, what: str = "incoming batch") -> pd.DataFrame:
    """A batch about to be stored: needs ``row_id`` and ``ts`` (unique ids, parseable times) besides
    the features."""
    for column in ("row_id", "ts"):
        if column not in frame.columns:
            raise DataValidationError(f"{config.name}: {what}: required column '{column}' missing")
    if frame["row_id"].isna().any():
        raise DataValidationError(f"{config.name}: {what}: {int(frame['row_id'].isna().sum())} row(s) without row_id")
    duplicated = frame["row_id"][frame["row_id"].duplicated()].unique()
    if len(duplicated):
        raise DataValidationError(f"{config.name}: {what}: duplicated row_id(s), e.g. {list(duplicated[:3])}")
    ts = pd.to_datetime(frame["ts"], errors="coerce", utc=True)
    if ts.isna().any():
        raise DataValidationError(f"{config.name}: {what}: {int(ts.isna().sum())} unparseable or missing ts value(s)")
    clean = validate_window(frame, config, window=what)
    clean["ts"] = ts
    return clean


def validate_incoming_labels(frame: pd.DataFrame, config: ModelConfig) -> pd.DataFrame:
    what = "incoming labels"
    for column in ("row_id", "label", "labelled_at"):
        if column not in frame.columns:
            raise DataValidationError(f"{config.name}: {what}: required column '{column}' missing")
    if frame.empty:
        raise DataValidationError(f"{config.name}: {what}: empty (no rows)")
    duplicated = frame["row_id"][frame["row_id"].duplicated()].unique()
    if len(duplicated):
        raise DataValidationError(f"{config.name}: {what}: duplicated row_id(s), e.g. {list(duplicated[:3])}")
    if frame["label"].isna().any():
        raise DataValidationError(f"{config.name}: {what}: {int(frame['label'].isna().sum())} null label(s)")
    at = pd.to_datetime(frame["labelled_at"], errors="coerce", utc=True)
    if at.isna().any():
        raise DataValidationError(f"{config.name}: {what}: {int(at.isna().sum())} unparseable labelled_at value(s)")
    clean = frame.copy()
    clean["label"] = check_labels(frame["label"], config, window=what)
    clean["labelled_at"] = at
    return clean
