"""What a person reads: the demo's timeline (pure functions of its rows) with its online-scoring lines,
the failure line ``driftline trigger`` prints from a task's log, and ``driftline up``'s progress lines
and scoring services. No Airflow runs, no Driftline servers: each is fed hand-made rows, log entries
or health answers (one from a stub HTTP server on loopback)."""

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


# ---- online scoring beside the days ------------------------------------------------------------------


def _online(**overrides) -> dict:
    online = {"before": {"requests": 8, "failed": 0, "versions": [2], "stored": True, "quarantined": 8},
              "after": {"requests": 8, "failed": 0, "versions": [5], "stored": True, "quarantined": 8},
              "from_version": 2, "to_version": 5, "move": "promote_requested", "swap_seconds": 1.43, "ok": True}
    return online | overrides


def test_online_line_says_which_version_answered_before_and_after_and_how_soon():
    assert demo.online_text(_online()) == (
        "v2 answered 8/8 requests before the run; the champion alias moved to v5 and the service was serving "
        "it 1.4 s later (hot swap, no restart); v5 answered 8/8 requests after")
    back = demo.online_text(_online(move="rollback_requested", to_version=2, from_version=5,
                                    before={**_online()["after"]}, after={**_online()["before"]}))
    assert "v5 answered 8/8 requests before" in back and "alias went back to v2" in back


def test_online_line_names_a_missed_swap_failed_requests_and_unstored_rows():
    text = demo.online_text(_online(swap_seconds=None, after={"requests": 8, "failed": 3, "versions": [2],
                                                              "stored": False, "quarantined": 5}))
    assert f"did not load v5 within {demo.SWAP_TIMEOUT:.0f} s" in text
    assert "v2 answered 5/8 requests after" in text
    assert text.endswith("NOT ALL STORED")


def test_the_online_line_sits_under_its_day_in_the_timeline():
    days = [_row(period=12), _row(period=13, online=_online()), _row(period=14)]
    lines = demo.timeline(days, "roc_auc")
    online = [i for i, line in enumerate(lines) if line.strip().startswith("online:")]
    assert len(online) == 1
    day13, day14 = lines.index(demo.format_row(days[1])), lines.index(demo.format_row(days[2]))
    assert day13 < online[0] < day14
    assert all(len(line) <= demo.DETAIL_WIDTH for line in lines[online[0]:day14])


def test_the_demo_asks_for_online_steps_around_both_registry_moves():
    online = [step for step in demo.SCENARIO if step.online]
    assert [(s.period, s.expect) for s in online] == [(13, "manual/promoted:forced"), (15, "*/*:rolled_back")]


# ---- driftline up: the scoring services -------------------------------------------------------------


@pytest.fixture
def health_server():
    """A loopback HTTP server answering /health with (status, body) set by the test."""
    import http.server
    import json
    import threading

    answer: dict = {"status": 200, "body": b"{}"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(answer["status"])
            self.end_headers()
            self.wfile.write(answer["body"] if isinstance(answer["body"], bytes) else json.dumps(answer["body"]).encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answer
    server.shutdown()
    server.server_close()


def test_a_scoring_service_is_up_when_it_serves_or_waits_for_a_first_champion(health_server):
    from driftline.stack import free_port, serve_health

    url, answer = health_server
    answer.update(status=200, body={"status": "ok", "version": 3})
    assert serve_health(url) == {"status": "ok", "version": 3}
    answer.update(status=503, body={"status": "no_model", "version": None})
    assert serve_health(url) == {"status": "no_model", "version": None}  # up, nothing to serve yet
    answer.update(status=503, body=b"<html>proxy error</html>")
    assert serve_health(url) is None
    answer.update(status=500, body={"status": "broken"})
    assert serve_health(url) is None
    assert serve_health(f"http://127.0.0.1:{free_port()}") is None  # nothing listens


def test_up_gives_each_model_its_own_port_and_checks_them_all(tmp_path):
    import socket

    from driftline.stack import Scoring, model_names

    (tmp_path / "b_model.yaml").write_text("")
    (tmp_path / "a_model.yaml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert model_names(tmp_path) == ["a_model", "b_model"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        scoring = Scoring(taken - 1, models=["a_model", "b_model"])
        assert scoring.urls() == {"a_model": f"http://127.0.0.1:{taken - 1}", "b_model": f"http://127.0.0.1:{taken}"}
        assert scoring.check_ports() == f"port {taken} (scoring service for b_model; --serve-port) is in use"
    assert Scoring(None).models == [] and Scoring(None).urls() == {}  # --no-serve
