"""Online scoring: the framework-free core of ``driftline serve`` (the HTTP layer is driftline/serve.py).

- ``parse_rows``: a request body checked against the model's configured features; every problem is
  reported with the path of the field (``["rows", 3, "income"]``), as FastAPI reports its own 422s.
- ``ModelHolder`` + ``AliasFollower``: the served model is one reference. A background thread polls the
  alias, loads the new version fully beside the old one and swaps the reference in one assignment, so
  a request (which reads the reference once) finishes on the model it started with and never waits
  for a load. Only versions whose registry verdict is ``promoted`` are loaded.
- ``PredictionWriter``: every answered row is written to the store (row + prediction + version in one
  transaction) by a writer thread, off the request path. A batch the store refuses goes to a spool
  file under ``DRIFTLINE_HOME`` and is written when the store answers again, also by a later process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import and_, select

from ml.config import ModelConfig
from ml.registry import CHALLENGER, CHAMPION, Registry, VersionInfo
from ml.store import Store, _json_safe, insert_shadow, observations, to_utc_naive

log = logging.getLogger("driftline.serve")

MAX_ROWS = 1000  # per request: bounds the time one request holds a worker thread
KEY_MAX_CHARS = 128  # the store's row_id column
BLESSED_VERDICT = "promoted"  # written by Registry.promote (and on the version a rollback restores)


# ---- request validation ---------------------------------------------------------------------------


class RequestError(ValueError):
    """A request body that must not reach the model. ``errors`` are FastAPI-style:
    ``{"loc": ["body", "rows", 0, "income"], "msg": "...", "type": "..."}``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def parse_rows(payload: Any, config: ModelConfig, *, max_rows: int = MAX_ROWS) -> pd.DataFrame:
    """``{"rows": [{"key": "...", <feature>: value, ...}, ...]}`` -> a frame with ``row_id`` and the
    features (numerical as float, categorical as str or None), the dtypes batch validation gives.
    The rules are :func:`parse_records`'."""
    return records_frame(parse_records(payload, config, max_rows=max_rows), config)


def records_frame(records: list[dict[str, Any]], config: ModelConfig) -> pd.DataFrame:
    """Validated records as the frame batch scoring would build (numerical float with NaN for null)."""
    frame = pd.DataFrame.from_records(records, columns=["row_id", *config.feature_names])
    for name in config.numerical:
        frame[name] = frame[name].astype(float)
    for name in config.categorical:
        frame[name] = frame[name].astype(object)
    return frame


def parse_records(payload: Any, config: ModelConfig, *, max_rows: int = MAX_ROWS) -> list[dict[str, Any]]:
    """The request's rows as ``{"row_id": key, <feature>: float | str | None}`` dicts, or
    :class:`RequestError`. No pandas here: a one-row request should not pay for a DataFrame.

    Rules: every feature present (``null`` is allowed and means "unknown": the pipeline imputes it,
    as in batch scoring); numerical = a JSON number, finite, not a boolean; categorical = a string (or
    an integer, taken as its text); ``key`` = a non-empty string of at most 128 characters, unique in
    the request; no other fields. All problems are collected (up to 20), not only the first."""
    errors: list[dict[str, Any]] = []

    def bad(loc: tuple[Any, ...], msg: str, kind: str) -> None:
        errors.append({"loc": ["body", *loc], "msg": msg, "type": kind})

    if not isinstance(payload, dict):
        bad((), f"expected a JSON object with 'rows', got {_json_type(payload)}", "object_type")
        raise RequestError(errors)
    for extra in sorted(set(payload) - {"rows"}):
        bad((extra,), "unknown field (the body holds only 'rows')", "extra_forbidden")
    rows = payload.get("rows")
    if "rows" not in payload:
        bad(("rows",), "field required", "missing")
    elif not isinstance(rows, list):
        bad(("rows",), f"expected a list of row objects, got {_json_type(rows)}", "list_type")
    elif not rows:
        bad(("rows",), "empty list: send at least one row", "too_short")
    elif len(rows) > max_rows:
        bad(("rows",), f"{len(rows)} rows; at most {max_rows} per request", "too_long")
    if errors:
        raise RequestError(errors)

    kinds = {f.name: f.kind for f in config.features}
    allowed = {"key", *kinds}
    seen: dict[str, int] = {}
    records = []
    for i, row in enumerate(rows):
        if len(errors) >= 20:
            break
        if not isinstance(row, dict):
            bad(("rows", i), f"expected an object, got {_json_type(row)}", "object_type")
            continue
        key = row.get("key")
        if "key" not in row:
            bad(("rows", i, "key"), "field required (the row's id: labels join on it later)", "missing")
        elif not isinstance(key, str) or not key.strip():
            bad(("rows", i, "key"), f"expected a non-empty string, got {_json_type(key)}", "string_type")
        elif len(key) > KEY_MAX_CHARS:
            bad(("rows", i, "key"), f"{len(key)} characters; at most {KEY_MAX_CHARS}", "string_too_long")
        elif key in seen:
            bad(("rows", i, "key"), f"duplicate of rows[{seen[key]}].key {key!r}", "duplicate")
        else:
            seen[key] = i
        for extra in sorted(set(row) - allowed):
            bad(("rows", i, extra), f"unknown field; the features are {sorted(kinds)}", "extra_forbidden")
        record: dict[str, Any] = {"row_id": key}
        for name, kind in kinds.items():
            if name not in row:
                bad(("rows", i, name), f"field required ({kind} feature)", "missing")
                continue
            value = row[name]
            if value is None:
                record[name] = None
            elif kind == "numerical":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    bad(("rows", i, name), f"expected a number, got {_json_type(value)}", "float_type")
                elif not math.isfinite(float(value)):
                    bad(("rows", i, name), f"expected a finite number, got {value!r}", "finite_number")
                else:
                    record[name] = float(value)
            elif isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
                record[name] = str(value)
            else:
                bad(("rows", i, name), f"expected a string, got {_json_type(value)}", "string_type")
        records.append(record)
    if errors:
        raise RequestError(errors[:20])
    return records


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


# ---- the served model and its hot swap ------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """One loaded version; never changed after the load, so requests may share it freely."""

    name: str
    version: int
    alias: str
    model: Any
    loaded_at: datetime
    data_start: str | None
    data_end: str | None
    verdict: str | None
    fast: FastPipeline | None = None  # the preprocessing in plain NumPy, where the pipeline allows it

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "alias": self.alias,
            "loaded_at": self.loaded_at.isoformat(),
            "trained_on": {"start": self.data_start, "end": self.data_end},
            "verdict": self.verdict,
            "fast_path": self.fast is not None,
        }


