"""Replay a time-ordered table through Driftline's own decisions, beside baseline strategies.

Protocol (batch-prequential): the rows are cut into time-ordered batches; the first
``initial_batches`` train the first model; then, batch by batch, every strategy predicts the batch
with its current model, the batch's labels are revealed (``label_delay`` batches later), and every
strategy may act. No batch is ever predicted by a model that saw its labels.

Strategies, all in one run on the same batches:

* ``static``: the first model, never retrained;
* ``every_k`` (``every 1`` is "retrain every batch"): a full retrain on the last ``window``
  labelled batches after every k-th batch;
* ``driftline``: the continuous-training loop itself. Each batch is scored by
  :func:`ml.loop.score` and each step is :func:`ml.loop.run_cycle`, the DAG's own steps (guard,
  validation, drift, decision, training, gate, promote or reject, record), run through in-memory
  adapters (:mod:`ml.memory`: the rows below as a store, the registry's own moves over a dict, a
  tracker that logs nothing). This module holds no step logic: it cuts batches, runs the
  baselines, and reads back what the loop did.

What is *not* replayed is I/O: no SQL store, no MLflow. That is what makes a two-year replay take
minutes; ``tests/test_parity.py`` checks that the DAG path and the replay path decide alike.

Time: with a time column each row keeps its time; without one (file order) row ``i`` is given the
time ``start + i * row_interval``, so durations in the policy (cooldown, max model age) still mean
something (e.g. Elec2: 30 minutes per row, 336 rows a week). A step's time is its batch's newest
row, as the DAG's ``as_of`` is the newest stored row. The config's ``windows.current`` becomes one
batch period and ``windows.training`` ``window`` periods; ``windows.holdout`` is kept.
"""

from __future__ import annotations

import csv
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ml.config import ConfigError, ModelConfig, format_duration, parse_config

STATIC = "static"
DRIFTLINE = "driftline"
EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
# Columns the replay adds; a data column may not take one of these names.
_OWN_COLUMNS = ("row_id", "ts", "batch", "label", "known_at")
# The baselines `driftline replay` runs without --every: enough points for a schedule frontier.
DEFAULT_EVERY = (1, 2, 4, 8)
# What pandas names a column whose header cell is empty, e.g. an index saved by `to_csv()`.
_UNNAMED = re.compile(r"^Unnamed: \d+$")
# An object column counts as "numbers with a few typos" when this share of its values parse.
_MOSTLY_NUMERIC = 0.9


class ReplayError(ValueError):
    """Arguments or data a replay cannot run on; the message names the argument and the problem."""


# ---- reading ------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV file, or an ARFF file (dense; nominal attributes come back as strings, ``?`` as missing)."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"data: no such file: {path}")
    if path.suffix.lower() == ".arff":
        return _read_arff(path)
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ReplayError(f"data: cannot read {path} as CSV: {exc}") from None


def _read_arff(path: Path) -> pd.DataFrame:
    names: list[str] = []
    nominal: set[str] = set()
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            lowered = text.lower()
            if not text or text.startswith("%"):
                continue
            if lowered.startswith("@attribute"):
                parts = text.split(None, 2)
                if len(parts) < 3:
                    raise ReplayError(f"data: {path}:{number}: malformed @attribute line")
                name, kind = parts[1].strip("'\""), parts[2].strip()
                names.append(name)
                if not kind.lower().startswith(("numeric", "real", "integer")):
                    nominal.add(name)
            elif lowered.startswith("@data"):
                break
        else:
            raise ReplayError(f"data: {path}: no @data section (is it an ARFF file?)")
        if not names:
            raise ReplayError(f"data: {path}: no @attribute lines")
        first = handle.readline()
        if first.lstrip().startswith("{"):
            raise ReplayError(f"data: {path}: sparse ARFF is not supported")
        rest = [first] + handle.readlines()
    from io import StringIO

    frame = pd.read_csv(StringIO("".join(rest)), header=None, names=names, na_values=["?"], quotechar="'",
                        dtype={name: str for name in nominal}, skipinitialspace=True, comment="%")
    return frame


# ---- options and data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how; every field is a command-line argument of ``driftline replay``."""

    target: str
    features: tuple[str, ...] | None = None  # None: every column but the target and time columns
    time_column: str | None = None  # None: file order; a numeric column: an order column
    hour_column: str | None = None  # hours added to the time column (e.g. Bike's "hr")
    task: Literal["classification", "regression"] | None = None  # None: the config's
    batch_rows: int | None = None
    period: timedelta | None = None
    row_interval: timedelta = timedelta(hours=1)  # time between rows without a time column
    initial_batches: int = 4
    window: int = 4  # training window, in batches
    label_delay: int = 0  # labels of batch b are revealed after batch b + label_delay is predicted
    every: tuple[int, ...] = DEFAULT_EVERY  # baselines "retrain every k batches"
    # Baselines "retrain every k batches on Driftline's candidate window": the newest
    # windows.holdout left out, as Driftline's candidates leave it out for the gate; always served.
    every_held_out: tuple[int, ...] = ()
    max_batches: int | None = None  # stop after this many batches (quick looks)

    def check(self) -> None:
        def fail(argument: str, problem: str) -> None:
            raise ReplayError(f"{argument}: {problem}")

        if (self.batch_rows is None) == (self.period is None):
            fail("batch size", "give exactly one of batch_rows (--batch-rows) and period (--period)")
        if self.batch_rows is not None and self.batch_rows < 1:
            fail("batch_rows", f"must be >= 1, got {self.batch_rows}")
        if self.period is not None and self.period <= timedelta(0):
            fail("period", f"must be positive, got {format_duration(self.period)}")
        if self.row_interval <= timedelta(0):
            fail("row_interval", f"must be positive, got {format_duration(self.row_interval)}")
        if self.initial_batches < 1:
            fail("initial_batches", f"must be >= 1, got {self.initial_batches}")
        if self.window < 1:
            fail("window", f"must be >= 1 batch, got {self.window}")
        if self.label_delay < 0:
            fail("label_delay", f"must be >= 0 batches, got {self.label_delay}")
        bad = [k for k in (*self.every, *self.every_held_out) if k < 1]
        if bad:
            fail("every", f"each k must be >= 1, got {bad}")
        if self.max_batches is not None and self.max_batches <= self.initial_batches:
            fail("max_batches", f"must exceed initial_batches ({self.initial_batches}), got {self.max_batches}")
        if self.hour_column is not None and self.time_column is None:
            fail("hour_column", "needs a time column (--time) to add the hours to")
        if self.task is not None and self.task not in ("classification", "regression"):
            fail("task", f"must be 'classification' or 'regression', got {self.task!r}")


