"""`driftline ingest` and `driftline quarantine` as a user runs them, on SQLite and PostgreSQL: bad input
is refused in one line with exit 2 and nothing of it stored; good input is stored whole."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from driftline.cli import main
from ml import store as store_module
from ml.simulator import CreditDefaultSimulator
from ml.store import Store

MODEL = "credit_default"
SIM = CreditDefaultSimulator(seed=21, rows_per_period=30)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, home, monkeypatch) -> Store:
    url = f"sqlite:///{home}/store.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    saved = dict(os.environ)  # main() exports Driftline's environment into this process
    monkeypatch.setenv("DRIFTLINE_STORE_URL", url)
    yield Store(url)
    os.environ.clear()
    os.environ.update(saved)
    if request.param == "sqlite":
        engine = store_module._engines.pop(url, None)
        if engine is not None:
            engine.dispose()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _count(store: Store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(table.c.model == MODEL)).scalar()


def _rows_csv(tmp_path, frame: pd.DataFrame, name: str = "rows.csv") -> str:
    out = frame.copy()
    out["ts"] = out["ts"].map(lambda t: t.isoformat())
    path = tmp_path / name
    out.to_csv(path, index=False)
    return str(path)


def _labels_csv(tmp_path, frame: pd.DataFrame, name: str = "labels.csv") -> str:
    out = frame.copy()
    out["labelled_at"] = out["labelled_at"].map(lambda t: t.isoformat())
    path = tmp_path / name
    out.to_csv(path, index=False)
    return str(path)


def _refused(code: int, out: str, err: str) -> str:
    """Exit 2, one line on stderr, no traceback; returns the line."""
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("driftline: error: ")
    return lines[0]


# ---- values ---------------------------------------------------------------------------------------


def test_inf_is_refused_naming_column_and_count(store, tmp_path, capsys):
    """Before: accepted on SQLite (scoring then failed on every run); a raw psycopg2 traceback
    ('invalid input syntax for type json') on PostgreSQL."""
    rows = SIM.batch(0).features
    path = tmp_path / "rows.csv"
    text = rows.assign(ts=rows["ts"].map(lambda t: t.isoformat())).to_csv(index=False).splitlines()
    header = text[0].split(",")
    column = header.index("income")
    for line in (3, 7):
        cells = text[line].split(",")
        cells[column] = "inf" if line == 3 else "-inf"
        text[line] = ",".join(cells)
    path.write_text("\n".join(text) + "\n")
    line = _refused(*_run(capsys, "ingest", MODEL, "--rows", str(path)))
    assert "column 'income' holds 2 non-finite value(s)" in line
    assert _count(store, store_module.observations) == 0


def test_future_row_is_refused(store, tmp_path, capsys):
    rows = SIM.batch(0).features.copy()
    rows.loc[4, "ts"] = pd.Timestamp("2099-01-01", tz="UTC")
    line = _refused(*_run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, rows)))
    assert "1 ts value(s) in the future" in line and "2099-01-01" in line
    assert _count(store, store_module.observations) == 0
    assert store.latest_ts(MODEL) is None  # as_of did not jump to 2099


def test_mixed_iso_precision_is_accepted(store, tmp_path, capsys):
    """Before: refused with a wrong count (pandas guessed one format from the first value)."""
    rows = SIM.batch(0).features.copy()
    path = tmp_path / "rows.csv"
    out = rows.copy()
    out["ts"] = [t.strftime("%Y-%m-%dT%H:%M:%SZ") if i % 2 else t.isoformat() for i, t in enumerate(rows["ts"])]
    out.to_csv(path, index=False)
    code, printed, err = _run(capsys, "ingest", MODEL, "--rows", str(path))
    assert code == 0, err
    assert "30 rows: stored 30 new, 0 already stored" in printed
    stored = store.load(MODEL, ["income"])["ts"]
    assert (stored.iloc[::2].to_numpy() == rows["ts"].iloc[::2].to_numpy()).all()  # microseconds kept


# ---- ids ------------------------------------------------------------------------------------------


def test_ids_are_text_007_is_not_7(store, tmp_path, capsys):
    """Before: 007 was read as the number 7 and stored as '7'; a distinct row 7 was then dropped."""
    batch = SIM.batch(0)
    rows, labels = batch.features.iloc[:3].copy(), batch.labels.iloc[:3].copy()
    rows["row_id"] = labels["row_id"] = ["007", "7", "0x1F"]
    code, printed, err = _run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, rows),
                              "--labels", _labels_csv(tmp_path, labels))
    assert code == 0, err
    assert "3 rows: stored 3 new" in printed and "3 labels: stored 3 new" in printed
    stored = store.load(MODEL, ["income"]).set_index("row_id")
    assert sorted(stored.index) == ["007", "0x1F", "7"]
    assert stored.loc["007", "label"] == labels["label"].iloc[0]


# ---- re-sends -------------------------------------------------------------------------------------


def test_identical_resend_is_reported_as_already_stored(store, tmp_path, capsys):
    batch = SIM.batch(0)
    rows, labels = _rows_csv(tmp_path, batch.features), _labels_csv(tmp_path, batch.labels)
    assert _run(capsys, "ingest", MODEL, "--rows", rows, "--labels", labels)[0] == 0
    code, printed, _ = _run(capsys, "ingest", MODEL, "--rows", rows, "--labels", labels)
    assert code == 0
    assert "30 rows: stored 0 new, 30 already stored" in printed
    assert "30 labels: stored 0 new, 30 already stored" in printed


def test_resent_rows_with_new_values_are_refused_whole(store, tmp_path, capsys):
    """Before: dropped silently with exit 0 ("stored 0 new rows")."""
    first = SIM.batch(0).features
    assert _run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, first))[0] == 0
    again = pd.concat([first.iloc[:10], SIM.batch(1).features.iloc[:10]], ignore_index=True)
    again.loc[[2, 6], "income"] = again.loc[[2, 6], "income"] + 1000
    line = _refused(*_run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, again, "again.csv")))
    assert "2 row(s) already stored with another ts or other feature values" in line
    assert first["row_id"].iloc[2] in line and first["row_id"].iloc[6] in line
    assert _count(store, store_module.observations) == 30  # the 10 new rows of that file neither


def test_label_correction_is_refused(store, tmp_path, capsys):
    batch = SIM.batch(0)
    assert _run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, batch.features),
                "--labels", _labels_csv(tmp_path, batch.labels))[0] == 0
    fixed = batch.labels.copy()
    fixed.loc[5, "label"] = 1 - fixed.loc[5, "label"]
    line = _refused(*_run(capsys, "ingest", MODEL, "--labels", _labels_csv(tmp_path, fixed, "fixed.csv")))
    assert "1 label(s) already stored with another value" in line and fixed["row_id"].iloc[5] in line
    assert store.load(MODEL, ["income"])["label"].tolist() == batch.labels["label"].tolist()


# ---- rows and labels together: all or nothing -----------------------------------------------------


def test_rows_and_labels_for_unknown_rows_store_nothing(store, tmp_path, capsys):
    """Before: the rows were committed, then the labels refused (exit 2, half the input stored)."""
    batch = SIM.batch(0)
    labels = pd.concat([batch.labels, SIM.batch(1).labels.iloc[:2]], ignore_index=True)
    line = _refused(*_run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, batch.features),
                          "--labels", _labels_csv(tmp_path, labels)))
    assert "labels for 2 row(s) never scored or stored" in line
    assert _count(store, store_module.observations) == 0 and _count(store, store_module.labels) == 0


def test_label_before_its_row_rolls_back_the_rows_too(store, tmp_path, capsys):
    batch = SIM.batch(0)
    labels = batch.labels.copy()
    labels.loc[8, "labelled_at"] = batch.features.loc[8, "ts"] - pd.Timedelta(hours=1)
    line = _refused(*_run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, batch.features),
                          "--labels", _labels_csv(tmp_path, labels)))
    assert "1 label(s) with labelled_at before their row's ts" in line and labels["row_id"].iloc[8] in line
    assert _count(store, store_module.observations) == 0 and _count(store, store_module.labels) == 0


def test_chunked_file_with_a_conflict_in_its_last_chunk_stores_nothing(store, tmp_path, capsys):
    first = SIM.batch(0).features
    assert _run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, first.iloc[25:]))[0] == 0
    changed = first.copy()
    changed.loc[29, "age"] = changed.loc[29, "age"] + 1
    line = _refused(*_run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, changed, "all.csv"),
                          "--chunk-rows", "7"))
    assert "1 row(s) already stored" in line and first["row_id"].iloc[29] in line
    assert _count(store, store_module.observations) == 5  # the first four chunks were rolled back
    code, printed, _ = _run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, first, "ok.csv"),
                            "--chunk-rows", "7")
    assert code == 0 and "30 rows: stored 25 new, 5 already stored" in printed


def test_missing_file_is_one_line(store, tmp_path, capsys):
    line = _refused(*_run(capsys, "ingest", MODEL, "--rows", str(tmp_path / "absent.csv")))
    assert "absent.csv: no such file" in line


# ---- database errors ------------------------------------------------------------------------------


def test_unreachable_database_is_one_line_without_values(tmp_path, capsys, monkeypatch, home):
    saved = dict(os.environ)
    try:
        monkeypatch.setenv("DRIFTLINE_STORE_URL", "postgresql+psycopg2://postgres:s3cret@127.0.0.1:1/nowhere")
        rows = SIM.batch(0).features
        code, _, err = _run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, rows))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("driftline: error: store postgresql+psycopg2://postgres:***@127.0.0.1:1/nowhere: ")
    assert "OperationalError" in line and "s3cret" not in line


def test_database_refusing_data_is_one_line_without_row_values(store, tmp_path, capsys, monkeypatch):
    from sqlalchemy.exc import DataError

    class Refused(Exception):
        def __str__(self) -> str:
            return 'invalid input syntax for type json\nDETAIL:  Token "Infinity" is invalid.\nCONTEXT: secret-row-42'

    def refuse(*_args, **_kwargs):
        raise DataError("INSERT INTO dl_observations ...", {"row_id": "secret-row-42"}, Refused())

    monkeypatch.setattr(store_module.BatchWriter, "add_observations", refuse)
    line = _refused(*_run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, SIM.batch(0).features)))
    assert line.endswith(": Refused: invalid input syntax for type json")
    assert "secret-row-42" not in line and "INSERT" not in line


# ---- quarantine -----------------------------------------------------------------------------------


def _with_a_2099_row(store, tmp_path, capsys) -> pd.DataFrame:
    batch = SIM.batch(0)
    assert _run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, batch.features))[0] == 0
    # Stored before ingest refused future rows (or by a job that skips validation).
    future = batch.features.iloc[:1].copy()
    future["row_id"] = "clock-bug"
    future["ts"] = pd.Timestamp("2099-01-01", tz="UTC")
    store.add_observations(MODEL, future, ["income"])
    assert store.latest_ts(MODEL).year == 2099
    return batch.features


def test_quarantine_by_id_brings_as_of_back(store, tmp_path, capsys):
    rows = _with_a_2099_row(store, tmp_path, capsys)
    code, printed, err = _run(capsys, "quarantine", MODEL, "--ids", "clock-bug", "--reason", "upstream clock bug",
                              "--actor", "ana")
    assert code == 0, err
    assert "quarantined 1 row(s): clock-bug" in printed
    assert store.latest_ts(MODEL) == rows["ts"].max().to_pydatetime()
    assert rows["ts"].max().isoformat()[:19] in printed
    (entry,) = store.audit_log(MODEL, ["quarantine"])
    assert entry["actor"] == "ana" and entry["details"]["reason"] == "upstream clock bug"

    code, printed, _ = _run(capsys, "quarantine", MODEL, "--ids", "clock-bug", "--reason", "oops", "--release")
    assert code == 0 and "released 1 row(s)" in printed
    assert store.latest_ts(MODEL).year == 2099


def test_quarantine_by_range(store, tmp_path, capsys):
    rows = _with_a_2099_row(store, tmp_path, capsys)
    code, printed, _ = _run(capsys, "quarantine", MODEL, "--from", "2090-01-01T00:00:00Z", "--reason", "future")
    assert code == 0 and "quarantined 1 row(s)" in printed
    start, end = rows["ts"].iloc[0].isoformat(), rows["ts"].iloc[4].isoformat()
    code, printed, _ = _run(capsys, "quarantine", MODEL, "--from", start, "--until", end, "--reason", "outage")
    assert code == 0 and "quarantined 5 row(s)" in printed
    assert len(store.load(MODEL, ["income"])) == 25
    assert len(store.audit_log(MODEL, ["quarantine"])) == 2


@pytest.mark.parametrize("argv, expected", [
    (["--ids", "nope", "--reason", "x"], "1 row_id(s) not stored, e.g. ['nope']; nothing quarantined"),
    (["--ids", "clock-bug", "--from", "2090-01-01", "--reason", "x"], "give --ids, or --from and/or --until"),
    (["--from", "next tuesday", "--reason", "x"], "--from: not an ISO 8601 time: 'next tuesday'"),
    (["--ids", "clock-bug", "--reason", "  "], "a reason is required"),
])
def test_quarantine_bad_input(store, tmp_path, capsys, argv, expected):
    _with_a_2099_row(store, tmp_path, capsys)
    assert expected in _refused(*_run(capsys, "quarantine", MODEL, *argv))
    assert store.latest_ts(MODEL).year == 2099 and store.audit_log(MODEL) == []



def test_unparsable_store_url_is_one_line(tmp_path, capsys, monkeypatch, home):
    saved = dict(os.environ)
    try:
        monkeypatch.setenv("DRIFTLINE_STORE_URL", "not a url")
        code, _, err = _run(capsys, "ingest", MODEL, "--rows", _rows_csv(tmp_path, SIM.batch(0).features))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("driftline: error: store (DRIFTLINE_STORE_URL or data.store_url): ArgumentError: ")


def test_the_model_argument_is_a_name_not_a_path(tmp_path, capsys):
    from driftline.cli import main

    root = Path(__file__).resolve().parent.parent
    outside = tmp_path / "elsewhere.yaml"  # a valid model YAML, outside the models folder
    outside.write_text((root / "models" / "credit_default.yaml").read_text())
    rows = tmp_path / "rows.csv"
    rows.write_text("row_id,ts\n")
    assert main(["ingest", "../" * 12 + str(outside.with_suffix("")).lstrip("/"), "--rows", str(rows)]) == 2
    assert "a model name (lower-case letters, digits, _), not a path" in capsys.readouterr().err
