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

    # the same rows again: nothing new, nothing changed
    assert store.add_observations(MODEL, rows, config.feature_names) == 0
    pd.testing.assert_frame_equal(store.load(MODEL, config.feature_names), first)

    # a batch half old, half new stores only the new half
    mixed = pd.concat([rows.iloc[:10], _rows(config, 1).iloc[:15]], ignore_index=True)
    assert store.add_observations(MODEL, mixed, config.feature_names) == 15
    assert _count(store, store_module.observations) == 55


def test_resent_rows_with_other_values_are_refused_whole(store, config):
    """Before: a re-sent row with new values was dropped silently ("stored 0 new rows")."""
    rows = _rows(config, 0)
    store.add_observations(MODEL, rows, config.feature_names)
    first = store.load(MODEL, config.feature_names)

    changed = pd.concat([rows.iloc[:5], _rows(config, 1).iloc[:5]], ignore_index=True)  # 5 stored, 5 new
    changed.loc[1, "income"] += 1.0
    changed.loc[3, "ts"] += pd.Timedelta(seconds=1)
    with pytest.raises(store_module.ConflictError) as info:
        store.add_observations(MODEL, changed, config.feature_names)
    message = str(info.value)
    assert "2 row(s) already stored with another ts or other feature values" in message
    assert rows.loc[1, "row_id"] in message and rows.loc[3, "row_id"] in message
    assert rows.loc[0, "row_id"] not in message  # an identical re-send is no conflict
    assert "nothing stored" in message
    pd.testing.assert_frame_equal(store.load(MODEL, config.feature_names), first)  # the 5 new rows neither
    assert _count(store, store_module.observations) == 40


def test_batch_counts_already_stored_and_rolls_back_every_chunk(store, config):
    rows = _rows(config, 0)
    store.add_observations(MODEL, rows.iloc[:10], config.feature_names)
    with store.batch(MODEL, config.feature_names) as writer:
        first = writer.add_observations(rows.iloc[:20])
        second = writer.add_observations(rows.iloc[20:])
        labels = writer.add_labels(_labels(config, 0))  # rows written by this same transaction
    assert (first.new, first.already_stored, second.new, second.already_stored) == (10, 10, 20, 0)
    assert (writer.rows.new, writer.rows.already_stored) == (30, 10)
    assert (labels.new, writer.labels.new) == (40, 40)

    other = _rows(config, 1)
    flipped = _labels(config, 0)
    flipped.loc[7, "label"] = 1 - flipped.loc[7, "label"]
    with pytest.raises(store_module.ConflictError, match="1 label"), store.batch(MODEL, config.feature_names) as w:
        w.add_observations(other)  # fine on its own ...
        w.add_labels(_labels(config, 1))
        w.add_labels(flipped)  # ... but refused with the conflicting label: all of it goes
    assert _count(store, store_module.observations) == 40
    assert _count(store, store_module.labels) == 40


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

    # the same labels, known later: already stored, the first labelled_at (when it became known) stays
    later = labels.copy()
    later["labelled_at"] = later["labelled_at"] + pd.Timedelta(days=5)
    assert store.add_labels(MODEL, later) == 20  # only the 20 without a label yet

    out = store.load(MODEL, config.feature_names)
    assert out["label"].tolist() == labels["label"].tolist()
    assert (out["labelled_at"].iloc[:20] == labels["labelled_at"].iloc[:20]).all()
    assert (out["labelled_at"].iloc[20:] == later["labelled_at"].iloc[20:]).all()
    assert store.add_labels(MODEL, labels) == 0
    assert store.add_labels(MODEL, labels.iloc[:0]) == 0


def test_label_corrections_are_refused_loudly(store, config):
    """Before: a corrected label was dropped silently, exit 0."""
    store.add_observations(MODEL, _rows(config, 0), config.feature_names)
    labels = _labels(config, 0)
    store.add_labels(MODEL, labels.iloc[:20])
    flipped = labels.copy()
    flipped.loc[[2, 5, 9], "label"] = 1 - flipped.loc[[2, 5, 9], "label"]
    with pytest.raises(store_module.ConflictError) as info:
        store.add_labels(MODEL, flipped)
    message = str(info.value)
    assert "3 label(s) already stored with another value" in message
    assert all(labels.loc[i, "row_id"] in message for i in (2, 5, 9))
    assert _count(store, store_module.labels) == 20  # the 20 new ones in that file were not stored either


