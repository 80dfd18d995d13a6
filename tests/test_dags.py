"""DAG integrity (parse only) and integration: real ``dag.test()`` runs against a real MLflow store
and the real store, covering every branch: threshold, time, event, manual, none; promote, reject,
rollback (automatic and by hand); and the failure paths (bad batch, bad params)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = "credit_default"
CT = f"{MODEL}_continuous_training"
RETRAIN_BRANCHES = ["retrain_on_threshold", "retrain_on_schedule", "retrain_on_event", "retrain_on_demand"]
SGD_YAML_PATCH = {
    "name": "credit_default_sgd",
    "estimator": {"class": "sklearn.linear_model.SGDClassifier",
                  "params": {"loss": "log_loss", "alpha": 0.001, "random_state": 0}},
    "training": {"strategy": "incremental"},
}


def _dagbag(models_dir: Path | None = None, monkeypatch=None):
    from airflow.dag_processing.dagbag import DagBag

    if models_dir is not None:
        monkeypatch.setenv("DRIFTLINE_MODELS_DIR", str(models_dir))
    return DagBag(dag_folder=str(ROOT / "dags"))


# ---- integrity: parse only, no database ----------------------------------------------------------


def test_every_dag_imports_with_expected_ids():
    bag = _dagbag()
    assert bag.import_errors == {}
    assert {f"{MODEL}_{suffix}" for suffix in ("continuous_training", "rollback", "score", "new_labels")} <= set(
        bag.dags
    )


def test_continuous_training_graph_branches_and_join_rules():
    dag = _dagbag().dags[CT]
    tasks = dag.task_dict
    expected = {"guard_champion", "rollback_champion", "keep_champion", "validate_windows", "check_drift", "decide",
                *RETRAIN_BRANCHES, "skip_retraining", "train_candidate", "evaluate_candidate", "gate", "promote",
                "reject", "record"}
    assert set(tasks) == expected
    assert tasks["decide"].downstream_task_ids == {*RETRAIN_BRANCHES, "skip_retraining"}
    assert tasks["gate"].downstream_task_ids == {"promote", "reject"}
    assert tasks["guard_champion"].downstream_task_ids == {"rollback_champion", "keep_champion"}
    # Only the retrain markers feed training; skip_retraining goes straight to record.
    assert tasks["train_candidate"].upstream_task_ids == set(RETRAIN_BRANCHES)
    # check_drift always ran when record runs; the branches' tasks are pulled (see the DAG file).
    assert tasks["record"].upstream_task_ids == {"check_drift", "promote", "reject", "skip_retraining"}
    # Markers and the no-op keep are EmptyOperators: the scheduler marks them done, no worker starts.
    from airflow.providers.standard.operators.empty import EmptyOperator

    from ml.triggers import BRANCHES

    assert {b.task_id for b in BRANCHES} == {*RETRAIN_BRANCHES, "skip_retraining"}
    for empty in (*RETRAIN_BRANCHES, "skip_retraining", "keep_champion"):
        assert isinstance(tasks[empty], EmptyOperator), empty
    # Retries are declared once, for the DAG; a task does not set its own.
    assert {t.retries for t in tasks.values()} == {dag.default_args["retries"]}
    # Edges out of the branches say why.
    assert dag.get_edge_info("decide", "retrain_on_threshold") == {"label": "threshold"}
    assert dag.get_edge_info("gate", "reject") == {"label": "gate failed"}
    for joined in ("train_candidate", "record", "validate_windows"):
        assert str(tasks[joined].trigger_rule) in ("none_failed_min_one_success",
                                                   "TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS")
    assert dag.max_active_runs == 1
    assert "driftline" in dag.tags and MODEL in dag.tags
    assert "credit_default.yaml" in dag.doc_md


def test_hand_trigger_params_explain_themselves():
    bag = _dagbag()
    for dag_id, names in {CT: ["retrain", "force", "strategy", "reason", "dry_run", "train_until", "as_of"],
                          f"{MODEL}_rollback": ["target", "reason", "dry_run"]}.items():
        params = bag.dags[dag_id].params
        for name in names:
            param = params.get_param(name)
            assert param.schema.get("title") and param.description, f"{dag_id}.{name} lacks title/description"
    assert bag.dags[CT].params.get_param("strategy").schema["enum"] == ["config", "full", "incremental"]


def test_bad_model_yaml_fails_at_parse_time_naming_file_and_field_and_spares_the_others(tmp_path, monkeypatch):
    good = (ROOT / "models" / "credit_default.yaml").read_text()
    (tmp_path / "credit_default.yaml").write_text(good)
    bad = good.replace("name: credit_default", "name: broken").replace("metric: roc_auc", "metric: mae")
    (tmp_path / "broken.yaml").write_text(bad)
    bag = _dagbag(tmp_path, monkeypatch)
    assert bag.import_errors == {}
    # The good model keeps every DAG, its rollback among them; the bad file gets one that says why.
    assert {f"{MODEL}_{s}" for s in ("continuous_training", "rollback", "score", "new_labels")} <= set(bag.dags)
    assert not any(d.startswith("broken_") and d != "broken_config_error" for d in bag.dags)
    message = bag.dags["broken_config_error"].doc_md
    assert "broken.yaml" in message and "promotion.metric" in message and "mae" in message


# ---- integration: the scripted scenario through real DAG runs -----------------------------------


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Plays the demo once (real dag.test runs, real MLflow SQLite store, real store) in its own
    state folder, with a second, incremental model beside the demo's."""
    home = tmp_path_factory.mktemp("scenario")
    models = home / "models"
    models.mkdir()
    shutil.copy(ROOT / "models" / "credit_default.yaml", models / "credit_default.yaml")
    import yaml

    sgd = yaml.safe_load((ROOT / "models" / "credit_default.yaml").read_text()) | SGD_YAML_PATCH
    (models / "credit_default_sgd.yaml").write_text(yaml.safe_dump(sgd))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRIFTLINE_HOME", str(home))
        mp.setenv("DRIFTLINE_MODELS_DIR", str(models))
        for var in ("MLFLOW_TRACKING_URI", "DRIFTLINE_STORE_URL"):
            mp.delenv(var, raising=False)
        from driftline import demo, runner

        runner.reload_dags()
        lines: list[str] = []
        code = demo.run(reset=True, out=lines.append)
        summary = json.loads((home / "demo-summary.json").read_text())
        yield {"home": home, "code": code, "lines": lines, "summary": summary, "runner": runner}
        runner.reload_dags()