class FastPipeline:
    """A fitted ``ml.training.build_pipeline`` pipeline's preprocessing (median/mean/constant
    imputation, standard scaling, one-hot encoding that ignores unknown categories) as plain NumPy on
    the request's records, then the fitted final estimator as is. scikit-learn's ColumnTransformer on
    a one-row DataFrame spends milliseconds on pandas and checks for microseconds of arithmetic; this
    does the arithmetic. Built only when every step is one it knows, and only if it agrees with the
    pipeline's own ``transform`` on probe rows (known, null and unseen values); else the pipeline runs."""

    def __init__(self, model: Any, config: ModelConfig) -> None:
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline

        if not isinstance(model, Pipeline) or len(model.steps) != 2:
            raise TypeError("not a two-step pipeline")
        self.model = model
        head, self.final = model.steps[0][1], model.steps[-1][1]
        if not isinstance(head, ColumnTransformer):
            raise TypeError(f"preprocessing is {type(head).__name__}, not a ColumnTransformer")
        self.head = head
        self.blocks: list[tuple[str, list[str], list[Any]]] = []  # (kind, columns, fitted steps)
        for name, transformer, columns in head.transformers_:
            if transformer == "drop" or (hasattr(columns, "__len__") and len(columns) == 0):
                continue
            if transformer == "passthrough" or not isinstance(transformer, Pipeline):
                raise TypeError(f"{name}: {transformer!r} is not a known step")
            columns = list(columns)
            if not all(isinstance(c, str) for c in columns):
                raise TypeError(f"{name}: columns not selected by name")
            kind = "num" if all(c in config.numerical for c in columns) else "cat"
            if kind == "cat" and not all(c in config.categorical for c in columns):
                raise TypeError(f"{name}: mixes numerical and categorical columns")
            self.blocks.append((kind, columns, [self._step(kind, step) for _, step in transformer.steps]))
        self.width = sum(self._width(kind, columns, steps) for kind, columns, steps in self.blocks)
        # A binary LogisticRegression is one dot product and a logistic: its own predict and
        # predict_proba spend far longer checking a one-row input than computing on it.
        self._linear: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        from sklearn.linear_model import LogisticRegression

        if type(self.final) is LogisticRegression and len(self.final.classes_) == 2 and self.final.coef_.shape[0] == 1:
            self._linear = (self.final.coef_.T, self.final.intercept_, self.final.classes_)

    @staticmethod
    def _step(kind: str, step: Any) -> Any:
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        if isinstance(step, SimpleImputer):
            if step.add_indicator:
                raise TypeError("imputer adds indicators")
            if kind == "num":
                stats = np.asarray(step.statistics_, dtype=float)
                if np.isnan(stats).any():  # an all-missing column is dropped by the imputer
                    raise TypeError("imputer drops an empty column")
                if not (isinstance(step.missing_values, float) and math.isnan(step.missing_values)):
                    raise TypeError("numerical imputer for a value other than NaN")
                return ("impute_num", stats)
            return ("impute_cat", step.missing_values, list(step.statistics_))
        if isinstance(step, StandardScaler) and kind == "num":
            return ("scale", step.mean_ if step.with_mean else None, step.scale_ if step.with_std else None)
        if (isinstance(step, OneHotEncoder) and kind == "cat" and step.handle_unknown == "ignore"
                and step.drop_idx_ is None and not getattr(step, "_infrequent_enabled", False)):
            return ("onehot", [{value: i for i, value in enumerate(cats)} for cats in step.categories_],
                    [len(cats) for cats in step.categories_])
        raise TypeError(f"{type(step).__name__} on {kind} columns is not a known step")

    @staticmethod
    def _width(kind: str, columns: list[str], steps: list[Any]) -> int:
        last = steps[-1] if steps else None
        return sum(last[2]) if last is not None and last[0] == "onehot" else len(columns)

    @classmethod
    def compile(cls, model: Any, config: ModelConfig) -> FastPipeline | None:
        try:
            fast = cls(model, config)
        except (TypeError, AttributeError) as exc:
            log.info("scoring through the pipeline itself (no NumPy fast path: %s)", exc)
            return None
        problem = fast._disagreement(config)
        if problem is not None:
            log.warning("scoring through the pipeline itself: the NumPy fast path disagreed with it (%s)", problem)
            return None
        return fast

    def transform(self, records: list[dict[str, Any]]) -> np.ndarray:
        out = np.empty((len(records), self.width))
        at = 0
        for kind, columns, steps in self.blocks:
            if kind == "num":
                x = np.array([[r[c] for c in columns] for r in records], dtype=float)  # None -> nan
                for step in steps:
                    if step[0] == "impute_num":
                        x = np.where(np.isnan(x), step[1], x)
                    else:
                        _, mean, scale = step
                        if mean is not None:
                            x -= mean
                        if scale is not None:
                            x /= scale
                out[:, at:at + x.shape[1]] = x
                at += x.shape[1]
                continue
            values = [[r[c] for c in columns] for r in records]
            width = len(columns)
            for step in steps:
                if step[0] == "impute_cat":
                    _, missing, fills = step
                    nan_missing = isinstance(missing, float) and math.isnan(missing)
                    values = [[fills[j] if (_is_nan(v) if nan_missing else v is missing or v == missing) else v
                               for j, v in enumerate(row)] for row in values]
                else:
                    _, lookups, sizes = step
                    width = sum(sizes)
                    block = np.zeros((len(records), width))
                    for i, row in enumerate(values):
                        offset = 0
                        for j, v in enumerate(row):
                            hit = lookups[j].get(v)
                            if hit is not None:
                                block[i, offset + hit] = 1.0
                            offset += sizes[j]
                    values = block
            out[:, at:at + width] = values
            at += width
        return out

    def predict(self, records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and class probabilities (None where the estimator has none), as the pipeline's
        ``predict`` / ``predict_proba`` give them."""
        X = self.transform(records)
        if self._linear is not None:
            from scipy.special import expit

            coef_t, intercept, classes = self._linear
            decision = (X @ coef_t + intercept).reshape(-1)  # sklearn's decision_function, same shapes
            positive = expit(decision)
            return classes[(decision > 0).astype(int)], np.column_stack([1 - positive, positive])
        proba = np.asarray(self.final.predict_proba(X)) if hasattr(self.final, "predict_proba") else None
        return np.asarray(self.final.predict(X)), proba

    def _disagreement(self, config: ModelConfig) -> str | None:
        """None if ``transform`` equals the pipeline's own on probe rows, else how it differs."""
        probes: list[dict[str, Any]] = []
        cats = {c: [] for c in config.categorical}
        for kind, columns, steps in self.blocks:
            for step in steps:
                if kind == "cat" and step[0] == "onehot":
                    for column, lookup in zip(columns, step[1], strict=True):
                        cats[column] = [v for v in lookup if isinstance(v, str)]
        n = max([len(v) for v in cats.values()] + [1]) + 3
        for i in range(n):
            row: dict[str, Any] = {"row_id": f"probe-{i}"}
            for j, name in enumerate(config.numerical):
                row[name] = None if i % 4 == 3 else float((i + 1) * (j + 2)) - 3.5
            for name in config.categorical:
                known = cats[name]
                row[name] = (None if i == n - 1 else "\x00unseen" if i == n - 2 or not known
                             else known[i % len(known)])
            probes.append(row)
        try:
            frame = records_frame(probes, config)[config.feature_names]
            expected = self.head.transform(frame)
            expected = expected.toarray() if hasattr(expected, "toarray") else np.asarray(expected, dtype=float)
            got = self.transform(probes)
            if expected.shape != got.shape:
                return f"shape {got.shape} vs {expected.shape}"
            if not np.allclose(got, expected, rtol=1e-12, atol=1e-12, equal_nan=True):
                return f"preprocessing: largest difference {np.nanmax(np.abs(got - expected)):.3g}"
            prediction, proba = self.predict(probes)
            if not np.array_equal(prediction, np.asarray(self.model.predict(frame))):
                return "predictions differ"
            if proba is not None and not np.allclose(proba, self.model.predict_proba(frame), rtol=1e-12, atol=1e-15):
                return "probabilities differ"
        except Exception as exc:  # noqa: BLE001 (anything odd: use the pipeline)
            return f"{type(exc).__name__}: {exc}"
        return None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


class ModelHolder:
    """The served model as one reference. A request reads ``current`` once and uses that object to
    the end; ``swap`` is a single assignment (atomic under the GIL), so there is no lock to wait on."""

    def __init__(self) -> None:
        self.current: ServedModel | None = None

    def swap(self, new: ServedModel) -> ServedModel | None:
        old, self.current = self.current, new
        return old


def unblessed_reason(info: VersionInfo) -> str | None:
    """None if Driftline promoted this version; else why it must not be served."""
    verdict = info.tag("verdict")
    if verdict != BLESSED_VERDICT:
        return f"its driftline.verdict tag is {verdict!r}, not {BLESSED_VERDICT!r} (not promoted by Driftline)"
    return None


def _load_blessed(registry: Registry, version: int) -> Any:
    """The registry's own check first where it has one (the audit log proves Driftline promoted the
    version; tags anyone with MLflow access can set), then the load, by number."""
    check = getattr(registry, "check_blessed", None)
    if check is not None:
        check(version, serving=True)
    return registry.load_model(version)


def _is_unblessed(exc: Exception) -> bool:
    from ml import registry as reg

    unblessed = getattr(reg, "UnblessedModelError", None)
    return unblessed is not None and isinstance(exc, unblessed)


class AliasFollower:
    """Polls ``alias`` every ``poll_seconds`` and swaps in the version it names, once it is loaded.

    The version is read once and everything after (tags, artifacts) is fetched by that number: a
    move of the alias in between cannot pair one version's number with another's model. A version
    whose verdict tag is not ``promoted`` is refused and the old one stays; the tag is read again at
    every poll (a rollback re-tags the version it restores just after moving the alias) and the
    refusal logged once. Where the registry also checks its audit log before a load
    (``Registry.check_blessed``), a refusal there, like a failed load, is retried after one poll, then
    twice as long each time, up to a minute: a promotion writes its audit entry after it moves the
    alias, and a forged tag must not write a refusal entry every poll."""

    def __init__(
        self,
        registry: Registry | Callable[[], Registry],
        holder: ModelHolder,
        *,
        name: str,
        alias: str = CHAMPION,
        poll_seconds: float = 2.0,
        max_backoff_seconds: float = 60.0,
        prepare: Callable[[Any], FastPipeline | None] | None = None,
    ) -> None:
        # A factory is called (and retried) at the first poll: the registry needs the store, and a store
        # that is down at start-up must not stop the service from starting.
        self._registry = registry if isinstance(registry, Registry) else None
        self._make_registry = None if isinstance(registry, Registry) else registry
        self.holder = holder
        self.name = name
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.prepare = prepare  # run on each loaded model before the swap (off the request path)
        self.last_checked_at: datetime | None = None
        self.last_error: str | None = None
        self.refused: dict[int, str] = {}  # version -> why (the newest refusal)
        self._retry: dict[int, tuple[float, float]] = {}  # version -> (monotonic time of the next try, delay)
        self.wakes = 0  # checks asked for by a verified webhook (they run on this thread, at once)
        self.last_wake_at: datetime | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            assert self._make_registry is not None
            self._registry = self._make_registry()
        return self._registry

    def check_once(self) -> str:
        """One poll. Returns what happened: unchanged | loaded | refused | no_alias | error | waiting."""
        try:
            registry = self.registry
            version = registry.version_for(self.alias)
            self.last_checked_at = datetime.now(UTC)
            current = self.holder.current
            if version is None:
                return self._gone()
            if current is not None and current.version == version:
                return "unchanged"
            retry = self._retry.get(version)
            if retry is not None and time.monotonic() < retry[0]:
                return "waiting"
            info = registry.info(version)
            reason = self._unfit(info)
            if reason is not None:
                self._refuse(version, reason, current)
                return "refused"
            started = time.monotonic()
            try:
                model = self._load(registry, version)  # by number: the alias may have moved since
            except Exception as exc:
                self._back_off(version)
                if _is_unblessed(exc):
                    self._refuse(version, str(exc), current)
                    return "refused"
                raise
            served = ServedModel(
                name=self.name, version=version, alias=self.alias, model=model,
                loaded_at=datetime.now(UTC), data_start=info.tag("data_start"), data_end=info.tag("data_end"),
                verdict=info.tag("verdict"), fast=self.prepare(model) if self.prepare else None,
            )
            old = self.holder.swap(served)
            self.refused = {}
            self._retry.pop(version, None)
            self.last_error = None
            log.info("now serving %s v%s (was %s; loaded in %.2f s)", self.name, version,
                     f"v{old.version}" if old else "nothing", time.monotonic() - started)
            return "loaded"
        except Exception as exc:  # noqa: BLE001 (registry or artifact store down: keep serving, retry)
            message = f"{type(exc).__name__}: {exc}"
            if message != self.last_error:
                log.error("checking %s@%s failed (still serving what was loaded): %s", self.name, self.alias, message)
            self.last_error = message
            return "error"

    def _gone(self) -> str:
        return "no_alias"  # the champion alias is never deleted: keep serving what is loaded

    def _unfit(self, info: VersionInfo) -> str | None:
        return unblessed_reason(info)

    def _load(self, registry: Registry, version: int) -> Any:
        return _load_blessed(registry, version)

    def _refuse(self, version: int, reason: str, current: ServedModel | None) -> None:
        if self.refused.get(version) != reason:
            log.warning("%s@%s is v%s, which is not served: %s; still serving %s", self.name, self.alias,
                        version, reason, f"v{current.version}" if current else "nothing")
        self.refused = {version: reason}

    def _back_off(self, version: int) -> None:
        _, delay = self._retry.get(version, (0.0, self.poll_seconds / 2))
        delay = min(self.max_backoff_seconds, delay * 2)
        self._retry[version] = (time.monotonic() + delay, delay)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"follow-{self.alias}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Check now instead of at the next poll (a verified webhook said the registry changed). Only
        the check is hurried: what is loaded is decided by the same reads and lineage check as a poll.
        Wakes that arrive while a check runs are folded into one more check."""
        self.wakes += 1
        self.last_wake_at = datetime.now(UTC)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.poll_seconds)
            if self._stop.is_set():
                return
            self._wake.clear()
            self.check_once()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def describe(self) -> dict[str, Any]:
        return {
            "poll_seconds": self.poll_seconds,
            "last_checked_at": self.last_checked_at.isoformat() if self.last_checked_at else None,
            "last_error": self.last_error,
            "refused": [{"version": v, "reason": r} for v, r in self.refused.items()],
            "webhook_wakes": self.wakes,
            "last_webhook_at": self.last_wake_at.isoformat() if self.last_wake_at else None,
        }


# ---- MLflow registry webhooks: a hurry-up for the follower, never a source of truth -----------------

# What MLflow (>= 3.3, SQL-backed store, calls made through its server) sends; see
# mlflow/webhooks/delivery.py: HMAC-SHA256 over "<delivery id>.<unix timestamp>.<body>", base64, "v1,".
WEBHOOK_SIGNATURE_HEADER = "X-MLflow-Signature"
WEBHOOK_TIMESTAMP_HEADER = "X-MLflow-Timestamp"
WEBHOOK_DELIVERY_HEADER = "X-MLflow-Delivery-Id"
# The alias move itself, and the verdict tag a promotion writes just after it (the follower refuses a
# version whose tag does not yet read "promoted", so the move alone can arrive too early).
WEBHOOK_EVENTS = ("model_version_alias.created", "model_version_tag.set")


class WebhookRejected(ValueError):
    """A webhook delivery that is not provably MLflow's (answered 401)."""


def verify_webhook(secret: str, headers: Any, body: bytes, *, tolerance_seconds: float,
                   now: float | None = None) -> None:
    """Raise :class:`WebhookRejected` unless ``body`` carries a valid MLflow signature made with
    ``secret`` and its timestamp is within ``tolerance_seconds`` of ``now`` (an old delivery replayed
    later is refused). ``headers``: any case-insensitive mapping. The compare is constant-time."""
    import base64
    import hashlib
    import hmac

    delivery = headers.get(WEBHOOK_DELIVERY_HEADER)
    stamp = headers.get(WEBHOOK_TIMESTAMP_HEADER)
    signature = headers.get(WEBHOOK_SIGNATURE_HEADER)
    if not delivery or not stamp or not signature:
        raise WebhookRejected("missing signature, timestamp or delivery id header")
    try:
        sent = int(stamp)
    except ValueError:
        raise WebhookRejected(f"timestamp {stamp[:20]!r} is not a unix time") from None
    now = time.time() if now is None else now
    if abs(now - sent) > tolerance_seconds:
        age = f"{now - sent:.0f} s old" if now >= sent else f"{sent - now:.0f} s in the future"
        raise WebhookRejected(f"timestamp {sent} is {age} (tolerance {tolerance_seconds:g} s)")
    expected = base64.b64encode(
        hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
    )
    # Standard Webhooks allows several space-separated "v1,<sig>" entries (secret rotation).
    for entry in signature.split():
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise WebhookRejected("signature does not match")


def webhook_concerns(payload: Any, model: str, alias: str = CHAMPION) -> bool:
    """True if a verified delivery is about ``model``'s ``alias`` moving, or its verdict tag being set;
    the webhook is registry-wide, so most deliveries are about other models. Nothing in the payload is
    used beyond this: the follower re-reads the alias itself."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        return False
    data, event = payload["data"], f"{payload.get('entity')}.{payload.get('action')}"
    if data.get("name") != model:
        return False
    if event == "model_version_alias.created":
        return data.get("alias") == alias
    if event == "model_version_tag.set":
        from ml.registry import TAG

        return data.get("key") == f"{TAG}verdict"
    return False


def webhook_name(model: str, url: str) -> str:
    """One name per model and URL (MLflow: < 63 characters of letters, digits, ``.``, ``_``, ``-``)."""
    import hashlib
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]", "-", model)[:36].strip("._-") or "model"
    return f"driftline-serve-{safe}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def ensure_webhook(client: Any, model: str, url: str, secret: str) -> str:
    """Register (or update: same name = same model and URL) an MLflow webhook that posts the events
    :data:`WEBHOOK_EVENTS` to ``url``, signed with ``secret``. Returns its id. Raises whatever MLflow
    raises where webhooks cannot work (a file store, a URL its server refuses: by default MLflow only
    calls https URLs on public addresses)."""
    name = webhook_name(model, url)
    token = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        for hook in page:
            if hook.name == name:
                client.update_webhook(hook.webhook_id, url=url, events=list(WEBHOOK_EVENTS), secret=secret,
                                      status="ACTIVE", description=_webhook_description(model))
                return hook.webhook_id
        token = page.token
        if not token:
            break
    hook = client.create_webhook(name=name, url=url, events=list(WEBHOOK_EVENTS), secret=secret,
                                 description=_webhook_description(model))
    return hook.webhook_id


def _webhook_description(model: str) -> str:
    return (f"driftline serve {model}: a champion move or verdict tag makes the service re-read the alias at "
            "once (it also polls)")


# ---- writing what was served ----------------------------------------------------------------------


@dataclass
class WriterStats:
    written: int = 0  # rows inserted into the store
    duplicates: int = 0  # rows whose key was already stored (first write wins)
    conflicts: int = 0  # of those, keys re-sent with other features
    spooled: int = 0  # rows waiting in the spool for the store
    store_ok: bool = True
    last_error: str | None = None
    outages: int = 0
    shadowed: int = 0  # the challenger's shadow predictions stored (serving.shadow)


def write_served(store: Store, model: str, rows: list[dict[str, Any]]) -> tuple[int, int, list[str], int]:
    """Insert served rows (``row_id, ts, features, prediction, score, model_version``) in one
    transaction: a row is never stored without the prediction and version it was answered with.

    A key already stored keeps its first row and prediction, so re-writing a batch (a retry after a
    failed commit, a spool written twice after a crash) changes nothing. The store refuses a re-sent
    row with other values; here the answer is already out, so the first one stays and the key is
    reported as a conflict instead.

    Rows marked ``shadow`` are the challenger's predictions on rows served before them (same keys,
    same features); they go to the shadow table in the same transaction, first write wins, and only
    for a stored row with those features (a key re-sent with other features pairs with nothing).
    Returns (inserted, already stored, conflicting keys, shadow predictions stored)."""
    shadow = [row for row in rows if row.get("shadow")]
    rows = [row for row in rows if not row.get("shadow")]
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(str(row["row_id"]), row)  # the same key twice in a batch: the first wins
    ids = list(dict.fromkeys([*unique, *(str(row["row_id"]) for row in shadow)]))
    with store.engine.begin() as conn:
        existing: dict[str, Any] = {}
        for start in range(0, len(ids), 500):  # SQLite's variable limit
            chunk = ids[start : start + 500]
            query = select(observations.c.row_id, observations.c.features).where(
                and_(observations.c.model == model, observations.c.row_id.in_(chunk)))
            existing.update({row_id: features for row_id, features in conn.execute(query)})
        values = [
            {
                "model": model,
                "row_id": row_id,
                "ts": to_utc_naive(row["ts"]),
                "features": _features(row),
                "prediction": _json_safe(row["prediction"]),
                "score": _json_safe(row.get("score")),
                "model_version": int(row["model_version"]),
                "scored_at": to_utc_naive(row["ts"]),
            }
            for row_id, row in unique.items()
            if row_id not in existing
        ]
        if values:
            conn.execute(observations.insert(), values)
        stored = {**{v["row_id"]: v["features"] for v in values}, **existing}
        shadowed = 0
        for version in sorted({int(row["model_version"]) for row in shadow}):
            pairs = [row for row in shadow if int(row["model_version"]) == version
                     and stored.get(str(row["row_id"])) == _features(row)]
            shadowed += insert_shadow(conn, model, pairs, version, to_utc_naive(datetime.now(UTC)))
    conflicts = set()
    for row in rows:
        row_id = str(row["row_id"])
        first = existing[row_id] if row_id in existing else _features(unique[row_id])
        if first != _features(row):
            conflicts.add(row_id)
    return len(values), len(rows) - len(values), sorted(conflicts), shadowed


def _features(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _json_safe(v) for k, v in row["features"].items()}


class Spool:
    """Batches the store refused, one JSON line each, fsynced, in ``<folder>/<model>.<token>.jsonl``.

    Each process holds an exclusive ``flock`` on its own file while it runs; a file nobody holds is
    left by a process that stopped before the store came back, and the next one adopts it."""

    def __init__(self, folder: Path, model: str) -> None:
        self.folder = folder
        self.model = model
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{model}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Locked under a name adoption does not look at, then renamed (same inode, same lock): a sibling
        # worker starting at the same moment never adopts, and unlinks, a spool that is in use.
        creating = folder / f".{name}.new"
        self._handle = open(creating, "a+", encoding="utf-8")  # noqa: SIM115 (held for the process's life)
        fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = folder / f"{name}.jsonl"
        creating.rename(self.path)

    def append(self, rows: list[dict[str, Any]]) -> None:
        self._handle.write(json.dumps(rows, default=str) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        self._handle.seek(0)
        yield from self._read(self._handle)

    def _read(self, handle: Any) -> Iterator[list[dict[str, Any]]]:
        for line in handle:
            if not line.strip():
                continue
            try:
                batch = json.loads(line)
            except ValueError:
                # A line cut short by a crash in the middle of an append: keep it aside, go on.
                self.set_aside(line.rstrip("\n"), "not valid JSON (cut short by a crash?)")
                continue
            yield batch

    def set_aside(self, line: str, why: str) -> None:
        """Keep what can never be written in ``<model>.rejected.jsonl`` beside the spools, with why."""
        log.error("spool: a batch set aside in %s: %s", self.rejected_path, why)
        with open(self.rejected_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"why": why, "batch": line}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @property
    def rejected_path(self) -> Path:
        return self.folder / f"{self.model}.rejected.jsonl"

    def clear(self) -> None:
        """Only once every batch is in the store: a crash before this re-writes them, which is harmless."""
        self._handle.truncate(0)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def adopt_orphans(self) -> int:
        """Copy spools of stopped processes into this one (then delete them); returns rows adopted."""
        adopted = 0
        for path in sorted(self.folder.glob(f"{self.model}.*.jsonl")):
            if path == self.path:
                continue
            with open(path, "r+", encoding="utf-8") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process's spool
                for batch in self._read(handle):
                    self.append(batch)
                    adopted += len(batch)
                path.unlink()  # after the copy is fsynced: a crash in between duplicates, never loses
        return adopted

    def close(self) -> None:
        empty = self._handle.seek(0, os.SEEK_END) == 0
        self._handle.close()  # releases the lock: a later process adopts what is left
        if empty:
            self.path.unlink(missing_ok=True)


def _store_unreachable(exc: Exception) -> bool:
    """A connection-level failure (the database is down or locked), as opposed to a batch it refuses."""
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError, DisconnectionError, OSError))


class PredictionWriter:
    """Queue + one writer thread. ``submit`` only enqueues (no I/O on the request path). The thread
    writes what has queued every ``flush_seconds`` as one transaction; if the store fails, the batch
    goes to the spool, and the spool is retried every ``retry_seconds`` (new batches queue behind it
    in the spool, so the first answer for a key stays the one stored). ``close`` writes or spools
    everything still queued."""

    def __init__(
        self,
        store_url: str,
        model: str,
        spool_dir: Path,
        *,
        flush_seconds: float = 0.2,
        retry_seconds: float = 1.0,
        max_batch: int = 2000,
        store_factory: Callable[[str], Store] = Store,
    ) -> None:
        self.store_url = store_url
        self.model = model
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self.max_batch = max_batch
        self.stats = WriterStats()
        self.spool = Spool(spool_dir, model)
        self._store_factory = store_factory
        self._store: Store | None = None
        self._queue: queue.SimpleQueue[list[dict[str, Any]] | None] = queue.SimpleQueue()
        self._queued_rows = 0
        self._count_lock = threading.Lock()
        self._last_retry = 0.0
        self._refusals: dict[int, int] = {}  # spooled batch -> how many drains the store refused it
        self._thread: threading.Thread | None = None

    # -- request side --

    def submit(self, rows: list[dict[str, Any]]) -> None:
        with self._count_lock:
            self._queued_rows += len(rows)
        self._queue.put(rows)

    @property
    def queued(self) -> int:
        return self._queued_rows

    # -- writer thread --

    def start(self) -> None:
        self.stats.spooled = self.spool.adopt_orphans()  # our own spool is new: the orphans are all of it
        if self.stats.spooled:
            log.warning("%s rows from an earlier run wait in the spool; writing them when the store answers",
                        self.stats.spooled)
        self._thread = threading.Thread(target=self._run, name="prediction-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            rows, stopping = self._take()
            if rows:
                self._handle(rows)
            if self.stats.spooled and time.monotonic() - self._last_retry >= self.retry_seconds:
                self._drain()
        if self.stats.spooled:
            self._drain()  # one last try at shutdown; what stays is on disk for the next process

    def _take(self) -> tuple[list[dict[str, Any]], bool]:
        """Everything queued within one flush interval (up to max_batch rows); True once close() was called."""
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_seconds
        while len(rows) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                # close(): everything submitted before it is already ahead of it in the queue.
                rest, _ = self._take_all()
                return rows + rest, True
            rows.extend(item)
        return rows, False

    def _take_all(self) -> tuple[list[dict[str, Any]], bool]:
        rows: list[dict[str, Any]] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rows, True
            if item is not None:
                rows.extend(item)

    def _handle(self, rows: list[dict[str, Any]]) -> None:
        with self._count_lock:
            self._queued_rows -= len(rows)
        if self.stats.spooled:
            self._to_spool(rows)  # keep the order: earlier batches are still waiting there
            return
        try:
            self._write(rows)
        except Exception as exc:  # noqa: BLE001 (any store failure: keep the rows, retry later)
            self._outage(exc)
            self._to_spool(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if self._store is None:
            self._store = self._store_factory(self.store_url)  # connects (and creates tables) lazily
        inserted, skipped, conflicts, shadowed = write_served(self._store, self.model, rows)
        self.stats.written += inserted
        self.stats.shadowed += shadowed
        self.stats.duplicates += skipped
        if conflicts:
            self.stats.conflicts += len(conflicts)
            log.warning("%s key(s) sent again with other features; the first row and answer stay stored, e.g. %s",
                        len(conflicts), conflicts[:3])
        if not self.stats.store_ok:
            log.warning("store answers again")
        self.stats.store_ok = True
        self.stats.last_error = None

    def _to_spool(self, rows: list[dict[str, Any]]) -> None:
        self.spool.append(rows)
        self.stats.spooled += len(rows)

    def _outage(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if self.stats.store_ok:
            self.stats.outages += 1
            log.error("store write failed, spooling predictions to %s until it answers: %s", self.spool.path, message)
        self.stats.store_ok = False
        self.stats.last_error = message
        self._last_retry = time.monotonic()

    def _drain(self) -> None:
        self._last_retry = time.monotonic()
        for batch in self.spool.batches():
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001
                if _store_unreachable(exc):
                    self._outage(exc)
                    return
                # The store answers but refuses this batch: retried at the next drains, then set aside
                # so that one bad batch cannot hold back every later one.
                key = hash(json.dumps(batch, default=str))
                self._refusals[key] = self._refusals.get(key, 0) + 1
                if self._refusals[key] < 3:
                    self._outage(exc)
                    return
                self.spool.set_aside(json.dumps(batch, default=str), f"{type(exc).__name__}: {exc}"[:2000])
                self._refusals.pop(key)
        self._refusals.clear()
        log.info("wrote %s spooled rows", self.stats.spooled)
        self.spool.clear()
        self.stats.spooled = 0

    def close(self, timeout: float = 30.0) -> None:
        """Write (or spool) everything submitted so far, then stop."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self.spool.close()

    def describe(self) -> dict[str, Any]:
        s = self.stats
        return {"queued": self.queued, "written": s.written, "duplicates": s.duplicates,
                "conflicts": s.conflicts, "spooled": s.spooled,
                "store_ok": s.store_ok, "last_error": s.last_error, "outages": s.outages, "shadowed": s.shadowed}


