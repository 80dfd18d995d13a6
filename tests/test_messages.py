"""New-labels events: the message format, the three envelopes an asset event brings it in, the Redis
watcher the DAGs attach, and publishing on a real Redis (skips with what to start if it is absent)."""

from __future__ import annotations

import json
import time

import pytest
from helpers import require_service

from ml import messages as events

MODEL = "credit_default"


def test_message_defaults_and_checks():
    message = events.new_labels_message(MODEL, "300", source="team")
    assert message["rows"] == 300 and message["model"] == MODEL and message["source"] == "team"
    assert message["key"].startswith("msg-") and message["occurred_at"].endswith("+00:00")
    # The default key is the content's: the same message twice is one event.
    again = events.new_labels_message(MODEL, 300, source="team", occurred_at=message["occurred_at"])
    assert again["key"] == message["key"]
    assert events.new_labels_message(MODEL, 1, key="k", occurred_at="2026-01-12T18:00:00")["occurred_at"] == (
        "2026-01-12T18:00:00+00:00"
    )


@pytest.mark.parametrize(("data", "problem"), [
    ("not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"key": "a"}', "'rows' is missing"),
    ('{"rows": 0}', "'rows' must be a whole number >= 1, got 0"),
    ('{"rows": "many"}', "'rows' must be a whole number >= 1, got 'many'"),
    ('{"rows": true}', "'rows' must be a whole number >= 1, got True"),
    ('{"rows": 2.5}', "'rows' must be a whole number >= 1, got 2.5"),
    ('{"rows": 5, "model": "churn"}', "names model 'churn' but arrived for 'credit_default'"),
    ('{"rows": 5, "label": 1}', "unknown field(s) ['label']"),
    ('{"rows": 5, "occurred_at": "soon"}', "'occurred_at' 'soon' is not an ISO date-time"),
    ('{"rows": 5, "key": "' + "k" * 201 + '"}', "'key' is longer than 200 characters"),
])
def test_bad_message_names_the_problem(data, problem):
    extra = {"from_trigger": True, "payload": {"type": "message", "channel": "driftline.x.new_labels", "data": data}}
    with pytest.raises(events.EventError, match="new-labels message on driftline.x.new_labels") as caught:
        events.from_asset_event(extra, MODEL)
    assert problem in str(caught.value)


def test_three_envelopes_give_the_same_message():
    body = {"rows": 42, "key": "batch-7", "source": "s3://labels/7", "occurred_at": "2026-01-12T18:00:00Z"}
    redis = events.from_asset_event(
        {"from_trigger": True, "payload": {"type": "message", "pattern": None, "channel": "driftline.credit_default.new_labels",
                                           "data": json.dumps(body)}}, MODEL)
    rest = events.from_asset_event({**body, "from_rest_api": True}, MODEL)
    dag = events.from_asset_event(events.new_labels_message(MODEL, 42, key="batch-7", source="s3://labels/7",
                                                            occurred_at="2026-01-12T18:00:00Z"), MODEL)
    assert (redis["via"], rest["via"], dag["via"]) == ("redis", "rest", "dag")
    assert redis["channel"] == "driftline.credit_default.new_labels"
    strip = lambda m: {k: v for k, v in m.items() if k not in ("via", "channel")}
    assert strip(redis) == strip(rest) == strip(dag)
    assert strip(rest) == {"model": MODEL, "rows": 42, "key": "batch-7", "source": "s3://labels/7",
                           "occurred_at": "2026-01-12T18:00:00+00:00"}


def test_event_time_stands_in_for_a_missing_occurred_at():
    """A retried task re-reads the same asset event: without a key or time in the message, the default
    key must still be the same, or the event would be counted twice."""
    extra = {"from_trigger": True, "payload": {"data": '{"rows": 9}'}}
    first = events.from_asset_event(extra, MODEL, timestamp="2026-03-01T10:00:00+00:00")
    time.sleep(0.01)
    second = events.from_asset_event(extra, MODEL, timestamp="2026-03-01T10:00:00+00:00")
    assert first["key"] == second["key"] and first["occurred_at"] == "2026-03-01T10:00:00+00:00"


def test_record_asset_events_stores_each_once(home, config):
    from ml import loop
    from ml.store import Store

    extra = {"from_trigger": True, "payload": {"data": json.dumps({"rows": 120, "key": "k-1"})}}
    assert loop.record_asset_events(loop.Context.open(config), [{"extra": extra, "timestamp": "2026-03-01T10:00:00Z"}]) == 1
    assert loop.record_asset_events(loop.Context.open(config), [{"extra": extra, "timestamp": "2026-03-01T10:00:00Z"}]) == 0
    pending = Store(f"sqlite:///{home / 'store.db'}").pending_events(MODEL)
    assert [(e["key"], e["rows"], e["payload"]["via"]) for e in pending] == [("k-1", 120, "redis")]
    with pytest.raises(events.EventError, match="'rows' is missing"):
        loop.record_asset_events(loop.Context.open(config), [{"extra": {"key": "x", "from_rest_api": True}}])


def test_redis_connection_and_watcher(monkeypatch):
    from driftline import channels as wire

    conn = json.loads(wire.redis_connection("redis://:s3cret@cache.internal:6380/2"))
    assert conn == {"conn_type": "redis", "host": "cache.internal", "port": 6380, "password": "s3cret",
                    "extra": {"db": 2}}
    with pytest.raises(ValueError, match="expected redis://host:port"):
        wire.redis_connection("http://cache:6379")

    for var in ("DRIFTLINE_REDIS_URL", "DRIFTLINE_REDIS_CONN_ID", "DRIFTLINE_REDIS_CHANNEL_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    assert wire.new_labels_watchers(MODEL) == [] and wire.connection_env() == {}
    monkeypatch.setenv("DRIFTLINE_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert json.loads(wire.connection_env()["AIRFLOW_CONN_DRIFTLINE_REDIS"])["host"] == "127.0.0.1"
    (watcher,) = wire.new_labels_watchers(MODEL)
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath.endswith("redis_await_message.AwaitMessageTrigger")
    assert kwargs == {"channels": ["driftline.credit_default.new_labels"], "redis_conn_id": "driftline_redis",
                      "poll_interval": wire.POLL_SECONDS}
    monkeypatch.setenv("DRIFTLINE_REDIS_CONN_ID", "my_redis")
    assert wire.new_labels_watchers(MODEL)[0].trigger.serialize()[1]["redis_conn_id"] == "my_redis"
    assert wire.connection_env() == {}


def test_publish_on_real_redis(monkeypatch):
    import redis

    from driftline import channels as wire

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        problem = None
    except redis.RedisError as exc:
        problem = type(exc).__name__
    require_service("Redis", problem, "Start it on 127.0.0.1:6379 (redis-server --daemonize yes --bind 127.0.0.1).")
    monkeypatch.setenv("DRIFTLINE_REDIS_URL", url)
    monkeypatch.setenv("DRIFTLINE_REDIS_CHANNEL_PREFIX", f"driftline-test-{time.monotonic_ns()}")
    assert wire.publish_redis(MODEL, 5)[1] == 0  # nobody listens: the caller is told
    client = redis.Redis.from_url(url)
    sub = client.pubsub()
    sub.subscribe(events.channel(MODEL))
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    assert wire.listeners(MODEL) == 1
    message, listeners = wire.publish_redis(MODEL, 77, key="pub-1", source="test")
    assert listeners == 1
    received = sub.get_message(timeout=5)
    # What the watcher gets back is the message the DAG run will read.
    back = events.from_asset_event({"from_trigger": True, "payload": {**received, "data": received["data"].decode()}},
                                   MODEL)
    assert {k: back[k] for k in message} == message and back["rows"] == 77
    sub.close()
    client.close()
