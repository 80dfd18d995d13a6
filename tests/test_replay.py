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

from ml import replay
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
