"""The data store: scored rows, labels that arrive later, new-label events and the audit log.

SQLAlchemy Core on one schema, so SQLite (the embedded default) and PostgreSQL run the same code.
Times are stored as naive UTC (SQLite has no time zones) and come back tz-aware UTC.
Every write is one transaction: a batch is stored whole or not at all.

Stored rows and labels are facts, never updated: re-sending the same row or label is a no-op
("already stored"), re-sending it with other values is refused (:class:`ConflictError`), whole.
Quarantined rows (``dl_quarantine``) stay stored but leave every window and every "newest row" query.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    exists,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

metadata = MetaData()

observations = Table(
    "dl_observations",
    metadata,
    Column("model", String(64), primary_key=True),
    Column("row_id", String(128), primary_key=True),
    Column("ts", DateTime, nullable=False),
    Column("features", JSON, nullable=False),
    Column("prediction", JSON),
    Column("score", Float),
    Column("model_version", Integer),
    Column("scored_at", DateTime),
    Index("ix_dl_observations_model_ts", "model", "ts"),
)

labels = Table(
    "dl_labels",
    metadata,
    Column("model", String(64), primary_key=True),
    Column("row_id", String(128), primary_key=True),
    Column("label", JSON, nullable=False),
    Column("labelled_at", DateTime, nullable=False),
    Index("ix_dl_labels_model_labelled_at", "model", "labelled_at"),
)

events = Table(
    "dl_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    # Caller's idempotency key: the same event posted twice is stored once.
    Column("key", String(200), nullable=False, unique=True),
    Column("rows", Integer, nullable=False, default=0),
    Column("occurred_at", DateTime, nullable=False),
    Column("payload", JSON),
    Column("consumed_by", String(250)),
)

# Rows taken out of every window by hand (`driftline quarantine`), e.g. one dated 2099. A table of its
# own rather than a column, so databases created before it need no migration (create_all adds it).
quarantine = Table(
    "dl_quarantine",
    metadata,
    Column("model", String(64), primary_key=True),
    Column("row_id", String(128), primary_key=True),
    Column("at", DateTime, nullable=False),
    Column("actor", String(120)),
    Column("reason", Text, nullable=False),
)

# A challenger's predictions on rows the champion served, beside (never instead of) the row's own
# prediction: the shadow gate compares the two, paired, once the rows are labelled. A table of its own
# (create_all adds it to databases made before it), one row per (row, challenger version).
shadow_predictions = Table(
    "dl_shadow_predictions",
    metadata,
    Column("model", String(64), primary_key=True),
    Column("row_id", String(128), primary_key=True),
    Column("model_version", Integer, primary_key=True),
    Column("prediction", JSON),
    Column("score", Float),
    Column("scored_at", DateTime, nullable=False),
    Index("ix_dl_shadow_predictions_model_version", "model", "model_version"),
)

audit = Table(
    "dl_audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(64), nullable=False, index=True),
    Column("at", DateTime, nullable=False),
    Column("action", String(40), nullable=False),
    Column("version", Integer),
    Column("actor", String(120)),
    Column("run_id", String(250)),
    Column("details", JSON),
)


def to_utc_naive(value: Any) -> datetime:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.tz_convert("UTC").tz_localize(None).to_pydatetime()


def from_db_time(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _json_safe(value: Any) -> Any:
    """JSON columns reject NaN on PostgreSQL and numpy scalars everywhere."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


_engines: dict[str, Engine] = {}
_held = threading.local()  # (store url, model) -> depth, so a thread may nest model_lock
_memory_locks: dict[str, threading.Lock] = {}
_memory_locks_guard = threading.Lock()


class ModelLockTimeout(TimeoutError):
    """Another registry move of the same model held its lock for longer than the caller would wait."""


