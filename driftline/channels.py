"""New-labels events on the wire: the Redis pub/sub watcher the DAGs attach, and the two ways to send
one (publish on Redis, or post an asset event through Airflow's REST API). The message format is
:mod:`ml.messages`.

Redis is optional: with neither ``DRIFTLINE_REDIS_URL`` nor ``DRIFTLINE_REDIS_CONN_ID`` set, the
assets get no watcher and nothing here imports the Redis provider (the embedded stack, tests).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

from ml import messages

CONN_ID = "driftline_redis"
# How often the watcher looks for a message it has not read yet (seconds).
POLL_SECONDS = 1.0


def redis_conn_id() -> str | None:
    """The Airflow connection the watchers use: ``DRIFTLINE_REDIS_CONN_ID`` (one you defined in
    Airflow), else ``driftline_redis`` when ``DRIFTLINE_REDIS_URL`` is set, else None (no watcher)."""
    if os.environ.get("DRIFTLINE_REDIS_CONN_ID"):
        return os.environ["DRIFTLINE_REDIS_CONN_ID"]
    return CONN_ID if os.environ.get("DRIFTLINE_REDIS_URL") else None


def redis_connection(url: str) -> str:
    """``redis://[:password@]host[:port][/db]`` as an Airflow connection (JSON, for ``AIRFLOW_CONN_*``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"DRIFTLINE_REDIS_URL: expected redis://host:port[/db], got {url!r}")
    extra: dict[str, Any] = {}
    if parts.path.strip("/"):
        extra["db"] = int(parts.path.strip("/"))
    if parts.scheme == "rediss":
        extra["ssl"] = True
    conn = {"conn_type": "redis", "host": parts.hostname, "port": parts.port or 6379,
            "login": parts.username or None, "password": parts.password or None, "extra": extra}
    return json.dumps({k: v for k, v in conn.items() if v not in (None, {})})


def connection_env() -> dict[str, str]:
    """``AIRFLOW_CONN_DRIFTLINE_REDIS`` from ``DRIFTLINE_REDIS_URL`` (the triggerer reads it), if set."""
    url = os.environ.get("DRIFTLINE_REDIS_URL")
    if not url or os.environ.get("DRIFTLINE_REDIS_CONN_ID"):
        return {}
    return {f"AIRFLOW_CONN_{CONN_ID.upper()}": redis_connection(url)}


def new_labels_watchers(model: str) -> list:
    """The AssetWatcher for a model's new-labels asset, or none without Redis. Runs in the triggerer."""
    conn_id = redis_conn_id()
    if conn_id is None:
        return []
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
    from airflow.sdk import AssetWatcher

    trigger = MessageQueueTrigger(scheme="redis+pubsub", channels=[messages.channel(model)],
                                  redis_conn_id=conn_id, poll_interval=POLL_SECONDS)
    return [AssetWatcher(name=f"driftline_{model}_new_labels_redis", trigger=trigger)]


def publish_redis(model: str, rows: int, *, key: str | None = None, source: str | None = None,
                  url: str | None = None) -> tuple[dict[str, Any], int]:
    """Publish a new-labels message on the model's channel. Returns (message, listeners that got it):
    0 means no watcher was subscribed (pub/sub keeps nothing), so nothing will start."""
    import redis

    url = url or os.environ.get("DRIFTLINE_REDIS_URL")
    if not url:
        raise ValueError("set DRIFTLINE_REDIS_URL (e.g. redis://127.0.0.1:6379/0) or use --via rest")
    message = messages.new_labels_message(model, rows, key=key, source=source or "driftline publish-labels")
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        listeners = int(client.publish(messages.channel(model), json.dumps(message)))
    except redis.RedisError as exc:
        raise RuntimeError(f"cannot publish to Redis at {url}: {exc}") from None
    finally:
        client.close()
    return message, listeners


def listeners(model: str, url: str | None = None) -> int:
    """How many subscribers (watchers) the model's channel has right now."""
    import redis

    client = redis.Redis.from_url(url or os.environ["DRIFTLINE_REDIS_URL"], socket_connect_timeout=5)
    try:
        return int(dict(client.pubsub_numsub(messages.channel(model))).get(messages.channel(model).encode(), 0))
    finally:
        client.close()


def publish_rest(model: str, rows: int, *, key: str | None = None, source: str | None = None,
                 api: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post a new-labels asset event through Airflow's REST API. Returns (message, Airflow's answer)."""
    from driftline.api import AirflowApi

    api = api or AirflowApi()
    message = messages.new_labels_message(model, rows, key=key, source=source or "driftline publish-labels")
    return message, api.post_asset_event(messages.asset_name(model), message)