@dataclass
class ReplayData:
    """The table cut into batches, with the config the replay runs (features and target patched in)."""

    config: ModelConfig
    frame: pd.DataFrame  # row_id, ts, batch, features, label, known_at; sorted by time
    batch_starts: list[pd.Timestamp]
    batch_ends: list[pd.Timestamp]  # a step's as_of: the batch's newest row
    period: timedelta
    options: ReplayOptions
    notes: list[str] = field(default_factory=list)  # what the replay did to the data unasked, for the user

    @property
    def n_batches(self) -> int:
        return len(self.batch_ends)


def replay_config(raw: dict[str, Any], frame: pd.DataFrame, options: ReplayOptions, period: timedelta,
                  source: str) -> ModelConfig:
    """The YAML's estimator, training, triggers, promotion and rollback, with the data's columns.

    Features listed in the YAML keep their kind (and drift overrides); others are numerical when
    the column is numeric, else categorical. Classification labels come from the YAML, else from
    the data. Windows: current = one period, training = ``window`` periods."""
    if not isinstance(raw, dict):
        raise ReplayError(f"config: {source}: expected a mapping at the top level")
    data = dict(raw)
    data.setdefault("name", _identifier(Path(source).stem))
    task = options.task or data.get("task")
    if task is None:
        raise ReplayError("task: not in the config; give --task classification or --task regression")
    data["task"] = task
    listed = {f["name"]: f for f in data.get("features") or [] if isinstance(f, dict) and "name" in f}
    names = list(options.features) if options.features is not None else (
        list(listed) if listed else [c for c in frame.columns if c not in _excluded(options)]
    )
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ReplayError(f"features: column(s) not in the data: {', '.join(missing)} "
                          f"(columns: {', '.join(map(str, frame.columns))})")
    if options.target in names:
        raise ReplayError(f"features: the target '{options.target}' cannot also be a feature")
    if not names:
        raise ReplayError("features: none left (every column is the target or the time)")
    for name in names:
        _check_numerical(frame[name], name, declared=(listed.get(name) or {}).get("kind"))
    data["features"] = [
        listed.get(name) or {"name": name, "kind": "numerical" if pd.api.types.is_numeric_dtype(frame[name])
                             else "categorical"}
        for name in names
    ]
    target = dict(data.get("target") or {})
    target["name"] = options.target
    if task == "classification" and not target.get("labels"):
        values = frame[options.target].dropna().unique().tolist()
        try:
            target["labels"] = sorted(values)
        except TypeError:
            target["labels"] = sorted(values, key=str)
    if task == "regression":
        target.pop("labels", None)
    data["target"] = target
    windows = dict(data.get("windows") or {})
    windows.update(current=period.total_seconds(), training=(options.window * period).total_seconds())
    data["windows"] = windows
    try:
        config = parse_config(data, source)
    except ConfigError as exc:
        raise ReplayError(f"config: {exc}") from None
    if config.windows.holdout >= config.windows.training:
        raise ReplayError(f"config: windows.holdout ({format_duration(config.windows.holdout)}) must be shorter "
                          f"than the training window ({options.window} batches = "
                          f"{format_duration(config.windows.training)}); raise --window or shorten the holdout")
    return config


def _check_numerical(column: pd.Series, name: str, declared: str | None) -> None:
    """Refuse text in a numerical feature: one declared numerical in the config, or an undeclared
    column that is numbers but for a few values (a typo would otherwise make the whole column
    categorical without a word). The message names the column, a value and its row."""
    if pd.api.types.is_numeric_dtype(column) or declared == "categorical":
        return
    present = column.dropna()
    bad = present[pd.to_numeric(present, errors="coerce").isna()]
    if bad.empty:
        return
    numbers = len(present) - len(bad)
    example = f"e.g. {bad.iloc[0]!r} in row {bad.index[0] + 1} of the file (after the header)"
    advice = "fix those values or leave them empty (missing), or declare the feature `kind: categorical` in the config"
    if declared == "numerical":
        raise ReplayError(f"features: column '{name}' is numerical in the config but holds {len(bad)} non-numeric "
                          f"value(s), {example}; {advice}")
    if numbers >= _MOSTLY_NUMERIC * len(present):
        raise ReplayError(f"features: column '{name}' looks numerical ({numbers} of {len(present)} values are "
                          f"numbers) but holds {len(bad)} non-numeric value(s), {example}; {advice}")


def _identifier(text: str) -> str:
    name = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_") or "replay"
    return name if name[0].isalpha() else f"m_{name}"


def _excluded(options: ReplayOptions) -> set[str]:
    return {c for c in (options.target, options.time_column, options.hour_column) if c}


