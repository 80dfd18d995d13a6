"""Pure verdicts the loop's steps take, in one place: the DAG's tasks and the replay reach them
only through :mod:`ml.loop`, so a policy change is written once.

No I/O here: every function takes plain values (the model config, times, metrics) and returns one.
The trigger decision itself is :func:`ml.triggers.decide`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from ml.config import ModelConfig, format_duration


def as_utc(value: Any) -> datetime:
    """Any time value (ISO text, pandas or datetime, naive = UTC) as an aware UTC datetime."""
    ts = pd.Timestamp(value)
    return (ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")).to_pydatetime()


def guard_verdict(config: ModelConfig, live: float, before: float) -> str:
    """"rollback" when the champion's metric is worse than its predecessor's on the same rows by
    more than ``rollback.allowed_drop``, else "keep"."""
    worse_by = (before - live) if config.greater_is_better else (live - before)
    return "rollback" if worse_by > config.rollback.allowed_drop else "keep"


def training_start(config: ModelConfig, holdout_start: datetime, train_after: str | None, *, widen: bool = False,
                   last_onset: datetime | None = None) -> tuple[datetime, list[str]]:
    """Start (exclusive) of a full retrain's window: ``windows.training`` before the holdout, or the
    drift onset ``train_after`` when that is later (answering a drift episode: learn only from rows
    after it began). With ``widen`` and ``windows.max_training`` set, a retrain that answers no drift
    episode learns from up to ``max_training`` before the holdout instead, but not from before
    ``last_onset`` (the newest drift onset on record: rows before a change are another world); the
    window never gets narrower than ``windows.training``. Returns the start and a note when it was
    clipped or widened."""
    after = holdout_start - config.windows.training
    if train_after:
        onset = as_utc(train_after)
        if onset > after:
            return onset, [f"training window clipped to the drift onset {onset:%Y-%m-%d %H:%M}"]
        return after, []
    widest = config.windows.max_training
    if not widen or widest is None or widest <= config.windows.training:
        return after, []
    start, why = holdout_start - widest, f"windows.max_training ({format_duration(widest)})"
    if last_onset is not None and as_utc(last_onset) > start:
        start, why = as_utc(last_onset), f"the last drift onset on record ({as_utc(last_onset):%Y-%m-%d %H:%M})"
    if start >= after:
        return after, []
    return start, [f"no drift episode: training window widened to {why}"]


def choose_outcome(evaluation: dict[str, Any], force: bool) -> str:
    """"promote" when the gate passed, or when a person forced it; "await_shadow" when the shadow
    gate judges the candidate in a later run; else "reject"."""
    if evaluation["verdict"] == "pending" and not force:
        return "await_shadow"
    return "promote" if evaluation["verdict"] == "promote" or force else "reject"


def candidate_gate(config: ModelConfig, has_champion: bool, force: bool) -> str:
    """How a new candidate is judged: "shadow" (``promotion.gate: shadow``, beside a champion, later)
    or "holdout" (at once). With no champion there is nothing to shadow, and a forced candidate is
    promoted in its own run: both take the holdout gate."""
    return "shadow" if config.promotion.gate == "shadow" and has_champion and not force else "holdout"


def drift_onset(
    history: list[tuple[datetime, float | None]], now: tuple[datetime, float | None], threshold: float | None
) -> datetime | None:
    """Start of the drift episode that includes this check, or None if this check shows no drift.

    ``history`` holds earlier checks as (start of their current window, drift share), oldest first;
    ``now`` is this check. The episode is the unbroken run of checks at or above ``threshold``
    ending with this one; its onset is the earliest of their window starts."""
    if threshold is None or now[1] is None or now[1] < threshold:
        return None
    onset = now[0]
    for start, share in reversed(history):
        if share is None or share < threshold:
            break
        onset = min(onset, start)
    return onset


def last_drift_onset(history: list[tuple[datetime, float | None]], threshold: float | None) -> datetime | None:
    """Onset of the newest drift episode in ``history`` (as for :func:`drift_onset`: earlier checks
    as (start of their current window, drift share), oldest first), over or not; None if no check
    reached ``threshold``."""
    if threshold is None:
        return None
    for i in range(len(history) - 1, -1, -1):
        share = history[i][1]
        if share is not None and share >= threshold:
            return drift_onset(history[:i], history[i], threshold)
    return None
