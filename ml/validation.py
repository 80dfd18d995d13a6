"""Checks a window of data before anything uses it, and a batch before it is stored.

A bad batch stops the run with an error naming the window, the column and the problem; nothing is
trained or promoted from it. Returns a copy with numerical features coerced to float and
categorical ones to strings, so every later step sees the same dtypes.

Incoming batches (``driftline ingest``) are checked harder, because one bad stored row can stall
every later run: ids are text, times are ISO 8601 and not in the future (beyond
``DRIFTLINE_FUTURE_TOLERANCE``), numbers are finite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ml.config import ModelConfig, format_duration, parse_duration

# How far past this machine's clock an incoming ts / labelled_at may lie (clock skew between the
# sender and us). A row further ahead would become the newest row, so `as_of`, and the loop's
# windows would freeze on it until then.
FUTURE_TOLERANCE_ENV = "DRIFTLINE_FUTURE_TOLERANCE"
DEFAULT_FUTURE_TOLERANCE = timedelta(hours=1)

# The store's row_id column is VARCHAR(128); a longer id would fail inside the database.
ROW_ID_MAX_LENGTH = 128


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
        # inf passes to_numeric but no estimator or JSON column takes it: scoring would fail on every run.
        infinite = np.isinf(coerced.to_numpy(dtype=float))
        if infinite.any():
            fail(f"column '{name}' holds {int(infinite.sum())} non-finite value(s) (inf or -inf)"
                 f"{_where(clean, infinite)}")
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


def row_problems(frame: pd.DataFrame, config: ModelConfig) -> pd.Series:
    """Per row, why no model can score it (a non-numeric or non-finite value in a numerical
    feature), else None: the scoring step takes such rows out instead of failing every row with them."""
    problems = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for name in config.numerical:
        if name not in frame.columns:
            continue
        coerced = pd.to_numeric(frame[name], errors="coerce")
        bad = (frame[name].notna() & coerced.isna()) | np.isinf(coerced.to_numpy(dtype=float))
        problems[bad & problems.isna()] = [f"column '{name}' holds {frame.at[i, name]!r}" for i in frame.index[bad
                                                                                           & problems.isna()]]
    return problems


def _where(frame: pd.DataFrame, mask: np.ndarray) -> str:
    """", e.g. row_id 'x'" for the first bad row, when the frame has ids (to quarantine it by)."""
    if "row_id" not in frame.columns or not mask.any():
        return ""
    return f", e.g. row_id {frame['row_id'].to_numpy()[mask][0]!r}"


def check_labels(values: pd.Series, config: ModelConfig, *, window: str) -> pd.Series:
    """Labels must be known classes (classification) or finite numbers (regression)."""
    if config.task == "regression":
        coerced = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & (coerced.isna() | np.isinf(coerced.astype(float)))
        if bad.any():
            raise DataValidationError(
                f"{config.name}: {window} window: {int(bad.sum())} non-numeric or non-finite label(s), "
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


def future_tolerance() -> timedelta:
    """``DRIFTLINE_FUTURE_TOLERANCE`` (e.g. ``"1h"``, ``"15m"``), default 1 hour; read on each call."""
    raw = os.environ.get(FUTURE_TOLERANCE_ENV, "").strip()
    if not raw:
        return DEFAULT_FUTURE_TOLERANCE
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ValueError(f"{FUTURE_TOLERANCE_ENV}: {exc}") from None


# A time of day followed by an offset ("10:00Z", "10:00:00.5+02:00"); a bare date's "-03" is no offset.
_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|z|[+-]\d{2}(?::?\d{2})?)$"


def parse_times(values: pd.Series) -> pd.Series:
    """ISO 8601 times to tz-aware UTC (a naive time is UTC); anything else becomes NaT.

    ``format="ISO8601"`` parses each value on its own terms, so times with and without fractional
    seconds or with different offsets may mix; pandas' default guesses one format from the first value
    and turns every value that differs into NaT. ``"mixed"`` would also guess at ``01/02/2026``
    (January or February?), which a store of record must not do. Naive and offset-bearing strings
    are parsed apart: in one call pandas 2.3 gives a naive value the offset of the value before it."""
    if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        return pd.to_datetime(values, errors="coerce", utc=True)
    is_text = values.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    with_offset = is_text & values.astype(str).str.strip().str.contains(_OFFSET, regex=True).to_numpy(dtype=bool)
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    for group in (with_offset, is_text & ~with_offset, ~is_text):
        if group.any():
            parsed[group] = pd.to_datetime(values[group], errors="coerce", utc=True, format="ISO8601")
    return parsed


def _check_ids(frame: pd.DataFrame, config: ModelConfig, what: str) -> pd.Series:
    """row_id as text (``007`` stays ``007``), present, unique and short enough for the store."""
    missing = frame["row_id"].isna()
    if missing.any():
        raise DataValidationError(f"{config.name}: {what}: {int(missing.sum())} row(s) without row_id")
    ids = frame["row_id"].map(str)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise DataValidationError(f"{config.name}: {what}: duplicated row_id(s), e.g. {list(duplicated[:3])}")
    long = ids.str.len() > ROW_ID_MAX_LENGTH
    if long.any():
        raise DataValidationError(
            f"{config.name}: {what}: {int(long.sum())} row_id(s) longer than {ROW_ID_MAX_LENGTH} characters, "
            f"e.g. {ids[long].iloc[0][:40]!r}..."
        )
    return ids


def _check_times(values: pd.Series, column: str, config: ModelConfig, what: str, now: datetime | None) -> pd.Series:
    """Parse a time column and refuse values beyond now + the future tolerance."""
    parsed = parse_times(values)
    bad = parsed.isna()
    if bad.any():
        example = next((v for v in values[bad] if not pd.isna(v)), None)
        raise DataValidationError(
            f"{config.name}: {what}: {int(bad.sum())} unparseable {'or missing ' if column == 'ts' else ''}"
            f"{column} value(s)"
            + (f" (ISO 8601 expected), e.g. {example!r}" if example is not None else "")
        )
    tolerance = future_tolerance()
    limit = pd.Timestamp(now or datetime.now(UTC))
    limit = (limit.tz_convert("UTC") if limit.tzinfo else limit.tz_localize("UTC")) + tolerance
    ahead = parsed > limit
    if ahead.any():
        raise DataValidationError(
            f"{config.name}: {what}: {int(ahead.sum())} {column} value(s) in the future (later than now + "
            f"{format_duration(tolerance)}, {limit:%Y-%m-%d %H:%M} UTC), e.g. {parsed[ahead].iloc[0].isoformat()}"
            f"; fix the sender's clock, or set {FUTURE_TOLERANCE_ENV} for more skew"
        )
    return parsed


def _check_allowed_values(clean: pd.DataFrame, config: ModelConfig, what: str) -> None:
    """A feature's ``min`` / ``max`` (inclusive) and ``categories`` from the model YAML, when set; nulls
    pass (whether a feature may be null is not a per-feature setting). Checked at ingest only: tightening
    a bound later must not make stored history unusable."""
    for feature in config.features:
        # getattr: the bounds are optional settings a config may not carry.
        low, high = getattr(feature, "min", None), getattr(feature, "max", None)
        categories = getattr(feature, "categories", None)
        column = clean[feature.name]
        if feature.kind == "numerical" and (low is not None or high is not None):
            values = column.to_numpy(dtype=float)
            with np.errstate(invalid="ignore"):
                bad = np.zeros(len(values), dtype=bool)
                if low is not None:
                    bad |= values < low
                if high is not None:
                    bad |= values > high
            if bad.any():
                span = f"[{'-inf' if low is None else f'{low:g}'}, {'+inf' if high is None else f'{high:g}'}]"
                raise DataValidationError(
                    f"{config.name}: {what}: column '{feature.name}' holds {int(bad.sum())} value(s) outside "
                    f"its bounds {span}, e.g. {values[bad][0]:g}{_where(clean, bad)}"
                )
        if feature.kind == "categorical" and categories is not None:
            bad = (column.notna() & ~column.isin(list(categories))).to_numpy(dtype=bool)
            if bad.any():
                shown = ", ".join(repr(c) for c in list(categories)[:6]) + (", ..." if len(categories) > 6 else "")
                raise DataValidationError(
                    f"{config.name}: {what}: column '{feature.name}' holds {int(bad.sum())} value(s) not in its "
                    f"categories [{shown}], e.g. {column[bad].iloc[0]!r}{_where(clean, bad)}"
                )


def validate_incoming(
    frame: pd.DataFrame, config: ModelConfig, *, what: str = "incoming batch", now: datetime | None = None
) -> pd.DataFrame:
    """A batch about to be stored: needs ``row_id`` and ``ts`` (unique text ids, ISO times not later
    than ``now`` plus the future tolerance) besides the features, all finite and within the features'
    ``min`` / ``max`` / ``categories`` where the model YAML sets them."""
    for column in ("row_id", "ts"):
        if column not in frame.columns:
            raise DataValidationError(f"{config.name}: {what}: required column '{column}' missing")
    ids = _check_ids(frame, config, what)
    ts = _check_times(frame["ts"], "ts", config, what, now)
    clean = validate_window(frame, config, window=what)
    clean["row_id"] = ids
    _check_allowed_values(clean, config, what)
    clean["ts"] = ts
    return clean


def validate_incoming_labels(
    frame: pd.DataFrame, config: ModelConfig, *, what: str = "incoming labels", now: datetime | None = None
) -> pd.DataFrame:
    """Labels about to be stored: text ids, known labels, ISO ``labelled_at`` not in the future. That a
    label is not older than its row (``labelled_at >= ts``) needs the stored rows: the store checks it."""
    for column in ("row_id", "label", "labelled_at"):
        if column not in frame.columns:
            raise DataValidationError(f"{config.name}: {what}: required column '{column}' missing")
    if frame.empty:
        raise DataValidationError(f"{config.name}: {what}: empty (no rows)")
    ids = _check_ids(frame, config, what)
    if frame["label"].isna().any():
        raise DataValidationError(f"{config.name}: {what}: {int(frame['label'].isna().sum())} null label(s)")
    at = _check_times(frame["labelled_at"], "labelled_at", config, what, now)
    clean = frame.copy()
    clean["row_id"] = ids
    clean["label"] = check_labels(frame["label"], config, window=what)
    clean["labelled_at"] = at
    return clean


# ---- CSV files, read and checked in chunks ---------------------------------------------------------

FileKind = Literal["rows", "labels"]


def read_csv_chunks(path: str | Path, config: ModelConfig, *, kind: FileKind, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A CSV file in chunks of ``chunk_rows`` raw rows. Ids, times, categories and labels are read as
    text, never type-inferred: ``007`` and ``7`` are different ids, and a chunk cannot guess another
    type than the one before it. An empty ``row_id`` is missing; ``NA`` or ``null`` is an id."""
    text = ["row_id", *(["ts", *config.categorical] if kind == "rows" else ["label", "labelled_at"])]
    header = pd.read_csv(path, nrows=0).columns
    na_values = {c: ([""] if c == "row_id" else list(pd._libs.parsers.STR_NA_VALUES)) for c in header}
    yield from pd.read_csv(
        path, dtype={c: str for c in text if c in header}, keep_default_na=False, na_values=na_values,
        chunksize=chunk_rows,
    )


