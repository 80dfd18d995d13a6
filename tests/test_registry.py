"""ml.registry on a real MLflow SQLite store (no mocks of MLflow or of the database).

Aliases are the truth, stages are derived from them, every move ends in one audit entry, and a move
that crashes at any step converges on a re-run to exactly the state of a clean run. The one seam is
``ml.registry.checkpoint``, which exists so that tests can crash a move between two registry writes.

Speed: a fresh MLflow SQLite database costs ~1.5 s of migrations, so an empty, migrated database is
made once per session and copied into each test's state folder (it holds no paths, so the copy is a
real, independent store). Logging a tiny model version costs ~0.1 s.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import registry_race as race
from sklearn.linear_model import LogisticRegression

from ml import loop, registry, tracking
from ml.registry import CHALLENGER, CHAMPION, PREVIOUS, TAG, Registry, RegistryError
from ml.settings import get_settings
from ml.simulator import CreditDefaultSimulator
from ml.store import ModelLockTimeout, Store
from ml.training import fit_full, predict

NAME = "reg_model"
DATA_TIME = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)  # fixed, so promoted_at tags compare across stores
RUN = "dag-run-under-test"
ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)
_TINY = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])


class Crash(RuntimeError):
    """What the injected checkpoint raises: stands for a worker killed between two writes."""


# ---- stores ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite database with all migrations applied."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments()
    client.search_registered_models()
    return path


def _use_home(path: Path, monkeypatch: pytest.MonkeyPatch, template: Path) -> None:
    """Point DRIFTLINE_HOME at ``path`` with a fresh MLflow store in it. ``mlflow.set_tracking_uri``
    and ``set_registry_uri`` (called by ``ml.tracking.client``) export ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_REGISTRY_URI``, which ``get_settings`` would then prefer: drop both."""
    monkeypatch.setenv("DRIFTLINE_HOME", str(path))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DRIFTLINE_STORE_URL"):
        monkeypatch.delenv(var, raising=False)
    shutil.copyfile(template, path / "mlflow.db")


@pytest.fixture
def fresh(home, monkeypatch, template_db) -> Path:
    _use_home(home, monkeypatch, template_db)
    settings = get_settings()
    assert settings.tracking_uri == settings.registry_uri == f"sqlite:///{home / 'mlflow.db'}"
    return home


def open_registry(name: str = NAME) -> Registry:
    """A new Registry on the current home, as a retried task would build it."""
    settings = get_settings()
    return Registry(name, Store(settings.store_url), tracking.client(settings))


@pytest.fixture
def reg(fresh) -> Registry:
    return open_registry()


def make_versions(n: int, name: str = NAME, model=_TINY) -> list[int]:
    """Log ``n`` model versions of ``name``; returns their version numbers."""
    tracking.client()
    experiment = tracking.ensure_experiment(name)
    made = []
    store = Store(get_settings().store_url)
    for _ in range(n):
        with mlflow.start_run(experiment_id=experiment) as run:
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name=name,
                serialization_format="cloudpickle", pip_requirements=["scikit-learn"],
            )
        version = int(info.registered_model_version)
        # What train_candidate's registration leaves in the audit log: the lineage loads are checked against.
        source = tracking.client().get_model_version(name, str(version)).source
        store.audit(name, "registered", version=version,
                    details={"mlflow_run_id": run.info.run_id, "model_source": source})
        made.append(version)
    return made


# ---- reading the state ----------------------------------------------------------------------------


def aliases(r: Registry) -> dict[str, int | None]:
    return {alias: r.version_for(alias) for alias in ALIASES}


def stages(r: Registry) -> dict[int, str]:
    return {v.version: v.stage for v in r.versions()}


def verdicts(r: Registry) -> dict[int, str | None]:
    return {v.version: v.tag("verdict") for v in r.versions()}


def moves(r: Registry, actions: list[str] | None = None, *, intents: bool = False) -> list[dict]:
    """The audit log without make_versions' lineage entries (registrations with no run) and, unless
    asked, without the intent entries written before each move."""
    hidden = () if intents else (registry.INTENT_PROMOTE, registry.INTENT_ROLLBACK)
    return [e for e in r.store.audit_log(r.name, actions)
            if not (e["action"] == "registered" and e["run_id"] is None) and e["action"] not in hidden]


def audit_rows(r: Registry) -> list[tuple]:
    return [(e["action"], e["version"], e["run_id"], e["actor"]) for e in moves(r)]


def snapshot(r: Registry) -> dict:
    """Everything a move may change: aliases, each version's stage and driftline tags, the audit log
    (without ids and times)."""
    return {
        "aliases": aliases(r),
        "versions": {
            v.version: {"stage": v.stage, "tags": {k: val for k, val in v.tags.items() if k.startswith(TAG)}}
            for v in r.versions()
        },
        "audit": [
            (e["action"], e["version"], e["run_id"], e["actor"], e["details"]) for e in moves(r, intents=True)
        ],
    }


def promote(r: Registry, version: int, run_id: str, **kwargs):
    kwargs.setdefault("actor", "alice")
    kwargs.setdefault("reasons", [f"v{version} is better"])
    return r.promote(version, run_id=run_id, data_time=DATA_TIME, **kwargs)


def chain(r: Registry, *, third_promoted: bool) -> None:
    """v1 promoted, v2 promoted over v1, v3 registered as challenger (and promoted over v2 if asked)."""
    assert make_versions(3) == [1, 2, 3]
    promote(r, 1, "setup-1")
    r.mark_challenger(2, {"trigger": "drift"}, run_id="setup-2", actor=None)
    promote(r, 2, "setup-2")
    r.mark_challenger(3, {"trigger": "schedule"}, run_id="setup-3", actor=None)
    if third_promoted:
        promote(r, 3, "setup-3")


# ---- 1-2. promote ---------------------------------------------------------------------------------


def test_first_promotion_makes_v1_champion(reg):
    assert make_versions(1) == [1]
    assert reg.champion() is None

    result = promote(reg, 1, "r1", reasons=["first model"])

    assert result == {"action": "promoted", "champion": 1, "previous_champion": None}
    assert aliases(reg) == {CHAMPION: 1, PREVIOUS: None, CHALLENGER: None}
    info = reg.info(1)
    assert info.stage == "Production"
    assert info.aliases == (CHAMPION,)
    assert info.tag("verdict") == "promoted"
    assert info.tag("previous_champion") == ""
    assert info.tag("promoted_reasons") == "first model"
    assert info.tag("promoted_by_run") == "r1"
    assert info.tag("promoted_at") == DATA_TIME.isoformat()
    assert info.tag("forced") == "false"
    log = moves(reg)
    assert audit_rows(reg) == [("promoted", 1, "r1", "alice")]
    assert log[0]["details"] == {"previous_champion": None, "reasons": ["first model"], "forced": False}

    # The same run promoting again (a retried task) changes nothing and writes no second entry.
    before = snapshot(reg)
    assert promote(reg, 1, "r1", reasons=["first model"]) == result
    assert snapshot(reg) == before


def test_promote_over_champion_moves_aliases_stages_and_clears_challenger(reg):
    make_versions(2)
    promote(reg, 1, "r1")

    reg.mark_challenger(2, {"trigger": "drift", "data_rows": 120}, run_id="r2", actor="airflow")
    info = reg.info(2)
    assert reg.version_for(CHALLENGER) == 2
    assert info.stage == "Staging"
    assert info.tag("verdict") == "pending"
    assert info.tag("trigger") == "drift"
    assert info.tag("data_rows") == "120"
    assert reg.info(1).stage == "Production"
    registered = moves(reg, ["registered"])
    assert [(e["version"], e["run_id"], e["actor"], e["details"]) for e in registered] == [
        (2, "r2", "airflow", {"trigger": "drift", "data_rows": 120})
    ]

    result = promote(reg, 2, "r2", actor="bob", reasons=["auc +0.03", "p=0.01"], forced=True)

    assert result == {"action": "promoted", "champion": 2, "previous_champion": 1}
    assert aliases(reg) == {CHAMPION: 2, PREVIOUS: 1, CHALLENGER: None}
    assert stages(reg) == {1: "Archived", 2: "Production"}
    assert verdicts(reg) == {1: "promoted", 2: "promoted"}
    v2 = reg.info(2)
    assert v2.tag("previous_champion") == "1"
    assert v2.tag("promoted_reasons") == "auc +0.03; p=0.01"
    assert v2.tag("forced") == "true"
    assert v2.tag("promoted_by_run") == "r2"
    assert audit_rows(reg) == [("promoted", 1, "r1", "alice"), ("registered", 2, "r2", "airflow"),
                               ("promoted", 2, "r2", "bob")]
    assert reg.store.audit_log(NAME, ["promoted"])[-1]["details"] == {
        "previous_champion": 1, "reasons": ["auc +0.03", "p=0.01"], "forced": True,
    }


def test_promote_leaves_a_challenger_on_another_version(reg):
    make_versions(3)
    promote(reg, 1, "r1")
    reg.mark_challenger(2, {}, run_id="r2", actor=None)
    reg.mark_challenger(3, {}, run_id="r3", actor=None)  # the newer candidate takes the alias
    assert stages(reg) == {1: "Production", 2: "Archived", 3: "Staging"}

    promote(reg, 2, "by-hand")  # a person promotes the older one

    assert aliases(reg) == {CHAMPION: 2, PREVIOUS: 1, CHALLENGER: 3}
    assert stages(reg) == {1: "Archived", 2: "Production", 3: "Staging"}


# ---- 3. reject ------------------------------------------------------------------------------------


def test_reject_archives_the_candidate_and_keeps_the_champion(reg):
    chain(reg, third_promoted=False)
    before = aliases(reg)
    assert before == {CHAMPION: 2, PREVIOUS: 1, CHALLENGER: 3}

    result = reg.reject(3, run_id="r3", actor="airflow", reasons=["auc -0.01", "below floor"])

    assert result == {"action": "rejected", "champion": 2, "rejected": 3}
    assert aliases(reg) == {CHAMPION: 2, PREVIOUS: 1, CHALLENGER: None}
    v3 = reg.info(3)
    assert v3.tag("verdict") == "rejected"
    assert v3.tag("rejected_reasons") == "auc -0.01; below floor"
    assert v3.stage == "Archived"
    assert stages(reg) == {1: "Archived", 2: "Production", 3: "Archived"}
    rejected = reg.store.audit_log(NAME, ["rejected"])
    assert [(e["version"], e["run_id"], e["actor"], e["details"]) for e in rejected] == [
        (3, "r3", "airflow", {"reasons": ["auc -0.01", "below floor"]})
    ]


def test_rejecting_the_champion_is_refused(reg):
    make_versions(1)
    promote(reg, 1, "r1")
    before = snapshot(reg)

    with pytest.raises(RegistryError, match=r"v1 is the champion; it cannot be rejected"):
        reg.reject(1, run_id="r2", actor="bob", reasons=["oops"])

    assert snapshot(reg) == before


# ---- 4. rollback ----------------------------------------------------------------------------------


def test_rollback_to_previous_and_again(reg):
    chain(reg, third_promoted=True)
    assert aliases(reg) == {CHAMPION: 3, PREVIOUS: 2, CHALLENGER: None}
    assert reg.resolve_rollback_target("previous") == 2
    assert reg.resolve_rollback_target(" Previous-Champion ") == 2

    result = reg.rollback(2, run_id="rb1", actor="carol", reason="auc fell 0.05")

    assert result == {"action": "rolled_back", "champion": 2, "from_version": 3}
    # previous-champion names the demoted version, so "roll back to previous" undoes the rollback.
    assert aliases(reg) == {CHAMPION: 2, PREVIOUS: 3, CHALLENGER: None}
    assert stages(reg) == {1: "Archived", 2: "Production", 3: "Archived"}
    v3 = reg.info(3)
    assert v3.tag("verdict") == "rolled_back"
    assert v3.tag("rolled_back_reason") == "auc fell 0.05"
    assert v3.tag("rolled_back_by") == "carol"
    assert v3.tag("rolled_back_to") == "2"
    assert v3.tag("rolled_back_automatically") == "false"
    assert v3.tag("rolled_back_by_run") == "rb1"
    v2 = reg.info(2)
    assert v2.tag("verdict") == "promoted"
    assert v2.tag("restored_by_run") == "rb1"
    entries = reg.store.audit_log(NAME, ["rolled_back"])
    assert [(e["version"], e["run_id"], e["actor"], e["details"]) for e in entries] == [
        (2, "rb1", "carol", {"from_version": 3, "reason": "auc fell 0.05", "automatic": False})
    ]

    # Further back is by number; previous-champion again names what was demoted.
    reg.rollback(1, run_id="rb2", actor=None, reason="still bad", automatic=True)
    assert aliases(reg) == {CHAMPION: 1, PREVIOUS: 2, CHALLENGER: None}
    assert stages(reg) == {1: "Production", 2: "Archived", 3: "Archived"}
    assert reg.info(2).tag("verdict") == "rolled_back"
    assert reg.info(2).tag("rolled_back_automatically") == "true"
    assert reg.info(2).tag("rolled_back_by") == ""


def test_rolling_back_to_previous_undoes_a_manual_rollback(reg):
    chain(reg, third_promoted=True)
    reg.rollback(reg.resolve_rollback_target("previous"), run_id="rb1", actor="carol", reason="auc fell")
    assert aliases(reg) == {CHAMPION: 2, PREVIOUS: 3, CHALLENGER: None}

    undo = reg.rollback(reg.resolve_rollback_target("previous"), run_id="rb2", actor="dave", reason="false alarm")

    assert undo == {"action": "rolled_back", "champion": 3, "from_version": 2}
    assert aliases(reg) == {CHAMPION: 3, PREVIOUS: 2, CHALLENGER: None}
    assert stages(reg) == {1: "Archived", 2: "Archived", 3: "Production"}
    assert (reg.info(3).tag("verdict"), reg.info(3).tag("restored_by_run")) == ("promoted", "rb2")
    assert (reg.info(2).tag("verdict"), reg.info(2).tag("rolled_back_by")) == ("rolled_back", "dave")


def test_rollback_to_the_champion_itself_keeps_previous(reg):
    chain(reg, third_promoted=True)
    result = reg.rollback(3, run_id="rb1", actor="carol", reason="no-op")
    assert result["from_version"] is None
    assert aliases(reg) == {CHAMPION: 3, PREVIOUS: 2, CHALLENGER: None}


def test_resolve_previous_falls_back_to_the_champions_tag(reg):
    chain(reg, third_promoted=True)
    reg.client.delete_registered_model_alias(NAME, PREVIOUS)
    assert reg.resolve_rollback_target("previous") == 2  # v3's previous_champion tag


def test_resolve_rollback_target_by_number(reg):
    chain(reg, third_promoted=True)
    assert reg.resolve_rollback_target("1") == 1
    assert reg.resolve_rollback_target("v2") == 2
    assert reg.resolve_rollback_target(2) == 2
    with pytest.raises(RegistryError, match=r"reg_model has no version 9 \(versions: \[1, 2, 3\]\)"):
        reg.resolve_rollback_target("9")
    with pytest.raises(RegistryError, match=r"must be 'previous' or a version number, got 'yesterday'"):
        reg.resolve_rollback_target("yesterday")
    with pytest.raises(RegistryError, match=r"got 'v'"):
        reg.resolve_rollback_target("v")


def test_rollback_needs_a_champion(reg):
    make_versions(2)
    reg.mark_challenger(2, {}, run_id="r2", actor=None)
    with pytest.raises(RegistryError, match=r"reg_model has no champion; nothing to roll back"):
        reg.resolve_rollback_target("previous")
    with pytest.raises(RegistryError, match=r"has no champion"):
        reg.resolve_rollback_target("1")
    before = snapshot(reg)
    with pytest.raises(RegistryError, match=r"reg_model has no champion; nothing to roll back"):
        reg.rollback(1, run_id="rb", actor=None, reason="x")
    assert snapshot(reg) == before


def test_rollback_to_the_challenger_puts_it_in_production(reg):
    """A person may name any version, also the one under evaluation: it must then be Production
    (champion outranks challenger), never Staging with nothing in Production."""
    chain(reg, third_promoted=False)
    assert aliases(reg) == {CHAMPION: 2, PREVIOUS: 1, CHALLENGER: 3}
    assert reg.resolve_rollback_target("3") == 3

    reg.rollback(3, run_id="rb", actor="carol", reason="v2 misbehaves")

    assert reg.champion() == 3
    assert stages(reg)[3] == "Production"
    assert [v for v, stage in stages(reg).items() if stage == "Production"] == [3]


# ---- 5. crash at every step, re-run, converge -----------------------------------------------------


def _setup_promote(r: Registry) -> None:
    chain(r, third_promoted=False)


def _setup_rollback(r: Registry) -> None:
    chain(r, third_promoted=True)


def _act_promote(r: Registry):
    return r.promote(3, run_id=RUN, actor="alice", reasons=["auc +0.02"], data_time=DATA_TIME)


def _act_reject(r: Registry):
    return r.reject(3, run_id=RUN, actor="alice", reasons=["auc -0.02"])


def _act_rollback(r: Registry):
    return r.rollback(2, run_id=RUN, actor="alice", reason="auc fell")


# move -> (setup, the move, audit action, version the entry is about, champion before, champion after,
#          the clean run's aliases, stages and verdicts)
SCENARIOS = {
    "promote": (
        _setup_promote, _act_promote, "promoted", 3, 2, 3,
        {CHAMPION: 3, PREVIOUS: 2, CHALLENGER: None},
        {1: "Archived", 2: "Archived", 3: "Production"},
        {1: "promoted", 2: "promoted", 3: "promoted"},
    ),
    "reject": (
        _setup_promote, _act_reject, "rejected", 3, 2, 2,
        {CHAMPION: 2, PREVIOUS: 1, CHALLENGER: None},
        {1: "Archived", 2: "Production", 3: "Archived"},
        {1: "promoted", 2: "promoted", 3: "rejected"},
    ),
    "rollback": (
        _setup_rollback, _act_rollback, "rolled_back", 2, 3, 2,
        {CHAMPION: 2, PREVIOUS: 3, CHALLENGER: None},
        {1: "Archived", 2: "Production", 3: "Archived"},
        {1: "promoted", 2: "promoted", 3: "rolled_back"},
    ),
}
CHECKPOINTS = [
    "promote:intended",
    "promote:previous_set",
    "promote:champion_moved",
    "promote:tagged",
    "promote:challenger_cleared",
    "promote:stages_synced",
    "reject:tagged",
    "rollback:intended",
    "rollback:champion_moved",
    "rollback:tagged",
    "rollback:previous_set",
]


def test_every_checkpoint_in_the_code_is_crash_tested():
    source = Path(registry.__file__).read_text()
    assert set(re.findall(r'checkpoint\("([^"]+)"\)', source)) == set(CHECKPOINTS)


@pytest.fixture(scope="module")
def clean_states(tmp_path_factory, template_db) -> dict[str, dict]:
    """Each move run once without a crash, each in its own fresh store."""
    states = {}
    with pytest.MonkeyPatch.context() as mp:
        for move, (setup, act, *_, want_aliases, want_stages, want_verdicts) in SCENARIOS.items():
            _use_home(tmp_path_factory.mktemp(f"clean-{move}"), mp, template_db)
            r = open_registry()
            setup(r)
            act(r)
            states[move] = snapshot(r)
            # The reference itself is checked against what the move is meant to do.
            assert (aliases(r), stages(r), verdicts(r)) == (want_aliases, want_stages, want_verdicts)
    return states


def assert_same_state(actual: dict, expected: dict) -> None:
    """Part by part, so a failure names the alias, version or entry that differs."""
    assert actual["aliases"] == expected["aliases"]
    assert sorted(actual["versions"]) == sorted(expected["versions"])
    for version, want in expected["versions"].items():
        assert (version, actual["versions"][version]) == (version, want)
    assert actual["audit"] == expected["audit"]


def _crash_at(steps: set[str], seen: list[str]):
    """A checkpoint that raises the first time it reaches any of ``steps``."""
    def crash(step: str) -> None:
        seen.append(step)
        if step in steps:
            steps.discard(step)
            raise Crash(step)
    return crash


@pytest.mark.parametrize("step", CHECKPOINTS)
def test_crash_at_step_then_rerun_converges(step, reg, clean_states, monkeypatch):
    move = step.split(":")[0]
    setup, act, action, version, champion_before, champion_after, *_ = SCENARIOS[move]
    setup(reg)
    assert reg.champion() == champion_before
    original = registry.checkpoint

    seen: list[str] = []
    monkeypatch.setattr(registry, "checkpoint", _crash_at({step}, seen))
    with pytest.raises(Crash, match=step):
        act(open_registry())
    assert seen[-1] == step

    # Right after the crash: still a champion, the old or the new one, and work left undone.
    crashed = open_registry()
    assert crashed.champion() is not None
    assert crashed.champion() in (champion_before, champion_after)
    assert snapshot(crashed) != clean_states[move]

    monkeypatch.setattr(registry, "checkpoint", original)
    act(open_registry())  # the retried task: same call, same run id

    final = open_registry()
    assert_same_state(snapshot(final), clean_states[move])
    same_move = [
        e for e in moves(final) if (e["action"], e["version"], e["run_id"]) == (action, version, RUN)
    ]
    assert len(same_move) == 1


@pytest.mark.parametrize("move", list(SCENARIOS))
def test_crash_at_each_step_in_turn_still_converges(move, reg, clean_states, monkeypatch):
    """Every retry dies one step further on; the champion exists throughout; the last retry
    completes and the result is the clean run's."""
    setup, act, *_ = SCENARIOS[move]
    setup(reg)
    steps = {s for s in CHECKPOINTS if s.startswith(move + ":")}
    seen: list[str] = []
    monkeypatch.setattr(registry, "checkpoint", _crash_at(steps, seen))
    crashes = 0
    while steps:
        with pytest.raises(Crash):
            act(open_registry())
        crashes += 1
        assert open_registry().champion() is not None
        assert crashes <= len(CHECKPOINTS)
    act(open_registry())
    assert_same_state(snapshot(open_registry()), clean_states[move])


