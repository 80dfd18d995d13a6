"""triggers.error_detector (river's change detectors on the champion's served errors) and
windows.reference: season, as pure functions and through the loop's own steps on in-memory adapters."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from ml import loop, replay
from ml.config import ErrorDetectorSpec
from ml.detectors import Change, detect, errors, served_changes
from ml.replay import Driftline, ReplayOptions, World

TS = pd.date_range("2024-01-01", periods=3000, freq="30min", tz="UTC")


def rate_stream(before: float, after: float | None = None, *, n: int = 3000, jump: int = 1500, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rate = np.where(np.arange(n) < jump, before, before if after is None else after)
    return (rng.random(n) < rate).astype(float)


# KSWIN runs a KS test per row, so its stream is kept short (n rows, the jump half way); on 0/1
# errors the KS statistic is a difference of two proportions, which takes a larger sample than its
# default 30 to tell 15 % from 45 %.
SPECS = [(ErrorDetectorSpec(kind="adwin"), 3000), (ErrorDetectorSpec(kind="page_hinkley"), 3000),
         (ErrorDetectorSpec(kind="kswin", window_size=300, stat_size=100), 1200)]


@pytest.mark.parametrize(("spec", "n"), SPECS, ids=lambda s: getattr(s, "kind", ""))
def test_a_jump_in_the_error_rate_is_detected_after_it(spec, n):
    changes = detect(spec, TS[:n], rate_stream(0.15, 0.45, n=n, jump=n // 2), TS[:n])
    assert changes, f"{spec.kind} missed a jump from 15 % to 45 % errors"
    first = changes[0]
    assert TS[n // 2] <= first.at <= TS[n // 2 + 400]  # after the jump, within about a week of rows
    assert first.after > 0.15 and (first.before is None or first.before < first.after)
    assert first.rows == TS.get_loc(first.at) + 1


@pytest.mark.parametrize(("spec", "n"), SPECS, ids=lambda s: getattr(s, "kind", ""))
def test_a_stationary_error_rate_is_not_a_change(spec, n):
    for seed in (1,) if spec.kind == "kswin" else (1, 2, 3):
        assert detect(spec, TS[:n], rate_stream(0.25, n=n, seed=seed), TS[:n]) == []


def test_a_fall_in_the_error_is_no_reason_to_retrain():
    spec = ErrorDetectorSpec(kind="adwin")
    assert detect(spec, TS, rate_stream(0.45, 0.10), TS) == []  # ADWIN sees it; it is not a rise


def test_regression_errors_are_absolute_errors_and_a_rise_is_found():
    assert errors("regression", [10, 5, 7], [8.0, 9.0, 7.0]).tolist() == [2.0, 4.0, 0.0]
    assert errors("classification", ["UP", "DOWN", 1], ["UP", "UP", 1.0]).tolist() == [0.0, 1.0, 0.0]
    rng = np.random.default_rng(3)
    absolute = np.abs(rng.normal(0, np.where(np.arange(3000) < 1500, 20.0, 60.0)))
    changes = detect(ErrorDetectorSpec(kind="adwin"), TS, absolute, TS)
    assert changes and changes[0].at >= TS[1500] and changes[0].after > changes[0].before


def test_two_runs_find_what_one_pass_finds():
    """The detector's state between runs is the stream itself: a run that sees a prefix finds
    exactly the changes one long pass finds in that prefix, and the later run finds the rest."""
    spec = ErrorDetectorSpec(kind="adwin")
    error = np.concatenate([rate_stream(0.1, 0.4, n=1500, jump=700, seed=4), rate_stream(0.4, 0.7, n=1500, jump=500, seed=5)])
    labelled = TS + pd.Timedelta(hours=12)  # labels come half a day after the row
    whole = detect(spec, TS, error, labelled)
    assert len(whole) >= 2
    cut = TS.get_loc(whole[0].at) + 100
    first_run, second_run = detect(spec, TS[:cut], error[:cut], labelled[:cut]), detect(spec, TS, error, labelled)
    assert first_run == [c for c in whole if c.rows <= cut] and second_run == whole
    assert whole[0].known_at == labelled[TS.get_loc(whole[0].at)]


def test_rows_out_of_time_order_are_refused_and_served_rows_are_sorted():
    spec = ErrorDetectorSpec(kind="adwin")
    with pytest.raises(ValueError, match="time order"):
        detect(spec, TS[::-1], np.zeros(len(TS)), TS)
    error = rate_stream(0.1, 0.5)
    rows = pd.DataFrame({"row_id": [f"r{i:05d}" for i in range(len(TS))], "ts": TS, "labelled_at": TS,
                         "label": np.where(error > 0, "yes", "no"), "prediction": "no"})
    shuffled = rows.sample(frac=1, random_state=0)
    assert served_changes(spec, "classification", shuffled) == detect(spec, TS, error, TS)


def test_change_round_trips_through_json():
    change = Change(at=TS[5].to_pydatetime(), known_at=TS[6].to_pydatetime(), since=None, before=None,
                    after=0.4, rows=6)
    assert Change.from_dict(change.to_dict()) == change


# ---- through the loop's steps (in-memory adapters) -----------------------------------------------

FAST = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 200}}


def stream(batches: int = 14, rows: int = 60, flip_at: int | None = None, seed: int = 0,
           season: int | None = None) -> pd.DataFrame:
    """Hourly rows; ``x > 0`` decides the label, reversed from ``flip_at`` on. With ``season``,
    ``x`` and ``z`` move up by 3 in the second half of every ``season`` batches (a cycle that
    comes back, the label rule moving with it)."""
    rng = np.random.default_rng(seed)
    n = batches * rows
    batch = np.arange(n) // rows
    high = (batch % season) >= season // 2 if season else np.zeros(n, dtype=bool)
    x = rng.normal(size=n) + 3.0 * high
    z = rng.normal(size=n) + 3.0 * high
    rule = x > 3.0 * high
    if flip_at is not None:
        rule = np.where(batch >= flip_at, ~rule, rule)
    return pd.DataFrame({"when": (pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), unit="h")).astype(str),
                         "x": x, "z": z, "y": np.where(rule, "yes", "no")})


def prepared(frame: pd.DataFrame, *, windows: dict | None = None, **triggers) -> replay.ReplayData:
    raw = {"name": "toy", "task": "classification", "estimator": FAST,
           "windows": {"holdout": "36h", **(windows or {})},
           "triggers": {"schedule": None, "drift_share": None, "cooldown": 0, **triggers},
           "promotion": {"metric": "accuracy", "significance": 0.05, "bootstrap_samples": 200},
           "rollback": {"auto": True}}
    options = ReplayOptions(target="y", time_column="when", batch_rows=60, every=(1,), initial_batches=4)
    return replay.prepare(frame, options, raw)


def audit_runs(d: Driftline) -> list[dict]:
    return [e["details"] for e in d.store.audit_log(d.ctx.config.name, ["run"])]


def run_steps(data: replay.ReplayData, batches: range) -> tuple[Driftline, World]:
    """The Driftline strategy alone (no baselines): the first champion, then score + run_cycle per batch."""
    world = World(data)
    d = Driftline(data.config, world)
    d.start(world, batches.start - 1)
    d.live = True
    for b in batches:
        d.predict(world, b)
        d.act(world, b)
    return d, world


def test_the_detector_retrains_on_a_concept_flip():
    d, _ = run_steps(prepared(stream(flip_at=8), error_detector={"kind": "adwin"}), range(4, 10))
    runs = audit_runs(d)[1:]  # the first run trained the first champion
    assert [r["trigger"] for r in runs[:4]] == ["none"] * 4  # batches 4..7: the champion's errors are steady
    flip = runs[4]  # batch 8: its labels are known at once, its errors jump
    assert flip["trigger"] == "threshold" and flip["candidate_version"] is not None
    assert flip["reasons"][0].startswith("error rate changed (ADWIN) at ")
    assert "on rows the champion served" in flip["reasons"][0]


def test_a_stationary_stream_gives_the_detector_nothing_and_few_rows_say_so():
    d, _ = run_steps(prepared(stream(batches=12), error_detector={"kind": "adwin", "min_rows": 100}), range(4, 12))
    runs = audit_runs(d)[1:]  # the first run trained the first champion
    # Step 4: the champion has served 60 labelled rows, fewer than min_rows: the rule says it did not run.
    assert runs[0]["not_run"] == [("error_detector: not run, 60 labelled rows served by the champion since "
                                   "its promotion < triggers.error_detector.min_rows (100)")]
    assert all(r["trigger"] == "none" and not r["not_run"] for r in runs[1:])
    assert d.stats.retrains == 0


def test_each_run_recomputes_what_one_pass_over_the_served_rows_finds():
    # Cooldown keeps the champion in place, so every run looks at the same champion's growing stream.
    data = prepared(stream(flip_at=7), error_detector={"kind": "adwin"}, cooldown="30d")
    world = World(data)
    d = Driftline(data.config, world)
    d.start(world, 3)
    d.live = True
    found = {}
    for b in range(4, 12):
        d.predict(world, b)
        d.act(world, b)
        champion = loop.champion_info(d.ctx)
        found[b] = loop.served_error_changes(d.ctx, champion, world.as_of(b).to_pydatetime())["changes"]
    assert d.champion == 1 and found[11]  # the flip was seen, the champion never replaced
    for b in range(4, 11):  # each earlier run found exactly the changes one pass knew by then
        known = [c for c in found[11] if pd.Timestamp(c["known_at"]) <= world.as_of(b)]
        assert found[b] == known
    held = next(r for r in audit_runs(d)[1:] if r["reasons"])
    assert held["held_back"][0].startswith("cooldown") and held["reasons"][0].startswith("error rate changed (ADWIN)")


def test_a_candidate_answers_the_changes_known_when_it_was_trained():
    old = {"at": "2024-01-03T00:00:00+00:00", "known_at": "2024-01-03T01:00:00+00:00", "since": None,
           "before": 0.1, "after": 0.4, "rows": 200}
    new = {**old, "at": "2024-01-05T00:00:00+00:00", "known_at": "2024-01-05T01:00:00+00:00"}
    found = {"detector": "ADWIN", "rows": 400, "changes": [old, new]}
    assert loop._new_error_change(found, None).at == pd.Timestamp(new["at"])
    assert loop._new_error_change(found, pd.Timestamp("2024-01-04", tz="UTC").to_pydatetime()).at == pd.Timestamp(new["at"])
    assert loop._new_error_change(found, pd.Timestamp("2024-01-06", tz="UTC").to_pydatetime()) is None
    assert loop._new_error_change(None, None) is None


def test_the_seasonal_reference_is_the_same_span_one_season_back_once_there_is_one():
    # 60-hour batches; the cycle is 4 batches. The first champion trained on batches 0..3.
    data = prepared(stream(batches=14, season=4), windows={"reference": "season", "season": "240h"},
                    drift_share=1.0, num_method="ks")
    world = World(data)
    d = Driftline(data.config, world)
    d.start(world, 3)
    d.live = True
    for b in range(4, 14):
        d.predict(world, b)
        d.act(world, b)
    runs = {r["as_of"]: r for r in audit_runs(d)}
    steps = {b: runs[world.as_of(b).isoformat()] for b in range(4, 14)}
    season = timedelta(hours=240)
    # Batch 4 (as_of - 240 h - 60 h lies before the first row): no rows one season back, so the
    # reference is the champion's training rows, and the decision log says so.
    for b in (4,):
        assert any(n.startswith("windows.reference season: the store does not reach back one season (10d)")
                   and n.endswith("drift is measured against the champion's training rows instead")
                   for n in steps[b]["not_run"])
    frame, span = loop.load_reference(d.ctx, world.as_of(9).to_pydatetime(), loop.champion_info(d.ctx))
    assert span["kind"] == "season" and span["note"] is None
    assert pd.Timestamp(span["end"]) == world.as_of(9) - season
    assert frame["ts"].min() > world.as_of(9) - season - data.period and frame["ts"].max() <= world.as_of(9) - season
    # From batch 5 on, each batch is compared with the same phase of the cycle: no drift, though
    # every batch differs from the champion's training rows (a mix of both phases).
    assert all(steps[b]["drift_share"] < 1 and not steps[b]["not_run"] for b in range(5, 14))
    plain, _ = run_steps(prepared(stream(batches=14, season=4), drift_share=1.0, num_method="ks"), range(4, 8))
    assert max(r["drift_share"] for r in audit_runs(plain)[1:]) == 1  # vs the training rows, the cycle reads as drift