def validate_csv(
    path: str | Path, config: ModelConfig, *, kind: FileKind, chunk_rows: int, now: datetime | None = None
) -> Iterator[pd.DataFrame]:
    """Validated chunks of a rows or labels file (see :func:`validate_incoming` and
    :func:`validate_incoming_labels`); the first bad chunk raises, naming the file and its row range.
    Ids repeated across chunks are refused too, remembered as 8-byte hashes (16 MB for 2M rows) rather
    than as the ids themselves."""
    seen = np.empty(0, dtype=np.uint64)
    chunks = 0
    for index, raw in enumerate(read_csv_chunks(path, config, kind=kind, chunk_rows=chunk_rows)):
        chunks += 1
        first = index * chunk_rows + 1
        # Counts in a message are the chunk's: say which rows they are, once the file has several.
        what = str(path) if index == 0 and len(raw) < chunk_rows else f"{path} rows {first}-{first + len(raw) - 1}"
        if kind == "rows":
            clean = validate_incoming(raw, config, what=what, now=now)
        else:
            clean = validate_incoming_labels(raw, config, what=what, now=now)
        hashes = pd.util.hash_pandas_object(clean["row_id"], index=False).to_numpy()
        if len(seen):
            at = np.minimum(np.searchsorted(seen, hashes), len(seen) - 1)
            again = seen[at] == hashes
            if again.any():
                raise DataValidationError(
                    f"{config.name}: {what}: row_id(s) already earlier in the file, e.g. "
                    f"{clean['row_id'][again].tolist()[:3]}"
                )
        # Two sorted runs: the stable sort merges them in linear time.
        seen = np.sort(np.concatenate([seen, hashes]), kind="stable")
        yield clean
    if not chunks:
        raise DataValidationError(f"{config.name}: {path}: empty (no rows)")