def _ctx(name: str = MODEL):
    from ml.config import load_config
    from ml.loop import Context
    from ml.settings import get_settings

    settings = get_settings()
    return Context.open(load_config(settings.models_dir / f"{name}.yaml"), settings)


def _step(scenario, period: int) -> dict:
    return next(s for s in scenario["summary"]["steps"] if s["period"] == period)


@pytest.mark.integration
def test_demo_scenario_passes_every_expected_step(scenario):
    assert scenario["code"] == 0, "\n".join(scenario["lines"][-30:])
    assert scenario["summary"]["ok"] is True
    assert all(step["ok"] for step in scenario["summary"]["steps"])


@pytest.mark.integration
def test_demo_leaves_no_asset_event_for_a_scheduler_to_answer(scenario):
    """The day-12 run answers the new-labels announcement: it consumes the asset event, so the next
    scheduler on this DB (`make up`) starts no run nobody asked for."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        assert session.scalars(select(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == CT)).all() == []
        day12 = _step(scenario, 12)["dag_run_id"].split("/", 1)[1]
        run = session.scalar(select(DagRun).where(DagRun.dag_id == CT, DagRun.run_id == day12))
        assert [e.source_dag_id for e in run.consumed_asset_events] == [f"{MODEL}_new_labels"]


@pytest.mark.integration
def test_readme_demo_sample_tells_what_the_demo_does(scenario):
    """The README's sample timeline is a real run's: each day's step, trigger, action, guard and
    champion as the demo printed them (the numbers may differ by machine and are not compared)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### What `make demo` shows"):]
    block = section[section.index("```") + 3:]
    block = block[:block.index("```")]
    from driftline.demo import format_row

    def columns(line: str) -> list[str]:
        words = line.split()
        return [words[0], *words[-5:-1]]  # day, trigger, action, guard, champion (ok dropped)

    sample = {line.split()[0]: columns(line) for line in block.splitlines()
              if line[:3].strip().isdigit()}
    printed = {str(s["period"]): columns(format_row(s)) for s in scenario["summary"]["steps"]}
    assert sample == printed
    # The prose names no number a run can change (the gain is on the demo's "evaluation:" line).
    assert "+0." not in section[:section.index("## How the loop works")].split("```")[-1]


