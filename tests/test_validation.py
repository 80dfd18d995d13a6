"""Window and batch validation: each bad input stops with a DataValidationError naming the window, the
column and the problem; good input comes back as a coerced copy, the caller's frame untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.simulator import CreditDefaultSimulator
from ml.validation import (
    DataValidationError,
    validate_csv,
    validate_incoming,
    validate_incoming_labels,
    validate_window,
)

SIM = CreditDefaultSimulator(seed=11, rows_per_period=30)


@pytest.fixture
def batch():
    return SIM.batch(2)


@pytest.fixture
def features(batch) -> pd.DataFrame:
    return batch.features.copy()


@pytest.fixture
def labelled(batch) -> pd.DataFrame:
    """Features with their label column, as a training or holdout window has them."""
    return batch.features.merge(batch.labels[["row_id", "label"]], on="row_id")


@pytest.fixture
def label_batch(batch) -> pd.DataFrame:
    return batch.labels.copy()


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataValidationError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---- validate_window ------------------------------------------------------------------------------


def test_good_window_is_coerced_copy(features, config):
    before = features.copy(deep=True)
    clean = validate_window(features, config, window="current")
    assert clean is not features
    pd.testing.assert_frame_equal(features, before)  # input untouched
    for name in config.numerical:
        assert clean[name].dtype == np.float64, name
    assert features["age"].dtype == np.int64  # the simulator's ints stay ints in the caller's frame
    for name in config.categorical:
        assert clean[name].dtype == object
        assert all(isinstance(v, str) for v in clean[name])
    assert clean["age"].tolist() == [float(v) for v in features["age"]]
    assert list(clean.columns) == list(features.columns)


def test_missing_column(features, config):
    message = _error(validate_window, features.drop(columns=["income", "home_ownership"]), config, window="current")
    assert "credit_default" in message
    assert "current window" in message
    assert "missing" in message
    assert "income" in message and "home_ownership" in message


def test_empty_window(features, config):
    message = _error(validate_window, features.iloc[:0], config, window="training")
    assert "training window" in message
    assert "empty" in message


def test_fewer_than_min_rows(features, config):
    message = _error(validate_window, features, config, window="holdout", min_rows=31)
    assert "holdout window" in message
    assert "30 row(s), at least 31 needed" in message
    # exactly min_rows is enough
    assert len(validate_window(features, config, window="holdout", min_rows=30)) == 30


def test_non_numeric_value_in_numerical_column(features, config):
    before = features.copy(deep=True)
    bad = features.copy()
    bad["debt_ratio"] = bad["debt_ratio"].astype(object)
    bad.loc[4, "debt_ratio"] = "n/a"
    bad.loc[7, "debt_ratio"] = "n/a"
    message = _error(validate_window, bad, config, window="current")
    assert "current window" in message
    assert "column 'debt_ratio'" in message
    assert "numerical" in message
    assert "2 non-numeric value(s)" in message
    assert "'n/a'" in message
    pd.testing.assert_frame_equal(features, before)


@pytest.mark.parametrize("column", ["income", "employment_type"])
def test_all_null_column(features, config, column):
    bad = features.copy()
    bad[column] = None
    message = _error(validate_window, bad, config, window="reference")
    assert "reference window" in message
    assert "entirely null" in message
    assert column in message


def test_some_nulls_are_allowed(features, config):
    bad = features.copy()
    bad.loc[0, "income"] = np.nan
    bad.loc[1, "employment_type"] = None
    clean = validate_window(bad, config, window="current")
    assert np.isnan(clean.loc[0, "income"])
    assert clean.loc[1, "employment_type"] is None
    assert clean.loc[2, "employment_type"] == bad.loc[2, "employment_type"]


def test_dtype_coercion(features, config):
    raw = features.copy()
    raw["income"] = raw["income"].map(lambda v: f"{v:.1f}")  # numeric strings
    raw["age"] = raw["age"].astype(object)
    raw["employment_type"] = np.arange(len(raw)) % 3  # ints in a categorical column
    clean = validate_window(raw, config, window="current")
    assert clean["income"].dtype == np.float64
    assert clean["income"].tolist() == pytest.approx(features["income"].tolist())
    assert clean["age"].dtype == np.float64
    assert clean["employment_type"].tolist()[:4] == ["0", "1", "2", "0"]
    assert raw["income"].map(type).eq(str).all()  # caller's frame still holds strings


def test_unknown_label_value(labelled, config):
    bad = labelled.copy()
    bad.loc[3, "label"] = 7
    message = _error(validate_window, bad, config, window="holdout", require_labels=True)
    assert "holdout window" in message
    assert "1 label(s) not in target.labels [0, 1]" in message
    assert "7" in message


def test_missing_labels_when_required(labelled, features, config):
    bad = labelled.copy()
    bad["label"] = bad["label"].astype(object)
    bad.loc[5, "label"] = None
    message = _error(validate_window, bad, config, window="training", require_labels=True)
    assert "training window" in message
    assert "without a label" in message
    # no label column at all is the same problem
    message = _error(validate_window, features, config, window="training", require_labels=True)
    assert "without a label" in message
    # not required: unlabelled rows are fine
    assert len(validate_window(bad, config, window="current")) == len(bad)


@pytest.mark.parametrize("raw", ["1", 1, 1.0, np.int64(1), True])
def test_labels_map_to_the_configured_type(labelled, config, raw):
    frame = labelled.copy()
    frame["label"] = pd.Series([raw if i % 2 else type(raw)(0) for i in range(len(frame))], dtype=object)
    clean = validate_window(frame, config, window="training", require_labels=True)
    assert clean["label"].tolist()[:4] == [0, 1, 0, 1]
    assert {type(v) for v in clean["label"].tolist()} == {int}
    assert type(frame["label"].iloc[1]) is type(raw)  # input unchanged


def test_string_labels_config(labelled, config):
    cfg = config.model_copy(update={"target": config.target.model_copy(update={"labels": ["0", "1"]})})
    clean = validate_window(labelled, cfg, window="training", require_labels=True)
    assert set(clean["label"]) == {"0", "1"}
    assert all(isinstance(v, str) for v in clean["label"])


# ---- validate_incoming ----------------------------------------------------------------------------


def test_incoming_good_batch(features, config):
    raw = features.copy()
    raw["ts"] = raw["ts"].map(lambda t: t.tz_convert("Europe/Paris").isoformat())  # offsets as text
    before = raw.copy(deep=True)
    clean = validate_incoming(raw, config)
    pd.testing.assert_frame_equal(raw, before)
    assert str(clean["ts"].dtype) == "datetime64[ns, UTC]"
    assert (clean["ts"] == features["ts"]).all()
    assert clean["income"].dtype == np.float64


def test_incoming_naive_ts_is_utc(features, config):
    raw = features.copy()
    raw["ts"] = raw["ts"].dt.tz_localize(None)
    clean = validate_incoming(raw, config)
    assert (clean["ts"] == features["ts"]).all()


@pytest.mark.parametrize("column", ["row_id", "ts"])
def test_incoming_missing_column(features, config, column):
    message = _error(validate_incoming, features.drop(columns=[column]), config)
    assert "incoming batch" in message
    assert f"required column '{column}' missing" in message


def test_incoming_missing_feature_column(features, config):
    message = _error(validate_incoming, features.drop(columns=["loan_amount"]), config, what="ingest of day 2")
    assert "ingest of day 2 window" in message
    assert "loan_amount" in message


def test_incoming_duplicated_row_id(features, config):
    bad = features.copy()
    bad.loc[9, "row_id"] = bad.loc[2, "row_id"]
    message = _error(validate_incoming, bad, config)
    assert "incoming batch" in message
    assert "duplicated row_id" in message
    assert bad.loc[2, "row_id"] in message


def test_incoming_null_row_id(features, config):
    bad = features.copy()
    bad.loc[0, "row_id"] = None
    message = _error(validate_incoming, bad, config)
    assert "1 row(s) without row_id" in message


def test_incoming_unparseable_ts(features, config):
    bad = features.copy()
    bad["ts"] = bad["ts"].map(lambda t: t.isoformat())
    bad.loc[6, "ts"] = "yesterday-ish"
    bad.loc[8, "ts"] = None
    message = _error(validate_incoming, bad, config)
    assert "incoming batch" in message
    assert "2 unparseable or missing ts" in message


def test_incoming_bad_value_names_column_and_value(features, config):
    bad = features.copy()
    bad["income"] = bad["income"].astype(object)
    bad.loc[1, "income"] = "forty thousand"
    message = _error(validate_incoming, bad, config)
    assert "incoming batch window" in message
    assert "column 'income'" in message
    assert "'forty thousand'" in message


# ---- validate_incoming_labels ---------------------------------------------------------------------


def test_incoming_labels_good(label_batch, config):
    raw = label_batch.copy()
    raw["label"] = raw["label"].astype(str)
    raw["labelled_at"] = raw["labelled_at"].map(lambda t: t.isoformat())
    before = raw.copy(deep=True)
    clean = validate_incoming_labels(raw, config)
    pd.testing.assert_frame_equal(raw, before)
    assert clean["label"].tolist() == label_batch["label"].tolist()
    assert {type(v) for v in clean["label"]} == {int}
    assert str(clean["labelled_at"].dtype) == "datetime64[ns, UTC]"
    assert (clean["labelled_at"] == label_batch["labelled_at"]).all()


@pytest.mark.parametrize("column", ["row_id", "label", "labelled_at"])
def test_incoming_labels_missing_column(label_batch, config, column):
    message = _error(validate_incoming_labels, label_batch.drop(columns=[column]), config)
    assert "incoming labels" in message
    assert f"required column '{column}' missing" in message


def test_incoming_labels_empty(label_batch, config):
    message = _error(validate_incoming_labels, label_batch.iloc[:0], config)
    assert "incoming labels" in message
    assert "empty" in message


def test_incoming_labels_null_label(label_batch, config):
    bad = label_batch.copy()
    bad["label"] = bad["label"].astype(object)
    bad.loc[[2, 3, 4], "label"] = None
    message = _error(validate_incoming_labels, bad, config)
    assert "incoming labels" in message
    assert "3 null label(s)" in message


def test_incoming_labels_unknown_value(label_batch, config):
    bad = label_batch.copy()
    bad["label"] = bad["label"].astype(object)
    bad.loc[0, "label"] = "yes"
    bad.loc[1, "label"] = 2
    message = _error(validate_incoming_labels, bad, config)
    assert "incoming labels" in message
    assert "2 label(s) not in target.labels" in message
    assert "'yes'" in message and "2" in message


def test_incoming_labels_unparseable_labelled_at(label_batch, config):
    bad = label_batch.copy()
    bad["labelled_at"] = bad["labelled_at"].map(lambda t: t.isoformat())
    bad.loc[5, "labelled_at"] = "when the cows come home"
    message = _error(validate_incoming_labels, bad, config)
    assert "incoming labels" in message
    assert "1 unparseable labelled_at" in message


def test_incoming_labels_duplicated_row_id(label_batch, config):
    bad = pd.concat([label_batch, label_batch.iloc[[4]].assign(label=1 - label_batch["label"].iloc[4])])
    message = _error(validate_incoming_labels, bad, config)
    assert "incoming labels" in message
    assert "duplicated row_id" in message
    assert label_batch["row_id"].iloc[4] in message


# ---- non-finite numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.inf, -np.inf, "inf", "-Infinity"])
def test_non_finite_numbers_are_refused(features, config, value):
    bad = features.copy()
    bad["income"] = bad["income"].astype(object)
    bad.loc[[3, 8], "income"] = value
    message = _error(validate_window, bad, config, window="current")
    assert "current window" in message
    assert "column 'income' holds 2 non-finite value(s)" in message
    assert repr(bad.loc[3, "row_id"]) in message  # which row to quarantine
    assert "column 'income'" in _error(validate_incoming, bad, config)


def test_non_finite_regression_label_is_refused(labelled, config):
    cfg = config.model_copy(update={"task": "regression"})
    bad = labelled.copy()
    bad["label"] = bad["label"].astype(float)
    bad.loc[2, "label"] = np.inf
    message = _error(validate_window, bad, cfg, window="training", require_labels=True)
    assert "1 non-numeric or non-finite label(s)" in message


# ---- times: the future, ISO 8601 -----------------------------------------------------------------------

NOW = pd.Timestamp("2026-03-01 12:00", tz="UTC").to_pydatetime()


def test_future_ts_is_refused_beyond_the_tolerance(features, config, monkeypatch):
    monkeypatch.delenv("DRIFTLINE_FUTURE_TOLERANCE", raising=False)
    raw = features.copy()
    raw.loc[4, "ts"] = pd.Timestamp("2099-01-01", tz="UTC")
    raw.loc[5, "ts"] = pd.Timestamp(NOW) + pd.Timedelta(minutes=61)
    message = _error(validate_incoming, raw, config, now=NOW)
    assert "2 ts value(s) in the future" in message
    assert "now + 1h" in message and "2026-03-01 13:00 UTC" in message
    assert "2099-01-01" in message
    assert "DRIFTLINE_FUTURE_TOLERANCE" in message
    # within the default tolerance (clock skew) is fine
    raw.loc[4, "ts"] = pd.Timestamp(NOW) + pd.Timedelta(minutes=59)
    raw.loc[5, "ts"] = pd.Timestamp(NOW) + pd.Timedelta(minutes=60)
    assert len(validate_incoming(raw, config, now=NOW)) == len(raw)
    # the setting
    monkeypatch.setenv("DRIFTLINE_FUTURE_TOLERANCE", "10m")
    assert "2 ts value(s) in the future (later than now + 10m" in _error(validate_incoming, raw, config, now=NOW)
    monkeypatch.setenv("DRIFTLINE_FUTURE_TOLERANCE", "2d")
    raw.loc[4, "ts"] = pd.Timestamp(NOW) + pd.Timedelta(days=1)
    assert len(validate_incoming(raw, config, now=NOW)) == len(raw)
    monkeypatch.setenv("DRIFTLINE_FUTURE_TOLERANCE", "soon")
    with pytest.raises(ValueError, match="DRIFTLINE_FUTURE_TOLERANCE: not a duration: 'soon'"):
        validate_incoming(raw, config, now=NOW)


def test_future_ts_is_refused_against_the_real_clock(features, config):
    raw = features.copy()
    raw.loc[0, "ts"] = "2099-01-01T00:00:00Z"
    assert "1 ts value(s) in the future" in _error(validate_incoming, raw, config)


def test_future_labelled_at_is_refused(label_batch, config):
    raw = label_batch.copy()
    raw.loc[1, "labelled_at"] = pd.Timestamp("2099-06-01", tz="UTC")
    message = _error(validate_incoming_labels, raw, config, now=NOW)
    assert "incoming labels" in message
    assert "1 labelled_at value(s) in the future" in message


def test_iso_times_with_mixed_precision_and_offsets_are_accepted(features, config):
    raw = features.iloc[:4].copy()
    raw["ts"] = ["2026-01-03T10:00:00Z", "2026-01-03T10:00:00.5Z", "2026-01-03T12:00:00.123456+02:00",
                 "2026-01-03 10:00"]
    clean = validate_incoming(raw, config)
    assert clean["ts"].tolist() == [
        pd.Timestamp("2026-01-03 10:00:00", tz="UTC"), pd.Timestamp("2026-01-03 10:00:00.5", tz="UTC"),
        pd.Timestamp("2026-01-03 10:00:00.123456", tz="UTC"), pd.Timestamp("2026-01-03 10:00:00", tz="UTC"),
    ]


def test_non_iso_time_is_named(features, config):
    raw = features.iloc[:3].copy()
    raw["ts"] = ["2026-01-03T10:00:00Z", "01/02/2026 10:00", "2026-01-03T11:00:00Z"]
    message = _error(validate_incoming, raw, config)
    assert "1 unparseable or missing ts value(s) (ISO 8601 expected), e.g. '01/02/2026 10:00'" in message


# ---- ids ----------------------------------------------------------------------------------------------


def test_ids_come_back_as_text(features, config):
    raw = features.iloc[:3].copy()
    raw["row_id"] = [7, 8, 9]
    assert validate_incoming(raw, config)["row_id"].tolist() == ["7", "8", "9"]
    raw["row_id"] = ["7", 7, "8"]  # the same id once it is text
    assert "duplicated row_id(s), e.g. ['7']" in _error(validate_incoming, raw, config)


def test_too_long_id_is_refused(features, config):
    raw = features.iloc[:3].copy()
    raw.loc[1, "row_id"] = "x" * 129
    assert "1 row_id(s) longer than 128 characters" in _error(validate_incoming, raw, config)


# ---- CSV files in chunks ----------------------------------------------------------------------------


def _csv(tmp_path, frame: pd.DataFrame, name: str = "rows.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_csv_ids_and_categories_are_read_as_text(tmp_path, features, config):
    raw = features.iloc[:3].copy()
    raw["row_id"] = ["007", "7", "NA"]  # NA is an id, not a missing value
    raw["home_ownership"] = ["01", "1", "own"]
    path = _csv(tmp_path, raw)
    (clean,) = list(validate_csv(path, config, kind="rows", chunk_rows=10))
    assert clean["row_id"].tolist() == ["007", "7", "NA"]
    assert clean["home_ownership"].tolist() == ["01", "1", "own"]


def test_csv_chunks_cover_the_file_and_name_the_rows(tmp_path, features, config):
    path = _csv(tmp_path, features)  # 30 rows
    chunks = list(validate_csv(path, config, kind="rows", chunk_rows=8))
    assert [len(c) for c in chunks] == [8, 8, 8, 6]
    assert pd.concat(chunks)["row_id"].tolist() == features["row_id"].tolist()

    bad = features.copy()
    bad["income"] = bad["income"].astype(object)
    bad.loc[[18, 19], "income"] = "inf"
    message = _error(list, validate_csv(_csv(tmp_path, bad), config, kind="rows", chunk_rows=8))
    assert "rows.csv rows 17-24" in message and "2 non-finite" in message


def test_csv_id_repeated_in_a_later_chunk_is_refused(tmp_path, features, config):
    bad = features.copy()
    bad.loc[25, "row_id"] = bad.loc[2, "row_id"]
    message = _error(list, validate_csv(_csv(tmp_path, bad), config, kind="rows", chunk_rows=8))
    assert "already earlier in the file" in message and bad.loc[2, "row_id"] in message


def test_csv_labels_and_empty_file(tmp_path, label_batch, config):
    labels = label_batch.copy()
    (clean,) = list(validate_csv(_csv(tmp_path, labels, "labels.csv"), config, kind="labels", chunk_rows=100))
    assert clean["label"].tolist() == label_batch["label"].tolist()  # "0"/"1" text -> the configured 0/1
    assert {type(v) for v in clean["label"]} == {int}
    empty = _csv(tmp_path, labels.iloc[:0], "empty.csv")
    assert "empty (no rows)" in _error(list, validate_csv(empty, config, kind="labels", chunk_rows=100))


# ---- per-feature bounds and categories (optional fields of the model YAML) ---------------------------


def _bounded(config, **fields):
    from ml.config import FeatureSpec

    if "min" not in FeatureSpec.model_fields:
        pytest.skip("ml/config.py has no per-feature min / max / categories")
    features = [f.model_copy(update=fields[f.name]) if f.name in fields else f for f in config.features]
    return config.model_copy(update={"features": features})


def test_value_outside_bounds_is_refused(features, config):
    cfg = _bounded(config, age={"min": 18.0, "max": 100.0})
    raw = features.copy()
    raw.loc[[2, 5], "age"] = [17, 101]
    message = _error(validate_incoming, raw, cfg)
    assert "column 'age' holds 2 value(s) outside its bounds [18, 100], e.g. 17" in message
    assert repr(raw.loc[2, "row_id"]) in message
    raw.loc[[2, 5], "age"] = [18, 100]  # bounds are inclusive
    assert len(validate_incoming(raw, cfg)) == len(raw)
    raw.loc[2, "age"] = np.nan  # a null is no value outside the bounds
    assert len(validate_incoming(raw, cfg)) == len(raw)
    one_sided = _bounded(config, income={"min": 0.0})
    raw.loc[3, "income"] = -1
    assert "outside its bounds [0, +inf], e.g. -1" in _error(validate_incoming, raw, one_sided)


def test_category_outside_the_list_is_refused(features, config):
    allowed = tuple(sorted(features["employment_type"].astype(str).unique()))
    cfg = _bounded(config, employment_type={"categories": allowed})
    assert len(validate_incoming(features, cfg)) == len(features)
    raw = features.copy()
    raw.loc[4, "employment_type"] = "astronaut"
    raw.loc[6, "employment_type"] = None  # null passes
    message = _error(validate_incoming, raw, cfg)
    assert "column 'employment_type' holds 1 value(s) not in its categories" in message
    assert "e.g. 'astronaut'" in message and allowed[0] in message
    # windows of stored data are not held to bounds set later
    assert len(validate_window(raw, cfg, window="current")) == len(raw)