def get_engine(url: str) -> Engine:
    """One engine per URL per process; creates the tables on first use (idempotent)."""
    engine = _engines.get(url)
    if engine is None:
        kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            # Airflow task processes and the demo share the file; wait for the writer instead of failing.
            kwargs["connect_args"] = {"timeout": 30}
        engine = create_engine(url, **kwargs)
        metadata.create_all(engine)
        _engines[url] = engine
    return engine


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = get_engine(url)

    # ---- locks --------------------------------------------------------------------------------

    @contextmanager
    def model_lock(self, model: str, timeout: float = 300.0) -> Iterator[None]:
        """Hold the one lock per model that registry moves take, so that moves of one model never
        interleave, across threads, processes and (on PostgreSQL) machines sharing this store.

        PostgreSQL: a transaction-level advisory lock on a 64-bit hash of the name, held on a
        connection of its own; the server releases it at the end of the transaction, also when the
        holder dies. SQLite: ``flock`` on ``locks/<model>.lock`` next to the database file (the state
        folder); the kernel releases it when the holder dies. Re-entrant within a thread. Waits at most
        ``timeout`` seconds, then raises ``ModelLockTimeout``."""
        key = (self.url, model)
        depth = getattr(_held, "depth", None)
        if depth is None:
            depth = _held.depth = {}
        if depth.get(key):
            depth[key] += 1
            try:
                yield
            finally:
                depth[key] -= 1
            return
        with self._acquire(model, timeout):
            depth[key] = 1
            try:
                yield
            finally:
                del depth[key]

    @contextmanager
    def _acquire(self, model: str, timeout: float) -> Iterator[None]:
        if self.engine.dialect.name == "postgresql":
            digest = hashlib.blake2b(f"driftline.model:{model}".encode(), digest_size=8).digest()
            with self.engine.connect() as conn, conn.begin():
                # A server-wide idle-in-transaction timeout would end the transaction, and the lock
                # with it, while a move is still running.
                conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
                conn.execute(text(f"SET LOCAL lock_timeout = '{max(1, int(timeout * 1000))}ms'"))
                try:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": int.from_bytes(digest, "big", signed=True)})
                except OperationalError as exc:
                    if getattr(exc.orig, "pgcode", None) == "55P03":  # lock_not_available
                        raise _lock_timeout(model, timeout) from None
                    raise
                yield
            return
        if self.engine.dialect.name != "sqlite":
            raise ValueError(f"model_lock supports PostgreSQL and SQLite stores, not {self.engine.dialect.name}")
        database = make_url(self.url).database
        if not database or database == ":memory:":
            # An in-memory database lives in this process only, and so do its users.
            with _memory_locks_guard:
                lock = _memory_locks.setdefault(model, threading.Lock())
            if not lock.acquire(timeout=timeout):
                raise _lock_timeout(model, timeout)
            try:
                yield
            finally:
                lock.release()
            return
        folder = Path(database).resolve().parent / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", model) + ".lock")
        # flock (not lockf): each open() is its own lock owner, so threads of one process exclude
        # each other too.
        with open(path, "a+b") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise _lock_timeout(model, timeout) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- writes -------------------------------------------------------------------------------

    @contextmanager
    def batch(self, model: str, feature_names: Sequence[str] = ()) -> Iterator[BatchWriter]:
        """One transaction for rows and labels of ``model``, written chunk by chunk: at the end, any
        refusal (:class:`ConflictError`) or any other error rolls back every chunk, so a file, or a rows
        file and its labels file together, is stored whole or not at all."""
        with self.engine.begin() as conn:
            writer = BatchWriter(conn, model, feature_names)
            yield writer
            writer.raise_if_refused()

    def add_observations(self, model: str, frame: pd.DataFrame, feature_names: Sequence[str]) -> int:
        """Insert rows (``row_id``, ``ts`` and the features). A row already stored with the same ts and
        features is left as it is; one with other values refuses the whole frame (:class:`ConflictError`).
        Returns how many were new."""
        with self.batch(model, feature_names) as writer:
            writer.add_observations(frame)
        return writer.rows.new

    def add_labels(self, model: str, frame: pd.DataFrame) -> int:
        """Insert labels (``row_id``, ``label``, ``labelled_at``) for stored rows. A label already stored
        with the same value is kept as it is, with its first ``labelled_at`` (when it became known); another
        value, a row never stored, or a ``labelled_at`` before the row's ``ts`` refuses the whole frame
        (:class:`ConflictError`). Returns how many were new."""
        with self.batch(model) as writer:
            writer.add_labels(frame)
        return writer.labels.new

    def record_predictions(self, model: str, frame: pd.DataFrame, version: int, scored_at: datetime) -> int:
        """Write the champion's predictions (``row_id``, ``prediction``, optional ``score``); returns
        how many stored rows were updated. One statement executed for many rows (executemany): a
        scoring page of 50,000 rows is one round trip's worth of work, not 50,000 statements."""
        if frame.empty:
            return 0
        has_score = "score" in frame.columns
        statement = (
            update(observations)
            .where(and_(observations.c.model == bindparam("m"), observations.c.row_id == bindparam("rid")))
            .values(prediction=bindparam("p"), score=bindparam("s"), model_version=bindparam("v"),
                    scored_at=bindparam("at"))
        )
        at, v = to_utc_naive(scored_at), int(version)
        scores = frame["score"].tolist() if has_score else [None] * len(frame)
        params = [{"m": model, "rid": str(row_id), "p": _json_safe(prediction), "s": _json_safe(score),
                   "v": v, "at": at}
                  for row_id, prediction, score in zip(frame["row_id"], frame["prediction"], scores, strict=True)]
        with self.engine.begin() as conn:
            result = conn.execute(statement, params)
            # An unknown row_id updates nothing. Where the driver sums an executemany's rowcounts (SQLite)
            # that is the count; elsewhere (psycopg2) count the rows that exist.
            if conn.dialect.supports_sane_multi_rowcount and result.rowcount is not None and result.rowcount >= 0:
                written = result.rowcount
            else:
                written = len(self._existing_ids(conn, observations, model, [p["rid"] for p in params]))
        return written

    def record_shadow_predictions(self, model: str, frame: pd.DataFrame, version: int, scored_at: datetime) -> int:
        """Write a challenger's shadow predictions (``row_id``, ``prediction``, optional ``score``) for
        stored rows; the row's own prediction is left alone. A (row, version) already shadowed keeps its
        first prediction (a retried score step writes nothing twice). Returns how many were new."""
        if frame.empty:
            return 0
        scores = frame["score"].tolist() if "score" in frame.columns else [None] * len(frame)
        values = [{"row_id": str(row_id), "prediction": prediction, "score": score}
                  for row_id, prediction, score in zip(frame["row_id"], frame["prediction"], scores, strict=True)]
        with self.engine.begin() as conn:
            return insert_shadow(conn, model, values, int(version), to_utc_naive(scored_at))

    def load_shadow(
        self,
        model: str,
        feature_names: Sequence[str],
        version: int,
        *,
        champion: int | None = None,
        labelled_until: datetime | None = None,
        labelled_only: bool = False,
    ) -> pd.DataFrame:
        """The rows challenger ``version`` scored in shadow, as :meth:`load` gives them (the row's own
        ``prediction``, ``score`` and ``model_version`` are the champion's that served it) plus
        ``shadow_prediction`` and ``shadow_score``: both models on the same rows, paired. ``champion``:
        only rows that version served; labels as in :meth:`load`."""
        label_join = and_(labels.c.row_id == observations.c.row_id, labels.c.model == observations.c.model)
        if labelled_until is not None:
            label_join = and_(label_join, labels.c.labelled_at <= to_utc_naive(labelled_until))
        shadow_join = and_(shadow_predictions.c.model == observations.c.model,
                           shadow_predictions.c.row_id == observations.c.row_id,
                           shadow_predictions.c.model_version == int(version))
        query = (
            select(observations.c.row_id, observations.c.ts, observations.c.features, observations.c.prediction,
                   observations.c.score, observations.c.model_version, labels.c.label, labels.c.labelled_at,
                   shadow_predictions.c.prediction.label("shadow_prediction"),
                   shadow_predictions.c.score.label("shadow_score"))
            .select_from(observations.join(shadow_predictions, shadow_join)
                         .join(labels, label_join, isouter=not labelled_only))
            .where(observations.c.model == model, _not_quarantined())
        )
        if champion is not None:
            query = query.where(observations.c.model_version == int(champion))
        query = query.order_by(observations.c.ts, observations.c.row_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        frame = _to_frame(rows, feature_names)
        frame["shadow_prediction"] = [row.shadow_prediction for row in rows]
        frame["shadow_score"] = pd.to_numeric(pd.Series([row.shadow_score for row in rows], dtype="object"),
                                              errors="coerce")
        return frame

    @staticmethod
    def _existing_ids(conn, table: Table, model: str, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # keep IN lists small for SQLite's variable limit
            chunk = ids[start : start + 500]
            found.update(
                conn.execute(
                    select(table.c.row_id).where(and_(table.c.model == model, table.c.row_id.in_(chunk)))
                ).scalars()
            )
        return found

    # ---- reads --------------------------------------------------------------------------------

    def load(
        self,
        model: str,
        feature_names: Sequence[str],
        *,
        ts_after: datetime | None = None,
        ts_until: datetime | None = None,
        labelled_after: datetime | None = None,
        labelled_until: datetime | None = None,
        labelled_only: bool = False,
        unscored_only: bool = False,
        version: int | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Rows of one model as a frame: ``row_id, ts``, the features, ``prediction, score,
        model_version, label, labelled_at``. Time bounds are (after, until]. A label counts only if
        it was known by ``labelled_until`` (so a replayed past sees only what was known then).
        ``limit``: the oldest that many rows only (bounded memory for a caller that pages)."""
        label_join = observations.c.row_id == labels.c.row_id
        label_join = and_(label_join, labels.c.model == observations.c.model)
        if labelled_until is not None:
            label_join = and_(label_join, labels.c.labelled_at <= to_utc_naive(labelled_until))
        query = select(
            observations.c.row_id,
            observations.c.ts,
            observations.c.features,
            observations.c.prediction,
            observations.c.score,
            observations.c.model_version,
            labels.c.label,
            labels.c.labelled_at,
        ).select_from(observations.join(labels, label_join, isouter=not labelled_only))
        conditions = [observations.c.model == model, _not_quarantined()]
        if ts_after is not None:
            conditions.append(observations.c.ts > to_utc_naive(ts_after))
        if ts_until is not None:
            conditions.append(observations.c.ts <= to_utc_naive(ts_until))
        if labelled_after is not None:
            conditions.append(labels.c.labelled_at > to_utc_naive(labelled_after))
        if unscored_only:
            conditions.append(observations.c.model_version.is_(None))
        if version is not None:
            conditions.append(observations.c.model_version == version)
        query = query.where(and_(*conditions)).order_by(observations.c.ts, observations.c.row_id)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return _to_frame(rows, feature_names)

    def latest_ts(self, model: str) -> datetime | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.max(observations.c.ts)).where(and_(observations.c.model == model, _not_quarantined()))
            ).scalar()
        return from_db_time(value)

    def latest_labelled_ts(self, model: str, known_at: datetime | None = None) -> datetime | None:
        """The newest row time among rows whose label was known at ``known_at``."""
        query = (
            select(func.max(observations.c.ts))
            .select_from(
                observations.join(
                    labels, and_(labels.c.row_id == observations.c.row_id, labels.c.model == observations.c.model)
                )
            )
            .where(observations.c.model == model, _not_quarantined())
        )
        if known_at is not None:
            query = query.where(labels.c.labelled_at <= to_utc_naive(known_at))
        with self.engine.connect() as conn:
            return from_db_time(conn.execute(query).scalar())

    def count_labels(
        self, model: str, *, ts_after: datetime | None, known_at: datetime | None, ts_until: datetime | None = None
    ) -> int:
        """Labelled rows with row time in (``ts_after``, ``ts_until``] and label known by ``known_at``."""
        query = (
            select(func.count())
            .select_from(
                observations.join(
                    labels, and_(labels.c.row_id == observations.c.row_id, labels.c.model == observations.c.model)
                )
            )
            .where(observations.c.model == model, _not_quarantined())
        )
        if ts_after is not None:
            query = query.where(observations.c.ts > to_utc_naive(ts_after))
        if ts_until is not None:
            query = query.where(observations.c.ts <= to_utc_naive(ts_until))
        if known_at is not None:
            query = query.where(labels.c.labelled_at <= to_utc_naive(known_at))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    # ---- events -------------------------------------------------------------------------------

    def add_event(
        self, model: str, kind: str, key: str, rows: int, occurred_at: datetime, payload: dict | None = None
    ) -> bool:
        """Store an event once per key; returns False if the key was already stored."""
        with self.engine.begin() as conn:
            if conn.execute(select(events.c.id).where(events.c.key == key)).first():
                return False
            conn.execute(
                events.insert().values(
                    model=model,
                    kind=kind,
                    key=key,
                    rows=int(rows),
                    occurred_at=to_utc_naive(occurred_at),
                    payload=payload or {},
                )
            )
        return True

    def pending_events(self, model: str, kind: str = "new_labels") -> list[dict[str, Any]]:
        query = (
            select(events)
            .where(and_(events.c.model == model, events.c.kind == kind, events.c.consumed_by.is_(None)))
            .order_by(events.c.id)
        )
        with self.engine.connect() as conn:
            return [
                {**row._asdict(), "occurred_at": from_db_time(row.occurred_at)} for row in conn.execute(query)
            ]

    def consume_events(self, ids: Iterable[int], run_id: str) -> None:
        ids = list(ids)
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(events).where(and_(events.c.id.in_(ids), events.c.consumed_by.is_(None))).values(
                    consumed_by=run_id
                )
            )

    # ---- audit log ----------------------------------------------------------------------------

    def audit(
        self,
        model: str,
        action: str,
        *,
        version: int | None = None,
        actor: str | None = None,
        run_id: str | None = None,
        details: dict | None = None,
        at: datetime | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            _write_audit(conn, model, action, version=version, actor=actor, run_id=run_id, details=details, at=at)

    def audit_log(self, model: str, actions: Sequence[str] | None = None) -> list[dict[str, Any]]:
        query = select(audit).where(audit.c.model == model)
        if actions:
            query = query.where(audit.c.action.in_(list(actions)))
        with self.engine.connect() as conn:
            return [{**row._asdict(), "at": from_db_time(row.at)} for row in conn.execute(query.order_by(audit.c.id))]


    # ---- quarantine ---------------------------------------------------------------------------

    def quarantine(
        self,
        model: str,
        *,
        reason: str,
        actor: str | None = None,
        ids: Sequence[str] | None = None,
        ts_from: datetime | None = None,
        ts_until: datetime | None = None,
    ) -> QuarantineResult:
        """Take stored rows out of every window (``load``, ``latest_ts``, ``latest_labelled_ts``,
        ``count_labels``): the rows ``ids``, or those with ``ts`` in [``ts_from``, ``ts_until``] (either
        bound may be open). The rows and their labels stay stored; :meth:`release` puts them back. One
        transaction with its audit entry (action ``quarantine``: who, why, which)."""
        reason = _required_reason(reason)
        now = to_utc_naive(datetime.now(UTC))
        with self.engine.begin() as conn:
            selected = self._select_rows(conn, model, ids, ts_from, ts_until, "quarantined")
            already = self._existing_ids(conn, quarantine, model, selected)
            new = [row_id for row_id in selected if row_id not in already]
            for start in range(0, len(new), 5000):
                conn.execute(
                    quarantine.insert(),
                    [{"model": model, "row_id": row_id, "at": now, "actor": actor, "reason": reason}
                     for row_id in new[start : start + 5000]],
                )
            result = QuarantineResult(rows=len(new), already=len(already), ids=new[:AUDIT_IDS])
            _write_audit(conn, model, "quarantine", actor=actor, details={
                "reason": reason, "rows": len(new), "already_quarantined": len(already), "ids": new[:AUDIT_IDS],
                "ts_from": ts_from, "ts_until": ts_until, "by_ids": ids is not None,
            })
        return result

    def release(
        self,
        model: str,
        *,
        reason: str,
        actor: str | None = None,
        ids: Sequence[str] | None = None,
        ts_from: datetime | None = None,
        ts_until: datetime | None = None,
    ) -> int:
        """Undo :meth:`quarantine` for the rows selected the same way; returns how many came back. Audited
        as ``quarantine_released``."""
        reason = _required_reason(reason)
        with self.engine.begin() as conn:
            selected = self._select_rows(conn, model, ids, ts_from, ts_until, "released")
            released = 0
            for start in range(0, len(selected), 500):
                released += conn.execute(
                    quarantine.delete().where(
                        and_(quarantine.c.model == model, quarantine.c.row_id.in_(selected[start : start + 500]))
                    )
                ).rowcount
            _write_audit(conn, model, "quarantine_released", actor=actor, details={
                "reason": reason, "rows": released, "ids": selected[:AUDIT_IDS], "ts_from": ts_from,
                "ts_until": ts_until, "by_ids": ids is not None,
            })
        return released

    def quarantined(self, model: str) -> list[dict[str, Any]]:
        """The quarantined rows of ``model``: ``row_id, ts, at, actor, reason``, oldest quarantine first."""
        query = (
            select(quarantine.c.row_id, observations.c.ts, quarantine.c.at, quarantine.c.actor, quarantine.c.reason)
            .select_from(quarantine.join(observations, and_(
                observations.c.model == quarantine.c.model, observations.c.row_id == quarantine.c.row_id)))
            .where(quarantine.c.model == model)
            .order_by(quarantine.c.at, observations.c.ts, quarantine.c.row_id)
        )
        with self.engine.connect() as conn:
            return [{**row._asdict(), "ts": from_db_time(row.ts), "at": from_db_time(row.at)}
                    for row in conn.execute(query)]

    def _select_rows(
        self, conn, model: str, ids: Sequence[str] | None, ts_from: datetime | None, ts_until: datetime | None,
        verb: str,
    ) -> list[str]:
        if (ids is None) == (ts_from is None and ts_until is None):
            raise ValueError(f"{model}: give either row ids or a time range (from and/or until), not both or neither")
        if ids is not None:
            wanted = list(dict.fromkeys(str(i) for i in ids))
            if not wanted:
                raise ValueError(f"{model}: no row ids given")
            known = self._existing_ids(conn, observations, model, wanted)
            unknown = [i for i in wanted if i not in known]
            if unknown:
                raise ValueError(f"{model}: {len(unknown)} row_id(s) not stored, e.g. {unknown[:EXAMPLE_IDS]}; "
                                 f"nothing {verb}")
            return wanted
        query = select(observations.c.row_id).where(observations.c.model == model)
        if ts_from is not None:
            query = query.where(observations.c.ts >= to_utc_naive(ts_from))
        if ts_until is not None:
            query = query.where(observations.c.ts <= to_utc_naive(ts_until))
        selected = list(conn.execute(query.order_by(observations.c.ts, observations.c.row_id)).scalars())
        if not selected:
            raise ValueError(f"{model}: no stored row with ts in [{ts_from or '-inf'}, {ts_until or '+inf'}]; "
                             f"nothing {verb}")
        return selected


# Ids named in a refused batch's message, and kept in a quarantine's audit entry (the table keeps all).
EXAMPLE_IDS = 5
AUDIT_IDS = 50


class ConflictError(ValueError):
    """A batch that would change stored facts, or label rows that are not there: nothing of it is stored."""


@dataclass
class WriteCounts:
    new: int = 0
    already_stored: int = 0


@dataclass
class QuarantineResult:
    rows: int  # newly quarantined
    already: int  # selected, but quarantined before
    ids: list[str] = field(default_factory=list)  # the first newly quarantined ids


# Refusal kinds: message template and what to do about it.
_REFUSALS = {
    "row_conflict": (
        "{n} row(s) already stored with another ts or other feature values",
        ("stored rows are never changed: send the corrected row under a new row_id and quarantine the old one "
        "(driftline quarantine)"),
    ),
    "label_conflict": (
        "{n} label(s) already stored with another value",
        ("stored labels are never changed: quarantine the row and send it again under a new row_id with the "
        "right label"),
    ),
    "unknown_rows": ("labels for {n} row(s) never scored or stored", ""),
    "label_before_row": (
        "{n} label(s) with labelled_at before their row's ts",
        "a label cannot be known before its row happened",
    ),
    "non_finite": ("{n} row(s) with a non-finite feature value (inf)", "JSON cannot hold inf"),
}


class BatchWriter:
    """Writes chunks of rows and labels of one model inside one transaction (:meth:`Store.batch`).
    Problems are collected over all chunks, so the refusal counts them all; once there is one, chunks
    are still checked but no longer inserted (the transaction will be rolled back)."""

    def __init__(self, conn, model: str, feature_names: Sequence[str]) -> None:
        self.conn = conn
        self.model = model
        self.feature_names = list(feature_names)
        self.rows = WriteCounts()
        self.labels = WriteCounts()
        self._problems: dict[str, tuple[int, list[str]]] = {}

    def _refuse(self, kind: str, ids: list[str]) -> None:
        if ids:
            count, examples = self._problems.get(kind, (0, []))
            self._problems[kind] = (count + len(ids), examples + ids[: EXAMPLE_IDS - len(examples)])

    def raise_if_refused(self) -> None:
        if not self._problems:
            return
        parts = []
        for kind, (count, examples) in self._problems.items():
            template, advice = _REFUSALS[kind]
            parts.append(f"{template.format(n=count)}, e.g. {examples}" + (f" ({advice})" if advice else ""))
        raise ConflictError(f"{self.model}: refused, nothing stored: " + "; ".join(parts))

    def _stored(self, table: Table, columns: Sequence[Column], ids: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(ids), 500):  # keep IN lists small for SQLite's variable limit
            query = select(table.c.row_id, *columns).where(
                and_(table.c.model == self.model, table.c.row_id.in_(ids[start : start + 500]))
            )
            found.update((row.row_id, row) for row in self.conn.execute(query))
        return found

    def add_observations(self, frame: pd.DataFrame) -> WriteCounts:
        """Rows of this chunk: new ones inserted, identical ones counted as already stored, others refused."""
        counts = WriteCounts()
        if frame.empty:
            return counts
        ids = [str(i) for i in frame["row_id"]]
        infinite = np.zeros(len(frame), dtype=bool)
        for name in self.feature_names:
            if pd.api.types.is_numeric_dtype(frame[name]):
                infinite |= np.isinf(frame[name].to_numpy(dtype=float, na_value=np.nan))
        stored = self._stored(observations, [observations.c.ts, observations.c.features], ids)
        new_rows, conflicts = [], []
        columns = [frame[name].tolist() for name in self.feature_names]
        for position, (row_id, ts) in enumerate(zip(ids, frame["ts"], strict=True)):
            if infinite[position]:
                continue
            values = {name: _json_safe(column[position]) for name, column in zip(self.feature_names, columns,
                                                                                   strict=True)}
            ts = to_utc_naive(ts)
            old = stored.get(row_id)
            if old is None:
                new_rows.append({"model": self.model, "row_id": row_id, "ts": ts, "features": values})
            elif old.ts == ts and all(old.features.get(name) == value for name, value in values.items()):
                counts.already_stored += 1
            else:
                conflicts.append(row_id)
        self._refuse("non_finite", [row_id for row_id, bad in zip(ids, infinite, strict=True) if bad])
        self._refuse("row_conflict", conflicts)
        if new_rows and not self._problems:
            self.conn.execute(observations.insert(), new_rows)
        counts.new = len(new_rows)
        self.rows.new += counts.new
        self.rows.already_stored += counts.already_stored
        return counts

    def add_labels(self, frame: pd.DataFrame) -> WriteCounts:
        """Labels of this chunk, for rows stored before or earlier in this transaction."""
        counts = WriteCounts()
        if frame.empty:
            return counts
        ids = [str(i) for i in frame["row_id"]]
        rows = self._stored(observations, [observations.c.ts], ids)
        stored = self._stored(labels, [labels.c.label], ids)
        new_rows, unknown, early, conflicts = [], [], [], []
        for row_id, label, at in zip(ids, frame["label"].tolist(), frame["labelled_at"], strict=True):
            row = rows.get(row_id)
            at = to_utc_naive(at)
            value = _json_safe(label)
            if row is None:
                unknown.append(row_id)
            elif at < row.ts:
                early.append(row_id)
            elif row_id not in stored:
                new_rows.append({"model": self.model, "row_id": row_id, "label": value, "labelled_at": at})
            elif stored[row_id].label == value:
                counts.already_stored += 1  # the first labelled_at stays: when the label became known
            else:
                conflicts.append(row_id)
        self._refuse("unknown_rows", unknown)
        self._refuse("label_before_row", early)
        self._refuse("label_conflict", conflicts)
        if new_rows and not self._problems:
            self.conn.execute(labels.insert(), new_rows)
        counts.new = len(new_rows)
        self.labels.new += counts.new
        self.labels.already_stored += counts.already_stored
        return counts


def insert_shadow(conn, model: str, values: list[dict[str, Any]], version: int, scored_at: datetime) -> int:
    """Insert shadow predictions (``row_id``, ``prediction``, ``score``) of ``version`` inside ``conn``'s
    transaction, for rows stored in ``dl_observations`` and not shadowed by that version yet (the
    first prediction stays). The one writer for the score step and the online service."""
    unique = {str(v["row_id"]): v for v in reversed(values)}  # a key twice: the first one wins
    ids = list(unique)
    stored = Store._existing_ids(conn, observations, model, ids)
    done: set[str] = set()
    for start in range(0, len(ids), 500):  # SQLite's variable limit
        chunk = ids[start : start + 500]
        done.update(conn.execute(select(shadow_predictions.c.row_id).where(and_(
            shadow_predictions.c.model == model, shadow_predictions.c.model_version == version,
            shadow_predictions.c.row_id.in_(chunk)))).scalars())
    new = [{"model": model, "row_id": row_id, "model_version": version, "prediction": _json_safe(v["prediction"]),
            "score": _json_safe(v.get("score")), "scored_at": scored_at}
           for row_id, v in unique.items() if row_id in stored and row_id not in done]
    if new:
        conn.execute(shadow_predictions.insert(), new)
    return len(new)


def _not_quarantined():
    """The condition every window and "newest row" query carries: the row is not in quarantine."""
    return ~exists().where(
        and_(quarantine.c.model == observations.c.model, quarantine.c.row_id == observations.c.row_id)
    )


def _required_reason(reason: str) -> str:
    if not str(reason or "").strip():
        raise ValueError("a reason is required (it is kept with the rows and in the audit log)")
    return str(reason).strip()


def _write_audit(
    conn,
    model: str,
    action: str,
    *,
    version: int | None = None,
    actor: str | None = None,
    run_id: str | None = None,
    details: dict | None = None,
    at: datetime | None = None,
) -> None:
    conn.execute(
        audit.insert().values(
            model=model,
            at=to_utc_naive(at or datetime.now(UTC)),
            action=action,
            version=version,
            actor=actor,
            run_id=run_id,
            details=json.loads(json.dumps(details or {}, default=str)),
        )
    )


def _lock_timeout(model: str, timeout: float) -> ModelLockTimeout:
    return ModelLockTimeout(
        f"model {model!r}: another registry move held its lock for more than {timeout:g} s; retry later"
    )


def _to_frame(rows: Sequence[Any], feature_names: Sequence[str]) -> pd.DataFrame:
    meta_columns = ["row_id", "ts", "prediction", "score", "model_version", "label", "labelled_at"]
    if not rows:
        return pd.DataFrame(columns=["row_id", "ts", *feature_names, *meta_columns[2:]])
    features = pd.DataFrame.from_records([row.features for row in rows])
    # A feature missing from every stored row stays missing here: validation names it.
    features = features.reindex(columns=[c for c in feature_names if c in features.columns])
    frame = pd.DataFrame(
        {
            "row_id": [row.row_id for row in rows],
            "ts": pd.to_datetime([row.ts for row in rows], utc=True),
        }
    )
    frame = pd.concat([frame, features], axis=1)
    frame["prediction"] = [row.prediction for row in rows]
    frame["score"] = pd.to_numeric(pd.Series([row.score for row in rows], dtype="object"), errors="coerce")
    frame["model_version"] = pd.array([row.model_version for row in rows], dtype="Int64")
    frame["label"] = [row.label for row in rows]
    frame["labelled_at"] = pd.to_datetime([row.labelled_at for row in rows], utc=True)
    return frame