@pytest.mark.integration
def test_demo_shows_live_traffic_following_both_registry_moves(scenario):
    """The demo's driftline serve answered before each move with the old champion and after it with
    the new one, within a poll and a load of the move (a generous bound: the machine may be busy), and
    its rows are stored but quarantined: the later runs' data time stayed the simulated one."""
    from ml.store import Store

    online = scenario["summary"]["serving"]["online_steps"]
    assert [(o["period"], o["from_version"], o["to_version"]) for o in online] == [(13, 2, 5), (15, 5, 2)]
    for step in online:
        assert step["ok"], step
        assert step["before"]["versions"] == [step["from_version"]] and step["after"]["versions"] == [step["to_version"]]
        assert 0 < step["swap_seconds"] < 30, step
    assert sum(1 for line in scenario["lines"] if line.strip().startswith("online:")) == 4  # live + timeline
    store = Store(scenario["summary"]["store_url"])
    quarantined = [q for q in store.quarantined("credit_default") if q["row_id"].startswith("online-")]
    assert len(quarantined) == 4 * 8
    assert store.latest_ts("credit_default").year == 2026 and store.latest_ts("credit_default").month == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("period", "branch", "action"),
    [
        (3, "retrain_on_demand", "promoted"),  # manual: bootstrap
        (4, "skip_retraining", "skipped"),  # none
        (8, "retrain_on_threshold", "promoted"),  # threshold: drift + live metric drop
        (11, "retrain_on_schedule", "rejected"),  # time: model age; no significant gain
        (12, "retrain_on_event", None),  # event: new labels announced
        (13, "retrain_on_demand", "promoted"),  # manual with force past the gate
    ],
)
def test_branch_taken_in_the_graph(scenario, period, branch, action):
    step = _step(scenario, period)
    assert step["branch"] == [branch], step
    if action:
        assert step["action"] == action


@pytest.mark.integration
def test_drift_is_held_until_labels_after_onset_exist(scenario):
    for period in (6, 7):
        step = _step(scenario, period)
        assert step["drift_share"] >= 0.3 and step["branch"] == ["skip_retraining"]
        assert any("drift since" in h for h in step["held_back"]), step["held_back"]
    # The retrain that answers the drift trained only on rows after the onset.
    version = _step(scenario, 8)["candidate_version"]
    info = _ctx().registry.info(version)
    assert info.tag("data_start") >= "2026-01-06T23"  # the onset is the end of day 5 / start of day 6


@pytest.mark.integration
def test_forced_worse_model_is_rolled_back_automatically(scenario):
    forced, last = _step(scenario, 13), _step(scenario, 15)
    assert forced["forced"] is True
    assert last["guard"] == "rollback"
    registry = _ctx().registry
    demoted = registry.info(forced["candidate_version"])
    assert demoted.tag("verdict") == "rolled_back"
    assert demoted.tag("rolled_back_automatically") == "true"
    assert demoted.stage == "Archived"
    assert registry.champion() == _step(scenario, 12)["champion_version"]
    assert registry.info(registry.champion()).stage == "Production"


@pytest.mark.integration
def test_registry_explains_each_version(scenario):
    registry = _ctx().registry
    champion = registry.info(registry.champion())
    assert champion.tag("trigger") == "threshold"
    assert "drift share" in champion.tag("reasons")
    assert champion.tag("dag_run_id", "").startswith(f"{CT}/")
    assert champion.tag("git_commit")
    mv = registry.client.get_model_version(MODEL, str(champion.version))
    assert "Champion vs challenger" in mv.description and "| challenger" in mv.description.lower()
    artifacts = {a.path for a in registry.client.list_artifacts(champion.run_id, "drift")}
    assert "drift/drift.html" in artifacts
    assert registry.client.get_registered_model(MODEL).description.count("credit_default.yaml") == 1
    reports = list((scenario["home"] / "reports" / MODEL).glob("*/drift.html"))
    assert len(reports) >= len(scenario["summary"]["steps"])