def test_rerun_of_a_roll_forward_marks_the_restored_version_promoted(reg, monkeypatch):
    """Rolling back to a version that was itself rolled back: a crash right after the alias moved
    must not leave the champion tagged ``rolled_back`` once the re-run is done."""
    chain(reg, third_promoted=True)
    reg.rollback(2, run_id="rb1", actor=None, reason="v3 worse")
    assert reg.info(3).tag("verdict") == "rolled_back"

    monkeypatch.setattr(registry, "checkpoint", _crash_at({"rollback:champion_moved"}, []))
    with pytest.raises(Crash):
        reg.rollback(3, run_id="rb2", actor=None, reason="v3 was fine after all")
    reg.rollback(3, run_id="rb2", actor=None, reason="v3 was fine after all")

    assert aliases(reg) == {CHAMPION: 3, PREVIOUS: 2, CHALLENGER: None}
    assert verdicts(reg) == {1: "promoted", 2: "rolled_back", 3: "promoted"}
    assert reg.info(3).tag("restored_by_run") == "rb2"
    assert stages(reg) == {1: "Archived", 2: "Archived", 3: "Production"}
    assert [(e["version"], e["details"]["from_version"]) for e in reg.store.audit_log(NAME, ["rolled_back"])] == [
        (2, 3), (3, 2)
    ]