def test_label_known_before_its_row_is_refused(store, config):
    rows = _rows(config, 0)
    store.add_observations(MODEL, rows, config.feature_names)
    labels = _labels(config, 0)
    labels.loc[4, "labelled_at"] = rows.loc[4, "ts"] - pd.Timedelta(minutes=1)
    labels.loc[6, "labelled_at"] = rows.loc[6, "ts"]  # at the same instant is fine
    with pytest.raises(store_module.ConflictError) as info:
        store.add_labels(MODEL, labels)
    assert "1 label(s) with labelled_at before their row's ts" in str(info.value)
    assert rows.loc[4, "row_id"] in str(info.value)
    assert _count(store, store_module.labels) == 0
    assert store.add_labels(MODEL, labels.drop(index=4)) == 39


def test_infinite_feature_never_reaches_the_database(store, config):
    """On PostgreSQL inf used to die inside the driver ("invalid input syntax for type json")."""
    rows = _rows(config, 0)
    rows.loc[3, "income"] = np.inf
    with pytest.raises(store_module.ConflictError, match=r"1 row\(s\) with a non-finite feature value"):
        store.add_observations(MODEL, rows, config.feature_names)
    assert _count(store, store_module.observations) == 0


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
    unknown = pd.DataFrame({"row_id": ["no-such-row", rows["row_id"].iloc[0]], "prediction": [1, 0], "score": [0.5, 0.05]})
    assert store.record_predictions(MODEL, unknown, version=1, scored_at=scored_at) == 1  # counts stored rows only
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


# ---- quarantine ---------------------------------------------------------------------------------


def test_quarantine_takes_a_future_row_out_of_every_window(store, config):
    rows = _ingest(store, config, [0])
    real_newest = rows["ts"].max().to_pydatetime()
    future = _rows(config, 1).iloc[:1].copy()
    future["row_id"] = "from-2099"
    future["ts"] = pd.Timestamp("2099-01-01", tz="UTC")  # slipped in before ingest refused such rows
    store.add_observations(MODEL, future, config.feature_names)
    store.add_labels(MODEL, pd.DataFrame({"row_id": ["from-2099"], "label": [1],
                                          "labelled_at": [pd.Timestamp("2099-01-02", tz="UTC")]}))
    assert store.latest_ts(MODEL).year == 2099
    assert store.latest_labelled_ts(MODEL).year == 2099
    assert store.count_labels(MODEL, ts_after=None, known_at=None) == 41

    result = store.quarantine(MODEL, ids=["from-2099"], reason="clock bug upstream", actor="ana")
    assert (result.rows, result.already, result.ids) == (1, 0, ["from-2099"])
    assert store.latest_ts(MODEL) == real_newest  # as_of goes back to the real newest row
    assert store.latest_labelled_ts(MODEL) == real_newest
    assert store.count_labels(MODEL, ts_after=None, known_at=None) == 40
    loaded = store.load(MODEL, config.feature_names)
    assert len(loaded) == 40 and "from-2099" not in set(loaded["row_id"])
    assert len(store.load(MODEL, config.feature_names, labelled_only=True)) == 40
    assert _count(store, store_module.observations) == 41  # still stored, not deleted

    (entry,) = store.audit_log(MODEL, ["quarantine"])
    assert entry["actor"] == "ana"
    assert entry["details"]["reason"] == "clock bug upstream"
    assert entry["details"]["ids"] == ["from-2099"] and entry["details"]["rows"] == 1
    (listed,) = store.quarantined(MODEL)
    assert listed["row_id"] == "from-2099" and listed["reason"] == "clock bug upstream"
    assert listed["ts"].year == 2099

    # again: nothing new; then reversible
    assert store.quarantine(MODEL, ids=["from-2099"], reason="again", actor="ana").already == 1
    assert store.release(MODEL, ids=["from-2099"], reason="clock fixed, row is real", actor="bo") == 1
    assert store.latest_ts(MODEL).year == 2099
    assert store.audit_log(MODEL, ["quarantine_released"])[0]["actor"] == "bo"


def test_quarantine_by_time_range_is_inclusive(store, config):
    rows = _ingest(store, config, [0, 1], labelled=False)
    start, end = rows["ts"].iloc[10], rows["ts"].iloc[19]
    result = store.quarantine(MODEL, ts_from=start, ts_until=end, reason="sensor outage", actor="ana")
    assert result.rows == 10
    left = store.load(MODEL, config.feature_names)["row_id"].tolist()
    assert left == rows["row_id"].iloc[:10].tolist() + rows["row_id"].iloc[20:].tolist()
    # an open end: everything from a time on
    assert store.quarantine(MODEL, ts_from=rows["ts"].iloc[70], reason="late batch").rows == 10
    assert len(store.load(MODEL, config.feature_names)) == 60