def prepare(frame: pd.DataFrame, options: ReplayOptions, raw_config: dict[str, Any],
            source: str = "<config>") -> ReplayData:
    """Check the arguments against the data, order the rows, cut the batches, patch the config and
    validate every batch as the DAG validates a window."""
    from ml.validation import DataValidationError, check_labels, validate_window

    options.check()
    notes: list[str] = []
    columns = f"(columns: {', '.join(map(str, frame.columns))})"
    if options.target not in frame.columns:
        raise ReplayError(f"target: column '{options.target}' not in the data {columns}")
    for argument, column in (("time_column", options.time_column), ("hour_column", options.hour_column)):
        if column is not None and column not in frame.columns:
            raise ReplayError(f"{argument}: column '{column}' not in the data {columns}")
    frame = frame.reset_index(drop=True)  # row i of the file is index i, for the messages below
    frame, dropped = _drop_unnamed(frame, options, raw_config)
    if dropped:
        notes.append(f"dropped column(s) {', '.join(repr(c) for c in dropped)}: no name in the header (an index "
                     "saved with the rows?), so not a feature; give the column a name to use it")
    taken = [c for c in _OWN_COLUMNS if c in frame.columns and c not in _excluded(options)]
    if taken:
        raise ReplayError(f"data: column(s) {taken} clash with the replay's own columns; rename them")
    if frame[options.target].isna().any():
        raise ReplayError(f"target: {int(frame[options.target].isna().sum())} row(s) without a value")
    if len(frame) == 0:
        raise ReplayError("data: no rows")

    ts = _times(frame, options).reset_index(drop=True)
    if options.time_column is None:
        notes.append(f"no time column (--time): rows are replayed in file order, {format_duration(options.row_interval)} "
                     "apart (--row-interval), so the policy's durations (holdout, cooldown, ages) count in those steps")
    backwards = int((ts.diff() < pd.Timedelta(0)).sum())
    if backwards:
        # A backtest must run in time order: sort, as the user would, but say so.
        notes.append(f"rows are not in time order in the file ({backwards} step(s) back in '{options.time_column}'): "
                     "replayed sorted by time (rows with the same time keep their file order)")
    order = np.argsort(ts.dt.tz_convert(None).to_numpy(), kind="stable")
    frame = frame.iloc[order]  # keeps the file's row numbers as the index, for messages
    ts = ts.iloc[order].reset_index(drop=True)

    if options.batch_rows is not None:
        batch = np.arange(len(frame)) // options.batch_rows
    else:
        batch = ((ts - ts.iloc[0]) // pd.Timedelta(options.period)).to_numpy().astype(int)
    # Gaps in time leave empty periods: number the batches that hold rows.
    _, batch = np.unique(batch, return_inverse=True)
    if options.max_batches is not None:
        keep = batch < options.max_batches
        frame, ts, batch = frame[keep], ts[keep].reset_index(drop=True), batch[keep]
    n_batches = int(batch.max()) + 1
    if n_batches <= options.initial_batches:
        raise ReplayError(f"batch size: the data makes {n_batches} batch(es), not more than initial_batches "
                          f"({options.initial_batches}); nothing would be predicted")

    if options.period is not None:
        period = options.period
    elif options.time_column is None:
        period = options.batch_rows * options.row_interval
    else:  # row-count batches over real times: a batch lasts what it lasts; use the median
        starts = pd.Series(ts).groupby(batch).min()
        period = max(pd.Timedelta(starts.diff().median()).to_pytimedelta(), timedelta(seconds=1))

    config = replay_config(raw_config, frame, options, period, source)
    out = pd.DataFrame({"row_id": np.arange(len(frame)), "ts": ts.to_numpy(), "batch": batch})
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    for name in config.feature_names:
        out[name] = frame[name].to_numpy()
    try:
        out["label"] = check_labels(frame[options.target].reset_index(drop=True), config, window="replay data").to_numpy()
        starts = out.groupby("batch")["ts"].min().tolist()
        ends = out.groupby("batch")["ts"].max().tolist()
        checked = []
        for b, part in out.groupby("batch", sort=True):
            checked.append(validate_window(part, config, window=f"batch {b} ({starts[b]:%Y-%m-%d %H:%M})",
                                           require_labels=True))
    except DataValidationError as exc:
        raise ReplayError(f"data: {exc}") from None
    out = pd.concat(checked, ignore_index=True)
    # Labels of batch b are known once batch b + delay has been predicted; the initial batches are
    # the labelled history the first model learns from.
    never = pd.Timestamp.max.tz_localize("UTC")
    reveal = [ends[options.initial_batches - 1] if b < options.initial_batches
              else ends[b + options.label_delay] if b + options.label_delay < n_batches else never
              for b in range(n_batches)]
    out["known_at"] = pd.to_datetime(pd.Series(reveal).iloc[out["batch"].to_numpy()].to_numpy(), utc=True)
    first_rows = int((out["batch"] < options.initial_batches).sum())
    if first_rows < config.training.min_rows:
        raise ReplayError(f"initial_batches: the first {options.initial_batches} batch(es) hold {first_rows} row(s); "
                          f"the first model needs at least training.min_rows ({config.training.min_rows}) besides "
                          f"the holdout ({format_duration(config.windows.holdout)}): give more rows per batch "
                          "(--batch-rows / --period) or more --initial-batches")
    return ReplayData(config, out, starts, ends, period, options, notes)


def _drop_unnamed(frame: pd.DataFrame, options: ReplayOptions,
                  raw_config: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """Columns without a header name (pandas' ``Unnamed: N``, e.g. a saved index) that nobody asked
    for: an index as a feature lets a model learn the row order, which silently flatters it."""
    listed = {f.get("name") for f in (raw_config.get("features") or []) if isinstance(f, dict)} \
        if isinstance(raw_config, dict) else set()
    wanted = set(options.features or ()) | _excluded(options) | listed
    dropped = [c for c in frame.columns if isinstance(c, str) and _UNNAMED.match(c) and c not in wanted]
    return frame.drop(columns=dropped), dropped


def _times(frame: pd.DataFrame, options: ReplayOptions) -> pd.Series:
    """Row times: the time column (plus hours), or file order / an order column spaced by row_interval."""
    step = pd.Timedelta(options.row_interval)
    if options.time_column is None:
        return pd.Series(EPOCH + step * np.arange(len(frame)))
    column = frame[options.time_column]
    if column.isna().any():
        raise ReplayError(f"time_column: '{options.time_column}' has {int(column.isna().sum())} missing value(s)")
    if pd.api.types.is_numeric_dtype(column) and options.hour_column is None:
        # An order column (e.g. Elec2's normalised `date`): its rank gives the order, row_interval the spacing.
        rank = np.argsort(np.argsort(column.to_numpy(), kind="stable"), kind="stable")
        return pd.Series(EPOCH + step * rank)
    try:
        ts = pd.to_datetime(column, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise ReplayError(f"time_column: '{options.time_column}' is not a date-time column ({exc}); "
                          "omit --time to replay in file order") from None
    if options.hour_column is not None:
        hours = pd.to_numeric(frame[options.hour_column], errors="coerce")
        if hours.isna().any():
            raise ReplayError(f"hour_column: '{options.hour_column}' holds non-numeric or missing values")
        ts = ts + pd.to_timedelta(hours, unit="h")
    return ts.dt.tz_convert("UTC")


# ---- the replayed world -------------------------------------------------------------------------


class World:
    """All rows and what a strategy may know at a step: rows up to the step's batch, and labels
    revealed by then (``known_at <= as_of``). Time bounds are (after, until], as in the store."""

    def __init__(self, data: ReplayData) -> None:
        self.data = data
        self.config = data.config
        self.frame = data.frame
        self.ts = self.frame["ts"].to_numpy(dtype="datetime64[ns]")
        self.known_at = self.frame["known_at"].to_numpy(dtype="datetime64[ns]")
        self.batch = self.frame["batch"].to_numpy()
        self.bounds = np.searchsorted(self.batch, np.arange(data.n_batches + 1))  # rows of batch b: [b], [b+1]
        # What the champion of each strategy predicted, per row (the store's prediction/score/version).
        self.served: dict[str, dict[str, np.ndarray]] = {}

    @staticmethod
    def t64(value: Any) -> np.datetime64:
        return np.datetime64(pd.Timestamp(value).tz_convert("UTC").tz_localize(None), "ns")

    def as_of(self, step: int) -> pd.Timestamp:
        return self.data.batch_ends[step]

    def rows(self, step: int, *, after: Any = None, until: Any = None, labelled: bool = False) -> np.ndarray:
        """Mask of rows stored by ``step`` with ts in (after, until], labelled ones only if asked."""
        mask = np.zeros(len(self.frame), dtype=bool)
        mask[: self.bounds[step + 1]] = True
        if after is not None:
            mask &= self.ts > self.t64(after)
        if until is not None:
            mask &= self.ts <= self.t64(until)
        if labelled:
            mask &= self.known_at <= self.t64(self.as_of(step))
        return mask

    def batch_rows(self, b: int) -> slice:
        return slice(int(self.bounds[b]), int(self.bounds[b + 1]))

    def latest_labelled(self, step: int) -> pd.Timestamp | None:
        mask = self.rows(step, labelled=True)
        return pd.Timestamp(self.ts[mask].max(), tz="UTC") if mask.any() else None

    def labelled_batches(self, step: int) -> list[int]:
        known = self.known_at[self.bounds[:-1]] <= self.t64(self.as_of(step))
        return [b for b in range(step + 1) if known[b]]


# ---- strategies ---------------------------------------------------------------------------------


@dataclass
class Event:
    batch: int  # the step (batch just revealed) at which it happened
    time: str
    kind: str  # retrain, promote, reject, rollback, failed
    detail: str = ""


@dataclass
class StrategyStats:
    retrains: int = 0
    promotions: int = 0
    rejections: int = 0
    rollbacks: int = 0
    failures: int = 0
    fit_seconds: float = 0.0
    events: list[Event] = field(default_factory=list)


_COUNTERS = {"retrain": "retrains", "promote": "promotions", "reject": "rejections", "rollback": "rollbacks",
             "failed": "failures"}


class Strategy:
    name: str

    def __init__(self) -> None:
        self.stats = StrategyStats()
        self.model: Any = None
        self.model_end: pd.Timestamp | None = None  # newest row the serving model learned from
        self.live = False  # set once the first model is in place

    def start(self, world: World, step: int) -> None:
        raise NotImplementedError

    def act(self, world: World, step: int) -> None:
        raise NotImplementedError

    def note(self, world: World, step: int, kind: str, detail: str = "") -> None:
        """Record an event; it counts once the replay is live (the first model is not a retrain)."""
        self.stats.events.append(Event(step, world.as_of(step).isoformat(), kind, detail))
        if self.live:
            counter = _COUNTERS[kind]
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def predict(self, world: World, b: int) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        from ml.training import predict

        frame = world.frame.iloc[world.batch_rows(b)]
        prediction, score = predict(world.config, self.model, frame)
        return prediction, score, None


class Baseline(Strategy):
    """Static (``every=None``) or a full retrain on the last ``window`` labelled batches every k
    batches; with ``held_out``, on Driftline's candidate window instead (the newest
    ``windows.holdout`` of labelled rows left out), to show what the holdout costs."""

    def __init__(self, every: int | None, held_out: bool = False) -> None:
        super().__init__()
        self.every = every
        self.held_out = held_out
        self.name = STATIC if every is None else f"every_{every}" + ("_held_out" if held_out else "")

    def _fit(self, world: World, step: int) -> None:
        from ml.policy import training_start
        from ml.training import fit_full

        if self.held_out:
            holdout_start = world.latest_labelled(step) - world.config.windows.holdout
            after, _ = training_start(world.config, holdout_start.to_pydatetime(), None)
            rows = world.rows(step, after=after, until=holdout_start, labelled=True)
        else:
            known = world.labelled_batches(step)[-world.data.options.window:]
            rows = np.zeros(len(world.frame), dtype=bool)
            for b in known:
                rows[world.batch_rows(b)] = True
        train = world.frame[rows]
        started = time.perf_counter()
        self.model = fit_full(world.config, train)
        self.stats.fit_seconds += time.perf_counter() - started
        self.model_end = train["ts"].max()

    def start(self, world: World, step: int) -> None:
        self._fit(world, step)

    def act(self, world: World, step: int) -> None:
        if self.every is None or (step - world.data.options.initial_batches + 1) % self.every:
            return
        try:
            self._fit(world, step)
        except ValueError as exc:  # e.g. one class only in the window: keep the model
            self.note(world, step, "failed", str(exc))
            return
        self.note(world, step, "retrain")
        self.note(world, step, "promote")  # a baseline serves every model it trains


@dataclass
class Step:
    """What the Driftline strategy saw and did at one step (the DAG run's audit entry)."""

    batch: int
    as_of: str
    drift_share: float | None
    live_metric: float | None
    live_rows: int
    trigger: str
    summary: str
    action: str  # skipped, promoted, rejected, failed
    champion: int | None
    guard: str = "keep"  # or "rollback: <why>"
    reasons: list[str] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)
    candidate: int | None = None
    verdict: str | None = None  # the gate's, when a candidate was evaluated
    estimated_metric: float | None = None  # the champion's label-free estimate (CBPE) on the batch


class Driftline(Strategy):
    """The continuous-training loop itself: at each step :func:`ml.loop.score` serves the batch and
    :func:`ml.loop.run_cycle` runs the DAG's steps, through in-memory adapters (:mod:`ml.memory`)
    over the replayed rows. Nothing here decides: it only reads back what the steps did."""

    def __init__(self, config: ModelConfig, world: World, name: str = DRIFTLINE) -> None:
        from ml import loop
        from ml.memory import MemoryRegistry, MemoryStore, NullTracker
        from ml.settings import get_settings

        super().__init__()
        self.name = name
        self.config = config
        frame = world.frame
        never = frame["known_at"] == pd.Timestamp.max.tz_localize("UTC")
        rows = frame.assign(labelled_at=frame["known_at"].mask(never), label=frame["label"].mask(never))
        self.store = MemoryStore(rows, config.feature_names)
        self.registry = MemoryRegistry(config.name, self.store)
        self.ctx = loop.Context(config, get_settings(), self.store, self.registry, NullTracker())
        self.steps: list[Step] = []

    @property
    def champion(self) -> int | None:
        return self.registry.champion()

    def _run(self, step: int, what: str) -> Any:
        from ml import loop

        return loop.RunInfo(f"replay/{self.name}/{what}/{step}", actor="replay")

    # -- serving: the score step --

    def predict(self, world: World, b: int) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        from ml import loop

        self.store.show(int(world.bounds[b + 1]))
        loop.score(self.ctx, self._run(b, "score"))
        rows = world.batch_rows(b)
        if (self.store.version[rows] == 0).any():
            raise RuntimeError(f"{self.name}: batch {b} was not scored by a champion")
        return self.store.prediction[rows], self.store.score[rows], None

    # -- the continuous-training run --

    def start(self, world: World, step: int) -> None:
        self.act(world, step)
        if self.champion is None:
            failed = [e.detail for e in self.stats.events if e.kind == "failed"]
            why = failed[-1] if failed else self.steps[-1].summary
            raise ReplayError(f"{self.name}: no first model after the initial batches: {why}")

    def act(self, world: World, step: int) -> None:
        from ml import loop

        self.store.show(int(world.bounds[step + 1]))
        trace: dict[str, Any] = {}
        error = None
        started = time.perf_counter()
        try:
            loop.run_cycle(self.ctx, self._run(step, "run"), trace=trace)
        except loop.USER_ERRORS as exc:  # a failed DAG run: no model moved, no record written
            error = str(exc)
        if "candidate" in trace:  # for Driftline, "fit time" is the time of the runs that trained
            self.stats.fit_seconds += time.perf_counter() - started
        self._note_events(world, step, trace, error)
        self.steps.append(self._step(world, step, trace, error))
        champion = self.champion
        end = self.registry.info(champion).tag("data_end") if champion is not None else None
        self.model_end = pd.Timestamp(end) if end else None

    def _note_events(self, world: World, step: int, trace: dict[str, Any], error: str | None) -> None:
        if "rollback" in trace:
            self.note(world, step, "rollback", trace["guard"]["reason"])
        judged = trace.get("shadow_promote") or trace.get("shadow_reject")  # the shadow gate's move
        if judged:
            kind = "promote" if judged.get("action") == "promoted" else "reject"
            self.note(world, step, kind, f"in shadow: {(trace.get('shadow') or {}).get('summary', '')}")
        candidate = trace.get("candidate")
        if candidate:
            window = candidate["window"]
            self.note(world, step, "retrain", f"v{candidate['version']} ({candidate['trigger']}) on {window['rows']} "
                      f"rows {window['start']}..{window['end']}: {'; '.join(candidate['reasons'])}")
        evaluation = (trace.get("evaluation") or {}).get("summary", "")
        promoted = trace.get("promote")
        if promoted and promoted.get("action") == "promoted":
            self.note(world, step, "promote", evaluation)
        elif promoted or trace.get("reject"):
            self.note(world, step, "reject", evaluation)
        if error is not None:
            self.note(world, step, "failed", error)

    def _step(self, world: World, step: int, trace: dict[str, Any], error: str | None) -> Step:
        record = trace.get("record") or {}
        decision = trace.get("decision") or {}
        performance = (trace.get("check") or {}).get("performance") or {}
        guard = trace.get("guard") or {}
        return Step(
            batch=step,
            as_of=world.as_of(step).isoformat(),
            drift_share=((trace.get("check") or {}).get("drift") or {}).get("drift_share"),
            live_metric=performance.get("live"),
            live_rows=int(performance.get("rows") or 0),
            trigger=decision.get("kind", "none"),
            summary=decision.get("summary") or error or "",
            action=record.get("action", "failed" if error is not None else "skipped"),
            champion=self.champion,
            guard=f"rollback: {guard['reason']}" if guard.get("action") == "rollback" else "keep",
            reasons=list(decision.get("reasons", [])),
            held_back=list(decision.get("held_back", [])),
            candidate=(trace.get("candidate") or {}).get("version"),
            verdict=(trace.get("evaluation") or {}).get("verdict"),
            estimated_metric=performance.get("estimated"),
        )


# ---- results ------------------------------------------------------------------------------------


@dataclass
class StrategyResult:
    name: str
    metric: float
    retrains: int
    promotions: int
    rejections: int
    rollbacks: int
    failures: int
    fit_seconds: float
    batch_metrics: list[float | None]  # per predicted batch
    model_data_end: list[str]  # per predicted batch: the newest row the serving model learned from
    events: list[dict[str, Any]]


@dataclass
class ReplayResult:
    name: str
    metric: str
    greater_is_better: bool
    task: str
    rows: int
    batches: int
    initial_batches: int
    period: str
    label_delay: int
    window: int
    batch_starts: list[str]  # every batch
    strategies: list[StrategyResult]
    steps: dict[str, list[dict[str, Any]]]  # per Driftline variant: what it saw and did at each step
    configs: dict[str, dict[str, Any]]  # per Driftline variant: the config it ran
    seconds: float

    def strategy(self, name: str) -> StrategyResult:
        for result in self.strategies:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayResult:
        """Back from :meth:`to_dict` (keys it does not know, e.g. a benchmark's own, are ignored)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["strategies"] = [StrategyResult(**s) for s in values["strategies"]]
        return cls(**values)

    def table_markdown(self) -> str:
        """One row per strategy; *failed* counts retrains that ended without a model (e.g. too few rows),
        *vs schedule* is a Driftline variant's :func:`frontier_gaps` (+ = better than the schedule)."""
        gaps = frontier_gaps(self)
        head = (f"| strategy | {self.metric} | retrains | promotions | rejections | failed | rollbacks | "
                "vs schedule | fit time (s) |")
        lines = [head, "|---|---|---|---|---|---|---|---|---|"]
        for s in self.strategies:
            lines.append(f"| {label(s.name)} | {s.metric:.4g} | {s.retrains} | {s.promotions} | {s.rejections} | "
                         f"{s.failures} | {s.rollbacks} | {format_gap(gaps, s.name)} | {s.fit_seconds:.1f} |")
        return "\n".join(lines)


def label(name: str) -> str:
    if name.startswith("every_"):
        k = int(name.split("_")[1])
        text = "retrain every batch" if k == 1 else f"retrain every {k} batches"
        return text + (", newest holdout left out" if name.endswith("_held_out") else "")
    if name.startswith(DRIFTLINE + "_"):
        return f"Driftline ({name.removeprefix(DRIFTLINE + '_').replace('_', ' ')})"
    return {STATIC: "static (never retrain)", DRIFTLINE: "Driftline"}.get(name, name)


# ---- the fixed-schedule frontier ---------------------------------------------------------------


@dataclass(frozen=True)
class FrontierPoint:
    """One fixed schedule: static (``every`` None, no retrain) or "retrain every k batches"."""

    name: str
    every: int | None
    retrains: int
    metric: float

    @property
    def tag(self) -> str:
        return "static" if self.every is None else f"k={self.every}"


def interpolate(points: Sequence[tuple[float, float]], x: float, *, greater_is_better: bool = True) -> float | None:
    """The piecewise-linear curve through ``points`` (x, y) at ``x``; None outside their x range
    (no extrapolation). Points sharing an x keep the best y: the frontier is what a schedule of that
    size reached."""
    best: dict[float, float] = {}
    for px, py in points:
        if not (np.isfinite(px) and np.isfinite(py)):
            raise ValueError(f"points: every x and y must be finite, got ({px}, {py})")
        if px not in best or (py > best[px] if greater_is_better else py < best[px]):
            best[px] = float(py)
    if not best:
        return None
    xs = sorted(best)
    if not xs[0] <= x <= xs[-1]:
        return None
    return float(np.interp(x, xs, [best[v] for v in xs]))


def schedule_frontier(result: ReplayResult) -> list[FrontierPoint]:
    """The fixed schedules a result holds, by retrains: static (0 retrains, the never-retrain end)
    and every k batches. The held-out baselines are left out: they train on another window."""
    points = []
    for s in result.strategies:
        if s.name == STATIC:
            points.append(FrontierPoint(s.name, None, s.retrains, s.metric))
        elif re.fullmatch(r"every_\d+", s.name):
            points.append(FrontierPoint(s.name, int(s.name.split("_")[1]), s.retrains, s.metric))
    return sorted(points, key=lambda p: (p.retrains, p.every is not None, -(p.every or 0)))


def frontier_gaps(result: ReplayResult) -> dict[str, float | None]:
    """Per Driftline variant: how much better it did than the fixed-schedule frontier interpolated
    at its own number of retrains. Sign: positive is better than the schedule, i.e. accuracy *above*
    the frontier, or MAE (lower is better) *below* it. None where its retrain count lies outside
    the frontier's (e.g. no static baseline and fewer retrains than the sparsest schedule)."""
    points = [(p.retrains, p.metric) for p in schedule_frontier(result)]
    sign = 1.0 if result.greater_is_better else -1.0
    gaps: dict[str, float | None] = {}
    for s in result.strategies:
        if s.name in result.steps:
            level = interpolate(points, s.retrains, greater_is_better=result.greater_is_better)
            gaps[s.name] = None if level is None else sign * (s.metric - level)
    return gaps


def frontier_summary(result: ReplayResult) -> dict[str, Any]:
    """The frontier and the gaps, for a saved result (``--json``, replay.json); derived, so
    :meth:`ReplayResult.from_dict` ignores them."""
    return {"frontier": [{**asdict(p), "tag": p.tag} for p in schedule_frontier(result)],
            "vs_schedule": frontier_gaps(result),
            "vs_schedule_sign": f"+ = better than the schedule ({result.metric} "
                                f"{'above' if result.greater_is_better else 'below'} the line)"}


def format_gap(gaps: dict[str, float | None], name: str) -> str:
    if name not in gaps:
        return ""
    return "outside" if gaps[name] is None else f"{gaps[name]:+.3g}"


def frontier_text(result: ReplayResult) -> str:
    """The frontier and the sign convention in two lines, for the command line."""
    points = " · ".join(f"{p.tag}: {p.retrains} retrains, {p.metric:.4g}" for p in schedule_frontier(result))
    better = "above" if result.greater_is_better else "below"
    return (f"schedule frontier ({result.metric}): {points or 'none (no static or --every baseline)'}\n"
            f"vs schedule: Driftline's {result.metric} against the frontier joined linearly at its own number of "
            f"retrains; + means better ({better} the line), 'outside' that it retrained fewer or more times than "
            f"any schedule")


# ---- the per-step decision log ------------------------------------------------------------------

DECISION_COLUMNS = ("variant", "batch", "as_of", "drift_share", "live_metric", "live_rows", "estimated_metric",
                    "trigger", "reasons",
                    "held_back", "candidate", "verdict", "action", "champion", "guard", "summary")


def decision_rows(result: ReplayResult) -> list[dict[str, Any]]:
    """One row per Driftline step per variant, from the result's steps (lists joined with "; ")."""
    rows = []
    for variant, steps in result.steps.items():
        for step in steps:
            row = {"variant": variant, **{k: step.get(k) for k in DECISION_COLUMNS if k != "variant"}}
            for key in ("reasons", "held_back"):
                row[key] = "; ".join(row[key] or [])
            rows.append(row)
    return rows


def write_decisions(result: ReplayResult, path: str | Path) -> Path:
    """The decision log as CSV (see :data:`DECISION_COLUMNS`); empty cells where a step had no value."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=DECISION_COLUMNS)
        writer.writeheader()
        writer.writerows(decision_rows(result))
    return path


# ---- the run ------------------------------------------------------------------------------------


def run(data: ReplayData, *, name: str = "replay", variants: dict[str, ModelConfig] | None = None,
        progress: Any = None) -> ReplayResult:
    """Replay every strategy over the same batches (see the module docstring for the protocol).

    ``variants``: Driftline strategies by name, each with its own config (same data columns);
    default ``{"driftline": data.config}``; ``{}`` runs the baselines only."""
    from ml.evaluation import compute_metric

    started = time.perf_counter()
    options, config = data.options, data.config
    world = World(data)
    strategies: list[Strategy] = [Baseline(None), *(Baseline(k) for k in sorted(set(options.every))),
                                  *(Baseline(k, held_out=True) for k in sorted(set(options.every_held_out)))]
    variants = {DRIFTLINE: config} if variants is None else variants
    strategies += [Driftline(cfg, world, variant) for variant, cfg in variants.items()]
    names = [s.name for s in strategies]
    if len(set(names)) != len(names):
        raise ReplayError(f"variants: strategy names must be unique, got {names}")
    n = len(world.frame)
    for strategy in strategies:
        world.served[strategy.name] = {"prediction": np.empty(n, dtype=object), "score": np.full(n, np.nan),
                                       "version": np.zeros(n, dtype=np.int64)}
    first = options.initial_batches
    for strategy in strategies:
        try:
            strategy.start(world, first - 1)
        except ValueError as exc:  # ReplayError too: say what to change, once, without the strategy's prefix
            raise ReplayError(_no_first_model(strategy, data, exc)) from None
        strategy.live = True
    ends: dict[str, list[str]] = {s.name: [] for s in strategies}
    for b in range(first, data.n_batches):
        rows = world.batch_rows(b)
        for strategy in strategies:
            # Prequential: the serving model learned from rows strictly before this batch.
            if strategy.model_end is not None and strategy.model_end >= data.batch_starts[b]:
                raise RuntimeError(f"{strategy.name}: model saw rows of batch {b} before predicting it")
            prediction, score, version = strategy.predict(world, b)
            served = world.served[strategy.name]
            served["prediction"][rows] = prediction
            if score is not None:
                served["score"][rows] = score
            served["version"][rows] = version or 0
            ends[strategy.name].append(strategy.model_end.isoformat() if strategy.model_end is not None else "")
        for strategy in strategies:
            strategy.act(world, b)
        if progress:
            progress(b, data.n_batches, strategies)

    predicted = slice(int(world.bounds[first]), n)
    truth = world.frame["label"].to_numpy()
    metric, pos = config.promotion.metric, config.positive_label
    results = []
    for strategy in strategies:
        served = world.served[strategy.name]
        scores = served["score"][predicted]
        overall = compute_metric(metric, truth[predicted], served["prediction"][predicted],
                                 None if np.isnan(scores).any() else scores, pos_label=pos)
        per_batch: list[float | None] = []
        for b in range(first, data.n_batches):
            rows = world.batch_rows(b)
            try:
                s = served["score"][rows]
                per_batch.append(compute_metric(metric, truth[rows], served["prediction"][rows],
                                                None if np.isnan(s).any() else s, pos_label=pos))
            except ValueError:
                per_batch.append(None)
        st = strategy.stats
        results.append(StrategyResult(strategy.name, overall, st.retrains, st.promotions, st.rejections, st.rollbacks,
                                      st.failures, round(st.fit_seconds, 3), per_batch, ends[strategy.name],
                                      [asdict(e) for e in st.events]))
    return ReplayResult(
        name=name, metric=metric, greater_is_better=config.greater_is_better, task=config.task, rows=n,
        batches=data.n_batches, initial_batches=first, period=format_duration(data.period),
        label_delay=options.label_delay, window=options.window,
        batch_starts=[t.isoformat() for t in data.batch_starts], strategies=results,
        steps={s.name: [asdict(step) for step in s.steps] for s in strategies if isinstance(s, Driftline)},
        configs={s.name: s.config.snapshot() for s in strategies if isinstance(s, Driftline)},
        seconds=round(time.perf_counter() - started, 2),
    )


def _no_first_model(strategy: Strategy, data: ReplayData, exc: ValueError) -> str:
    why = str(exc)
    if isinstance(strategy, Driftline):  # its own message starts with its name; take the cause it read
        failed = [e.detail for e in strategy.stats.events if e.kind == "failed"]
        why = failed[-1] if failed else strategy.steps[-1].summary if strategy.steps else why
    first = data.options.initial_batches
    rows = int((data.frame["batch"] < first).sum())
    return (f"initial_batches: {label(strategy.name)} could not train a first model on the first {first} batch(es) "
            f"({rows} rows): {why}; give more rows per batch (--batch-rows / --period), more --initial-batches, "
            f"or a shorter windows.holdout (now {format_duration(data.config.windows.holdout)})")


# ---- the plots ----------------------------------------------------------------------------------


def plot(result: ReplayResult, path: str | Path, *, smooth: int = 4, title: str | None = None) -> Path:
    """Top: the metric per batch (rolling mean over ``smooth`` batches) of every strategy. Bottom:
    one row per Driftline variant with its retrains, each promoted (^) or rejected (o), and its
    rollbacks (x); the drift share where a variant computed it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = result.initial_batches
    x = pd.to_datetime(result.batch_starts[first:])
    variants = [s for s in result.strategies if s.name in result.steps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 0.5 + 0.45 * max(1, len(variants))]})
    fixed = {STATIC: "#95a5a6", DRIFTLINE: "#c0392b"}
    # Cycled: a frontier run has more schedules than colours (k = 1, 2, 3, 4, 6, 8, 12, 16).
    baselines = itertools.cycle(["#2e86de", "#1abc9c", "#34495e", "#7fb3d5", "#48c9b0", "#5d6d7e", "#a9cce3"])
    others = itertools.cycle(["#8e44ad", "#e67e22", "#b7950b", "#6e2c00", "#ff66cc"])
    colour = {s.name: fixed.get(s.name) or next(others if s.name in result.steps else baselines)
              for s in result.strategies}
    for s in result.strategies:
        series = pd.Series([np.nan if v is None else v for v in s.batch_metrics], index=x)
        driftline = s.name in result.steps
        top.plot(x, series.rolling(smooth, min_periods=1).mean(), color=colour[s.name],
                 linewidth=2.2 if s.name == DRIFTLINE else 1.5 if driftline else 1.0,
                 linestyle="-" if driftline else "--", zorder=3 if s.name == DRIFTLINE else 2,
                 label=f"{label(s.name)}: {s.metric:.4g}, {s.retrains} retrains")
    top.set_ylabel(f"{result.metric} ({smooth}-batch mean)")
    top.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    top.set_title(title or f"{result.name}: batch-prequential {result.metric}", fontsize=11)
    shown = set()
    # Every retrain ends in a promotion or a rejection (or a failed training); the first model is not shown.
    marks = {"promote": ("^", 34, "candidate promoted"), "reject": ("o", 22, "candidate rejected"),
             "rollback": ("x", 44, "rolled back"), "failed": ("s", 16, "training failed")}
    for row, s in enumerate(variants):
        y = len(variants) - row
        for kind, (marker, size, text) in marks.items():
            times = [pd.Timestamp(e["time"]) for e in s.events if e["kind"] == kind and e["batch"] >= first]
            if times:
                style = ({"color": colour[s.name]} if marker == "x" else
                         {"facecolors": "none" if kind in ("reject", "failed") else colour[s.name],
                          "edgecolors": colour[s.name]})
                bottom.scatter(times, [y] * len(times), marker=marker, s=size, linewidths=1.0,
                               label=None if kind in shown else text, **style)
                shown.add(kind)
    shares = next(([(pd.Timestamp(st["as_of"]), st["drift_share"]) for st in steps if st["drift_share"] is not None]
                   for steps in result.steps.values() if any(st["drift_share"] is not None for st in steps)), [])
    if shares:
        twin = bottom.twinx()
        twin.plot([t for t, _ in shares], [v for _, v in shares], color="#f1c40f", linewidth=0.8)
        twin.set_ylabel("drift share", fontsize=8)
        twin.set_ylim(0, 1.05)
    bottom.set_yticks(range(len(variants), 0, -1), [label(s.name) for s in variants], fontsize=7.5)
    bottom.set_ylim(0.4, len(variants) + 0.6)
    if shown:
        bottom.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.06 if shares else 1.01, 1.0),
                      borderaxespad=0)
    bottom.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier_plot(result: ReplayResult, path: str | Path, *, title: str | None = None) -> Path:
    """Retrains (x) against the metric (y): the fixed schedules as a line with each point labelled
    by its k, every Driftline variant as a labelled point, the side better than the schedules shaded.
    Needs only the result (e.g. :meth:`ReplayResult.from_dict` of a saved JSON), so it can be
    redrawn without replaying."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frontier = schedule_frontier(result)
    gaps = frontier_gaps(result)
    variants = [s for s in result.strategies if s.name in result.steps]
    fig, ax = plt.subplots(figsize=(10, 6.8))
    # The y range follows the variants and the retraining schedules; a static model far off (e.g.
    # MAE 134 beside 40-50) would squash everything else into a line, so it may fall off the axes.
    ys = [s.metric for s in variants] + [p.metric for p in frontier if p.every is not None]
    ys = ys or [p.metric for p in frontier]
    low, high = min(ys), max(ys)
    for p in frontier:  # static: shown unless farther off than the span of everything else
        if p.every is None and max(low - p.metric, p.metric - high) <= (high - low):
            low, high = min(low, p.metric), max(high, p.metric)
    pad = (high - low) * 0.12 or abs(high) * 0.02 or 0.01
    ax.set_ylim(low - pad, high + pad)
    if frontier:
        xs, fy = [p.retrains for p in frontier], [p.metric for p in frontier]
        ax.plot(xs, fy, color="#2e86de", linewidth=1.6, marker="o", markersize=5, zorder=2,
                label="fixed schedule: retrain every k batches (static: never)")
        edge = ax.get_ylim()[1] if result.greater_is_better else ax.get_ylim()[0]
        ax.fill_between(xs, fy, edge, color="#27ae60", alpha=0.1, zorder=1,
                        label=f"better than the schedule ({result.metric} {'above' if result.greater_is_better else 'below'} the line)")
    markers = itertools.cycle(["D", "s", "^", "v", "P", "X", "*", "h"])  # cycle: any number of variants
    colours = itertools.cycle(["#c0392b", "#8e44ad", "#e67e22", "#16a085", "#b7950b", "#6e2c00", "#ff66cc", "#34495e"])
    same_place: dict[tuple[int, float], list[str]] = {}  # variants that landed on one point share a label
    for s in variants:
        gap = gaps.get(s.name)
        vs = "" if gap is None else f", {gap:+.3g} vs schedule"
        ax.scatter([s.retrains], [s.metric], marker=next(markers), s=80 if s.name == DRIFTLINE else 50,
                   color=next(colours), zorder=4 if s.name == DRIFTLINE else 3, edgecolors="black", linewidths=0.5,
                   label=f"{label(s.name)}: {s.metric:.4g}, {s.retrains} retrains{vs}")
        short = "Driftline" if s.name == DRIFTLINE else label(s.name).removeprefix("Driftline (").removesuffix(")")
        same_place.setdefault((s.retrains, round(s.metric, 9)), []).append(short)
    most = max([p.retrains for p in frontier] + [s.retrains for s in variants] + [1])
    ax.set_xlim(-most * 0.02 - 0.5, most * 1.1 + 0.5)
    ax.set_xlabel("retrains (models trained after the first)")
    ax.set_ylabel(f"{result.metric} over every predicted row" + ("" if result.greater_is_better else " (lower is better)"))
    ax.set_title(title or f"{result.name}: Driftline against fixed retraining schedules", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, frameon=False)
    fig.tight_layout()  # before the labels: they are placed in the final layout's points

    bottom, top = ax.get_ylim()
    boxes: list[tuple[float, float, float, float]] = []  # taken space, in points: markers, then labels

    def at(x: float, y: float) -> tuple[float, float]:
        px, py = ax.transData.transform((x, y))
        return px * 72 / fig.dpi, py * 72 / fig.dpi

    frame_box = ax.get_window_extent()
    inner = [v * 72 / fig.dpi for v in (frame_box.x0, frame_box.y0, frame_box.x1, frame_box.y1)]

    def clash(box: tuple[float, float, float, float]) -> float:
        """Area covered of markers and labels placed before; anything outside the axes counts as all."""
        if not (inner[0] <= box[0] and box[2] <= inner[2] and inner[1] <= box[1] and box[3] <= inner[3]):
            return float("inf")
        return sum(max(0.0, min(box[2], b[2]) - max(box[0], b[0])) * max(0.0, min(box[3], b[3]) - max(box[1], b[1]))
                   for b in boxes)

    def put(x: float, y: float, text: str, size: float, gap: float, **style: Any) -> None:
        """The spot around (x, y) that covers the least of the markers and labels placed before."""
        ox, oy = at(x, y)
        width, height = len(text) * size * 0.55, size * 1.05
        spots = [(dx, dy) for dy in (3, -height - 2, height + 4, -2 * height - 5, 2 * height + 6, -3 * height - 7)
                 for dx in (gap, -width - gap)]
        dx, dy = min(spots, key=lambda d: (clash((ox + d[0], oy + d[1], ox + d[0] + width, oy + d[1] + height)),
                                           spots.index(d)))
        boxes.append((ox + dx, oy + dy, ox + dx + width, oy + dy + height))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=size, **style)

    for x, y in [(p.retrains, min(max(p.metric, bottom), top)) for p in frontier] + list(same_place):
        cx, cy = at(x, y)
        boxes.append((cx - 4, cy - 4, cx + 4, cy + 4))
    for (x, y), names in same_place.items():  # in the result's order, Driftline's default first
        put(x, y, " = ".join(names), 8.5, 7)
    for p in frontier:
        inside = bottom <= p.metric <= top
        text = p.tag if inside else f"{p.tag} ({p.metric:.4g}, off the axis)"
        put(p.retrains, min(max(p.metric, bottom), top), text, 8, 5, color="#2e86de")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
