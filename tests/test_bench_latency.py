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