@pytest.mark.integration
def test_score_dag_wrote_predictions_with_champion_versions(scenario):
    ctx = _ctx()
    rows = ctx.store.load(MODEL, ctx.config.feature_names)
    scored = rows[rows["model_version"].notna()]
    assert len(scored) > 0 and scored["score"].between(0, 1).all()
    assert set(scored["model_version"].unique()) >= {1, 2}


@pytest.mark.integration
def test_manual_rollback_dag_dry_run_then_real(scenario):
    runner = scenario["runner"]
    registry = _ctx().registry
    before, previous = registry.champion(), registry.version_for("previous-champion")
    assert previous is not None
    dry = runner.run_dag(f"{MODEL}_rollback", {"target": "previous", "reason": "check the dry run", "dry_run": True})
    assert dry.ok and registry.champion() == before
    real = runner.run_dag(f"{MODEL}_rollback", {"target": "previous", "reason": "ops asked to compare"})
    assert real.ok
    assert registry.champion() == previous
    demoted = registry.info(before)
    assert demoted.tag("verdict") == "rolled_back" and demoted.tag("rolled_back_reason") == "ops asked to compare"
    audit = _ctx().store.audit_log(MODEL, ["rolled_back"])
    assert audit[-1]["run_id"] == real.key and audit[-1]["version"] == previous
    # previous-champion now names the demoted version: "roll back to previous" undoes the rollback.
    assert registry.version_for("previous-champion") == before
    again = runner.run_dag(f"{MODEL}_rollback", {"target": "previous", "reason": "restore"})
    assert again.ok and registry.champion() == before
    assert registry.version_for("previous-champion") == previous
    # And by version number.
    third = runner.run_dag(f"{MODEL}_rollback", {"target": str(previous), "reason": "by number"})
    assert third.ok and registry.champion() == previous
    assert runner.run_dag(f"{MODEL}_rollback", {"target": str(before), "reason": "restore"}).ok


@pytest.mark.integration
def test_rollback_to_unknown_version_fails_and_changes_nothing(scenario):
    registry = _ctx().registry
    before = registry.champion()
    result = scenario["runner"].run_dag(f"{MODEL}_rollback", {"target": "999", "reason": "typo"})
    assert not result.ok and result.task_states["resolve_target"] == "failed"
    assert registry.champion() == before


@pytest.mark.integration
def test_force_without_reason_is_refused_by_the_first_task(scenario, monkeypatch):
    registry = _ctx().registry
    versions = len(registry.versions())
    runner = scenario["runner"]
    # With retries configured (as outside tests), an error that will fail again is not retried.
    monkeypatch.setenv("DRIFTLINE_TASK_RETRIES", "2")
    runner.reload_dags()
    try:
        assert runner.get_dag(CT).task_dict["guard_champion"].retries == 2
        result = runner.run_dag(CT, {"force": True})
    finally:
        monkeypatch.setenv("DRIFTLINE_TASK_RETRIES", "0")
        runner.reload_dags()
    assert not result.ok and result.task_states["guard_champion"] == "failed"
    assert result.task_tries["guard_champion"] == 1
    assert len(registry.versions()) == versions


@pytest.mark.integration
def test_dry_run_decides_but_trains_nothing(scenario):
    registry = _ctx().registry
    versions, champion = len(registry.versions()), registry.champion()
    result = scenario["runner"].run_dag(CT, {"retrain": True, "reason": "what would happen?", "dry_run": True})
    assert result.ok and result.branch_taken(RETRAIN_BRANCHES + ["skip_retraining"]) == ["skip_retraining"]
    assert len(registry.versions()) == versions and registry.champion() == champion