# ---- the service: what one request does -----------------------------------------------------------


class NotReady(RuntimeError):
    """No blessed version loaded yet."""


def predict_once(config: ModelConfig, model: Any, frame: pd.DataFrame) -> tuple[Any, Any]:
    """``ml.training.predict``'s answer with the preprocessing run once instead of twice: for a
    Pipeline, ``predict`` and ``predict_proba`` are the final step on the same transformed rows, and
    on small requests the pipeline's per-call cost (about 5 ms here) dominates. Same numbers: the
    tests compare with ``ml.training.predict``."""
    from sklearn.pipeline import Pipeline

    from ml.training import predict

    if not isinstance(model, Pipeline) or len(model.steps) < 2:
        return predict(config, model, frame)
    head, final = model[:-1], model.steps[-1][1]
    transformed = head.transform(frame[config.feature_names])
    prediction = np.asarray(final.predict(transformed))
    score = None
    if config.task == "classification" and len(config.target.labels or []) == 2 and hasattr(final, "predict_proba"):
        classes = list(final.classes_)
        if config.positive_label in classes:
            score = np.asarray(final.predict_proba(transformed))[:, classes.index(config.positive_label)]
    return prediction, score


class _QueueThread:
    """One daemon thread draining ``self._queue`` in ``self._run`` until it takes ``None``."""

    thread_name = "worker"
    max_batch_rows: int
    _queue: queue.SimpleQueue
    _thread: threading.Thread | None

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def _queued_since(self, rows: int, size: Any) -> tuple[list[Any], bool]:
        """Items queued while the last batch ran (no waiting), until ``max_batch_rows``; and whether
        the stop sentinel was among them."""
        items: list[Any] = []
        while rows < self.max_batch_rows:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return items, True
            items.append(more)
            rows += size(more)
        return items, False

    def stop(self, timeout: float = 30.0) -> None:
        """Handles everything submitted before, then stops (stop a shadow scorer before the writer)."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)


class ScoringService(_QueueThread):
    """Validation, scoring with the current model, and the hand-off to the writer.

    Scoring runs on one thread that takes every request queued while it was busy and predicts them in
    one call: the pipeline's cost is mostly per call (about 5 ms for one row, 8 ms for a hundred here),
    so under load this is what keeps the latency flat. Each batch reads the served model once, so every
    answer names the version that really made it."""

    thread_name = "scorer"

    shadow: ShadowScorer | None = None  # serving.shadow: gets each batch's champion-answered rows
    canary: Canary | None = None  # serving.canary_fraction: a stable share of rows answered by the challenger

    def __init__(self, config: ModelConfig, holder: ModelHolder, writer: PredictionWriter, *,
                 max_batch_rows: int = 4096) -> None:
        self.config = config
        self.holder = holder
        self.writer = writer
        self.max_batch_rows = max_batch_rows
        self._numerical = frozenset(config.numerical)
        self._queue: queue.SimpleQueue[tuple[list[dict[str, Any]], datetime, Future] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, payload: Any, received_at: datetime) -> Future:
        """Validate now (``RequestError`` at once); the future gives the answer, or raises ``NotReady``."""
        records = parse_records(payload, self.config)
        future: Future = Future()
        self._queue.put((records, received_at, future))
        return future

    def answer_now(self, payload: Any, received_at: datetime) -> dict[str, Any] | None:
        """Validate, score and hand to the writer on the caller's thread, when the served version has
        the fast path (a one-row answer is about 0.1 ms of NumPy: two thread hand-offs would cost more
        than the work); None when the request should go through :meth:`submit`. The caller keeps this
        for small requests, so the event loop is never held long."""
        served = self.holder.current  # read once, as a batch does
        if served is None or served.fast is None:
            return None
        challenger = self.canary.holder.current if self.canary is not None else None
        records = parse_records(payload, self.config)
        if challenger is not None and challenger.fast is None and any(self.canary.takes(r["row_id"]) for r in records):
            return None  # the challenger without the fast path would hold the event loop for milliseconds
        prediction, score = self._predict_fast(served.fast, records)
        rows = self._route(served, challenger, records, prediction, score)
        answer = self._answer(records, rows, received_at)
        self._to_shadow(records, rows)  # as the scorer thread does after its answers
        return answer

    def predict(self, payload: Any, received_at: datetime, timeout: float = 60.0) -> dict[str, Any]:
        """Blocking form of :meth:`submit`."""
        return self.submit(payload, received_at).result(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            more, stopping = self._queued_since(len(item[0]), lambda queued: len(queued[0]))
            batch = [item, *more]
            answered: list[tuple[list[dict[str, Any]], list[Answered]]] = []
            try:
                answered = self._score(batch)
            except Exception as exc:  # a bug here must answer every waiting request, not hang it
                log.exception("scoring a batch failed")
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            for records, rows in answered:  # after the answers: the challenger never delays one
                self._to_shadow(records, rows)
            if stopping:
                return

    def _score(self, batch: list[tuple[list[dict[str, Any]], datetime, Future]]
               ) -> list[tuple[list[dict[str, Any]], list[Answered]]]:
        """Answers every request of the batch; returns what was answered (for the shadow scorer)."""
        served = self.holder.current  # read once: the whole batch is answered by this version
        if served is None:
            for _, _, future in batch:
                future.set_exception(NotReady(f"no blessed {self.config.name}@{CHAMPION} loaded yet"))
            return []
        challenger = self.canary.holder.current if self.canary is not None else None  # read once too
        try:
            records = [r for part, _, _ in batch for r in part] if len(batch) > 1 else batch[0][0]
            prediction, score = self._predict(served, records)
        except Exception:  # one request the model chokes on must not fail the others
            if len(batch) > 1:
                return [done for item in batch for done in self._score([item])]
            log.exception("v%s failed to score a request", served.version)
            batch[0][2].set_exception(RuntimeError(f"v{served.version} could not score these rows"))
            return []
        rows = self._route(served, challenger, records, prediction, score)
        answered = []
        start = 0
        for part, received_at, future in batch:
            end = start + len(part)
            future.set_result(self._answer(part, rows[start:end], received_at))
            answered.append((part, rows[start:end]))
            start = end
        return answered

    def _predict(self, served: ServedModel, records: list[dict[str, Any]]) -> tuple[Any, Any]:
        if served.fast is not None:
            return self._predict_fast(served.fast, records)
        return predict_once(self.config, served.model, records_frame(records, self.config))

    def _predict_fast(self, fast: FastPipeline, records: list[dict[str, Any]]) -> tuple[Any, Any]:
        """:func:`predict_once`'s answer through :class:`FastPipeline` (checked equal when it was built)."""
        prediction, proba = fast.predict(records)
        score = None
        config = self.config
        if config.task == "classification" and len(config.target.labels or []) == 2 and proba is not None:
            classes = list(fast.final.classes_)
            if config.positive_label in classes:
                score = proba[:, classes.index(config.positive_label)]
        return prediction, score

    def _route(self, served: ServedModel, challenger: ServedModel | None, records: list[dict[str, Any]],
               prediction: Any, score: Any) -> list[Answered]:
        """Each row's answer: the champion's, or, for a canary row while a challenger is loaded, the
        challenger's, with the champion's own prediction kept as ``other`` (stored beside it: the pair
        the shadow gate judges). A challenger that fails leaves its rows to the champion."""
        rows = [Answered(served.version, prediction[i], None if score is None else score[i])
                for i in range(len(records))]
        if challenger is None:
            return rows
        canary = self.canary
        picked = [i for i, record in enumerate(records) if canary.takes(record["row_id"])]
        if not picked:
            return rows
        try:
            theirs, their_score = self._predict(challenger, [records[i] for i in picked])
        except Exception as exc:  # noqa: BLE001 (the challenger failing must never fail a request)
            canary.failed(challenger.version, len(picked), exc)
            return rows
        for j, i in enumerate(picked):
            rows[i] = Answered(challenger.version, theirs[j], None if their_score is None else their_score[j],
                               other=rows[i])
        canary.stats.answered += len(picked)
        return rows

    def _to_shadow(self, records: list[dict[str, Any]], rows: list[Answered]) -> None:
        """serving.shadow: the challenger scores the rows the champion answered (a canary row already
        holds both models' predictions)."""
        if self.shadow is None:
            return
        if any(row.other is not None for row in rows):
            records = [record for record, row in zip(records, rows, strict=True) if row.other is None]
        if records:
            self.shadow.submit(records)

    def _answer(self, records: list[dict[str, Any]], rows: list[Answered], received_at: datetime) -> dict[str, Any]:
        answers = []
        stored = []
        names = self.config.feature_names
        ts = received_at.isoformat()
        per_row = self.canary is not None  # with a canary, each answer names its version
        for record, row in zip(records, rows, strict=True):
            key = record["row_id"]
            value = _json_safe(row.prediction)
            answer: dict[str, Any] = {"key": key, "prediction": value}
            if row.score is not None:
                answer["score"] = float(row.score)
            if per_row:
                answer["version"] = row.version
            answers.append(answer)
            # Null numerical features are stored as NaN, as the frame path stored them.
            features = {name: (math.nan if record[name] is None and name in self._numerical else record[name])
                        for name in names}
            stored.append({"row_id": key, "ts": ts, "features": features,
                           "prediction": value, "score": answer.get("score"), "model_version": row.version})
            if row.other is not None:  # the champion's prediction on a canary row: the gate's pair
                other = row.other
                stored.append({"shadow": True, "row_id": key, "features": features,
                               "prediction": _json_safe(other.prediction),
                               "score": None if other.score is None else float(other.score),
                               "model_version": other.version})
        self.writer.submit(stored)
        versions = {row.version for row in rows}
        return {"model": self.config.name, "version": versions.pop() if len(versions) == 1 else None,
                "predictions": answers}