def test_champion_exists_at_every_checkpoint_of_every_move(reg, monkeypatch):
    """Watch the champion alias at each step of promote, reject and rollback run back to back."""
    chain(reg, third_promoted=False)
    make_versions(1)
    reg.mark_challenger(4, {}, run_id="r4", actor=None)
    watched: list[tuple[str, int | None]] = []
    monkeypatch.setattr(registry, "checkpoint", lambda step: watched.append((step, reg.champion())))

    reg.promote(3, run_id="p3", actor=None, reasons=[], data_time=DATA_TIME)
    reg.reject(4, run_id="r4", actor=None, reasons=[])
    reg.rollback(2, run_id="rb", actor=None, reason="x")

    assert [step for step, _ in watched] == CHECKPOINTS
    assert dict(watched) == {
        "promote:intended": 2, "promote:previous_set": 2, "promote:champion_moved": 3, "promote:tagged": 3,
        "promote:challenger_cleared": 3, "promote:stages_synced": 3, "reject:tagged": 3,
        "rollback:intended": 3, "rollback:champion_moved": 2, "rollback:tagged": 2, "rollback:previous_set": 2,
    }


# ---- 6. sync_stages -------------------------------------------------------------------------------


def _transition(r: Registry, version: int, stage: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        r.client.transition_model_version_stage(NAME, str(version), stage, archive_existing_versions=False)


def _stamps(r: Registry) -> dict[int, int]:
    return {v.version: r.client.get_model_version(NAME, str(v.version)).last_updated_timestamp for v in r.versions()}


def test_sync_stages_derives_stages_from_aliases_only_and_is_idempotent(reg):
    make_versions(5)
    client = reg.client
    _transition(reg, 1, "Production")  # stages no alias justifies
    _transition(reg, 5, "Staging")
    client.set_registered_model_alias(NAME, PREVIOUS, "1")  # gives no stage
    client.set_registered_model_alias(NAME, CHAMPION, "2")
    client.set_registered_model_alias(NAME, CHALLENGER, "3")
    reg.set_tags(4, {"verdict": "promoted"})  # tags give no stage either

    reg.sync_stages()
    assert stages(reg) == {1: "Archived", 2: "Production", 3: "Staging", 4: "None", 5: "Archived"}

    stamps = _stamps(reg)
    time.sleep(0.02)
    reg.sync_stages()
    assert stages(reg) == {1: "Archived", 2: "Production", 3: "Staging", 4: "None", 5: "Archived"}
    assert _stamps(reg) == stamps  # nothing was written

    # Move the aliases by hand: the stages follow.
    client.set_registered_model_alias(NAME, CHAMPION, "3")
    client.delete_registered_model_alias(NAME, CHALLENGER)
    reg.sync_stages()
    assert stages(reg) == {1: "Archived", 2: "Archived", 3: "Production", 4: "None", 5: "Archived"}

    # An Archived version that gets an alias back gets its stage back.
    client.set_registered_model_alias(NAME, CHALLENGER, "1")
    reg.sync_stages()
    assert stages(reg) == {1: "Staging", 2: "Archived", 3: "Production", 4: "None", 5: "Archived"}


def test_sync_stages_champion_outranks_challenger(reg):
    make_versions(2)
    reg.client.set_registered_model_alias(NAME, CHAMPION, "2")
    reg.client.set_registered_model_alias(NAME, CHALLENGER, "2")
    reg.sync_stages()
    assert stages(reg) == {1: "None", 2: "Production"}


# ---- 7. scoring with the champion -----------------------------------------------------------------


def _labelled(sim: CreditDefaultSimulator, periods: list[int]) -> pd.DataFrame:
    frames = []
    for period in periods:
        batch = sim.batch(period)
        frames.append(batch.features.merge(batch.labels[["row_id", "label"]], on="row_id"))
    return pd.concat(frames, ignore_index=True)


def _stored(store: Store, config) -> pd.DataFrame:
    return store.load(config.name, config.feature_names).set_index("row_id")


def test_score_writes_the_champions_predictions_once(fresh, config):
    sim = CreditDefaultSimulator(seed=0, rows_per_period=120)
    first = fit_full(config, _labelled(sim, [0, 1]))
    [v1] = make_versions(1, name=config.name, model=first)
    r = open_registry(config.name)
    # Promoted as of the end of its training data: the rows that arrive after it are what it serves.
    r.promote(v1, run_id="bootstrap", actor="alice", reasons=["first"], data_time=sim.period_start(2))
    store = r.store
    run = loop.RunInfo("score-run")

    batch = sim.batch(2).features
    assert store.add_observations(config.name, batch, config.feature_names) == 120
    assert loop.score(loop.Context.open(config), run) == {"scored": 120, "champion": v1}

    rows = _stored(store, config).loc[batch["row_id"]]
    want_prediction, want_score = predict(config, first, batch)
    assert rows["model_version"].tolist() == [v1] * 120
    assert rows["prediction"].tolist() == want_prediction.tolist()
    np.testing.assert_allclose(rows["score"].to_numpy(dtype=float), want_score, rtol=1e-9)
    assert store.load(config.name, config.feature_names, unscored_only=True).empty

    # Nothing new: nothing scored, nothing rewritten.
    assert loop.score(loop.Context.open(config), run) == {"scored": 0, "champion": v1, "reason": "nothing new to score"}
    pd.testing.assert_frame_equal(_stored(store, config).loc[batch["row_id"]], rows)

    # A new champion scores only the rows that arrive after it; scored rows keep their version.
    second = fit_full(config, _labelled(sim, [1, 2]))
    [v2] = make_versions(1, name=config.name, model=second)
    r.promote(v2, run_id="retrain", actor="alice", reasons=["newer"], data_time=sim.period_start(3))
    later = sim.batch(3).features
    store.add_observations(config.name, later, config.feature_names)
    assert loop.score(loop.Context.open(config), run) == {"scored": 120, "champion": v2}
    stored = _stored(store, config)
    pd.testing.assert_frame_equal(stored.loc[batch["row_id"]], rows)
    new_rows = stored.loc[later["row_id"]]
    assert new_rows["model_version"].tolist() == [v2] * 120
    np.testing.assert_allclose(new_rows["score"].to_numpy(dtype=float), predict(config, second, later)[1], rtol=1e-9)


def test_score_without_a_champion_writes_nothing(fresh, config):
    store = Store(get_settings().store_url)
    batch = CreditDefaultSimulator(seed=1, rows_per_period=40).batch(0).features
    store.add_observations(config.name, batch, config.feature_names)
    run = loop.RunInfo("score-run")

    assert loop.score(loop.Context.open(config), run) == {"scored": 0, "reason": "no champion yet"}  # no registered model

    # A challenger is not a champion.
    [v1] = make_versions(1, name=config.name)
    open_registry(config.name).mark_challenger(v1, {}, run_id="train", actor=None)
    assert loop.score(loop.Context.open(config), run) == {"scored": 0, "reason": "no champion yet"}

    rows = store.load(config.name, config.feature_names)
    assert len(rows) == 40
    assert rows["model_version"].isna().all()
    assert rows["prediction"].isna().all()
    assert rows["score"].isna().all()


# ---- 8. one move at a time per model: the model lock ----------------------------------------------


def assert_one_history(r: Registry) -> None:
    """Replay the audit log: every promotion replaced the champion of its time, every rollback
    demoted it, nothing rejected was the champion; and the aliases, stages and verdicts are where the
    log leaves them. Two moves that interleave break this: both replace the same champion."""
    champion = previous = None
    verdict: dict[int, str] = {}
    for e in moves(r):
        action, version, details = e["action"], e["version"], e["details"]
        if action == "registered":
            verdict[version] = "pending"
        elif action == "promoted":
            assert details["previous_champion"] == champion, (
                f"v{version} was promoted over v{details['previous_champion']} while v{champion} was champion"
            )
            previous, champion = champion, version
            verdict[version] = "promoted"
        elif action == "rejected":
            assert version != champion, f"v{version} was rejected while champion"
            verdict[version] = "rejected"
        elif action == "rolled_back":
            assert details["from_version"] == champion, f"rollback from v{details['from_version']}, not v{champion}"
            verdict[champion], verdict[version] = "rolled_back", "promoted"
            champion, previous = version, champion  # previous-champion names the demoted version
    assert (r.champion(), r.version_for(PREVIOUS)) == (champion, previous)
    held = stages(r)
    assert [v for v, stage in held.items() if stage == "Production"] == [champion]
    assert {v for v, stage in held.items() if stage == "Staging"} == {r.version_for(CHALLENGER)} - {None, champion}
    assert {v: verdicts(r)[v] for v in verdict} == verdict


def _race_setup(r: Registry) -> None:
    """v1 champion; v2 and then v3 trained and registered (v3 holds the challenger alias)."""
    assert make_versions(3) == [1, 2, 3]
    promote(r, 1, "setup-1")
    r.mark_challenger(2, {"trigger": "drift"}, run_id="train-a", actor=None)
    r.mark_challenger(3, {"trigger": "event"}, run_id="train-b", actor=None)


# Two runs each decided, against v1, to promote their own candidate.
RACING_PROMOTIONS = {"a": ("promote", 2, "race-a"), "b": ("promote", 3, "race-b")}
SETUP_AUDIT = [("promoted", 1, "setup-1", "alice"), ("registered", 2, "train-a", None),
               ("registered", 3, "train-b", None)]


def assert_later_registration_won(r: Registry, first: str) -> None:
    """The state two promotions of v2 (run a) and v3 (run b) leave when ``first`` got the lock first."""
    assert_one_history(r)
    assert stages(r) == {1: "Archived", 2: "Archived", 3: "Production"}
    if first == "a":  # v2 replaced v1, then v3 replaced v2
        assert aliases(r) == {CHAMPION: 3, PREVIOUS: 2, CHALLENGER: None}
        assert verdicts(r) == {1: "promoted", 2: "promoted", 3: "promoted"}
        assert audit_rows(r) == [*SETUP_AUDIT, ("promoted", 2, "race-a", "race-a"), ("promoted", 3, "race-b", "race-b")]
        assert r.info(3).tag("previous_champion") == "2"
    else:  # v3 replaced v1; v2, older than the champion it found, was not promoted
        assert aliases(r) == {CHAMPION: 3, PREVIOUS: 1, CHALLENGER: None}
        assert verdicts(r) == {1: "promoted", 2: "rejected", 3: "promoted"}
        assert audit_rows(r) == [*SETUP_AUDIT, ("promoted", 3, "race-b", "race-b"), ("rejected", 2, "race-a", "race-a")]
        assert r.info(2).tag("rejected_reasons") == (
            "superseded: v3, registered after v2, became champion before this promotion could be made"
        )


@pytest.mark.parametrize("first", ["a", "b"])
def test_promotions_in_either_order_leave_the_later_registration_champion(reg, first):
    """The rule a promotion applies to the champion it finds once it holds the lock (its caller's view
    may be stale), shown one after the other in both orders."""
    _race_setup(reg)
    second = "b" if first == "a" else "a"
    results = {racer: race.act(open_registry(), RACING_PROMOTIONS[racer]) for racer in (first, second)}

    assert_later_registration_won(open_registry(), first)
    if first == "a":
        assert results == {"a": {"action": "promoted", "champion": 2, "previous_champion": 1},
                           "b": {"action": "promoted", "champion": 3, "previous_champion": 2}}
    else:
        assert results == {"b": {"action": "promoted", "champion": 3, "previous_champion": 1},
                           "a": {"action": "rejected", "champion": 3, "rejected": 2, "previous_champion": 1,
                                 "superseded_by": 3}}
        # A retried task repeats the refusal and writes nothing more.
        before = snapshot(open_registry())
        assert race.act(open_registry(), RACING_PROMOTIONS["a"]) == results["a"]
        assert snapshot(open_registry()) == before


RACE_WAIT = 2.0  # how long the racer inside waits for the other; with the lock the other never comes


def _backend(request, monkeypatch) -> str:
    if request.param == "postgresql":
        monkeypatch.setenv("DRIFTLINE_STORE_URL", request.getfixturevalue("pg_url"))
    return get_settings().store_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def race_reg(request, fresh, monkeypatch) -> Registry:
    """A registry set up for the race, its store (and so its lock) on SQLite or PostgreSQL; MLflow
    stays on the home's SQLite file."""
    assert _backend(request, monkeypatch).startswith(request.param)
    r = open_registry()
    _race_setup(r)
    return r


@pytest.mark.parametrize("racers", ["threads", "processes"])
def test_racing_promotions_end_with_one_champion(race_reg, racers):
    """Two promotions reach the registry at once. The racer that gets the lock waits inside for the
    other to reach a checkpoint too; it never does (the lock holds it back), and the two moves run one
    after the other: one champion (the later registration), previous-champion the version it replaced,
    one Production version, one audit entry per move, in the order the lock was taken."""
    run = race.race_threads if racers == "threads" else race.race_processes
    outcome = run(NAME, RACING_PROMOTIONS, RACE_WAIT)

    outcome.check_errors()
    assert outcome.met == {"a": False, "b": False}
    assert not outcome.interleaved, outcome.steps
    assert_later_registration_won(open_registry(), outcome.first)


def test_without_the_lock_the_same_race_breaks_the_history(reg, monkeypatch):
    """The race above is real: with the model lock made a no-op, both promotions read v1 as champion
    and meet inside their moves. Then either both finish, each claiming to have replaced v1, or their
    alias writes collide in MLflow (its alias write is a read-then-insert) and one fails half-way."""
    _race_setup(reg)
    monkeypatch.setattr(Store, "model_lock", lambda self, model, timeout=300.0: contextlib.nullcontext())

    outcome = race.race_threads(NAME, RACING_PROMOTIONS, wait=60)

    assert outcome.met == {"a": True, "b": True}  # both inside their moves at once
    errors = [result for result in outcome.results.values() if isinstance(result, str)]
    if errors:
        collision = ("MlflowException: (sqlite3.IntegrityError) UNIQUE constraint failed: "
                     "registered_model_aliases.workspace, registered_model_aliases.name, registered_model_aliases.alias")
        assert [e.split("\n")[0] for e in errors] == [collision]
    else:
        assert [r["previous_champion"] for r in outcome.results.values()] == [1, 1]
        with pytest.raises(AssertionError, match=r"was promoted over v1 while v[23] was champion"):
            assert_one_history(open_registry())


def test_a_promotion_racing_a_rollback_leaves_one_history(reg):
    """A person rolls v2 back to v1 while a run promotes v3 (both looked at v2 as champion)."""
    chain(reg, third_promoted=False)
    moves = {"rollback": ("rollback", 1, "by-hand"), "promote": ("promote", 3, "ct-run")}

    outcome = race.race_threads(NAME, moves, RACE_WAIT)

    outcome.check_errors()
    assert not outcome.interleaved, outcome.steps
    r = open_registry()
    assert_one_history(r)
    if outcome.first == "rollback":  # v1 restored, then v3 (newer) replaces it
        assert aliases(r) == {CHAMPION: 3, PREVIOUS: 1, CHALLENGER: None}
        assert outcome.results["rollback"]["from_version"] == 2
    else:  # v3 promoted over v2, then the person's explicit target wins
        assert aliases(r) == {CHAMPION: 1, PREVIOUS: 3, CHALLENGER: None}
        assert outcome.results["rollback"]["from_version"] == 3


# ---- 9. the lock itself ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def lock_store(request, home, monkeypatch) -> Store:
    monkeypatch.delenv("DRIFTLINE_STORE_URL", raising=False)
    return Store(_backend(request, monkeypatch))


def _try_lock(store: Store, model: str, timeout: float) -> str:
    """Take the lock from another thread (another lock owner); say how it went."""
    outcome: list[str] = []

    def take() -> None:
        try:
            with store.model_lock(model, timeout=timeout):
                outcome.append("acquired")
        except ModelLockTimeout as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(30)
    return outcome[0]


def test_model_lock_excludes_other_owners_of_the_same_model_only(lock_store):
    with lock_store.model_lock("m1"):
        assert _try_lock(lock_store, "m1", 0.3) == (
            "model 'm1': another registry move held its lock for more than 0.3 s; retry later"
        )
        assert _try_lock(lock_store, "m2", 5) == "acquired"
        with lock_store.model_lock("m1"):  # re-entrant in the holding thread
            pass
        assert _try_lock(lock_store, "m1", 0.3).startswith("model 'm1': another registry move held")
    assert _try_lock(lock_store, "m1", 5) == "acquired"


def test_model_lock_is_released_when_the_move_fails(lock_store):
    with pytest.raises(RegistryError), lock_store.model_lock("m1"):
        raise RegistryError("the move failed")
    assert _try_lock(lock_store, "m1", 5) == "acquired"


def test_sqlite_lock_file_lives_next_to_the_store(home):
    store = Store(f"sqlite:///{home / 'store.db'}")
    with store.model_lock("credit/default"):
        assert [p.name for p in (home / "locks").iterdir()] == ["credit_default.lock"]


def test_moves_hold_the_lock_while_they_write(reg, monkeypatch):
    """Every checkpoint of every move runs with the model's lock held."""
    chain(reg, third_promoted=False)
    make_versions(1)
    held: list[tuple[str, str]] = []
    monkeypatch.setattr(registry, "checkpoint", lambda step: held.append((step, _try_lock(reg.store, NAME, 0.05))))

    reg.mark_challenger(4, {}, run_id="r4", actor=None)
    reg.promote(3, run_id="p3", actor=None, reasons=[], data_time=DATA_TIME)
    reg.reject(4, run_id="r4", actor=None, reasons=[])
    reg.rollback(2, run_id="rb", actor=None, reason="x")

    assert [step for step, _ in held] == CHECKPOINTS
    assert {outcome for _, outcome in held} == {
        f"model '{NAME}': another registry move held its lock for more than 0.05 s; retry later"
    }
    assert _try_lock(reg.store, NAME, 1) == "acquired"


def test_an_unreachable_tracking_server_is_an_error_not_no_champion(fresh, monkeypatch):
    """MLflow's own client against a port nothing listens on: reads raise, they never mean "none"."""
    import socket

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    url = f"http://127.0.0.1:{port}"
    down = Registry(NAME, Store(get_settings().store_url), MlflowClient(tracking_uri=url, registry_uri=url))
    with pytest.raises(MlflowException):
        down.champion()
    with pytest.raises(MlflowException):
        down.exists()



# ---- intents: a half-done move is visible, and the next run finishes it ----------------------------


@pytest.mark.parametrize("step", ["promote:intended", "promote:previous_set", "promote:champion_moved"])
def test_a_promotion_cut_short_is_finished_by_the_next_run(step, reg, clean_states, monkeypatch):
    _setup_promote(reg)
    monkeypatch.setattr(registry, "checkpoint", _crash_at({step}, []))
    with pytest.raises(Crash):
        promote(reg, 3, RUN, reasons=["auc +0.02"], forced=True)
    monkeypatch.setattr(registry, "checkpoint", lambda _: None)
    crashed = open_registry()
    # Never "promoted" without having been champion (tags come after the alias).
    if crashed.champion() != 3:
        assert crashed.info(3).tag("verdict") != "promoted"
    [intent] = crashed.unfinished_moves()
    assert (intent["action"], intent["version"], intent["run_id"]) == ("promote_requested", 3, RUN)
    result = crashed.finish(intent)  # what the next run's guard step does (loop.resume_moves)
    assert result["action"] == "promoted" and crashed.champion() == 3 and crashed.unfinished_moves() == []
    assert crashed.info(3).tag("forced") == "true"  # as its own run decided it
    assert aliases(crashed) == {CHAMPION: 3, PREVIOUS: 2, CHALLENGER: None}


def test_an_unfinished_promotion_is_not_resumed_over_a_later_rollback(reg, monkeypatch):
    _setup_promote(reg)
    monkeypatch.setattr(registry, "checkpoint", _crash_at({"promote:intended"}, []))
    with pytest.raises(Crash):
        promote(reg, 3, RUN)
    monkeypatch.setattr(registry, "checkpoint", lambda _: None)
    reg.rollback(1, run_id="person", actor="bob", reason="v2 misbehaves")  # a person acted since
    [intent] = reg.unfinished_moves()
    assert reg.finish(intent)["action"] == "abandoned"
    assert reg.champion() == 1 and reg.unfinished_moves() == []
    assert moves(reg, ["move_abandoned"])[0]["details"]["intent"] == "promote_requested"


def test_a_stored_model_naming_an_untrusted_type_is_not_loaded(fresh):
    """Second layer under the lineage check: even a version Driftline registered is read with
    Driftline's trusted types, not the list stored inside the model (MLflow's loader trusts that)."""
    import os

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from ml import modelio

    evil = make_pipeline(FunctionTransformer(os.system), StandardScaler())  # unfitted: fitting would call it
    tracking.client()
    experiment = tracking.ensure_experiment(NAME)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.sklearn.log_model(evil, name="model", registered_model_name=NAME, serialization_format="skops",
                                        skops_trusted_types=modelio.untrusted_in(evil) + ["numpy.dtype"],
                                        pip_requirements=["scikit-learn"])
    version = int(info.registered_model_version)
    r = open_registry()
    r.store.audit(NAME, "registered", version=version,
                  details={"mlflow_run_id": run.info.run_id, "model_source": r.source(version)})
    assert mlflow.sklearn.load_model(f"models:/{NAME}/{version}") is not None  # MLflow would read it
    with pytest.raises(modelio.UntrustedModelError, match="system"):
        r.load_model(version)


# ---- promotion.refit through the real registry ------------------------------------------------------


@pytest.mark.integration
def test_a_refit_is_promoted_through_mlflow_and_loads_for_serving(fresh, config, monkeypatch):
    """The whole run with ``promotion.refit`` on a real MLflow store: the refit of the blessed
    candidate is registered, promoted and served; a crash right after its alias moved is finished
    by the next run's guard, with the candidate's record written once."""
    from ml.registry import REFITTED, UnblessedModelError

    cfg = config.model_copy(update={"promotion": config.promotion.model_copy(update={"refit": True})})
    sim = CreditDefaultSimulator(seed=3, rows_per_period=150)
    store = Store(get_settings().store_url)
    for period in range(4):
        batch = sim.batch(period)
        store.add_observations(cfg.name, batch.features, cfg.feature_names)
        store.add_labels(cfg.name, batch.labels)
    as_of = store.latest_ts(cfg.name).isoformat()
    crashed = {"promote:tagged"}

    def crash_once(step: str) -> None:
        if step in crashed:
            crashed.discard(step)
            raise Crash(step)

    monkeypatch.setattr(registry, "checkpoint", crash_once)
    trace: dict = {}
    with pytest.raises(Crash):
        loop.run_cycle(loop.Context.open(cfg), loop.RunInfo("refit-run", actor="alice", params={"as_of": as_of}),
                       trace=trace)
    blessed = trace["candidate"]["version"]
    r = open_registry(cfg.name)
    refit = r.champion()  # the alias moved before the crash; the candidate's record is still to write
    assert refit == blessed + 1 and r.info(blessed).tag("verdict") == "pending"
    assert [e["action"] for e in r.unfinished_moves()] == [registry.INTENT_PROMOTE]

    guard = loop.guard_champion(loop.Context.open(cfg), loop.RunInfo("next-run", params={"as_of": as_of}))
    assert [(m["action"], m["version"]) for m in guard["resumed"]] == [("promoted", refit)]
    r = open_registry(cfg.name)
    b, v = r.info(blessed), r.info(refit)
    assert (b.tag("verdict"), v.tag("verdict"), v.tag("refit_of"), b.tag("refit_version")) == (
        REFITTED, "promoted", str(blessed), str(refit))
    assert v.tags[TAG + "refit_of"] == str(blessed)  # its own column in MLflow's versions table
    assert f"**Refit of v{blessed}**" in r.description(refit)
    assert (b.stage, v.stage) == ("Archived", "Production") and aliases(r)[CHALLENGER] is None
    assert [e["version"] for e in store.audit_log(cfg.name, [REFITTED])] == [blessed]
    assert int(v.tag("data_rows")) > int(b.tag("data_rows"))
    # MLflow's run of the refit says what it is.
    assert tracking.client().get_run(v.run_id).data.tags["driftline.refit_of"] == str(blessed)

    # Serving: the refit loads (it was promoted by Driftline); the blessed original never does.
    monkeypatch.setattr(registry, "checkpoint", lambda step: None)
    later = sim.batch(4)
    store.add_observations(cfg.name, later.features, cfg.feature_names)
    assert loop.score(loop.Context.open(cfg), loop.RunInfo("score-run")) == {"scored": 150, "champion": refit}
    with pytest.raises(UnblessedModelError, match="never promoted"):
        open_registry(cfg.name).load_model(blessed, serving=True)
