"""What a person reads: the demo's timeline (pure functions of its rows), the failure line
``driftline trigger`` prints from a task's log, and ``driftline up``'s progress lines. No Airflow
runs, no servers: each is fed hand-made rows, log entries or health answers."""

from __future__ import annotations

import re

import pytest

from driftline import demo
from driftline.api import failure_line
from driftline.stack import healthy_components, progress_lines


def _row(**overrides) -> dict:
    row = {"period": 8, "step": "drift, labels in", "drift_share": 0.56, "live_metric": 0.763,
           "trigger": "threshold", "action": "promoted", "forced": False, "guard": "keep",
           "guard_reason": "no previous champion", "champion_version": 2, "ok": True, "reasons": [],
           "held_back": [], "evaluation": None}
    return row | overrides


# ---- the timeline's columns ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {},
    {"action": "promoted", "forced": True},
    {"action": "rejected", "guard": "rollback"},  # was "rollback+rejected", wider than its column
    {"action": "skipped", "guard": "rollback"},
    {"action": "failed", "trigger": "?", "drift_share": None, "live_metric": None, "champion_version": None},
    {"period": 15, "step": "guard", "ok": False},
])
def test_every_row_lines_up_under_the_header(overrides):
    header = demo.format_header("roc_auc")
    line = demo.format_row(_row(**overrides))
    # The last column ("ok": yes / NO) starts where its title starts: nothing before it overflowed.
    assert line.rindex(" ") == header.rindex(" "), f"\n{header}\n{line}"
    # Each column ends where its title ends (right-aligned) or starts where it starts (left-aligned).
    for title in ("drift", "live roc_auc", "champion"):
        end = header.index(title) + len(title)
        assert line[end - 1] != " " and line[end:end + 1] in (" ", ""), (title, header, line)
    for title in ("trigger", "action", "guard"):
        start = header.index(title)
        assert line[start] != " " and line[start - 1] == " ", (title, header, line)


def test_a_rollback_shows_in_the_guard_column_and_the_action_stays_the_runs_own():
    line = demo.format_row(_row(action="rejected", guard="rollback", champion_version=2))
    header = demo.format_header("roc_auc")
    assert line[header.index("action"):].split()[:2] == ["rejected", "rollback"]
    assert "+" not in line


# ---- the lines under a row ---------------------------------------------------------------------------


def test_forced_promotion_says_the_gate_rejected_it_and_a_person_promoted_it():
    row = _row(action="promoted", forced=True,
               evaluation="reject: roc_auc 0.7409 vs champion 0.8729 (-0.1320, 95% lower bound -0.1647, n=807)")
    text = demo.gate_text(row)
    assert text.startswith("rejected by the gate, promoted by force: roc_auc 0.7409 vs champion 0.8729")
    assert "-> promote" not in text


@pytest.mark.parametrize(("summary", "forced", "head"), [
    ("promote: roc_auc 0.8976 vs champion 0.7629 (+0.1347)", False, "passed the gate: roc_auc 0.8976"),
    ("reject: roc_auc 0.8841 vs champion 0.8831 (+0.0011)", False, "rejected by the gate: roc_auc 0.8841"),
    ("promote: roc_auc 0.90 vs champion 0.80 (+0.10)", True, "passed the gate: roc_auc 0.90"),
])
def test_gate_text_names_the_verdict_in_words(summary, forced, head):
    assert demo.gate_text(_row(evaluation=summary, forced=forced)).startswith(head)


def test_no_candidate_no_gate_line():
    assert demo.gate_text(_row(evaluation=None)) is None
    assert not any("evaluation:" in line for line in demo.detail_lines(_row(action="skipped"), _row()))


def test_long_reasons_wrap_at_word_boundaries_and_lose_nothing():
    held = ("drift since 2026-01-14 23:57: 0 labelled rows from after it can train a model, 500 needed "
            "(a retrain now would learn the old data)")
    lines = demo.detail_lines(_row(held_back=[held]), _row())
    assert len(lines) >= 2, lines
    assert all(len(line) <= demo.DETAIL_WIDTH for line in lines)
    # Every word of the reason is printed whole (no cut mid-word, nothing dropped).
    printed = " ".join(line.strip() for line in lines).replace("held back: ", "", 1)
    assert printed == held
    # Continuation lines line up under the text, not under the label.
    assert lines[1].index(lines[1].strip()) == lines[0].index("drift since")


def test_a_single_word_longer_than_the_width_is_kept_whole():
    word = "x" * (demo.DETAIL_WIDTH + 5)
    lines = demo.wrap("why", word)
    assert lines == [f"{demo.DETAIL_INDENT}why: {word}"]