class Answered(NamedTuple):
    """One row's answer: the version that made it, its prediction and score; ``other``: on a canary
    row, the champion's answer, which is stored but not returned. A tuple: one is built per answered
    row, and a tuple is the cheapest thing to build."""

    version: int
    prediction: Any
    score: Any
    other: Answered | None = None


# ---- shadow: the challenger scores the same rows ----------------------------------------------------


class ChallengerFollower(AliasFollower):
    """Follows ``challenger`` the way :class:`AliasFollower` follows the champion (poll, load beside,
    swap), for ``serving.shadow``. A challenger is under evaluation, not promoted: it is loaded if
    Driftline registered it (the registry's lineage check) and its verdict is still ``pending``. When
    the alias goes (the challenger was promoted or rejected) or names a version that cannot be loaded,
    shadow scoring stops."""

    def __init__(self, registry: Registry | Callable[[], Registry], holder: ModelHolder, *,
                 gate: str | None = None, **kwargs: Any) -> None:
        super().__init__(registry, holder, alias=CHALLENGER, **kwargs)
        # serving.canary_fraction: users get its answers, so only a candidate that waits for the gate
        # that judges served rows ("shadow") is loaded; a forced or holdout-gated challenger is judged
        # in its own run, minutes at most, and must not answer anyone meanwhile.
        self.gate = gate

    def _gone(self) -> str:
        if self.holder.current is not None:
            log.info("%s@%s is gone: v%s no longer scores beside the champion", self.name, self.alias,
                     self.holder.current.version)
            self.holder.current = None
        return "no_alias"

    def _unfit(self, info: VersionInfo) -> str | None:
        verdict = info.tag("verdict")
        if verdict != "pending":
            return f"its verdict is {verdict!r}, not 'pending' (not under evaluation)"
        if self.gate is not None and info.tag("gate") != self.gate:
            return f"its gate is {info.tag('gate')!r}, not {self.gate!r} (not judged on served rows: no canary)"
        return None

    def _load(self, registry: Registry, version: int) -> Any:
        return registry.load_model(version)  # raises UnblessedModelError unless Driftline registered it

    def _refuse(self, version: int, reason: str, current: ServedModel | None) -> None:
        self.holder.current = None  # never shadow with a version the alias no longer names
        super()._refuse(version, reason, None)


