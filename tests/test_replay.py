"""The replay (ml.replay): batch-prequential order, label delay, baseline counts, Driftline's steps
on small seeded streams, and clear errors for bad arguments. Plus a smoke run of bench.replay."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml import loop, replay
from ml.replay import Driftline, ReplayError, ReplayOptions, World

FAST = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 200}}


def stream(batches: int = 14, rows: int = 60, flip_at: int | None = None, shift_at: int | None = None,
           seed: int = 0) -> pd.DataFrame:
    """Hourly rows, one feature decides the label (``x > 0`` -> "yes"); from ``flip_at`` on the
    rule is reversed (concept drift), from ``shift_at`` on ``x`` moves (covariate drift only)."""
    rng = np.random.default_rng(seed)
    n = batches * rows
    x = rng.normal(size=n)
    z = rng.normal(size=n)
    batch = np.arange(n) // rows
    if shift_at is not None:
        x = np.where(batch >= shift_at, x + 4.0, x)
        z = np.where(batch >= shift_at, z * 3 + 5.0, z)
    rule = x > (4.0 if shift_at is not None else 0.0) * (batch >= (shift_at or 0))
    if flip_at is not None:
        rule = np.where(batch >= flip_at, ~rule, rule)
    return pd.DataFrame({
        "when": (pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), unit="h")).astype(str),
        "x": x, "z": z, "colour": rng.choice(["red", "blue"], size=n),
        "y": np.where(rule, "yes", "no"),
    })


def raw_config(**triggers) -> dict:
    return {
        "name": "toy", "task": "classification", "estimator": FAST,
        "windows": {"holdout": "36h"},
        "triggers": {"schedule": None, "drift_share": None, "metric_floor": 0.6, "max_relative_drop": 0.15,
                     "cooldown": 0, **triggers},
        "promotion": {"metric": "accuracy", "significance": 0.05, "bootstrap_samples": 200},
        "rollback": {"auto": True},
    }


def options(**kwargs) -> ReplayOptions:
    base = {"target": "y", "time_column": "when", "batch_rows": 60, "every": (1, 3), "initial_batches": 4}
    return ReplayOptions(**{**base, **kwargs})


def prepared(frame=None, raw=None, **kwargs) -> replay.ReplayData:
    return replay.prepare(stream() if frame is None else frame, options(**kwargs), raw or raw_config())


# ---- protocol -----------------------------------------------------------------------------------


def test_no_batch_is_predicted_by_a_model_that_saw_its_labels():
    data = prepared(stream(flip_at=8))
    result = replay.run(data)
    first = data.options.initial_batches
    assert result.strategy("driftline").retrains >= 1  # otherwise the check below is only about old models
    for s in result.strategies:
        assert len(s.model_data_end) == data.n_batches - first
        for b, end in zip(range(first, data.n_batches), s.model_data_end, strict=True):
            assert pd.Timestamp(end) < data.batch_starts[b], (s.name, b)
    # Retraining every batch uses everything allowed: the model predicting batch b learned up to b-1.
    every = result.strategy("every_1")
    for b, end in zip(range(first, data.n_batches), every.model_data_end, strict=True):
        assert pd.Timestamp(end) == data.batch_ends[b - 1]


def test_label_delay_is_respected():
    delay = 2
    data = prepared(stream(flip_at=8), label_delay=delay)
    result = replay.run(data)
    first = data.options.initial_batches
    # Labels of batch c are revealed after batch c + delay is predicted, so before predicting b the
    # newest labelled batch is b - 1 - delay (the initial batches are labelled history).
    for s in result.strategies:
        for b, end in zip(range(first, data.n_batches), s.model_data_end, strict=True):
            newest = max(b - 1 - delay, first - 1)
            assert pd.Timestamp(end) <= data.batch_ends[newest], (s.name, b)
    every = result.strategy("every_1")
    ends = [pd.Timestamp(e) for e in every.model_data_end]
    assert ends[-1] == data.batch_ends[data.n_batches - 2 - delay]
    assert (data.frame["known_at"] >= data.frame["ts"]).all()


def test_label_delay_shows_in_the_known_labels():
    data = prepared(label_delay=3)
    world = World(data)
    step = 7
    labelled = world.frame[world.rows(step, labelled=True)]
    assert labelled["batch"].max() == step - 3
    assert world.labelled_batches(step) == list(range(step - 3 + 1))


def test_baselines_are_counted():
    data = prepared(every=(1, 3, 4))
    result = replay.run(data, variants={})
    predicted = data.n_batches - data.options.initial_batches  # 10
    assert predicted == 10
    counts = {s.name: (s.retrains, s.promotions, s.rejections, s.rollbacks) for s in result.strategies}
    assert counts == {"static": (0, 0, 0, 0), "every_1": (10, 10, 0, 0), "every_3": (3, 3, 0, 0),
                      "every_4": (2, 2, 0, 0)}
    every_3 = result.strategy("every_3")
    assert [e["batch"] for e in every_3.events if e["kind"] == "retrain"] == [6, 9, 12]
    assert "driftline" not in {s.name for s in result.strategies}


def test_held_out_baseline_learns_what_driftline_candidates_learn():
    data = prepared(every=(1,), every_held_out=(1,))
    result = replay.run(data, variants={})
    lagged, fresh = result.strategy("every_1_held_out"), result.strategy("every_1")
    assert lagged.retrains == fresh.retrains == 10
    first = data.options.initial_batches
    for b, end, fresh_end in zip(range(first, data.n_batches), lagged.model_data_end, fresh.model_data_end,
                                 strict=True):
        # The newest 36 h (the holdout) are left out: its model is 36 h staler than the fresh one.
        assert pd.Timestamp(end) == pd.Timestamp(fresh_end) - timedelta(hours=36)


def test_metric_is_computed_over_all_predicted_rows():
    data = prepared(stream(flip_at=8))
    result = replay.run(data, variants={})
    static = result.strategy("static")
    per_batch = static.batch_metrics
    # Equal batch sizes: the overall accuracy is the mean of the batch accuracies.
    assert static.metric == pytest.approx(np.mean(per_batch))
    # The flipped rule makes the never-retrained model wrong on almost every row after batch 8.
    assert np.mean(per_batch[4:]) < 0.1
    assert np.mean(per_batch[:4]) > 0.9


# ---- Driftline's steps --------------------------------------------------------------------------


def test_driftline_answers_a_concept_flip_and_counts_its_decisions():
    data = prepared(stream(flip_at=8))
    result = replay.run(data, variants={"driftline": data.config})
    d, static = result.strategy("driftline"), result.strategy("static")
    assert d.metric > static.metric + 0.2
    assert d.failures == 0 and d.retrains == d.promotions + d.rejections
    kinds = [e["kind"] for e in d.events if e["batch"] >= data.options.initial_batches]
    assert kinds.count("retrain") == d.retrains and kinds.count("promote") == d.promotions
    # The first live retrain answers the flip: labels of batch 8 are known after step 8.
    first = next(e for e in d.events if e["kind"] == "retrain" and e["batch"] >= 4)
    assert first["batch"] == 8
    assert re.search(r"live accuracy 0\.0\d+ < floor 0\.600", first["detail"])
    steps = result.steps["driftline"]
    assert [s["batch"] for s in steps] == list(range(3, data.n_batches))
    assert steps[0]["trigger"] == "time" and steps[0]["action"] == "promoted"  # the first champion


def test_driftline_stays_quiet_on_a_stationary_stream():
    data = prepared(stream(batches=16))
    result = replay.run(data, variants={"driftline": data.config})
    d = result.strategy("driftline")
    assert d.retrains == 0
    assert all(s["trigger"] == "none" for s in result.steps["driftline"][1:])


def test_driftline_trains_before_the_holdout_and_the_gate_compares_on_it():
    data = prepared(stream(flip_at=8))
    world = World(data)
    d = Driftline(data.config, world)
    d.start(world, 3)
    v1 = d.registry.info(1)
    latest = data.batch_ends[3]
    end, start = pd.Timestamp(v1.tag("data_end")), pd.Timestamp(v1.tag("data_start"))
    # Training ends where the newest 36 h (the holdout) begin; the 4-batch window before that.
    assert end <= latest - timedelta(hours=36)
    assert end > latest - timedelta(hours=37)
    assert start > latest - timedelta(hours=36) - 4 * data.period
    assert d.champion == 1 and pd.Timestamp(v1.tag("promoted_at")) == latest
    assert v1.tag("eval_accuracy") is not None and v1.tag("verdict") == "promoted"


def test_guard_rolls_back_a_champion_worse_than_its_predecessor():
    from sklearn.dummy import DummyClassifier

    from ml.ports import LoggedModel

    data = prepared(raw=raw_config(metric_floor=None, max_relative_drop=None))  # only the guard acts
    world = World(data)
    d = Driftline(data.config, world)
    d.start(world, 3)  # v1: a real model trained on the first batches
    d.live = True
    # v2, always "no", becomes champion through the registry's own moves.
    bad = DummyClassifier(strategy="constant", constant="no").fit(np.zeros((2, 1)), ["no", "yes"])
    v2 = d.registry.register(LoggedModel("memory", "bad", None, None, bad))
    d.registry.mark_challenger(v2, {"mlflow_run_id": "bad", "model_source": d.registry.source(v2)}, run_id="test",
                               actor="test")  # registered as train_candidate registers: its lineage is known
    d.registry.set_tags(v2, {"data_start": data.batch_starts[0].isoformat(), "data_end": data.batch_ends[3].isoformat(),
                             "eval_accuracy": 0.99})
    d.registry.promote(v2, run_id="test", actor="test", reasons=["test"], data_time=data.batch_ends[3])
    for b in (4, 5):  # v2 serves batches 4 and 5: about half wrong, v1 would have been right
        d.predict(world, b)
    d.act(world, 5)
    assert d.steps[-1].guard == "keep" and d.champion == v2  # 120 labelled rows < rollback.min_labelled_rows (200)
    for b in (6, 7, 8):
        d.predict(world, b)
    d.act(world, 8)
    assert d.steps[-1].guard.startswith("rollback: v2 accuracy")
    assert d.champion == 1 and d.stats.rollbacks == 1
    assert pd.Timestamp(d.registry.info(1).tag("promoted_at")) == data.batch_ends[8]  # a new probation
    rolled = d.store.audit_log(data.config.name, ["rolled_back"])
    assert rolled[-1]["actor"] == "driftline-guard" and rolled[-1]["details"]["from_version"] == v2
    # previous-champion now names v2, so a person can undo the rollback; the guard itself never
    # brings a rolled-back version back, however its rows compare.
    assert d.registry.version_for("previous-champion") == v2
    kept = loop.guard_champion(d.ctx, loop.RunInfo("test/after", actor="tester", params={}))
    assert kept["action"] == "keep" and kept["champion"] == 1
    assert kept["reason"].startswith(f"v{v2} was rolled back by driftline-guard; the guard does not bring it back")


def test_drift_triggered_retrain_learns_only_after_the_onset():
    frame = stream(batches=14, shift_at=8)
    raw = raw_config(metric_floor=None, max_relative_drop=None, drift_share=0.5, num_method="ks")
    data = prepared(frame, raw)
    result = replay.run(data, variants={"driftline": data.config})
    steps = {s["batch"]: s for s in result.steps["driftline"]}
    assert all(steps[b]["drift_share"] < 0.5 for b in range(4, 8))  # same distribution as the reference
    assert steps[8]["drift_share"] >= 2 / 3 and "x, z" in steps[8]["summary"]  # x and z moved, colour did not
    assert all(steps[b]["trigger"] == "none" and not steps[b]["reasons"] for b in range(4, 8))
    assert steps[8]["reasons"][0].startswith("drift share 0.67")
    # At step 8 only 24 post-shift rows lie before the 36 h holdout: too few to train
    # (training.min_rows), so the retrain is held back; at step 9 there are enough.
    assert steps[8]["action"] == "skipped"
    assert any("24 labelled rows from after it can train a model, 50 needed" in h for h in steps[8]["held_back"])
    events = [e for e in result.strategy("driftline").events if e["batch"] >= 8]
    assert not [e for e in events if e["kind"] == "failed"]
    retrain = next(e for e in events if e["kind"] == "retrain")
    assert retrain["batch"] == 9 and "drift share" in retrain["detail"]
    start = re.search(r"rows (\S+?)\.\.", retrain["detail"]).group(1)
    # Trained only on rows after the drift began (the start of batch 8), not on the 4-batch window.
    assert pd.Timestamp(start, tz="UTC") >= data.batch_starts[8]


# ---- data and arguments -------------------------------------------------------------------------


def test_file_order_gets_evenly_spaced_times_and_row_batches():
    frame = stream().drop(columns="when")
    data = replay.prepare(frame, options(time_column=None, batch_rows=48, row_interval=timedelta(minutes=30)),
                          raw_config())
    ts = data.frame["ts"]
    assert (ts.diff().dropna() == pd.Timedelta(minutes=30)).all()
    assert data.period == timedelta(days=1)
    assert data.config.windows.current == timedelta(days=1) and data.config.windows.training == timedelta(days=4)
    assert data.frame.groupby("batch").size().iloc[0] == 48


def test_numeric_time_column_orders_the_rows():
    frame = stream().drop(columns="when")
    frame["order"] = np.arange(len(frame))[::-1]
    data = replay.prepare(frame, options(time_column="order"), raw_config())
    assert list(data.frame["x"].iloc[:3]) == list(frame["x"].iloc[::-1].iloc[:3])


def test_period_batches_and_hour_column():
    frame = pd.DataFrame({"day": np.repeat(pd.date_range("2024-01-01", periods=60).strftime("%Y-%m-%d"), 24),
                          "hr": np.tile(np.arange(24), 60)})
    rng = np.random.default_rng(1)
    frame["x"] = rng.normal(size=len(frame))
    frame["y"] = frame["x"] * 3 + rng.normal(size=len(frame))
    raw = {"task": "regression", "estimator": {"class": "sklearn.linear_model.Ridge"},
           "promotion": {"metric": "mae"}, "windows": {"holdout": "1d"}}
    data = replay.prepare(frame, ReplayOptions(target="y", features=("x", "hr"), time_column="day",
                                               hour_column="hr", period=timedelta(days=7)), raw)
    assert data.n_batches == 9  # 60 days: 8 full weeks and 4 days
    assert data.frame["ts"].iloc[25] == pd.Timestamp("2024-01-02 01:00", tz="UTC")
    assert data.config.feature_names == ["x", "hr"] and data.config.task == "regression"
    result = replay.run(data, variants={})
    assert result.metric == "mae" and result.strategy("every_1").metric < result.strategy("static").metric * 1.5


def test_features_default_to_every_other_column_with_inferred_kinds():
    data = prepared()
    assert data.config.feature_names == ["x", "z", "colour"]
    assert data.config.categorical == ["colour"]
    assert data.config.target.labels == ["no", "yes"]


def test_read_arff(tmp_path):
    path = tmp_path / "tiny.arff"
    path.write_text("% comment\n@relation t\n@attribute a numeric\n@attribute day {1,2,3}\n"
                    "@attribute class {UP,DOWN}\n\n@data\n0.5,1,UP\n?,2,DOWN\n0.25,3,UP\n")
    frame = replay.read_table(path)
    assert list(frame.columns) == ["a", "day", "class"]
    assert frame["a"].isna().tolist() == [False, True, False]
    assert frame["day"].tolist() == ["1", "2", "3"] and frame["class"].tolist() == ["UP", "DOWN", "UP"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target": "nope"}, "target: column 'nope' not in the data"),
        ({"features": ("x", "missing")}, "features: column(s) not in the data: missing"),
        ({"features": ("x", "y")}, "the target 'y' cannot also be a feature"),
        ({"period": timedelta(days=1)}, "give exactly one of batch_rows"),
        ({"batch_rows": None}, "give exactly one of batch_rows"),
        ({"batch_rows": 0}, "batch_rows: must be >= 1"),
        ({"initial_batches": 14}, "not more than initial_batches (14)"),
        ({"label_delay": -1}, "label_delay: must be >= 0"),
        ({"window": 0}, "window: must be >= 1 batch"),
        ({"every": (0,)}, "every: each k must be >= 1"),
        ({"time_column": "colour"}, "time_column: 'colour' is not a date-time column"),
        ({"time_column": "nowhere"}, "time_column: column 'nowhere' not in the data"),
        ({"hour_column": "x", "time_column": None}, "hour_column: needs a time column"),
    ],
)
def test_bad_arguments_say_what_is_wrong(change, message):
    with pytest.raises(ReplayError) as caught:
        replay.prepare(stream(), options(**change), raw_config())
    assert message in str(caught.value)


def test_bad_config_and_labels_say_what_is_wrong():
    raw = raw_config()
    raw["target"] = {"labels": ["yes", "maybe"]}
    with pytest.raises(ReplayError, match=r"label\(s\) not in target.labels \['yes', 'maybe'\]: 'no'"):
        replay.prepare(stream(), options(), raw)
    raw = raw_config()
    raw["windows"] = {"holdout": "11d"}
    with pytest.raises(ReplayError, match=r"windows.holdout .* must be shorter than the training window"):
        replay.prepare(stream(), options(), raw)
    raw = raw_config()
    raw["promotion"]["metric"] = "mae"
    with pytest.raises(ReplayError, match="field 'promotion.metric': 'mae' does not fit task 'classification'"):
        replay.prepare(stream(), options(), raw)
    raw = raw_config()
    del raw["task"]
    with pytest.raises(ReplayError, match="task: not in the config"):
        replay.prepare(stream(), options(), raw)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ReplayError, match="data: no such file"):
        replay.read_table(tmp_path / "absent.csv")


# ---- the command line ---------------------------------------------------------------------------


def test_driftline_replay_command(tmp_path, capsys):
    import yaml

    from driftline.cli import main

    csv = tmp_path / "toy.csv"
    stream(flip_at=8).to_csv(csv, index=False)
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(raw_config()))
    plot, out = tmp_path / "toy.png", tmp_path / "toy.json"
    code = main(["replay", str(csv), "--config", str(config), "--target", "y", "--time", "when",
                 "--batch-rows", "60", "--every", "2", "--plot", str(plot), "--json", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| retrain every 2 batches |" in printed and "| Driftline |" in printed
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(out.read_text())
    assert [s["name"] for s in saved["strategies"]] == ["static", "every_2", "driftline"]
    assert [p["tag"] for p in saved["frontier"]] == ["static", "k=2"] and set(saved["vs_schedule"]) == {"driftline"}
    assert saved["vs_schedule_sign"] == "+ = better than the schedule (accuracy above the line)"
    assert main(["replay", str(csv), "--config", str(config), "--target", "nope", "--batch-rows", "60"]) == 2
    assert "target: column 'nope' not in the data" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path, capsys):
    from driftline.replay_cli import main

    csv = tmp_path / "toy.csv"
    stream().to_csv(csv, index=False)
    assert main([str(csv), "--config", str(tmp_path / "absent.yaml"), "--target", "y", "--batch-rows", "60"]) == 2
    assert "config: cannot read" in capsys.readouterr().err


# ---- the benchmark ------------------------------------------------------------------------------


def test_bench_replay_smoke(tmp_path):
    from bench import replay as bench

    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    section = (tmp_path / "replay.md").read_text()
    assert section.startswith("## ")
    assert "| Driftline |" in section and "| retrain every batch |" in section
    assert "python -m bench.replay" in section
    payload = json.loads((tmp_path / "replay.json").read_text())
    smoke = payload["datasets"]["smoke"]
    names = [s["name"] for s in smoke["strategies"]]
    assert names[:3] == ["static", "every_1", "every_4"] and "driftline" in names
    assert smoke["label_delay"] == 1
    assert Path(smoke["plot"]).exists() and Path(smoke["plot"]).parent == tmp_path
    assert payload["machine"]["cpus"] >= 1
    # The frontier picture and its words; both pictures come back from replay.json alone.
    frontier = Path(smoke["frontier_plot"])
    assert frontier == tmp_path / "frontier_smoke.png" and frontier.exists()
    assert "| vs schedule |" in section and "**Against fixed schedules.**" in section
    assert "![smoke: retrains against accuracy](bench/frontier_smoke.png)" in section
    frontier.unlink()
    Path(smoke["plot"]).unlink()
    (tmp_path / "replay.md").unlink()
    assert bench.main(["--markdown-only", "--out", str(tmp_path)]) == 0
    assert frontier.exists() and Path(smoke["plot"]).exists()
    assert (tmp_path / "replay.md").read_text() == section
    assert json.loads((tmp_path / "replay.json").read_text()) == payload  # not rewritten


def test_bench_skips_a_data_set_whose_file_is_absent(tmp_path):
    from dataclasses import replace

    from bench import replay as bench

    absent = replace(bench.DATASETS[0], path=tmp_path / "no" / "elecNormNew.arff")
    result = bench.run_dataset(absent, tmp_path, tmp_path)
    assert "skipped" in result and "elecNormNew.arff is absent" in result["skipped"]
    section = bench.markdown({"elec2": {**result, "title": "Elec2"}}, smoke=False, command="x", seconds=1)
    assert "### Elec2\n\nSkipped: " in section


def test_bench_smoke_refuses_to_overwrite_the_real_results():
    from bench import replay as bench

    with pytest.raises(SystemExit):
        bench.main(["--smoke"])


def test_replay_relative_drop_against_the_served_level(tmp_path):
    raw = raw_config(metric_floor=None, max_relative_drop=0.3, drop_reference="served")
    raw["windows"]["current"] = "60h"
    raw["rollback"]["min_labelled_rows"] = 30
    data = prepared(stream(flip_at=8), raw)
    result = replay.run(data, variants={"driftline": data.config})
    first = next(e for e in result.strategy("driftline").events if e["kind"] == "retrain" and e["batch"] >= 4)
    assert first["batch"] == 8
    assert re.search(r"worse than in its first \S+ served \(\d\.\d{3}\)", first["detail"]), first["detail"]


# ---- the schedule frontier ----------------------------------------------------------------------


def test_interpolate_joins_the_points_and_never_extrapolates():
    points = [(16, 0.76), (0, 0.62), (32, 0.77), (131, 0.78)]  # any order
    assert replay.interpolate(points, 16) == pytest.approx(0.76)
    assert replay.interpolate(points, 24) == pytest.approx(0.765)  # halfway between 16 and 32
    assert replay.interpolate(points, 8) == pytest.approx(0.69)
    assert replay.interpolate(points, 0) == pytest.approx(0.62)
    assert replay.interpolate(points, 131) == pytest.approx(0.78)
    assert replay.interpolate(points, 132) is None and replay.interpolate(points, -1) is None
    assert replay.interpolate([], 3) is None
    # Two schedules with as many retrains (k=12 and k=16 on a short stream): the better one counts.
    assert replay.interpolate([(0, 0.5), (4, 0.7), (4, 0.6)], 4) == pytest.approx(0.7)
    assert replay.interpolate([(0, 50.0), (4, 40.0), (4, 45.0)], 2, greater_is_better=False) == pytest.approx(45.0)
    with pytest.raises(ValueError, match="points: every x and y must be finite"):
        replay.interpolate([(0, float("nan")), (4, 0.7)], 2)


def hand_result(metric: str = "accuracy", scores: dict | None = None, failures: int = 0) -> replay.ReplayResult:
    """A result with given (retrains, metric) per strategy; Driftline variants are those with steps."""
    scores = scores or {"static": (0, 0.60), "every_1": (100, 0.80), "every_4": (25, 0.76),
                        "every_1_held_out": (100, 0.99), "driftline": (20, 0.78), "driftline_lazy": (10, 0.60)}
    strategies = [replay.StrategyResult(name, value, retrains, retrains, 0, 0,
                                        failures if name.startswith("driftline") else 0, 0.0, [], [], [])
                  for name, (retrains, value) in scores.items()]
    steps = {name: [] for name in scores if name.startswith("driftline")}
    return replay.ReplayResult("toy", metric, metric != "mae", "classification", 100, 104, 4, "1w", 0, 4,
                               [], strategies, steps, {}, 1.0)


def test_frontier_gap_is_positive_when_driftline_beats_the_schedule():
    result = hand_result()
    frontier = replay.schedule_frontier(result)
    # The held-out baseline trains on another window: not a point of the frontier.
    assert [(p.tag, p.retrains) for p in frontier] == [("static", 0), ("k=4", 25), ("k=1", 100)]
    gaps = replay.frontier_gaps(result)
    assert set(gaps) == {"driftline", "driftline_lazy"}
    assert gaps["driftline"] == pytest.approx(0.78 - (0.60 + 20 / 25 * 0.16))  # above the line: +0.052
    assert gaps["driftline_lazy"] == pytest.approx(0.60 - (0.60 + 10 / 25 * 0.16))  # below: -0.064
    # MAE: lower is better, so the sign flips: below the line is positive.
    mae = hand_result("mae", {"static": (0, 130.0), "every_1": (100, 40.0), "every_4": (25, 45.0),
                              "driftline": (25, 43.0), "driftline_worse": (25, 50.0)})
    assert replay.frontier_gaps(mae) == {"driftline": pytest.approx(2.0), "driftline_worse": pytest.approx(-5.0)}


def test_frontier_gap_outside_the_schedules_is_none_and_says_so():
    result = hand_result(scores={"every_1": (100, 0.80), "every_4": (25, 0.76), "driftline": (10, 0.9)})
    assert replay.frontier_gaps(result) == {"driftline": None}  # no static: nothing below 25 retrains
    assert "| Driftline | 0.9 | 10 | 10 | 0 | 0 | 0 | outside |" in result.table_markdown()


def test_printed_table_counts_failed_candidates_and_the_gap():
    table = hand_result(failures=3).table_markdown()
    assert table.splitlines()[0].startswith("| strategy | accuracy | retrains | promotions | rejections | failed | "
                                            "rollbacks | vs schedule |")
    assert "| Driftline | 0.78 | 20 | 20 | 0 | 3 | 0 | +0.052 |" in table
    assert "| retrain every 4 batches | 0.76 | 25 | 25 | 0 | 0 | 0 |  |" in table
    text = replay.frontier_text(hand_result())
    assert "static: 0 retrains, 0.6 · k=4: 25 retrains, 0.76 · k=1: 100 retrains, 0.8" in text
    assert "+ means better (above the line)" in text
    assert "+ means better (below the line)" in replay.frontier_text(hand_result("mae"))


def test_frontier_plot_is_drawn_from_the_saved_json_alone(tmp_path):
    saved = json.loads(json.dumps(hand_result().to_dict()))  # what replay.json holds
    path = replay.frontier_plot(replay.ReplayResult.from_dict(saved), tmp_path / "f" / "frontier.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000


# ---- the decision log and the command line on a user's CSV --------------------------------------


def write_inputs(tmp_path: Path, frame: pd.DataFrame, raw: dict | None = None, **csv_kwargs) -> tuple[Path, Path]:
    import yaml

    csv_path, config = tmp_path / "data.csv", tmp_path / "policy.yaml"
    frame.to_csv(csv_path, **{"index": False, **csv_kwargs})
    config.write_text(yaml.safe_dump(raw or raw_config()))
    return csv_path, config


def cli(argv: list[str]) -> int:
    from driftline.cli import main

    return main(["replay", *argv])


def test_decisions_csv_has_one_line_per_driftline_step(tmp_path, capsys):
    csv_path, config = write_inputs(tmp_path, stream(flip_at=8))
    decisions, frontier = tmp_path / "out" / "decisions.csv", tmp_path / "frontier.png"
    code = cli([str(csv_path), "--config", str(config), "--target", "y", "--time", "when", "--batch-rows", "60",
                "--every", "1,3", "--every", "6", "--decisions", str(decisions), "--frontier-plot", str(frontier),
                "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| retrain every 3 batches |" in printed and "| retrain every 6 batches |" in printed
    assert "schedule frontier (accuracy): static: 0 retrains" in printed and "k=6: 1 retrains" in printed
    assert frontier.read_bytes()[:4] == b"\x89PNG"
    log = pd.read_csv(decisions)
    assert tuple(log.columns) == replay.DECISION_COLUMNS
    assert (log["variant"] == "driftline").all()
    assert log["batch"].tolist() == list(range(3, 14))  # the first model's step, then every predicted batch
    first = log.iloc[0]
    assert first["trigger"] == "time" and first["action"] == "promoted" and first["champion"] == 1
    flip = log[log["batch"] == 8].iloc[0]  # the concept flip: the floor rule fires, a candidate is judged
    assert flip["trigger"] != "none" and "floor" in flip["reasons"]
    assert flip["candidate"] >= 2 and flip["verdict"] in ("promote", "reject")
    assert flip["action"] in ("promoted", "rejected")
    quiet = log[log["batch"] == 5].iloc[0]
    assert quiet["action"] == "skipped" and pd.isna(quiet["candidate"]) and 0.8 < quiet["live_metric"] <= 1.0
    assert f"decisions: {decisions}" in printed


def test_decision_rows_cover_every_variant():
    data = prepared(stream(batches=8))
    result = replay.run(data, variants={"driftline": data.config, "driftline_twin": data.config})
    rows = replay.decision_rows(result)
    assert [r["variant"] for r in rows] == ["driftline"] * 5 + ["driftline_twin"] * 5
    assert all(isinstance(r["reasons"], str) and isinstance(r["held_back"], str) for r in rows)


def test_unnamed_index_column_is_dropped_with_a_note(tmp_path, capsys):
    csv_path, config = write_inputs(tmp_path, stream(), index=True)  # pandas writes the index, header cell empty
    assert "Unnamed: 0" in pd.read_csv(csv_path).columns
    data = replay.prepare(pd.read_csv(csv_path), options(), raw_config())
    assert data.config.feature_names == ["x", "z", "colour"]
    assert any("'Unnamed: 0'" in note and "not a feature" in note for note in data.notes)
    # Named on purpose, it stays.
    kept = replay.prepare(pd.read_csv(csv_path), options(features=("x", "Unnamed: 0")), raw_config())
    assert kept.config.feature_names == ["x", "Unnamed: 0"] and not kept.notes
    assert cli([str(csv_path), "--config", str(config), "--target", "y", "--time", "when", "--batch-rows", "60",
                "--every", "4", "--max-batches", "5", "--quiet"]) == 0
    assert "note: dropped column(s) 'Unnamed: 0'" in capsys.readouterr().err


def test_unsorted_rows_are_sorted_by_time_with_a_note():
    frame = stream()
    shuffled = frame.sample(frac=1.0, random_state=3)
    data = replay.prepare(shuffled, options(), raw_config())
    in_order = replay.prepare(frame, options(), raw_config())
    assert data.frame["x"].tolist() == in_order.frame["x"].tolist()
    assert len(data.notes) == 1 and "not in time order" in data.notes[0] and "sorted by time" in data.notes[0]
    assert not in_order.notes


def test_without_a_time_column_a_note_says_rows_are_an_hour_apart(tmp_path, capsys):
    csv_path, config = write_inputs(tmp_path, stream().drop(columns="when"))
    assert cli([str(csv_path), "--config", str(config), "--target", "y", "--batch-rows", "60", "--every", "4",
                "--max-batches", "5", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "note: no time column (--time): rows are replayed in file order, 1h apart (--row-interval)" in err


@pytest.mark.parametrize("declared", [None, "numerical"])
def test_text_in_a_numerical_feature_names_the_column_and_a_value(declared):
    frame = stream()
    frame["x"] = frame["x"].astype(object)
    frame.loc[100, "x"] = "abc"
    raw = raw_config()
    if declared:
        raw["features"] = [{"name": "x", "kind": declared}, {"name": "z", "kind": "numerical"}]
    with pytest.raises(ReplayError) as caught:
        replay.prepare(frame, options(), raw)
    message = str(caught.value)
    assert message.startswith("features: column 'x' ")
    assert "1 non-numeric value(s), e.g. 'abc' in row 101 of the file" in message
    assert "kind: categorical" in message  # the way out, if it really is text
    # A real text column stays categorical.
    assert "colour" in replay.prepare(stream(), options(), raw_config()).config.categorical


def test_too_few_rows_for_the_first_model_say_what_to_change(tmp_path, capsys):
    frame = stream().head(80)
    with pytest.raises(ReplayError, match=r"^initial_batches: the first 4 batch\(es\) hold 40 row\(s\); .* "
                                          r"training.min_rows \(50\) besides the holdout \(36h\)"):
        replay.prepare(frame, options(batch_rows=10), raw_config())
    # Enough rows, but the 36 h holdout leaves 16 to train on: said once, without a "driftline:" prefix.
    csv_path, config = write_inputs(tmp_path, frame)
    assert cli([str(csv_path), "--config", str(config), "--target", "y", "--time", "when", "--batch-rows", "13",
                "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("driftline: error: initial_batches: Driftline could not train a first model on the "
                          "first 4 batch(es) (52 rows): ")
    assert err.count("driftline:") == 1
    assert "16 row(s), at least 50 needed" in err and "a shorter windows.holdout (now 36h)" in err


def test_errors_show_durations_in_words():
    with pytest.raises(ReplayError, match=r"^period: must be positive, got -1h$"):
        options(batch_rows=None, period=timedelta(hours=-1)).check()
    raw = raw_config()
    raw["windows"] = {"holdout": "11d"}
    with pytest.raises(ReplayError) as caught:
        replay.prepare(stream(), options(), raw)
    assert "windows.holdout (11d)" in str(caught.value) and "10d" in str(caught.value)
    assert "day" not in str(caught.value) and ":00" not in str(caught.value)


def test_missing_columns_list_the_columns_there_are(tmp_path, capsys):
    csv_path, config = write_inputs(tmp_path, stream())
    assert cli([str(csv_path), "--config", str(config), "--target", "y", "--time", "whenx", "--batch-rows", "60"]) == 2
    assert "time_column: column 'whenx' not in the data (columns: when, x, z, colour, y)" in capsys.readouterr().err
    assert cli([str(csv_path), "--config", str(config), "--target", "label", "--batch-rows", "60"]) == 2
    assert "target: column 'label' not in the data (columns: when, x, z, colour, y)" in capsys.readouterr().err


def test_every_takes_a_comma_list_and_refuses_nonsense(capsys):
    from driftline.replay_cli import main

    with pytest.raises(SystemExit):
        main(["data.csv", "--config", "c.yaml", "--target", "y", "--batch-rows", "10", "--every", "1,zero"])
    assert "--every: expected whole numbers of batches, comma-separated, got '1,zero'" in capsys.readouterr().err


def test_help_shows_a_complete_example_that_parses(capsys):
    import yaml

    from driftline.replay_cli import DESCRIPTION, add_arguments, options_from_args
    from ml.config import parse_config

    with pytest.raises(SystemExit):
        cli(["--help"])
    shown = capsys.readouterr().out
    assert "Complete example" in shown and "--decisions decisions.csv" in shown
    # The YAML in the example is a config the replay accepts, the command's arguments parse.
    block = DESCRIPTION.split("<<'YAML'\n")[1].split("\n  YAML\n")
    raw = yaml.safe_load("\n".join(line[2:] for line in block[0].splitlines()))
    raw.update(name="bike", features=[{"name": "hr", "kind": "numerical"}], target={"name": "cnt"})
    assert parse_config(raw, "example").promotion.metric == "mae"
    command = block[1].replace("\\\n", " ").split()
    assert command[:2] == ["driftline", "replay"]
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(command[2:])
    assert options_from_args(args).every == (1, 2, 4, 8, 16) and args.decisions == Path("decisions.csv")


def test_bench_full_run_replays_every_frontier_schedule(tmp_path, monkeypatch):
    from bench import replay as bench

    class Seen(Exception):
        pass

    def fake_run(data, **kwargs):
        raise Seen(data.options.every)

    monkeypatch.setattr(replay, "run", fake_run)
    with pytest.raises(Seen) as caught:
        bench.run_dataset(bench.SMOKE, tmp_path, tmp_path, smoke=False)
    assert caught.value.args[0] == (1, 2, 3, 4, 6, 8, 12, 16)


def test_plot_draws_as_many_schedules_as_a_frontier_run_has(tmp_path):
    data = prepared(every=(1, 2, 3, 4, 6, 8, 12), every_held_out=(1, 2))
    result = replay.run(data, variants={})
    assert len(result.strategies) == 10  # more than there are colours
    assert replay.plot(result, tmp_path / "p.png").stat().st_size > 0



def test_frontier_plot_draws_more_variants_than_it_has_markers(tmp_path):
    scores = {"static": (0, 0.6), **{f"every_{k}": (100 // k, 0.8 - k / 100) for k in (1, 2, 3, 4, 6, 8, 12, 16)},
              **{f"driftline_{i}": (5 + 3 * i, 0.7 + i / 100) for i in range(10)}}
    path = replay.frontier_plot(hand_result(scores=scores), tmp_path / "many.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