def test_quarantine_refuses_unknown_ids_and_needs_a_reason(store, config):
    _ingest(store, config, [0], labelled=False)
    with pytest.raises(ValueError, match=r"1 row_id\(s\) not stored, e\.g\. \['nope'\]; nothing quarantined"):
        store.quarantine(MODEL, ids=["s5-p0-00001", "nope"], reason="x")
    with pytest.raises(ValueError, match="reason is required"):
        store.quarantine(MODEL, ids=["s5-p0-00001"], reason=" ")
    with pytest.raises(ValueError, match="either row ids or a time range"):
        store.quarantine(MODEL, reason="x")
    with pytest.raises(ValueError, match="no stored row with ts in"):
        store.quarantine(MODEL, ts_from=datetime(2090, 1, 1, tzinfo=UTC), reason="x")
    assert store.quarantined(MODEL) == [] and store.audit_log(MODEL) == []
    assert len(store.load(MODEL, config.feature_names)) == 40


# ---- shadow predictions -------------------------------------------------------------------------


def test_shadow_predictions_stay_beside_the_rows_own_and_load_paired(store, config):
    rows = _ingest(store, config, [0], labelled=False)
    ids = rows["row_id"].tolist()
    at = datetime(2026, 1, 2, tzinfo=UTC)
    store.record_predictions(MODEL, pd.DataFrame({"row_id": ids[:20], "prediction": [0] * 20, "score": [0.1] * 20}),
                             version=1, scored_at=at)
    shadow = pd.DataFrame({"row_id": ids[:10] + ["no-such-row"], "prediction": [1] * 11, "score": [0.9] * 11})
    assert store.record_shadow_predictions(MODEL, shadow, version=2, scored_at=at) == 10  # stored rows only
    again = shadow.assign(prediction=0, score=0.2)
    assert store.record_shadow_predictions(MODEL, again, version=2, scored_at=at) == 0  # the first one stays
    assert store.record_shadow_predictions(MODEL, shadow.iloc[:3], version=3, scored_at=at) == 3  # another version

    # the row's own prediction is the champion's, untouched
    assert store.load(MODEL, config.feature_names, version=1)["prediction"].tolist() == [0] * 20
    paired = store.load_shadow(MODEL, config.feature_names, 2, champion=1)
    assert paired["row_id"].tolist() == ids[:10]
    assert paired["prediction"].tolist() == [0] * 10 and paired["shadow_prediction"].tolist() == [1] * 10
    np.testing.assert_allclose(paired["shadow_score"], 0.9)
    assert paired["model_version"].tolist() == [1] * 10
    assert paired["label"].isna().all()
    assert store.load_shadow(MODEL, config.feature_names, 2, champion=7).empty
    assert store.load_shadow(MODEL, config.feature_names, 2, labelled_only=True).empty

    labels = _labels(config, 0)
    store.add_labels(MODEL, labels)
    labelled = store.load_shadow(MODEL, config.feature_names, 2, labelled_only=True)
    assert labelled["row_id"].tolist() == ids[:10]
    known = dict(zip(labels["row_id"], labels["label"], strict=True))
    assert labelled["label"].tolist() == [known[i] for i in ids[:10]]
    before = labels["labelled_at"].min() - timedelta(seconds=1)
    assert store.load_shadow(MODEL, config.feature_names, 2, labelled_only=True, labelled_until=before).empty
    store.quarantine(MODEL, ids=ids[:2], reason="test")
    assert store.load_shadow(MODEL, config.feature_names, 2)["row_id"].tolist() == ids[2:10]


def test_shadow_table_is_added_to_a_database_made_before_it(home, config):
    from sqlalchemy import create_engine, inspect

    url = f"sqlite:///{home}/old.db"
    old = create_engine(url)
    tables = [t for name, t in store_module.metadata.tables.items() if name != "dl_shadow_predictions"]
    store_module.metadata.create_all(old, tables=tables)
    assert "dl_shadow_predictions" not in inspect(old).get_table_names()
    old.dispose()
    try:
        s = Store(url)
        assert "dl_shadow_predictions" in inspect(s.engine).get_table_names()
        rows = _ingest(s, config, [0], labelled=False)
        frame = pd.DataFrame({"row_id": rows["row_id"].iloc[:2], "prediction": [1, 0]})
        assert s.record_shadow_predictions(MODEL, frame, 5, datetime(2026, 1, 1, tzinfo=UTC)) == 2
    finally:
        engine = store_module._engines.pop(url, None)
        if engine is not None:
            engine.dispose()
