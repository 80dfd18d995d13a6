"""Change detection on the champion's served errors (``triggers.error_detector``), with river's
detectors (ADWIN, Page-Hinkley, KSWIN): the detectors are river's, this module only feeds them.

Pure: arrays in, changes out, no I/O. The drift check (:func:`ml.loop.check_drift`) feeds the rows
the champion served since its promotion whose labels are known, in time order; the error is 0/1
(prediction != label) for a classifier, the absolute error for a regressor.

State between runs is recomputed, not persisted: every run feeds the whole served-and-labelled
stream since the promotion to a fresh detector. River's detectors are deterministic online functions
of their input (KSWIN's sampling is seeded, see ``ml.config``), so what a fresh detector finds on
a stream is exactly what one long-lived detector would have found on it, run after run: nothing to
store, migrate or lose on a restart, a retried task gets the same answer, and a late label takes its
place in time order. The cost is one pass over the champion's served rows per run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ml.config import ErrorDetectorSpec


@dataclass(frozen=True)
class Change:
    """A rise in the error the detector found. ``at``: the row at which it fired; ``known_at``: when
    that could first be known (the newest label time among the rows fed up to it); ``since``: the
    detector's estimate of where the change began (ADWIN: its kept window, KSWIN: its recent sample;
    None for Page-Hinkley, which has no estimate); ``before`` / ``after``: the mean error before and
    after that point since the detector's last restart; ``rows``: rows fed up to ``at``."""

    at: datetime
    known_at: datetime
    since: datetime | None
    before: float | None  # None: no rows before the change since the last restart
    after: float
    rows: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("at", "known_at", "since"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Change:
        from ml.policy import as_utc

        return cls(at=as_utc(data["at"]), known_at=as_utc(data["known_at"]),
                   since=as_utc(data["since"]) if data.get("since") else None,
                   before=None if data.get("before") is None else float(data["before"]), after=float(data["after"]), rows=int(data["rows"]))


def errors(task: str, labels: Any, predictions: Any) -> np.ndarray:
    """The error stream: 0/1 misclassifications, or absolute errors for a regression."""
    if task == "regression":
        return np.abs(np.asarray(labels, dtype=float) - np.asarray(predictions, dtype=float))
    # Object arrays compare value by value with Python's ==, as labels and predictions come back
    # from the store (the same JSON values).
    return (np.asarray(labels, dtype=object) != np.asarray(predictions, dtype=object)).astype(float)


def make_detector(spec: ErrorDetectorSpec) -> Any:
    """A fresh river detector for ``spec`` (river is imported here: it takes seconds to import)."""
    from river import drift

    return getattr(drift, spec.detector_name)(**spec.river_params())


def _recent(spec: ErrorDetectorSpec, detector: Any) -> int:
    """How many of the newest rows the detector says are after the change (its own estimate), or
    for Page-Hinkley, which has none, its minimum sample."""
    if spec.kind == "adwin":
        return int(detector.width)
    if spec.kind == "kswin":
        return int(detector.stat_size)
    return int(detector.min_instances)


def detect(spec: ErrorDetectorSpec, ts: Any, error: Any, labelled_at: Any) -> list[Change]:
    """Feed ``error`` (one value per row, in time order ``ts``) to a fresh detector; return every
    change it finds where the error rose (a fall is no reason to retrain)."""
    ts = pd.to_datetime(pd.Series(ts), utc=True).reset_index(drop=True)
    error = np.asarray(error, dtype=float)
    known = pd.to_datetime(pd.Series(labelled_at), utc=True).reset_index(drop=True).cummax()
    if len(ts) != len(error) or len(known) != len(error):
        raise ValueError(f"detect: {len(ts)} times, {len(error)} errors, {len(known)} label times")
    if len(ts) > 1 and not ts.is_monotonic_increasing:
        raise ValueError("detect: rows must be in time order")
    detector = make_detector(spec)
    changes: list[Change] = []
    restart = 0  # river's detectors start afresh after each detection
    for i, value in enumerate(error):
        detector.update(float(value))
        if not detector.drift_detected:
            continue
        start = max(restart, i + 1 - _recent(spec, detector))
        after = float(error[start:i + 1].mean())
        before = float(error[restart:start].mean()) if start > restart else None
        # Page-Hinkley (mode "up") fires on rises only; the others say "changed": keep the rises.
        rising = after > before if before is not None else spec.kind == "page_hinkley"
        restart = i + 1
        if not rising:
            continue  # the error fell (or did not move): not a reason to retrain
        changes.append(Change(
            at=ts[i].to_pydatetime(), known_at=known[i].to_pydatetime(),
            since=ts[start].to_pydatetime() if spec.kind != "page_hinkley" else None,
            before=before, after=after, rows=i + 1,
        ))
    return changes


def served_changes(spec: ErrorDetectorSpec, task: str, rows: pd.DataFrame) -> list[Change]:
    """:func:`detect` on the champion's served rows with known labels (``ts, label, prediction,
    labelled_at``), in time order (row id breaks ties, so every run feeds the same order)."""
    rows = rows.sort_values(["ts", "row_id"], kind="stable")
    return detect(spec, rows["ts"], errors(task, rows["label"], rows["prediction"]), rows["labelled_at"])
