"""In-memory adapters for the loop's ports (:mod:`ml.ports`): the replay runs the loop's own steps
through them, and service tests use them to run a step in milliseconds.

* :class:`MemoryStore` — rows of one frame, revealed up to a point (``show``), with what a SQL
  store would answer: labels known by a time, predictions, events, audit log.
* :class:`MemoryRegistryClient` — the part of MLflow's client that :class:`ml.registry.Registry`
  uses, over dicts; :class:`MemoryRegistry` is that same Registry (the same moves, the same
  audit entries) keeping fitted models in memory.
* :class:`NullTracker` — logs nothing, links nowhere.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from ml.ports import LoggedModel
from ml.registry import Registry


def _t64(value: Any) -> np.datetime64:
    ts = pd.Timestamp(value)
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts
    return np.datetime64(ts, "ns")


def _aware(value: np.datetime64) -> datetime:
    return pd.Timestamp(value).tz_localize("UTC").to_pydatetime()


class MemoryStore:
    """The rows of ``frame`` (``row_id, ts``, the features, optional ``label`` and ``labelled_at``;
    sorted by ``ts``), of which the first ``visible`` are stored so far. A row without a label, or
    with ``labelled_at`` NaT, has none. Rows come back in the frame's order."""

    def __init__(self, frame: pd.DataFrame, feature_names: Sequence[str]) -> None:
        ts = pd.to_datetime(frame["ts"], utc=True)
        if not ts.is_monotonic_increasing:
            raise ValueError("MemoryStore: rows must be sorted by ts")
        self.feature_names = list(feature_names)
        self.ids = np.array([str(i) for i in frame["row_id"]], dtype=object)
        self.position = {row_id: i for i, row_id in enumerate(self.ids)}
        self.ts = ts.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        n = len(frame)
        labelled_at = frame["labelled_at"] if "labelled_at" in frame else pd.Series([pd.NaT] * n)
        self.labelled_at = pd.to_datetime(labelled_at, utc=True).dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        self.labels = (frame["label"].to_numpy(dtype=object) if "label" in frame else np.full(n, None, dtype=object))
        self.features = frame[self.feature_names].reset_index(drop=True)
        self.prediction = np.full(n, None, dtype=object)
        self.score = np.full(n, np.nan)
        self.version = np.zeros(n, dtype=np.int64)  # 0: not scored
        self.quarantined = np.zeros(n, dtype=bool)
        self.shadow: dict[int, dict[int, tuple[Any, float]]] = {}  # version -> position -> (prediction, score)
        self.visible = n
        self._events: list[dict[str, Any]] = []
        self._audit: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def show(self, rows: int) -> None:
        """Rows ``[0, rows)`` are stored from now on (time moves forward)."""
        self.visible = max(0, min(int(rows), len(self.ids)))

    # ---- reads --------------------------------------------------------------------------------

    def _known(self, known_at: datetime | None) -> np.ndarray:
        known = ~np.isnat(self.labelled_at)
        if known_at is not None:
            known &= self.labelled_at <= _t64(known_at)
        return known

    def _stored(self) -> np.ndarray:
        mask = np.zeros(len(self.ids), dtype=bool)
        mask[: self.visible] = True
        return mask & ~self.quarantined

    def load(self, model: str, feature_names: Sequence[str], *, ts_after: datetime | None = None,
             ts_until: datetime | None = None, labelled_after: datetime | None = None,
             labelled_until: datetime | None = None, labelled_only: bool = False, unscored_only: bool = False,
             version: int | None = None, limit: int | None = None) -> pd.DataFrame:
        mask = self._stored()
        if ts_after is not None:
            mask &= self.ts > _t64(ts_after)
        if ts_until is not None:
            mask &= self.ts <= _t64(ts_until)
        known = self._known(labelled_until)
        if labelled_after is not None:
            mask &= known & (self.labelled_at > _t64(labelled_after))
        if labelled_only:
            mask &= known
        if unscored_only:
            mask &= self.version == 0
        if version is not None:
            mask &= self.version == int(version)
        return self._frame(np.flatnonzero(mask)[:limit], known, feature_names)

    def _frame(self, idx: np.ndarray, known: np.ndarray, feature_names: Sequence[str]) -> pd.DataFrame:
        out = pd.DataFrame({"row_id": self.ids[idx], "ts": pd.to_datetime(self.ts[idx]).tz_localize("UTC")})
        out = pd.concat([out, self.features.iloc[idx].reset_index(drop=True)[list(feature_names)]], axis=1)
        out["prediction"] = self.prediction[idx]
        out["score"] = self.score[idx]
        out["model_version"] = pd.array([int(v) if v else pd.NA for v in self.version[idx]], dtype="Int64")
        shown = known[idx]
        out["label"] = np.where(shown, self.labels[idx], None)
        out["labelled_at"] = pd.to_datetime(np.where(shown, self.labelled_at[idx], np.datetime64("NaT")))
        out["labelled_at"] = out["labelled_at"].dt.tz_localize("UTC")
        return out

    def load_shadow(self, model: str, feature_names: Sequence[str], version: int, *, champion: int | None = None,
                    labelled_until: datetime | None = None, labelled_only: bool = False) -> pd.DataFrame:
        shadowed = self.shadow.get(int(version), {})
        mask = self._stored()
        mask &= np.isin(np.arange(len(self.ids)), list(shadowed))
        known = self._known(labelled_until)
        if labelled_only:
            mask &= known
        if champion is not None:
            mask &= self.version == int(champion)
        idx = np.flatnonzero(mask)
        out = self._frame(idx, known, feature_names)
        out["shadow_prediction"] = [shadowed[i][0] for i in idx]
        out["shadow_score"] = np.array([shadowed[i][1] for i in idx], dtype=float)
        return out

    def latest_ts(self, model: str) -> datetime | None:
        stored = self._stored()
        return _aware(self.ts[stored].max()) if stored.any() else None

    def latest_labelled_ts(self, model: str, known_at: datetime | None = None) -> datetime | None:
        mask = self._stored() & self._known(known_at)
        return _aware(self.ts[mask].max()) if mask.any() else None

    def count_labels(self, model: str, *, ts_after: datetime | None, known_at: datetime | None,
                     ts_until: datetime | None = None) -> int:
        mask = self._stored() & self._known(known_at)
        if ts_after is not None:
            mask &= self.ts > _t64(ts_after)
        if ts_until is not None:
            mask &= self.ts <= _t64(ts_until)
        return int(mask.sum())

    # ---- writes -------------------------------------------------------------------------------

    def record_predictions(self, model: str, frame: pd.DataFrame, version: int, scored_at: datetime) -> int:
        positions = [self.position.get(str(i)) for i in frame["row_id"]]
        found = [(k, p) for k, p in enumerate(positions) if p is not None and p < self.visible]
        rows = np.array([p for _, p in found], dtype=np.int64)
        picked = [k for k, _ in found]
        self.prediction[rows] = np.asarray(list(frame["prediction"]), dtype=object)[picked]
        if "score" in frame.columns:
            self.score[rows] = pd.to_numeric(frame["score"]).to_numpy()[picked]
        self.version[rows] = int(version)
        return len(rows)

    def record_shadow_predictions(self, model: str, frame: pd.DataFrame, version: int, scored_at: datetime) -> int:
        shadowed = self.shadow.setdefault(int(version), {})
        scores = pd.to_numeric(frame["score"]).tolist() if "score" in frame.columns else [np.nan] * len(frame)
        new = 0
        for row_id, prediction, score in zip(frame["row_id"], frame["prediction"], scores, strict=True):
            position = self.position.get(str(row_id))
            if position is not None and position < self.visible and position not in shadowed:
                shadowed[position] = (prediction, float("nan") if score is None else float(score))
                new += 1
        return new

    def add_event(self, model: str, kind: str, key: str, rows: int, occurred_at: datetime,
                  payload: dict | None = None) -> bool:
        if any(e["key"] == key for e in self._events):
            return False
        self._events.append({"id": next(self._ids), "model": model, "kind": kind, "key": key, "rows": int(rows),
                             "occurred_at": occurred_at, "payload": payload or {}, "consumed_by": None})
        return True

    def pending_events(self, model: str, kind: str = "new_labels") -> list[dict[str, Any]]:
        return [dict(e) for e in self._events if e["model"] == model and e["kind"] == kind and e["consumed_by"] is None]

    def consume_events(self, ids: Iterable[int], run_id: str) -> None:
        wanted = set(ids)
        for event in self._events:
            if event["id"] in wanted and event["consumed_by"] is None:
                event["consumed_by"] = run_id

    def audit(self, model: str, action: str, *, version: int | None = None, actor: str | None = None,
              run_id: str | None = None, details: dict | None = None, at: datetime | None = None) -> None:
        self._audit.append({"id": len(self._audit) + 1, "model": model, "at": at or datetime.now(UTC),
                            "action": action, "version": version, "actor": actor, "run_id": run_id,
                            "details": dict(details or {})})

    def audit_log(self, model: str, actions: Sequence[str] | None = None) -> list[dict[str, Any]]:
        return [dict(e) for e in self._audit if e["model"] == model and (not actions or e["action"] in actions)]

    def model_lock(self, model: str, timeout: float = 300.0) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def quarantine(self, model: str, *, reason: str, actor: str | None = None, ids: Sequence[str] | None = None,
                   ts_from: datetime | None = None, ts_until: datetime | None = None) -> int:
        mask = self._stored()
        if ids is not None:
            mask &= np.isin(self.ids, [str(i) for i in ids])
        if ts_from is not None:
            mask &= self.ts >= _t64(ts_from)
        if ts_until is not None:
            mask &= self.ts <= _t64(ts_until)
        self.quarantined |= mask
        self.audit(model, "quarantine", actor=actor, details={"reason": reason, "rows": int(mask.sum()),
                                                              "ids": list(self.ids[mask][:20])})
        return int(mask.sum())