@dataclass
class ShadowStats:
    scored: int = 0  # rows the challenger scored
    without_challenger: int = 0  # rows answered while no challenger was loaded
    failed: int = 0  # rows the challenger could not score (the answers were not affected)
    last_error: str | None = None


class ShadowScorer(_QueueThread):
    """``serving.shadow``: after the champion's answers went out, the challenger scores the same rows
    on a thread of its own (the request path only enqueues), and its predictions go to the writer as
    shadow rows: stored beside the champion's (:func:`write_served`), never returned. Like the
    scorer, it takes everything queued while it was busy in one call."""

    thread_name = "shadow-scorer"

    def __init__(self, config: ModelConfig, holder: ModelHolder, writer: PredictionWriter, *,
                 max_batch_rows: int = 4096) -> None:
        self.config = config
        self.holder = holder
        self.writer = writer
        self.max_batch_rows = max_batch_rows
        self.stats = ShadowStats()
        self._numerical = frozenset(config.numerical)
        self._queue: queue.SimpleQueue[list[dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, records: list[dict[str, Any]]) -> None:
        self._queue.put(records)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                return
            more, stopping = self._queued_since(len(item), len)
            records = [record for part in (item, *more) for record in part]
            self._score(records)

    def _score(self, records: list[dict[str, Any]]) -> None:
        challenger = self.holder.current  # read once: every row is filed under the version that scored it
        if challenger is None:
            self.stats.without_challenger += len(records)
            return
        try:
            frame = records_frame(records, self.config)
            prediction, score = predict_once(self.config, challenger.model, frame)
        except Exception as exc:  # noqa: BLE001 (the challenger failing must never touch serving)
            message = f"{type(exc).__name__}: {exc}"
            if message != self.stats.last_error:
                log.error("shadow v%s could not score %s rows: %s", challenger.version, len(records), message)
            self.stats.failed += len(records)
            self.stats.last_error = message
            return
        names = self.config.feature_names
        rows = []
        for i, record in enumerate(records):
            # The features as the served row stored them: the shadow row pairs only with that row.
            features = {name: (math.nan if record[name] is None and name in self._numerical else record[name])
                        for name in names}
            rows.append({"shadow": True, "row_id": record["row_id"], "features": features,
                         "prediction": _json_safe(prediction[i]), "score": None if score is None else float(score[i]),
                         "model_version": challenger.version})
        self.stats.scored += len(rows)
        self.writer.submit(rows)

    def describe(self) -> dict[str, Any]:
        current = self.holder.current
        s = self.stats
        return {"challenger": current.version if current else None, "scored": s.scored,
                "without_challenger": s.without_challenger, "failed": s.failed, "last_error": s.last_error}


# ---- canary: the challenger answers a stable share of the rows ---------------------------------------


def canary_bucket(model: str, key: str) -> float:
    """Where ``key`` falls in [0, 1): the first 8 bytes of SHA-256 over the model's name and the key.
    The same key lands in the same place in every process and on every replica (Python's ``hash``
    is salted per process), and the name makes each model's split its own."""
    digest = hashlib.sha256(f"{model}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass
class CanaryStats:
    answered: int = 0  # rows the challenger answered
    failed: int = 0  # canary rows the challenger could not score: the champion answered them
    last_error: str | None = None


class Canary:
    """``serving.canary_fraction``: rows whose key falls below ``fraction`` (:func:`canary_bucket`)
    are answered by the loaded challenger; every other row, and every row while no challenger is
    loaded, by the champion. The scorer reads ``holder.current`` once per batch."""

    def __init__(self, model: str, fraction: float, holder: ModelHolder) -> None:
        if not 0 <= fraction < 1:
            raise ValueError(f"canary fraction {fraction!r}: a share of requests, 0 <= x < 1")
        self.model = model
        self.fraction = fraction
        self.holder = holder
        self.stats = CanaryStats()

    def takes(self, key: str) -> bool:
        return canary_bucket(self.model, key) < self.fraction

    def failed(self, version: int, rows: int, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self.stats.last_error:
            log.error("canary v%s could not score %s rows (the champion answered them): %s", version, rows, message)
        self.stats.failed += rows
        self.stats.last_error = message

    def describe(self) -> dict[str, Any]:
        current = self.holder.current
        s = self.stats
        return {"fraction": self.fraction, "challenger": current.version if current else None,
                "answered": s.answered, "failed": s.failed, "last_error": s.last_error}
