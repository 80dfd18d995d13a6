"""One loop: a seeded stream played through the DAG path (real ``dag.test()`` runs of the score and
continuous-training DAGs, the real SQLite store, a real MLflow store) and through the replay path
(``ml.replay``: the same steps over in-memory adapters) decides alike at every step: trigger,
reasons, what was held back, candidate trained or not, the gate's verdict, the registry's action,
the champion. It fails if either path changes alone."""

from __future__ import annotations

import pytest
import yaml
from test_replay import options, raw_config, stream

from ml import replay
from ml.store import Store

pytestmark = pytest.mark.integration

BATCHES, FLIP = 10, 6


def _raw() -> dict:
    raw = raw_config(max_relative_drop=0.1)
    raw["windows"] = {"holdout": "36h", "current": "60h", "training": "240h"}  # 1 and 4 batches of 60 rows
    raw["features"] = [{"name": "x", "kind": "numerical"}, {"name": "z", "kind": "numerical"},
                       {"name": "colour", "kind": "categorical"}]
    raw["target"] = {"name": "y", "labels": ["no", "yes"]}
    raw["rollback"] = {"auto": True, "min_labelled_rows": 60}
    return raw


def _decisions_through_dags(data: replay.ReplayData, home) -> list[dict]:
    from driftline import runner
    from ml.settings import get_settings

    config = data.config
    store = Store(get_settings().store_url)
    frame = data.frame
    labelled: set[str] = set()
    out = []
    for step in range(data.options.initial_batches - 1, data.n_batches):
        as_of = data.batch_ends[step]
        rows = frame[frame["batch"] <= step]
        store.add_observations(config.name, rows.assign(row_id=rows["row_id"].astype(str)), config.feature_names)
        known = rows[(rows["known_at"] <= as_of) & ~rows["row_id"].astype(str).isin(labelled)]
        store.add_labels(config.name, known.assign(row_id=known["row_id"].astype(str), labelled_at=known["known_at"])
                         [["row_id", "label", "labelled_at"]])
        labelled |= set(known["row_id"].astype(str))
        if step >= data.options.initial_batches:
            assert runner.run_dag(f"{config.name}_score").ok
        result = runner.run_dag(f"{config.name}_continuous_training")
        entry = [e for e in store.audit_log(config.name, ["run"]) if e["run_id"] == result.key]
        if result.ok:
            details = entry[0]["details"]
            out.append({"batch": step, "trigger": details["trigger"], "reasons": details["reasons"],
                        "held_back": details["held_back"], "candidate": details["candidate_version"],
                        "verdict": details["verdict"], "action": details["action"],
                        "champion": details["champion_version"], "guard": details["guard"]})
        else:  # a failed run writes no record
            assert entry == []
            out.append({"batch": step, "action": "failed"})
    return out


def _decisions_through_replay(data: replay.ReplayData) -> list[dict]:
    result = replay.run(data, variants={"driftline": data.config})
    out = []
    for s in result.steps["driftline"]:
        if s["action"] == "failed":
            out.append({"batch": s["batch"], "action": "failed"})
            continue
        out.append({"batch": s["batch"], "trigger": s["trigger"], "reasons": s["reasons"], "held_back": s["held_back"],
                    "candidate": s["candidate"], "verdict": s["verdict"], "action": s["action"],
                    "champion": s["champion"], "guard": s["guard"].split(":")[0]})
    return out


@pytest.mark.parametrize("gate", ["holdout", "shadow"])
def test_dag_path_and_replay_path_decide_alike(tmp_path, monkeypatch, gate):
    from driftline import runner

    raw = _raw()
    if gate == "shadow":  # candidates wait in shadow a batch, then the shadow gate judges them
        raw["promotion"] = {**raw.get("promotion", {}), "gate": "shadow", "min_shadow_rows": 40}
    data = replay.prepare(stream(batches=BATCHES, flip_at=FLIP), options(every=()), raw, source="toy.yaml")
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{data.config.name}.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("DRIFTLINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DRIFTLINE_MODELS_DIR", str(models))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DRIFTLINE_STORE_URL"):
        monkeypatch.delenv(var, raising=False)
    runner.prepare()
    runner.reload_dags()
    try:
        through_dags = _decisions_through_dags(data, tmp_path)
    finally:
        runner.reload_dags()
    through_replay = _decisions_through_replay(data)
    # The stream makes the loop do something worth comparing: a first champion, retrains after the flip.
    assert through_replay[0]["action"] == "promoted"
    actions = {d["action"] for d in through_replay[1:]}
    if gate == "shadow":
        assert "shadow" in actions and actions & {"promoted", "rejected"}, through_replay
    else:
        assert {"promoted", "rejected", "skipped"} <= actions
    for dag_step, replay_step in zip(through_dags, through_replay, strict=True):
        assert dag_step == replay_step
