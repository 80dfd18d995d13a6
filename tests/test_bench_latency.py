"""Smoke run of the P2 latency benchmark (bench/latency.py): a live stack, a real new-labels event over
REST, the champion alias moving in MLflow. It keeps the benchmark working; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.integration


def test_latency_smoke_measures_an_event_driven_promotion(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench.latency", "--smoke", "--out", str(out)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "latency.json").read_text())
    run = results["runs"]["driftline"]
    assert run["warm_up_state"] == "success"
    assert run["run_state"] == "success"
    # The event's run retrained and promoted: the alias moved from v1 to the new version.
    assert run["champion_before"] == 1 and run["champion_after"] == 2
    assert run["branch"] in {"retrain_on_threshold", "retrain_on_event", "retrain_on_schedule"}
    tasks = {t["task"]: t for t in run["tasks"]}
    assert {"check_drift", "train_candidate", "evaluate_candidate", "promote"} <= tasks.keys()
    assert all(t["state"] == "success" for t in run["tasks"])
    # The breakdown adds up and sits inside the end-to-end time.
    assert run["work_s"] == pytest.approx(sum(t["work_s"] for t in run["tasks"]), abs=0.05)
    assert 0 < run["event_to_champion_s"] <= run["event_to_run_end_s"]
    assert run["event_to_run_queued_s"] + run["wait_s"] + run["work_s"] <= run["event_to_run_end_s"] + 1.0
    section = (out / "latency.md").read_text()
    assert section.startswith("## P2") and "`promote`" in section


def test_a_skipped_variant_is_named_with_its_reason_and_left_out_of_the_tables():
    from bench import latency

    task = {"task": "promote", "state": "success", "wait_s": 0.5, "work_s": 2.0}
    run = {"event_to_run_queued_s": 0.4, "event_to_champion_s": 30.0, "event_to_run_end_s": 33.0,
           "branch": "retrain_on_event", "first_task_after_start_s": 9.0, "tasks": [task], "wait_s": 0.5,
           "work_s": 2.0, "run_state": "success"}
    results = {"machine": "x", "rows_per_period": 800, "dag_import_s": {"dag_file": 4.0, "airflow_sdk_only": 2.0},
               "runs": {"driftline": run, "celery": {"skipped": "PostgreSQL or Redis not reachable (refused)"}}}
    md = latency.markdown(results, "cmd")
    assert f"{latency.LABELS['celery']}: skipped, PostgreSQL or Redis not reachable (refused)." in md
    assert "celery: waiting" not in md and "driftline: waiting (s)" in md
    assert f"| {latency.LABELS['driftline']} | 0.4 s | 30.0 s | 33.0 s | `retrain_on_event` | met |" in md
