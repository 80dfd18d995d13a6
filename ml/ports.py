"""The ports: what the loop's steps (:mod:`ml.loop`) need from the world, as small protocols.

Adapters:

* rows and events, audit log — :class:`ml.store.Store` (SQL: SQLite or PostgreSQL) and
  :class:`ml.memory.MemoryStore` (the replay, service tests);
* champions and registry moves — :class:`ml.registry.Registry`, over MLflow's client or over
  :class:`ml.memory.MemoryRegistryClient`;
* the experiment tracker (runs, artifacts, links) — :class:`ml.tracking.MlflowTracker` and
  :class:`ml.memory.NullTracker` (records nothing).

The entry point (a DAG task, the CLI, the replay, a test) builds them once into a
:class:`ml.loop.Context` and hands that to each step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pandas as pd


class RowStore(Protocol):
    """Rows, labels that arrive later, predictions, new-label events and the audit log of models.
    Time bounds are (after, until]; a label counts once it was known (``labelled_at``) by
    ``labelled_until`` / ``known_at``."""

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
    ) -> pd.DataFrame: ...

    def latest_ts(self, model: str) -> datetime | None: ...

    def latest_labelled_ts(self, model: str, known_at: datetime | None = None) -> datetime | None: ...

    def count_labels(
        self, model: str, *, ts_after: datetime | None, known_at: datetime | None, ts_until: datetime | None = None
    ) -> int: ...

    def record_predictions(self, model: str, frame: pd.DataFrame, version: int, scored_at: datetime) -> int: ...

    def record_shadow_predictions(self, model: str, frame: pd.DataFrame, version: int, scored_at: datetime) -> int:
        """A challenger's predictions on stored rows, kept beside the row's own (first write wins)."""
        ...

    def load_shadow(self, model: str, feature_names: Sequence[str], version: int, *, champion: int | None = None,
                    labelled_until: datetime | None = None, labelled_only: bool = False) -> pd.DataFrame:
        """Rows ``version`` scored in shadow, as ``load`` gives them, plus ``shadow_prediction`` and
        ``shadow_score``; ``champion``: only rows that version served."""
        ...

    def add_event(
        self, model: str, kind: str, key: str, rows: int, occurred_at: datetime, payload: dict | None = None
    ) -> bool: ...

    def pending_events(self, model: str, kind: str = "new_labels") -> list[dict[str, Any]]: ...

    def consume_events(self, ids: Iterable[int], run_id: str) -> None: ...

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
    ) -> None: ...

    def audit_log(self, model: str, actions: Sequence[str] | None = None) -> list[dict[str, Any]]: ...

    def model_lock(self, model: str, timeout: float = 300.0) -> AbstractContextManager[None]: ...

    def quarantine(self, model: str, *, reason: str, actor: str | None = None, ids: Sequence[str] | None = None,
                   ts_from: datetime | None = None, ts_until: datetime | None = None) -> Any:
        """Take rows out of every window (they stay stored), with an audit entry."""
        ...


@dataclass(frozen=True)
class LoggedModel:
    """A trained candidate as the tracker logged it, ready to be registered as a version."""

    experiment_id: str
    run_id: str
    model_uri: str | None  # where the registry finds it (None: the model object itself is kept)
    model_id: str | None
    model: Any = None  # the fitted model, for registries that keep objects (in memory)


class ModelRegistry(Protocol):
    """Champions and moves of one model (aliases champion / challenger / previous-champion)."""

    name: str

    def exists(self) -> bool: ...
    def ensure_model(self, description: str, tags: dict[str, str] | None = None) -> None: ...
    def version_for(self, alias: str) -> int | None: ...
    def champion(self) -> int | None: ...
    def info(self, version: int) -> Any: ...  # ml.registry.VersionInfo
    def versions(self) -> list[Any]: ...
    def load_model(self, version: int, *, serving: bool = False) -> Any: ...
    def check_blessed(self, version: int, *, serving: bool = False) -> None: ...
    def register(self, logged: LoggedModel) -> int: ...
    def source(self, version: int) -> str: ...
    def set_tags(self, version: int, tags: dict[str, Any]) -> None: ...
    def describe(self, version: int, markdown: str) -> None: ...
    def description(self, version: int) -> str: ...
    def mark_challenger(self, version: int, tags: dict[str, Any], *, run_id: str | None, actor: str | None) -> None: ...
    def promote(self, version: int, *, run_id: str | None, actor: str | None, reasons: list[str],
                forced: bool = False, data_time: datetime | None = None) -> dict[str, Any]: ...
    def reject(self, version: int, *, run_id: str | None, actor: str | None, reasons: list[str],
               canary: dict[str, Any] | None = None) -> dict[str, Any]: ...
    def resolve_rollback_target(self, target: str | int) -> int: ...
    def rollback(self, to_version: int, *, run_id: str | None, actor: str | None, reason: str,
                 automatic: bool = False) -> dict[str, Any]: ...


class Tracker(Protocol):
    """Where runs, metrics and artifacts go (MLflow), and the links a person follows to them."""

    def log_check(self, run_id: str, as_of: datetime, drift: Any, performance: dict[str, Any]) -> dict[str, str]:
        """Log one drift check; returns its links (``mlflow_run``, ``drift_report``)."""
        ...

    def log_candidate(self, *, run_id: str, model: Any, train: pd.DataFrame, strategy: str, decision: dict[str, Any],
                      check: dict[str, Any], window: Any, as_of: datetime) -> LoggedModel: ...

    def log_evaluation(self, logged_run_id: str, evaluation: Any, history: list[tuple[datetime, float]]) -> None: ...

    def experiment_of(self, logged_run_id: str) -> str: ...

    def candidate_links(self, experiment_id: str, logged_run_id: str, version: int) -> dict[str, str]: ...

    def version_links(self, version: int) -> dict[str, str]: ...
