"""The data store: scored rows, labels that arrive later, new-label events and the audit log.

SQLAlchemy Core on one schema, so SQLite (the embedded default) and PostgreSQL run the same code.
Times are stored as naive UTC (SQLite has no time zones) and come back tz-aware UTC.
Every write is one transaction: a batch is stored whole or not at all.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    and_,
    create_engine,
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

    def add_observations(self, model: str, frame: pd.DataFrame, feature_names: Sequence[str]) -> int:
        """Insert rows (``row_id``, ``ts`` and the features); rows already stored are left as they are.
        Returns how many were new."""
        if frame.empty:
            return 0
        ids = [str(i) for i in frame["row_id"]]
        with self.engine.begin() as conn:
            existing = self._existing_ids(conn, observations, model, ids)
            rows = [
                {
                    "model": model,
                    "row_id": row_id,
                    "ts": to_utc_naive(ts),
                    "features": {name: _json_safe(record[name]) for name in feature_names},
                }
                for row_id, ts, record in zip(ids, frame["ts"], frame.to_dict("records"), strict=True)
                if row_id not in existing
            ]
            if rows:
                conn.execute(observations.insert(), rows)
        return len(rows)

    def add_labels(self, model: str, frame: pd.DataFrame) -> int:
        """Insert labels (``row_id``, ``label``, ``labelled_at``) for stored rows; a label already
        stored is kept (labels are facts, not updates). Returns how many were new."""
        if frame.empty:
            return 0
        ids = [str(i) for i in frame["row_id"]]
        with self.engine.begin() as conn:
            known = self._existing_ids(conn, observations, model, ids)
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise ValueError(f"labels for {len(unknown)} row(s) never scored or stored, e.g. {unknown[:3]}")
            existing = self._existing_ids(conn, labels, model, ids)
            rows = [
                {"model": model, "row_id": row_id, "label": _json_safe(label), "labelled_at": to_utc_naive(at)}
                for row_id, label, at in zip(ids, frame["label"], frame["labelled_at"], strict=True)
                if row_id not in existing
            ]
            if rows:
                conn.execute(labels.insert(), rows)
        return len(rows)

    def record_predictions(self, model: str, frame: pd.DataFrame, version: int, scored_at: datetime) -> int:
        """Write the champion's predictions (``row_id``, ``prediction``, optional ``score``); returns
        how many stored rows were updated."""
        has_score = "score" in frame.columns
        written = 0
        with self.engine.begin() as conn:
            for record in frame.to_dict("records"):
                written += conn.execute(
                    update(observations)
                    .where(and_(observations.c.model == model, observations.c.row_id == str(record["row_id"])))
                    .values(
                        prediction=_json_safe(record["prediction"]),
                        score=_json_safe(record["score"]) if has_score else None,
                        model_version=int(version),
                        scored_at=to_utc_naive(scored_at),
                    )
                ).rowcount
        return written  # rows that exist; an unknown row_id updates nothing

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
    ) -> pd.DataFrame:
        """Rows of one model as a frame: ``row_id, ts``, the features, ``prediction, score,
        model_version, label, labelled_at``. Time bounds are (after, until]. A label counts only if
        it was known by ``labelled_until`` (so a replayed past sees only what was known then)."""
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
        conditions = [observations.c.model == model]
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
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return _to_frame(rows, feature_names)

    def latest_ts(self, model: str) -> datetime | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(observations.c.ts)).where(observations.c.model == model)).scalar()
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
            .where(observations.c.model == model)
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
            .where(observations.c.model == model)
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

    def audit_log(self, model: str, actions: Sequence[str] | None = None) -> list[dict[str, Any]]:
        query = select(audit).where(audit.c.model == model)
        if actions:
            query = query.where(audit.c.action.in_(list(actions)))
        with self.engine.connect() as conn:
            return [{**row._asdict(), "at": from_db_time(row.at)} for row in conn.execute(query.order_by(audit.c.id))]


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