# ---- registry -----------------------------------------------------------------------------------


@dataclass
class _Version:
    name: str
    version: str
    source: str | None
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    current_stage: str = "None"
    aliases: list[str] = field(default_factory=list)


def _missing(message: str, code: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    return MlflowException(message, error_code=getattr(databricks_pb2, code))


class MemoryRegistryClient:
    """What :class:`ml.registry.Registry` calls on MLflow's client, kept in dicts. A missing model or
    alias raises MLflow's own "not found" errors, so the Registry reads them exactly as from MLflow."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[int, _Version]] = {}
        self.aliases: dict[str, dict[str, int]] = {}

    def _model(self, name: str) -> dict[str, Any]:
        if name not in self.models:
            raise _missing(f"Registered Model with name={name} not found", "RESOURCE_DOES_NOT_EXIST")
        return self.models[name]

    def _version(self, name: str, version: str | int) -> _Version:
        self._model(name)
        found = self.versions[name].get(int(version))
        if found is None:
            raise _missing(f"Model Version (name={name}, version={version}) not found", "RESOURCE_DOES_NOT_EXIST")
        found.aliases = sorted(a for a, v in self.aliases[name].items() if v == int(version))
        return found

    def get_registered_model(self, name: str) -> dict[str, Any]:
        return self._model(name)

    def create_registered_model(self, name: str, tags: dict[str, str] | None = None, description: str = "") -> None:
        self.models[name] = {"tags": dict(tags or {}), "description": description}
        self.versions.setdefault(name, {})
        self.aliases.setdefault(name, {})

    def update_registered_model(self, name: str, description: str = "") -> None:
        self._model(name)["description"] = description

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._model(name)["tags"][key] = value

    def create_model_version(self, name: str, source: str | None, run_id: str | None = None,
                             model_id: str | None = None) -> _Version:
        self._model(name)
        number = max(self.versions[name], default=0) + 1
        self.versions[name][number] = _Version(name, str(number), source, run_id)
        return self._version(name, number)

    def get_model_version(self, name: str, version: str | int) -> _Version:
        return self._version(name, version)

    def get_model_version_by_alias(self, name: str, alias: str) -> _Version:
        self._model(name)
        if alias not in self.aliases[name]:
            raise _missing(f"Registered model alias {alias} not found.", "INVALID_PARAMETER_VALUE")
        return self._version(name, self.aliases[name][alias])

    def search_model_versions(self, filter_string: str) -> list[_Version]:
        name = filter_string.split("'")[1]
        return [self._version(name, v) for v in sorted(self.versions.get(name, {}))]

    def set_model_version_tag(self, name: str, version: str | int, key: str, value: str) -> None:
        self._version(name, version).tags[key] = value

    def update_model_version(self, name: str, version: str | int, description: str = "") -> None:
        self._version(name, version).description = description

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        self._version(name, version)
        self.aliases[name][alias] = int(version)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self._model(name)
        self.aliases[name].pop(alias, None)

    def transition_model_version_stage(self, name: str, version: str | int, stage: str,
                                       archive_existing_versions: bool = False) -> None:
        self._version(name, version).current_stage = stage


class MemoryRegistry(Registry):
    """:class:`ml.registry.Registry` — the same moves, tags and audit entries — over
    :class:`MemoryRegistryClient`, with the fitted models kept in memory."""

    def __init__(self, name: str, store: Any) -> None:
        super().__init__(name, store, MemoryRegistryClient())
        self.models: dict[int, Any] = {}

    def register(self, logged: LoggedModel) -> int:
        version = super().register(logged)
        self.models[version] = logged.model
        return version

    def _load(self, version: int) -> Any:
        if version not in self.models:
            raise KeyError(f"{self.name} v{version}: no model kept in memory")
        return self.models[version]


class NullTracker:
    """A tracker that records nothing: the replay needs decisions, not MLflow runs."""

    def __init__(self) -> None:
        self._runs = itertools.count(1)

    def log_check(self, run_id: str, as_of: datetime, drift: Any, performance: dict[str, Any]) -> dict[str, str]:
        return {}

    def log_candidate(self, *, run_id: str, model: Any, train: pd.DataFrame, strategy: str, decision: dict[str, Any],
                      check: dict[str, Any], window: Any, as_of: datetime) -> LoggedModel:
        return LoggedModel("memory", f"candidate-{next(self._runs)}", None, None, model)

    def log_evaluation(self, logged_run_id: str, evaluation: Any, history: list[tuple[datetime, float]]) -> None:
        return None

    def experiment_of(self, logged_run_id: str) -> str:
        return "memory"

    def candidate_links(self, experiment_id: str, logged_run_id: str, version: int) -> dict[str, str]:
        return {}

    def version_links(self, version: int) -> dict[str, str]:
        return {}


