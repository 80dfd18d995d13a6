"""ml.registry on a real MLflow SQLite store (no mocks of MLflow or of the database).

Aliases are the truth, stages are derived from them, every move ends in one audit entry, and a move
that crashes at any step converges on a re-run to exactly the state of a clean run. The one seam is
``ml.registry.checkpoint``, which exists so that tests can crash a move between two registry writes.

Speed: a fresh MLflow SQLite database costs ~1.5 s of migrations, so an empty, migrated database is
made once per session and copied into each test's state folder (it holds no paths, so the copy is a
real, independent store). Logging a tiny model version costs ~0.1 s.
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from ml import loop, registry, tracking
from ml.registry import CHALLENGER, CHAMPION, PREVIOUS, TAG, Registry, RegistryError
from ml.settings import get_settings
from ml.simulator import CreditDefaultSimulator
from ml.store import Store
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
    for _ in range(n):
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name=name,
                serialization_format="cloudpickle", pip_requirements=["scikit-learn"],
            )
        made.append(int(info.registered_model_version))
    return made


# ---- reading the state ----------------------------------------------------------------------------


def aliases(r: Registry) -> dict[str, int | None]:
    return {alias: r.version_for(alias) for alias in ALIASES}


def stages(r: Registry) -> dict[int, str]:
    return {v.version: v.stage for v in r.versions()}


def verdicts(r: Registry) -> dict[int, str | None]:
    return {v.version: v.tag("verdict") for v in r.versions()}


def audit_rows(r: Registry) -> list[tuple]:
    return [(e["action"], e["version"], e["run_id"], e["actor"]) for e in r.store.audit_log(r.name)]


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
            (e["action"], e["version"], e["run_id"], e["actor"], e["details"]) for e in r.store.audit_log(r.name)
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
    log = reg.store.audit_log(NAME)
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
    registered = reg.store.audit_log(NAME, ["registered"])
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
    # previous-champion follows the restored version's own history: v2 came after v1.
    assert aliases(reg) == {CHAMPION: 2, PREVIOUS: 1, CHALLENGER: None}
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

    # Again: v1 had no champion before it, so previous-champion is deleted.
    assert reg.resolve_rollback_target("previous") == 1
    reg.rollback(1, run_id="rb2", actor=None, reason="still bad", automatic=True)
    assert aliases(reg) == {CHAMPION: 1, PREVIOUS: None, CHALLENGER: None}
    assert stages(reg) == {1: "Production", 2: "Archived", 3: "Archived"}
    assert reg.info(2).tag("verdict") == "rolled_back"
    assert reg.info(2).tag("rolled_back_automatically") == "true"
    assert reg.info(2).tag("rolled_back_by") == ""
    with pytest.raises(RegistryError, match=r"reg_model v1 has no previous champion to roll back to"):
        reg.resolve_rollback_target("previous")


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
        {CHAMPION: 2, PREVIOUS: 1, CHALLENGER: None},
        {1: "Archived", 2: "Production", 3: "Archived"},
        {1: "promoted", 2: "promoted", 3: "rolled_back"},
    ),
}
CHECKPOINTS = [
    "promote:tagged",
    "promote:previous_set",
    "promote:champion_moved",
    "promote:challenger_cleared",
    "promote:stages_synced",
    "reject:tagged",
    "rollback:tagged",
    "rollback:champion_moved",
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
        e for e in final.store.audit_log(NAME) if (e["action"], e["version"], e["run_id"]) == (action, version, RUN)
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
        "promote:tagged": 2, "promote:previous_set": 2, "promote:champion_moved": 3,
        "promote:challenger_cleared": 3, "promote:stages_synced": 3, "reject:tagged": 3,
        "rollback:tagged": 3, "rollback:champion_moved": 2, "rollback:previous_set": 2,
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
    promote(r, v1, "bootstrap")
    store = r.store
    run = loop.RunInfo("score-run")

    batch = sim.batch(2).features
    assert store.add_observations(config.name, batch, config.feature_names) == 120
    assert loop.score(config, run) == {"scored": 120, "champion": v1}

    rows = _stored(store, config).loc[batch["row_id"]]
    want_prediction, want_score = predict(config, first, batch)
    assert rows["model_version"].tolist() == [v1] * 120
    assert rows["prediction"].tolist() == want_prediction.tolist()
    np.testing.assert_allclose(rows["score"].to_numpy(dtype=float), want_score, rtol=1e-9)
    assert store.load(config.name, config.feature_names, unscored_only=True).empty

    # Nothing new: nothing scored, nothing rewritten.
    assert loop.score(config, run) == {"scored": 0, "champion": v1, "reason": "nothing new to score"}
    pd.testing.assert_frame_equal(_stored(store, config).loc[batch["row_id"]], rows)

    # A new champion scores only the rows that arrive after it; scored rows keep their version.
    second = fit_full(config, _labelled(sim, [1, 2]))
    [v2] = make_versions(1, name=config.name, model=second)
    promote(r, v2, "retrain")
    later = sim.batch(3).features
    store.add_observations(config.name, later, config.feature_names)
    assert loop.score(config, run) == {"scored": 120, "champion": v2}
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

    assert loop.score(config, run) == {"scored": 0, "reason": "no champion yet"}  # no registered model

    # A challenger is not a champion.
    [v1] = make_versions(1, name=config.name)
    open_registry(config.name).mark_challenger(v1, {}, run_id="train", actor=None)
    assert loop.score(config, run) == {"scored": 0, "reason": "no champion yet"}

    rows = store.load(config.name, config.feature_names)
    assert len(rows) == 40
    assert rows["model_version"].isna().all()
    assert rows["prediction"].isna().all()
    assert rows["score"].isna().all()
