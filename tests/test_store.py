"""The store on both backends: every test runs against SQLite and a throw-away PostgreSQL database.

Data comes from the seeded simulator, validated as the ingest path does before storing it."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from ml import store as store_module
from ml.simulator import CreditDefaultSimulator
from ml.store import Store
from ml.validation import validate_incoming, validate_incoming_labels

MODEL = "credit_default"
SIM = CreditDefaultSimulator(seed=5, rows_per_period=40)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request) -> Store:
    if request.param == "sqlite":
        url = f"sqlite:///{request.getfixturevalue('home')}/store.db"
    else:
        url = request.getfixturevalue("pg_url")  # its teardown disposes the engine and drops the DB
    yield Store(url)
    if request.param == "sqlite":
        engine = store_module._engines.pop(url, None)
        if engine is not None:
            engine.dispose()


def _rows(config, period: int) -> pd.DataFrame:
    return validate_incoming(SIM.batch(period).features, config)


def _labels(config, period: int) -> pd.DataFrame:
    return validate_incoming_labels(SIM.batch(period).labels, config)


def _ingest(store: Store, config, periods, labelled: bool = True) -> pd.DataFrame:
    frames = []
    for p in periods:
        rows = _rows(config, p)
        store.add_observations(MODEL, rows, config.feature_names)
        if labelled:
            store.add_labels(MODEL, _labels(config, p))
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def _count(store: Store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


# ---- observations -------------------------------------------------------------------------------


def test_add_observations_counts_new_and_reingest_is_noop(store, config):
    rows = _rows(config, 0)
    assert store.add_observations(MODEL, rows, config.feature_names) == 40
    first = store.load(MODEL, config.feature_names)

    changed = rows.copy()
    changed["income"] = 1.0
    changed["ts"] = changed["ts"] + pd.Timedelta(days=3)
    assert store.add_observations(MODEL, changed, config.feature_names) == 0
    again = store.load(MODEL, config.feature_names)
    pd.testing.assert_frame_equal(again, first)
    assert (again["income"] != 1.0).all()

    # a batch half old, half new stores only the new half
    mixed = pd.concat([rows.iloc[:10], _rows(config, 1).iloc[:15]], ignore_index=True)
    assert store.add_observations(MODEL, mixed, config.feature_names) == 15
    assert _count(store, store_module.observations) == 55


def test_round_trip_values_and_types(store, config):
    rows = _rows(config, 3)
    store.add_observations(MODEL, rows, config.feature_names)
    out = store.load(MODEL, config.feature_names)
    assert out["row_id"].tolist() == rows["row_id"].tolist()
    for name in config.numerical:
        np.testing.assert_array_equal(out[name].to_numpy(dtype=float), rows[name].to_numpy(), err_msg=name)
    for name in config.categorical:
        assert out[name].tolist() == rows[name].tolist()
    assert out["prediction"].isna().all() and out["score"].isna().all()
    assert out["model_version"].isna().all() and out["label"].isna().all()
    assert out["labelled_at"].isna().all()


def test_add_observations_empty_frame(store, config):
    assert store.add_observations(MODEL, _rows(config, 0).iloc[:0], config.feature_names) == 0
    assert store.latest_ts(MODEL) is None


def test_models_are_kept_apart(store, config):
    rows = _rows(config, 0)
    store.add_observations(MODEL, rows, config.feature_names)
    assert store.add_observations("other_model", rows.iloc[:5], config.feature_names) == 5
    assert len(store.load(MODEL, config.feature_names)) == 40
    assert len(store.load("other_model", config.feature_names)) == 5


def test_times_are_tz_aware_utc_and_exact(store, config):
    rows = _rows(config, 0)
    # A non-UTC offset goes in; the same instant comes back in UTC, to the microsecond.
    plus2 = timezone(timedelta(hours=2))
    moved = rows.copy()
    moved["ts"] = moved["ts"].dt.tz_convert(plus2)
    store.add_observations(MODEL, moved, config.feature_names)
    labels = _labels(config, 0)
    store.add_labels(MODEL, labels)

    out = store.load(MODEL, config.feature_names)
    assert str(out["ts"].dt.tz) == "UTC"
    assert (out["ts"] == rows["ts"]).all()
    assert (out["ts"].dt.microsecond != 0).any()  # the simulator's times carry microseconds
    assert (out["labelled_at"] == labels["labelled_at"]).all()
    assert str(out["labelled_at"].dt.tz) == "UTC"

    latest = store.latest_ts(MODEL)
    assert latest.tzinfo is not None and latest.utcoffset() == timedelta(0)
    assert latest == rows["ts"].max().to_pydatetime()

    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=plus2)
    store.audit(MODEL, "promoted", at=at)
    (entry,) = store.audit_log(MODEL)
    assert entry["at"] == at
    assert entry["at"].tzinfo == UTC
    assert entry["at"].hour == 3


def test_nan_feature_stored_as_null_comes_back_nan(store, config):
    rows = _rows(config, 0)
    rows.loc[2, "income"] = np.nan
    rows.loc[3, "employment_type"] = None
    store.add_observations(MODEL, rows, config.feature_names)

    with store.engine.connect() as conn:
        stored = conn.execute(
            select(store_module.observations.c.features).where(
                store_module.observations.c.row_id == rows.loc[2, "row_id"]
            )
        ).scalar_one()
    assert "income" in stored and stored["income"] is None

    out = store.load(MODEL, config.feature_names).set_index("row_id")
    assert math.isnan(out.loc[rows.loc[2, "row_id"], "income"])
    assert out.loc[rows.loc[3, "row_id"], "employment_type"] is None
    assert out.loc[rows.loc[4, "row_id"], "income"] == rows.loc[4, "income"]


# ---- labels -------------------------------------------------------------------------------------


def test_add_labels_joins_on_load(store, config):
    _ingest(store, config, [0])
    labels = _labels(config, 0)
    out = store.load(MODEL, config.feature_names)
    assert out["label"].tolist() == labels["label"].tolist()
    assert set(out["label"]) == {0, 1}


def test_labels_for_unknown_rows_are_refused_and_nothing_is_written(store, config):
    store.add_observations(MODEL, _rows(config, 0), config.feature_names)
    good = _labels(config, 0)
    stranger = _labels(config, 1).iloc[:2]  # rows of a period never stored
    batch = pd.concat([good.iloc[:10], stranger], ignore_index=True)
    before = (_count(store, store_module.labels), _count(store, store_module.observations))

    with pytest.raises(ValueError) as info:
        store.add_labels(MODEL, batch)
    message = str(info.value)
    assert "2 row(s) never scored or stored" in message
    assert stranger["row_id"].iloc[0] in message

    assert (_count(store, store_module.labels), _count(store, store_module.observations)) == before == (0, 40)
    assert store.load(MODEL, config.feature_names)["label"].isna().all()


def test_labels_of_another_model_do_not_count(store, config):
    store.add_observations("other_model", _rows(config, 0), config.feature_names)
    with pytest.raises(ValueError, match="never scored or stored"):
        store.add_labels(MODEL, _labels(config, 0))


def test_labels_are_not_overwritten(store, config):
    store.add_observations(MODEL, _rows(config, 0), config.feature_names)
    labels = _labels(config, 0)
    assert store.add_labels(MODEL, labels.iloc[:20]) == 20

    flipped = labels.copy()
    flipped["label"] = 1 - flipped["label"]
    flipped["labelled_at"] = flipped["labelled_at"] + pd.Timedelta(days=5)
    assert store.add_labels(MODEL, flipped) == 20  # only the 20 without a label yet

    out = store.load(MODEL, config.feature_names)
    assert out["label"].iloc[:20].tolist() == labels["label"].iloc[:20].tolist()
    assert (out["labelled_at"].iloc[:20] == labels["labelled_at"].iloc[:20]).all()
    assert out["label"].iloc[20:].tolist() == flipped["label"].iloc[20:].tolist()
    assert store.add_labels(MODEL, labels) == 0
    assert store.add_labels(MODEL, labels.iloc[:0]) == 0


# ---- load filters -------------------------------------------------------------------------------


def test_load_time_bounds_are_after_until_inclusive(store, config):
    rows = _ingest(store, config, [0, 1], labelled=False)
    after, until = rows["ts"].iloc[5], rows["ts"].iloc[50]
    out = store.load(MODEL, config.feature_names, ts_after=after, ts_until=until)
    assert out["row_id"].tolist() == rows["row_id"].iloc[6:51].tolist()  # (after, until]
    assert out["ts"].is_monotonic_increasing

    # naive bounds are UTC; bounds with another offset mean the same instant
    naive = store.load(MODEL, config.feature_names, ts_after=after.tz_localize(None).to_pydatetime())
    assert len(naive) == 80 - 6
    shifted = until.tz_convert("America/New_York").to_pydatetime()
    assert len(store.load(MODEL, config.feature_names, ts_until=shifted)) == 51
    assert store.load(MODEL, config.feature_names, ts_after=rows["ts"].max()).empty


def test_load_empty_has_the_columns(store, config):
    out = store.load(MODEL, config.feature_names)
    assert out.empty
    assert list(out.columns) == [
        "row_id", "ts", *config.feature_names, "prediction", "score", "model_version", "label", "labelled_at"
    ]


def test_load_labelled_only(store, config):
    _ingest(store, config, [0])
    _ingest(store, config, [1], labelled=False)
    assert len(store.load(MODEL, config.feature_names)) == 80
    labelled = store.load(MODEL, config.feature_names, labelled_only=True)
    assert len(labelled) == 40
    assert labelled["row_id"].str.contains("-p0-").all()
    assert labelled["label"].notna().all()


def test_load_labelled_until_hides_labels_known_later(store, config):
    _ingest(store, config, [0])
    labels = _labels(config, 0)
    cut = labels["labelled_at"].iloc[14]

    out = store.load(MODEL, config.feature_names, labelled_until=cut)
    assert len(out) == 40  # every row, but only the labels known by then
    assert out["label"].iloc[:15].notna().all()
    assert out["label"].iloc[15:].isna().all()
    assert out["labelled_at"].iloc[15:].isna().all()

    only = store.load(MODEL, config.feature_names, labelled_until=cut, labelled_only=True)
    assert only["row_id"].tolist() == labels["row_id"].iloc[:15].tolist()

    after = store.load(MODEL, config.feature_names, labelled_after=cut)
    assert after["row_id"].tolist() == labels["row_id"].iloc[15:].tolist()


def test_record_predictions_and_unscored_and_version(store, config):
    rows = _ingest(store, config, [0], labelled=False)
    scored_at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    first = pd.DataFrame(
        {"row_id": rows["row_id"].iloc[:10], "prediction": np.array([0, 1] * 5), "score": np.linspace(0.05, 0.95, 10)}
    )
    assert store.record_predictions(MODEL, first, version=1, scored_at=scored_at) == 10
    second = pd.DataFrame({"row_id": rows["row_id"].iloc[10:15], "prediction": [1] * 5, "score": [np.nan] * 5})
    store.record_predictions(MODEL, second, version=2, scored_at=scored_at)

    out = store.load(MODEL, config.feature_names)
    assert out["prediction"].iloc[:10].tolist() == [0, 1] * 5
    np.testing.assert_allclose(out["score"].iloc[:10].to_numpy(), np.linspace(0.05, 0.95, 10))
    assert out["score"].iloc[10:15].isna().all()  # NaN score stored as null
    assert out["model_version"].iloc[:10].tolist() == [1] * 10
    assert out["model_version"].iloc[10:15].tolist() == [2] * 5
    assert out["model_version"].iloc[15:].isna().all()

    unscored = store.load(MODEL, config.feature_names, unscored_only=True)
    assert unscored["row_id"].tolist() == rows["row_id"].iloc[15:].tolist()
    v1 = store.load(MODEL, config.feature_names, version=1)
    assert v1["row_id"].tolist() == rows["row_id"].iloc[:10].tolist()
    assert len(store.load(MODEL, config.feature_names, version=2)) == 5
    assert store.load(MODEL, config.feature_names, version=3).empty

    with store.engine.connect() as conn:
        stamps = conn.execute(
            select(store_module.observations.c.scored_at).where(store_module.observations.c.model_version == 1)
        ).scalars().all()
    assert {store_module.from_db_time(s) for s in stamps} == {scored_at}


def test_record_predictions_without_score(store, config):
    rows = _ingest(store, config, [0], labelled=False)
    store.record_predictions(
        MODEL, pd.DataFrame({"row_id": rows["row_id"].iloc[:3], "prediction": ["a", "b", "a"]}), 4,
        datetime(2026, 1, 2, tzinfo=UTC),
    )
    out = store.load(MODEL, config.feature_names, version=4)
    assert out["prediction"].tolist() == ["a", "b", "a"]
    assert out["score"].isna().all()


# ---- latest / counts ----------------------------------------------------------------------------


def test_latest_ts_and_latest_labelled_ts(store, config):
    assert store.latest_ts(MODEL) is None
    assert store.latest_labelled_ts(MODEL) is None
    rows0 = _ingest(store, config, [0])
    rows1 = _ingest(store, config, [1], labelled=False)
    labels0 = _labels(config, 0)

    assert store.latest_ts(MODEL) == rows1["ts"].max().to_pydatetime()
    assert store.latest_labelled_ts(MODEL) == rows0["ts"].max().to_pydatetime()
    # as known at the 10th label's arrival: the newest row labelled by then is the 10th row
    known = labels0["labelled_at"].iloc[9].to_pydatetime()
    assert store.latest_labelled_ts(MODEL, known_at=known) == rows0["ts"].iloc[9].to_pydatetime()
    before_any = labels0["labelled_at"].min().to_pydatetime() - timedelta(microseconds=1)
    assert store.latest_labelled_ts(MODEL, known_at=before_any) is None
    assert store.latest_labelled_ts(MODEL).tzinfo is not None


def test_count_labels(store, config):
    rows = _ingest(store, config, [0, 1])
    labels = pd.concat([_labels(config, 0), _labels(config, 1)], ignore_index=True)
    assert store.count_labels(MODEL, ts_after=None, known_at=None) == 80
    assert store.count_labels(MODEL, ts_after=rows["ts"].iloc[39], known_at=None) == 40
    assert store.count_labels(MODEL, ts_after=rows["ts"].iloc[9], known_at=None, ts_until=rows["ts"].iloc[19]) == 10
    assert store.count_labels(MODEL, ts_after=None, known_at=labels["labelled_at"].iloc[24]) == 25
    assert (
        store.count_labels(
            MODEL, ts_after=rows["ts"].iloc[9], ts_until=rows["ts"].iloc[59], known_at=labels["labelled_at"].iloc[29]
        )
        == 20
    )
    assert store.count_labels("other_model", ts_after=None, known_at=None) == 0


def test_count_labels_ignores_unlabelled_rows(store, config):
    _ingest(store, config, [0], labelled=False)
    store.add_labels(MODEL, _labels(config, 0).iloc[:7])
    assert store.count_labels(MODEL, ts_after=None, known_at=None) == 7


# ---- events -------------------------------------------------------------------------------------


def test_events_idempotent_pending_and_consumed(store):
    at = datetime(2026, 1, 3, 12, 30, 15, 123456, tzinfo=UTC)
    assert store.add_event(MODEL, "new_labels", "batch-1", 300, at, {"source": "s3://b/1"}) is True
    assert store.add_event(MODEL, "new_labels", "batch-1", 999, at) is False  # same key: stored once
    assert store.add_event(MODEL, "new_labels", "batch-2", 200, at + timedelta(hours=1)) is True
    assert store.add_event(MODEL, "schema_change", "other-kind", 0, at) is True
    assert store.add_event("other_model", "new_labels", "other-model-1", 50, at) is True

    pending = store.pending_events(MODEL)
    assert [e["key"] for e in pending] == ["batch-1", "batch-2"]
    assert [e["rows"] for e in pending] == [300, 200]
    assert pending[0]["payload"] == {"source": "s3://b/1"}
    assert pending[1]["payload"] == {}
    assert pending[0]["occurred_at"] == at and pending[0]["occurred_at"].tzinfo is not None
    assert pending[0]["consumed_by"] is None
    assert [e["key"] for e in store.pending_events(MODEL, kind="schema_change")] == ["other-kind"]

    store.consume_events([pending[0]["id"]], "run-1")
    assert [e["key"] for e in store.pending_events(MODEL)] == ["batch-2"]
    store.consume_events([e["id"] for e in pending], "run-2")
    assert store.pending_events(MODEL) == []
    assert [e["key"] for e in store.pending_events("other_model")] == ["other-model-1"]
    store.consume_events([], "run-3")  # nothing to do

    with store.engine.connect() as conn:
        consumed = dict(
            conn.execute(select(store_module.events.c.key, store_module.events.c.consumed_by)).all()
        )
    assert consumed["batch-1"] == "run-1"  # a consumed event keeps its first consumer
    assert consumed["batch-2"] == "run-2"
    assert consumed["other-kind"] is None


# ---- audit log ----------------------------------------------------------------------------------


def test_audit_log_order_and_filter(store):
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    store.audit(MODEL, "run", actor="scheduler", run_id="r1", details={"kind": "none"}, at=t0)
    store.audit(MODEL, "registered", version=1, run_id="r2", details={"when": t0}, at=t0 + timedelta(hours=1))
    store.audit(MODEL, "promoted", version=1, actor="ana", at=t0 + timedelta(hours=2))
    store.audit("other_model", "run", at=t0)
    before = datetime.now(UTC)
    store.audit(MODEL, "rolled_back", version=1)
    after = datetime.now(UTC)

    log = store.audit_log(MODEL)
    assert [e["action"] for e in log] == ["run", "registered", "promoted", "rolled_back"]
    assert log[0]["actor"] == "scheduler" and log[0]["run_id"] == "r1"
    assert log[0]["details"] == {"kind": "none"}
    assert log[1]["details"] == {"when": str(t0)}  # not JSON-native: stored as text
    assert log[1]["version"] == 1 and log[1]["at"] == t0 + timedelta(hours=1)
    assert log[2]["details"] == {}
    assert before - timedelta(seconds=1) <= log[3]["at"] <= after + timedelta(seconds=1)
    assert all(e["at"].tzinfo is not None for e in log)

    filtered = store.audit_log(MODEL, ["promoted", "run"])
    assert [e["action"] for e in filtered] == ["run", "promoted"]
    assert store.audit_log(MODEL, ["nothing"]) == []
    assert [e["action"] for e in store.audit_log("other_model")] == ["run"]


# ---- chunked id lookups (more than 500 ids at once) ---------------------------------------------


def test_large_batch_crosses_the_id_chunk(store, config):
    big = CreditDefaultSimulator(seed=9, rows_per_period=620).batch(0)
    rows = validate_incoming(big.features, config)
    assert store.add_observations(MODEL, rows, config.feature_names) == 620
    assert store.add_observations(MODEL, rows, config.feature_names) == 0
    labels = validate_incoming_labels(big.labels, config)
    assert store.add_labels(MODEL, labels) == 620
    assert store.add_labels(MODEL, labels) == 0
    assert store.count_labels(MODEL, ts_after=None, known_at=None) == 620
