"""`driftline status` as a user runs it, on a real store and a real local MLflow registry: aliases
(an empty one reads "none", never "vNone"), the recent runs, and the rollbacks with who, when, from
which version to which, and why."""

from __future__ import annotations

import os

import mlflow
import mlflow.sklearn
import pytest
from sklearn.linear_model import LogisticRegression

from driftline.cli import main
from ml import store as store_module
from ml import tracking
from ml.registry import Registry
from ml.settings import get_settings
from ml.store import Store

MODEL = "credit_default"
_TINY = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])


@pytest.fixture
def state(home):
    """The user's state folder; main() exports Driftline's environment into this process: undo it."""
    saved = dict(os.environ)
    settings = get_settings()
    yield settings
    os.environ.clear()
    os.environ.update(saved)
    engine = store_module._engines.pop(settings.store_url, None)
    if engine is not None:
        engine.dispose()


def _registry(settings) -> Registry:
    return Registry(MODEL, Store(settings.store_url), tracking.client(settings))


def _register(n: int) -> list[int]:
    experiment = tracking.ensure_experiment(MODEL)
    made = []
    for _ in range(n):
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.sklearn.log_model(_TINY, name="model", registered_model_name=MODEL,
                                            serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
        made.append(int(info.registered_model_version))
    return made


def _status(capsys, *extra: str) -> list[str]:
    code = main(["status", MODEL, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.splitlines()


def test_status_without_a_registered_model(state, capsys):
    assert _status(capsys) == [f"{MODEL}: no registered versions yet"]


def test_status_shows_none_for_empty_aliases_and_lists_rollbacks(state, capsys):
    reg = _registry(state)
    assert _register(3) == [1, 2, 3]
    # A run before any champion: its champion is "none" too.
    reg.store.audit(MODEL, "run", details={"as_of": "2026-01-03T23:59:00+00:00", "drift_share": None,
                                           "trigger": "time", "action": "skipped", "champion_version": None})
    reg.promote(1, run_id="p1", actor="alice", reasons=["first model"])
    reg.mark_challenger(2, {"trigger": "drift"}, run_id="p2", actor=None)
    reg.promote(2, run_id="p2", actor="alice", reasons=["better"])
    reg.mark_challenger(3, {"trigger": "manual"}, run_id="p3", actor=None)
    reg.promote(3, run_id="p3", actor="bob", reasons=["forced"], forced=True)
    reg.rollback(2, run_id="rb-1", actor="carol", reason="roc_auc fell 0.05 on served rows")
    reg.rollback(1, run_id="rb-2", actor=None, reason="guard: v2 worse than v1 by 0.03", automatic=True)

    lines = _status(capsys)
    text = "\n".join(lines)
    assert "vNone" not in text
    # v1 is back, nothing under evaluation; previous-champion names v2, the version just rolled back
    # (rolling back to "previous" would undo the last rollback).
    assert [line.strip() for line in lines[:3]] == ["champion: v1", "challenger: none", "previous-champion: v2"]
    assert any("trigger time" in line and line.endswith("champion none") for line in lines)

    entries = reg.store.audit_log(MODEL, ["rolled_back"])
    assert len(entries) == 2
    when = [f"{e['at']:%Y-%m-%d %H:%M} UTC" for e in entries]
    start = lines.index("rollbacks (2):")
    assert lines[start + 1:] == [
        f"  {when[0]}  v3 -> v2  by carol (by hand), run rb-1: roc_auc fell 0.05 on served rows",
        f"  {when[1]}  v2 -> v1  by the rollback guard (automatic), run rb-2: guard: v2 worse than v1 by 0.03",
    ]

    # --last keeps the newest ones.
    lines = _status(capsys, "--last", "1")
    start = lines.index("rollbacks (1):")
    assert len(lines[start + 1:]) == 1 and "v2 -> v1" in lines[start + 1]


def test_status_with_a_champion_and_no_rollback(state, capsys):
    reg = _registry(state)
    _register(2)
    reg.promote(1, run_id="p1", actor="alice", reasons=["first model"])
    reg.mark_challenger(2, {"trigger": "drift"}, run_id="p2", actor=None)

    lines = _status(capsys)
    assert [line.strip() for line in lines[:3]] == ["champion: v1", "challenger: v2", "previous-champion: none"]
    assert "recent runs: none" in lines
    assert lines[-1] == "rollbacks: none"


def test_status_refuses_a_bad_last(state, capsys):
    assert main(["status", MODEL, "--last", "0"]) == 2
    assert "--last must be at least 1, got 0" in capsys.readouterr().err