@pytest.mark.integration
def test_bad_batch_stops_the_run_and_reaches_no_model(scenario):
    """Rows stored without ingest validation (as a buggy upstream job would) must stop the run at
    validate_windows: nothing trained, registry and stored data unchanged."""
    import pandas as pd

    from ml.simulator import CreditDefaultSimulator

    ctx = _ctx()
    registry = ctx.registry
    versions, champion = len(registry.versions()), registry.champion()
    batch = CreditDefaultSimulator(seed=99, start=pd.Timestamp("2026-01-17", tz="UTC").to_pydatetime()).batch(0)
    bad = batch.features.copy()
    bad["row_id"] = "bad-" + bad["row_id"]
    bad["income"] = bad["income"].astype(object)
    bad.loc[bad.index[:5], "income"] = "n/a"
    ctx.store.add_observations(MODEL, bad, ctx.config.feature_names)
    stored_before = len(ctx.store.load(MODEL, ctx.config.feature_names))
    result = scenario["runner"].run_dag(CT, {"retrain": True, "reason": "should not train"})
    assert not result.ok
    assert result.task_states["validate_windows"] == "failed"
    assert result.task_states["train_candidate"] in ("upstream_failed", "skipped", "none", "None")
    assert len(registry.versions()) == versions and registry.champion() == champion
    assert len(ctx.store.load(MODEL, ctx.config.feature_names)) == stored_before


@pytest.mark.integration
def test_incremental_strategy_warm_starts_the_champion(scenario):
    from ml.simulator import CreditDefaultSimulator, DriftPhase
    from ml.validation import validate_incoming, validate_incoming_labels

    runner = scenario["runner"]
    ctx = _ctx("credit_default_sgd")
    sim = CreditDefaultSimulator(seed=3, phases=[DriftPhase(3, 1.0, 1.0)])
    for period in range(5):
        batch = sim.batch(period)
        ctx.store.add_observations(ctx.config.name, validate_incoming(batch.features, ctx.config),
                                   ctx.config.feature_names)
        labels = batch.labels[batch.labels["labelled_at"] < sim.period_start(5)]
        if len(labels):  # the newest day's labels are not due yet
            ctx.store.add_labels(ctx.config.name, validate_incoming_labels(labels, ctx.config))
    first = runner.run_dag("credit_default_sgd_continuous_training", {"retrain": True, "reason": "bootstrap"})
    assert first.ok and ctx.registry.champion() == 1
    assert ctx.registry.info(1).tag("notes").startswith("no champion to warm-start")
    for period in range(5, 7):
        batch = sim.batch(period)
        ctx.store.add_observations(ctx.config.name, validate_incoming(batch.features, ctx.config),
                                   ctx.config.feature_names)
        ctx.store.add_labels(ctx.config.name, validate_incoming_labels(batch.labels, ctx.config))
    second = runner.run_dag("credit_default_sgd_continuous_training",
                            {"retrain": True, "reason": "warm start", "force": True})
    assert second.ok, second.task_states
    info = ctx.registry.info(2)
    assert info.tag("strategy") == "incremental"
    # The warm-started model keeps the champion's history in its data window.
    assert info.tag("data_start") == ctx.registry.info(1).tag("data_start")
    assert info.tag("data_end") > ctx.registry.info(1).tag("data_end")


def test_shadow_gate_graph_judges_the_challenger_before_the_windows_and_parks_new_candidates(tmp_path, monkeypatch):
    import yaml

    raw = yaml.safe_load((ROOT / "models" / "credit_default.yaml").read_text())
    raw.setdefault("promotion", {})["gate"] = "shadow"
    (tmp_path / "credit_default.yaml").write_text(yaml.safe_dump(raw))
    bag = _dagbag(tmp_path, monkeypatch)
    assert bag.import_errors == {}
    dag = bag.dags[CT]
    tasks = dag.task_dict
    assert tasks["shadow_gate"].upstream_task_ids == {"rollback_champion", "keep_champion"}
    assert tasks["shadow_gate"].downstream_task_ids == {"promote_challenger", "reject_challenger", "shadow_waits"}
    assert tasks["validate_windows"].upstream_task_ids == {"promote_challenger", "reject_challenger", "shadow_waits"}
    assert "await_shadow" in tasks["gate"].downstream_task_ids
    assert "await_shadow" in tasks["record"].upstream_task_ids
    for joined in ("shadow_gate", "validate_windows", "record"):
        assert "none_failed_min_one_success" in str(tasks[joined].trigger_rule).lower(), joined
    assert dag.get_edge_info("shadow_gate", "shadow_waits") == {"label": "waiting for labels"}
    # the branch task ids the step's verdicts name exist
    assert {f"{v}_challenger" for v in ("promote", "reject")} <= set(tasks)