def test_the_guards_verdict_is_said_once_until_it_changes():
    days = [_row(period=3, guard_reason="no champion yet")]
    days += [_row(period=p) for p in (4, 5, 6, 7, 8)]  # "no previous champion" five days running
    days += [_row(period=9, guard_reason="waiting for labels: 0/400 rows served by v2 are labelled")]
    days += [_row(period=p, guard_reason=f"v2 roc_auc 0.88{p} vs v1 0.77{p} on {p}00 rows it served")
             for p in (10, 11, 12)]  # the same verdict with new numbers
    days += [_row(period=15, guard="rollback", guard_reason="v5 roc_auc 0.759 vs v2 0.876 on 800 rows it served")]
    lines = demo.timeline(days, "roc_auc")
    guard_lines = [line.strip() for line in lines if line.strip().startswith("guard:")]
    assert guard_lines == [
        "guard: keep, no champion yet",
        "guard: keep, no previous champion",
        "guard: keep, waiting for labels: 0/400 rows served by v2 are labelled",
        "guard: keep, v2 roc_auc 0.8810 vs v1 0.7710 on 1000 rows it served",
        "guard: rollback, v5 roc_auc 0.759 vs v2 0.876 on 800 rows it served",
    ]
    # Said under the day it changed: the rollback is the last day's.
    assert lines.index(next(line for line in lines if "guard: rollback" in line)) > lines.index(
        demo.format_row(days[-1]))


def test_timeline_explains_the_star_only_when_a_row_has_one():
    plain = demo.timeline([_row()], "roc_auc")
    forced = demo.timeline([_row(forced=True)], "roc_auc")
    assert not any(line.startswith("*") for line in plain)
    assert forced[-1].startswith("* promoted by force")


# ---- driftline trigger: why a task failed ------------------------------------------------------------


def test_failure_line_is_the_exception_the_task_raised():
    log = [
        {"event": "::group::Pre Execute", "level": "info"},
        {"event": "Task failed with exception", "level": "error", "error_detail": [
            {"exc_type": "AirflowFailException", "exc_value": "param 'force': forcing a promotion needs a 'reason'",
             "frames": [], "is_cause": False},
            {"exc_type": "ParamError", "exc_value": "inner", "frames": [], "is_cause": True},
        ]},
        {"event": "Task instance in failure state", "level": "info"},
    ]
    assert failure_line(log) == "AirflowFailException: param 'force': forcing a promotion needs a 'reason'"


def test_failure_line_falls_back_to_the_last_error_message_then_to_plain_lines():
    assert failure_line([{"event": "first", "level": "error"}, {"event": "store is locked", "level": "ERROR"},
                         {"event": "done", "level": "info"}]) == "store is locked"
    assert failure_line(["starting", "ValueError: bad batch in column income", "exiting"]) == (
        "ValueError: bad batch in column income")
    assert failure_line([{"event": "all fine", "level": "info"}, "just text"]) is None
    assert failure_line([]) is None


# ---- driftline up: a line per component as it comes up ---------------------------------------------


def test_health_answer_names_the_healthy_components():
    health = {"metadatabase": {"status": "healthy"}, "scheduler": {"status": "healthy"},
              "triggerer": {"status": None}, "dag_processor": {"status": "unhealthy"}}
    assert healthy_components(health) == {"Airflow scheduler"}
    assert healthy_components({}) == set()


def test_progress_says_each_component_once_in_reading_order():
    first = progress_lines(set(), {"Airflow api-server", "MLflow"}, 12.4)
    assert first == ["  MLflow up (12 s)", "  Airflow api-server up (12 s)"]
    assert progress_lines({"MLflow", "Airflow api-server"}, {"Airflow api-server", "Airflow scheduler"}, 40) == [
        "  Airflow scheduler up (40 s)"]
    assert progress_lines({"MLflow"}, {"MLflow"}, 50) == []
    assert all(re.fullmatch(r"  .+ up \(\d+ s\)", line) for line in first)


def test_up_names_a_run_the_scheduler_will_start_unasked(tmp_path):
    """A queued asset event (an unpaused DAG's) is a run nobody triggered by hand: `make up` says so
    before it begins. A paused DAG's queue, or none, says nothing."""
    import sqlite3

    from driftline.stack import queued_asset_runs

    db = tmp_path / "airflow.db"
    with sqlite3.connect(db) as conn:
        conn.executescript("""
            CREATE TABLE asset (id INTEGER PRIMARY KEY, name TEXT);
            CREATE TABLE dag (dag_id TEXT PRIMARY KEY, is_paused BOOLEAN);
            CREATE TABLE asset_dag_run_queue (asset_id INTEGER, target_dag_id TEXT, created_at TEXT);
            INSERT INTO asset VALUES (1, 'driftline_m_new_labels');
            INSERT INTO dag VALUES ('m_continuous_training', 0), ('paused_dag', 1);
            INSERT INTO asset_dag_run_queue VALUES (1, 'paused_dag', '2026-11-30 19:42:37.089926');
        """)
    assert queued_asset_runs(f"sqlite:///{db}") == []
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO asset_dag_run_queue VALUES (1, 'm_continuous_training', '2026-11-30 19:42:37.089926')")
    assert queued_asset_runs(f"sqlite:///{db}") == [
        ("  note: the scheduler will start m_continuous_training at once: asset driftline_m_new_labels got an "
         "event at 2026-11-30 19:42:37 that no run has consumed yet")]
    # Not an Airflow DB (yet): a notice is not worth failing the start for.
    assert queued_asset_runs(f"sqlite:///{tmp_path / 'empty.db'}") == []
