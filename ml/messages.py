"""The "new labelled data" event: its message format, and how each way it reaches a DAG run is read.

A new-labels event says that labelled rows for one model arrived. It starts that model's
continuous-training DAG (trigger kind ``event``). It arrives as an Airflow asset event on the
``driftline_<model>_new_labels`` asset, in one of three envelopes (the asset event's ``extra``):

- from the ``<model>_new_labels`` DAG (CLI ``driftline labels-arrived``, UI): the message itself;
- from Airflow's REST API (``POST /api/v2/assets/events``): the message, plus ``from_rest_api: true``;
- from the Redis pub/sub watcher (``AssetWatcher`` + ``MessageQueueTrigger``, scheme ``redis+pubsub``):
  ``{"from_trigger": true, "payload": {"type": "message", "channel": ..., "data": "<message JSON>"}}``.

The message is a JSON object::

    {"rows": 500, "key": "labels-2026-01-12", "model": "credit_default",
     "source": "labelling-team", "occurred_at": "2026-01-12T18:00:00Z"}

``rows`` (an integer >= 1) is required; ``key`` makes it idempotent (the same key counts once;
default: a hash of the message); ``model``, if given, must name the channel's model; ``source`` and
``occurred_at`` (ISO time, default now) are kept in the store with the event.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from typing import Any

FIELDS = ("rows", "key", "model", "source", "occurred_at")


class EventError(ValueError):
    """A new-labels message that cannot be used; the text names the field and the problem."""


def asset_name(model: str) -> str:
    """The Airflow asset whose events start ``<model>_continuous_training``."""
    return f"driftline_{model}_new_labels"


def channel(model: str) -> str:
    """The Redis pub/sub channel a model's watcher listens on (prefix: ``DRIFTLINE_REDIS_CHANNEL_PREFIX``)."""
    prefix = os.environ.get("DRIFTLINE_REDIS_CHANNEL_PREFIX") or "driftline"
    return f"{prefix}.{model}.new_labels"


def _iso(value: Any, what: str) -> str:
    if isinstance(value, datetime):
        stamp = value
    else:
        try:
            stamp = datetime.fromisoformat(str(value))
        except ValueError:
            raise EventError(
                f"{what}: 'occurred_at' {value!r} is not an ISO date-time (e.g. 2026-01-12T18:00:00Z)"
            ) from None
    stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    return stamp.isoformat()


def new_labels_message(model: str, rows: Any, *, key: str | None = None, source: str | None = None,
                       occurred_at: Any = None, what: str = "new-labels message") -> dict[str, Any]:
    """A checked message: ``rows`` >= 1, a ``key`` (made from the content if not given), ISO time."""
    if isinstance(rows, bool) or not isinstance(rows, int | str):
        raise EventError(f"{what}: 'rows' must be a whole number >= 1, got {rows!r}")
    try:
        count = int(rows)
    except ValueError:
        raise EventError(f"{what}: 'rows' must be a whole number >= 1, got {rows!r}") from None
    if count < 1:
        raise EventError(f"{what}: 'rows' must be a whole number >= 1, got {rows!r}")
    message: dict[str, Any] = {
        "model": model,
        "rows": count,
        "source": str(source) if source else None,
        "occurred_at": _iso(occurred_at, what) if occurred_at not in (None, "") else datetime.now(UTC).isoformat(),
    }
    if key is None or str(key).strip() == "":
        body = json.dumps({k: message[k] for k in ("model", "rows", "source", "occurred_at")}, sort_keys=True)
        key = "msg-" + hashlib.sha256(body.encode()).hexdigest()[:16]
    message["key"] = str(key)
    if len(message["key"]) > 200:
        raise EventError(f"{what}: 'key' is longer than 200 characters")
    return message


def parse_message(data: Any, model: str, *, what: str = "new-labels message") -> dict[str, Any]:
    """A message as published (JSON text or an already decoded object) -> a checked message."""
    if isinstance(data, str | bytes | bytearray):
        data = _decode(data, what)
    if not isinstance(data, dict):
        raise EventError(f"{what}: expected a JSON object like {{\"rows\": 500}}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise EventError(f"{what}: unknown field(s) {unknown}; allowed: {list(FIELDS)}")
    if "rows" not in data:
        raise EventError(f"{what}: 'rows' is missing (how many labelled rows arrived)")
    named = data.get("model")
    if named not in (None, "", model):
        raise EventError(f"{what}: it names model {named!r} but arrived for {model!r}")
    return new_labels_message(model, data["rows"], key=data.get("key"), source=data.get("source"),
                              occurred_at=data.get("occurred_at"), what=what)


def from_asset_event(extra: dict[str, Any] | None, model: str, *, timestamp: Any = None) -> dict[str, Any]:
    """The message inside an asset event's ``extra``, whichever way it came, with ``via`` added:
    ``redis`` (the watcher), ``rest`` (Airflow's REST API) or ``dag`` (the new-labels DAG).
    ``timestamp`` (when Airflow recorded the event) stands in for a missing ``occurred_at``, so the
    default key of a retried task's re-read is the same."""
    extra = dict(extra or {})
    if extra.get("from_trigger"):
        payload = extra.get("payload") or {}
        where = payload.get("channel") if isinstance(payload, dict) else None
        data = payload.get("data") if isinstance(payload, dict) else payload
        what, via = f"new-labels message on {where or 'the watched channel'}", "redis"
    else:
        via = "rest" if extra.pop("from_rest_api", False) else "dag"
        data, where, what = extra, None, f"new-labels asset event ({via})"
    if isinstance(data, str | bytes | bytearray):
        data = _decode(data, what)
    if isinstance(data, dict) and timestamp is not None and data.get("occurred_at") in (None, ""):
        data = {**data, "occurred_at": timestamp}
    message = parse_message(data, model, what=what)
    return {**message, "via": via, **({"channel": where} if where else {})}


def _decode(data: str | bytes | bytearray, what: str) -> Any:
    if isinstance(data, bytes | bytearray):
        data = data.decode("utf-8", errors="replace")
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise EventError(f"{what}: not JSON ({exc.msg} at character {exc.pos}): {data[:200]!r}") from None
