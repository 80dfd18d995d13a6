"""Service-level tests of the loop's steps (ml.loop) against the in-memory adapters (ml.memory):
no SQLite, no MLflow, no Airflow. Each step takes its Context from the test, as from a DAG task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ml import loop
from ml.memory import MemoryRegistry, MemoryStore, NullTracker
from ml.settings import get_settings
from ml.simulator import CreditDefaultSimulator
from ml.validation import DataValidationError

DAYS = 6


@pytest.fixture(scope="module")
def stream():
    """Six days of the demo's stream: rows with their labels, known a day later."""
    sim = CreditDefaultSimulator(seed=11, rows_per_period=300)
    rows = []
    for day in range(DAYS):
        batch = sim.batch(day)
        rows.append(batch.features.merge(batch.labels, on="row_id"))
    return sim, pd.concat(rows, ignore_index=True).sort_values("ts", kind="stable").reset_index(drop=True)


def context(config, frame: pd.DataFrame) -> loop.Context:
    store = MemoryStore(frame, config.feature_names)
    return loop.Context(config, get_settings(), store, MemoryRegistry(config.name, store), NullTracker())


def upto(ctx: loop.Context, frame: pd.DataFrame, when: datetime) -> None:
    """Rows stored so far: those with ts <= when."""
    ctx.store.show(int((pd.to_datetime(frame["ts"], utc=True) <= pd.Timestamp(when)).sum()))


def run(step: int, **params) -> loop.RunInfo:
    return loop.RunInfo(f"test/{step}", actor="tester", params=params)


def test_a_whole_cycle_trains_gates_and_promotes_the_first_champion(config, stream):
    sim, frame = stream
    ctx = context(config, frame)
    upto(ctx, frame, sim.period_start(DAYS))
    out = loop.run_cycle(ctx, run(1))
    assert out["decision"]["kind"] == "time" and out["decision"]["branch"] == "retrain_on_schedule"
    assert out["candidate"]["version"] == 1 and out["promote"]["action"] == "promoted"
    assert ctx.registry.champion() == 1
    info = ctx.registry.info(1)
    assert info.tag("verdict") == "promoted" and info.tag("trigger") == "time"
    # The holdout is the newest labelled day; training ends where it starts.
    assert pd.Timestamp(info.tag("data_end")) <= pd.Timestamp(out["windows"]["as_of"]) - config.windows.holdout
    assert [e["action"] for e in ctx.store.audit_log(config.name)] == ["registered", "promote_requested", "promoted", "run"]


def test_scoring_files_predictions_under_the_version_it_loaded(config, stream):
    _, _, ctx = _champion_ctx(config, stream)
    promoted_at = loop.champion_info(ctx).promoted_at
    new = ctx.store.load(config.name, config.feature_names, unscored_only=True, ts_after=promoted_at)
    assert loop.score(ctx, run(2)) == {"scored": len(new), "champion": 1}
    served = ctx.store.load(config.name, config.feature_names, version=1)
    assert list(served["row_id"]) == list(new["row_id"]) and served["prediction"].notna().all()
    # Rows from before the promotion (its own training and holdout rows among them) are not "served".
    assert ctx.store.load(config.name, config.feature_names, unscored_only=True, ts_until=promoted_at).shape[0] > 0
    assert loop.score(ctx, run(3))["reason"] == "nothing new to score"


def test_check_drift_uses_the_as_of_validate_windows_pinned(config, stream):
    sim, frame = stream
    ctx = context(config, frame)
    upto(ctx, frame, sim.period_start(DAYS - 2))
    windows = loop.validate_windows(ctx, run(1))
    upto(ctx, frame, sim.period_start(DAYS))  # rows ingested between the two steps (or before a retry)
    check = loop.check_drift(ctx, run(1), windows, keep_report=False)
    assert check["as_of"] == windows["as_of"]
    assert pd.Timestamp(check["as_of"]) < sim.period_start(DAYS - 2) + timedelta(seconds=1)


def test_force_without_a_reason_is_a_user_error():
    with pytest.raises(loop.ParamError, match="needs a 'reason'"):
        loop.check_params({"force": True})
    assert issubclass(loop.ParamError, loop.USER_ERRORS)


def test_too_few_rows_to_train_fails_the_run_with_the_setting_named(config, stream):
    sim, frame = stream
    strict = config.model_copy(update={"training": config.training.model_copy(update={"min_rows": 10**6})})
    ctx = context(strict, frame)
    upto(ctx, frame, sim.period_start(DAYS))
    trace: dict = {}
    with pytest.raises(DataValidationError, match="at least 1000000 needed"):
        loop.run_cycle(ctx, run(1), trace=trace)
    assert "decision" in trace and "record" not in trace  # a failed run writes no record
    assert ctx.registry.exists() is False or ctx.registry.champion() is None


def test_facts_know_when_a_candidate_was_last_rejected(config, stream):
    _, frame = stream
    ctx = context(config, frame)
    store = ctx.store
    assert loop._last_rejection_time(ctx) is None
    for version, day in ((1, 3), (2, 5), (3, 9)):
        store.audit(config.name, "registered", version=version, details={"data_time": f"2026-01-0{day}T00:00:00+00:00"})
    store.audit(config.name, "promoted", version=1)
    store.audit(config.name, "rejected", version=2)
    assert loop._last_rejection_time(ctx) == pd.Timestamp("2026-01-05", tz="UTC")
    store.audit(config.name, "promoted", version=3)  # the newest candidate won: v2 stays the last rejection
    assert loop._last_rejection_time(ctx) == pd.Timestamp("2026-01-05", tz="UTC")


def test_served_baseline_reads_the_champions_first_day(config, stream):
    from ml.evaluation import compute_metric

    sim, frame = stream
    served_cfg = config.model_copy(update={
        "triggers": config.triggers.model_copy(update={"drop_reference": "served"}),
        "rollback": config.rollback.model_copy(update={"min_labelled_rows": 200}),
    })
    ctx = context(served_cfg, frame)
    upto(ctx, frame, sim.period_start(3))
    rng = np.random.default_rng(0)
    rows = ctx.store.load(config.name, config.feature_names)
    day = ((rows["ts"] - pd.Timestamp(sim.period_start(0))) // pd.Timedelta(days=1)).to_numpy()
    labels = frame.set_index("row_id")["label"].reindex(rows["row_id"]).to_numpy().astype(int)
    # v1 served day 0, v2 days 1 and 2, with scores that are informative on day 1 only.
    score = np.where(day == 1, np.clip(labels * 0.6 + rng.uniform(0, 0.4, len(rows)), 0, 1), rng.uniform(size=len(rows)))
    for version, mask in ((1, day == 0), (2, day >= 1)):
        ctx.store.record_predictions(config.name, pd.DataFrame({"row_id": rows["row_id"][mask], "prediction": (
            score[mask] > 0.5).astype(int), "score": score[mask]}), version=version, scored_at=datetime.now(UTC))
    champion = loop.ChampionInfo(version=2, data_start=None, data_end=None, metric=0.9, promoted_at=None, previous=1)
    as_of = sim.period_start(3)
    value, n = loop._served_baseline(ctx, champion, as_of)
    day1 = ctx.store.load(config.name, config.feature_names, version=2, labelled_only=True, labelled_until=as_of,
                          ts_until=sim.period_start(2))
    assert n == len(day1) >= served_cfg.rollback.min_labelled_rows
    assert value == pytest.approx(compute_metric("roc_auc", day1["label"].astype(int), None,
                                                 day1["score"].to_numpy(dtype=float))) and value > 0.9
    # With the policy's default (the evaluation at promotion) nothing is read.
    assert loop._served_baseline(context(config, frame), champion, as_of) == (None, 0)


def test_memory_store_answers_as_the_sql_store(tmp_path, config, stream):
    """The replay's store and the DAG's store give the same rows for the same questions."""
    from ml.store import Store

    sim, frame = stream
    sql = Store(f"sqlite:///{tmp_path / 'store.db'}")
    upto_ts = sim.period_start(4)
    stored = frame[pd.to_datetime(frame["ts"], utc=True) <= pd.Timestamp(upto_ts)]
    sql.add_observations(config.name, stored, config.feature_names)
    sql.add_labels(config.name, stored[["row_id", "label", "labelled_at"]])
    memory = MemoryStore(frame, config.feature_names)
    memory.show(len(stored))
    known = sim.period_start(3) + timedelta(hours=5)
    for kwargs in ({}, {"labelled_until": known}, {"labelled_only": True, "labelled_until": known},
                   {"ts_after": sim.period_start(1), "ts_until": sim.period_start(2)},
                   {"labelled_after": sim.period_start(2), "labelled_until": known, "labelled_only": True},
                   {"ts_after": sim.period_start(1), "limit": 25}):
        a = sql.load(config.name, config.feature_names, **kwargs)
        b = memory.load(config.name, config.feature_names, **kwargs)
        assert list(a["row_id"]) == list(b["row_id"]), kwargs
        def labels(f: pd.DataFrame) -> list:
            return [None if pd.isna(v) else int(v) for v in f["label"]]

        assert labels(a) == labels(b), kwargs
    assert sql.latest_ts(config.name) == memory.latest_ts(config.name)
    assert sql.latest_labelled_ts(config.name, known) == memory.latest_labelled_ts(config.name, known)
    assert sql.count_labels(config.name, ts_after=sim.period_start(1), known_at=known) == memory.count_labels(
        config.name, ts_after=sim.period_start(1), known_at=known)
    # shadow predictions: the same pairs, first write wins, unknown rows ignored
    at = sim.period_start(4)
    ids = list(stored["row_id"])
    for target in (sql, memory):
        target.record_predictions(config.name, pd.DataFrame({"row_id": ids[:300], "prediction": [0] * 300}), 1, at)
        target.record_predictions(config.name, pd.DataFrame({"row_id": ids[300:400], "prediction": [0] * 100}), 3, at)
        shadow = pd.DataFrame({"row_id": ids[250:350] + ["nope"], "prediction": [1] * 101, "score": [0.7] * 101})
        assert target.record_shadow_predictions(config.name, shadow, 2, at) == 100
        assert target.record_shadow_predictions(config.name, shadow.assign(prediction=0), 2, at) == 0
    for kwargs in ({}, {"champion": 1}, {"champion": 3, "labelled_only": True, "labelled_until": known},
                   {"labelled_until": sim.period_start(1)}):
        a = sql.load_shadow(config.name, config.feature_names, 2, **kwargs)
        b = memory.load_shadow(config.name, config.feature_names, 2, **kwargs)
        assert len(a) and list(a["row_id"]) == list(b["row_id"]), kwargs
        assert [int(v) for v in a["shadow_prediction"]] == [int(v) for v in b["shadow_prediction"]] == [1] * len(a)
        assert list(a["model_version"]) == list(b["model_version"]), kwargs
        assert a["label"].isna().tolist() == b["label"].isna().tolist(), kwargs
        np.testing.assert_allclose(a["shadow_score"], b["shadow_score"])


def test_scoring_loads_the_version_it_read_even_if_the_alias_moves_meanwhile(config, stream):
    from ml.ports import LoggedModel
    from ml.training import fit_full, predict

    sim, frame = stream
    ctx = context(config, frame)
    upto(ctx, frame, sim.period_start(DAYS - 1))
    loop.run_cycle(ctx, run(1))
    v1 = ctx.registry.champion()
    labelled = frame[frame["ts"] < sim.period_start(2)]
    other = fit_full(config.model_copy(update={"estimator": config.estimator.model_copy(
        update={"params": {"C": 0.001, "max_iter": 500}})}), labelled)
    v2 = ctx.registry.register(LoggedModel("memory", "other", None, None, other))
    registry = ctx.registry
    read = registry.champion

    def champion_then_promote() -> int | None:
        # A promotion lands right after the scoring step read the champion.
        version = read()
        registry.champion = read
        registry.promote(v2, run_id="race", actor="other run", reasons=["race"])
        return version

    registry.champion = champion_then_promote
    upto(ctx, frame, sim.period_start(DAYS))
    result = loop.score(ctx, run(2))
    assert result["champion"] == v1 and registry.champion() == v2
    served = ctx.store.load(config.name, config.feature_names, version=v1)
    want, _ = predict(config, registry.load_model(v1), served)
    assert len(served) == result["scored"] and list(served["prediction"]) == list(want)


# ---- trust: only blessed models load, the gate fails closed ---------------------------------------


def _champion_ctx(config, stream):
    """A first champion trained by a cycle on all but the last day, then that day's rows stored."""
    sim, frame = stream
    ctx = context(config, frame)
    upto(ctx, frame, sim.period_start(DAYS - 1))
    loop.run_cycle(ctx, run(1))
    upto(ctx, frame, sim.period_start(DAYS))
    return sim, frame, ctx


def _outsider(ctx: loop.Context, model) -> int:
    """A version put into the registry by someone else (MLflow's API, no Driftline run)."""
    client = ctx.registry.client
    version = int(client.create_model_version(ctx.config.name, "models:/m-outsider", run_id="outsider").version)
    ctx.registry.models[version] = model
    return version


def test_a_version_driftline_did_not_register_is_never_loaded(config, stream):
    from ml.registry import UnblessedModelError

    _, _, ctx = _champion_ctx(config, stream)
    evil = _outsider(ctx, ctx.registry.load_model(1))
    ctx.registry.client.set_registered_model_alias(config.name, "champion", str(evil))
    with pytest.raises(UnblessedModelError, match=f"refusing to load v{evil}: no Driftline registration"):
        loop.score(ctx, run(2))
    refused = ctx.store.audit_log(config.name, ["refused_load"])
    assert [e["version"] for e in refused] == [evil] and refused[0]["details"]["serving"] is True
    assert ctx.store.load(config.name, config.feature_names, version=evil).empty  # nothing scored with it
    assert issubclass(UnblessedModelError, loop.USER_ERRORS)  # not retried


def test_only_a_promoted_version_serves(config, stream):
    from ml.registry import UnblessedModelError

    _, _, ctx = _champion_ctx(config, stream)
    out = loop.run_cycle(ctx, run(2, retrain=True, reason="test"))
    candidate = out["candidate"]["version"]
    if out.get("promote"):
        pytest.skip("the manual candidate won the gate; nothing unpromoted to point the alias at")
    # A registered but rejected version pointed at by the alias outside Driftline.
    ctx.registry.client.set_registered_model_alias(config.name, "champion", str(candidate))
    with pytest.raises(UnblessedModelError, match="never promoted by Driftline"):
        loop.score(ctx, run(3))
    ctx.registry.check_blessed(candidate)  # still fine to evaluate (it was registered by Driftline)


def test_a_lost_champion_is_not_replaced_without_a_person(config, stream):
    _, _, ctx = _champion_ctx(config, stream)
    ctx.registry.client.delete_registered_model_alias(config.name, "champion")
    out = loop.run_cycle(ctx, run(2))
    assert out["decision"]["kind"] == "time"  # no champion: the rule says train one
    assert out["evaluation"]["verdict"] == "reject" and "reject" in out
    assert any("no champion failed: the model has no champion but v1 was champion before" in r
               for r in out["evaluation"]["reasons"])
    assert ctx.registry.champion() is None
    forced = loop.run_cycle(ctx, run(3, retrain=True, force=True, reason="checked the registry"))
    assert forced["promote"]["action"] == "promoted" and ctx.registry.champion() == forced["candidate"]["version"]


def test_new_label_events_are_consumed_only_by_a_run_that_finished(config, stream):
    sim, frame, ctx = _champion_ctx(config, stream)
    ctx.store.add_event(config.name, "new_labels", "labels-1", 300, sim.period_start(DAYS))
    strict = context(config.model_copy(update={"training": config.training.model_copy(update={"min_rows": 10**6})}),
                     frame)
    strict.store, strict._registry = ctx.store, ctx.registry  # same world, a training that fails
    with pytest.raises(DataValidationError):
        loop.run_cycle(strict, run(2))
    assert [e["key"] for e in ctx.store.pending_events(config.name)] == ["labels-1"]  # kept for the next run
    out = loop.run_cycle(ctx, run(3))
    assert out["decision"]["kind"] == "event" and ctx.store.pending_events(config.name) == []


class _Flaky:
    """MLflow's client with the registry down: every call raises MLflow's 503."""

    def __init__(self, inner, only: tuple[str, ...] = ()) -> None:
        self.inner, self.down, self.only = inner, False, only

    def __getattr__(self, name):
        from mlflow.exceptions import MlflowException
        from mlflow.protos import databricks_pb2

        attr = getattr(self.inner, name)
        if not self.down or not callable(attr) or (self.only and name not in self.only):
            return attr

        def unavailable(*args, **kwargs):
            raise MlflowException("503 Service Unavailable", error_code=databricks_pb2.TEMPORARILY_UNAVAILABLE)

        return unavailable


@pytest.mark.parametrize("step", ["guard", "evaluate", "promote"])
def test_registry_down_fails_the_run_and_the_next_run_converges(config, stream, step):
    from mlflow.exceptions import MlflowException

    _, _, ctx = _champion_ctx(config, stream)
    # At promotion only the alias write fails: the move is cut short after its intent was recorded.
    flaky = _Flaky(ctx.registry.client, ("set_registered_model_alias",) if step == "promote" else ())
    ctx.registry.client = flaky
    real = {name: getattr(loop, name) for name in ("guard_champion", "evaluate_candidate", "promote")}
    target = {"guard": "guard_champion", "evaluate": "evaluate_candidate", "promote": "promote"}[step]

    def failing(*args, **kwargs):
        flaky.down = True
        try:
            return real[target](*args, **kwargs)
        finally:
            flaky.down = False

    params = {"retrain": True, "reason": "test", "force": step == "promote"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, target, failing)
        with pytest.raises(MlflowException, match="503"):
            loop.run_cycle(ctx, run(2, **params))
    assert ctx.registry.champion() == 1  # unchanged: an unreachable registry is not "no champion"
    out = loop.run_cycle(ctx, run(3, **params))
    champion = ctx.registry.champion()
    holders = [v.version for v in ctx.registry.versions() if "champion" in v.aliases]
    assert holders == [champion]
    if step == "promote":
        assert champion == out["candidate"]["version"]
        # The forced promotion cut short by the outage was not lost: the next run's guard finished it.
        assert [(r["action"], r["run_id"]) for r in out["guard"]["resumed"]] == [("promoted", "test/2")]
        first = out["guard"]["resumed"][0]["version"]
        assert ctx.registry.info(first).tag("forced") == "true" and ctx.registry.unfinished_moves() == []
    verdicts = {e["version"] for e in ctx.store.audit_log(config.name, ["promoted"])}
    assert champion in verdicts and ctx.registry.info(champion).tag("verdict") == "promoted"


def test_scoring_pages_through_the_rows_and_takes_out_a_row_it_cannot_score(config, stream, monkeypatch):
    sim, frame = stream
    monkeypatch.setenv("DRIFTLINE_SCORE_CHUNK_ROWS", "70")
    broken = frame.copy()
    day = pd.to_datetime(broken["ts"], utc=True) >= pd.Timestamp(sim.period_start(DAYS - 1))
    bad_id = broken.loc[day, "row_id"].iloc[5]
    broken["income"] = broken["income"].astype(object)
    broken.loc[broken["row_id"] == bad_id, "income"] = float("inf")
    ctx = context(config, broken)
    assert ctx.settings.score_chunk_rows == 70
    upto(ctx, broken, sim.period_start(DAYS - 1))
    loop.run_cycle(ctx, run(1))
    upto(ctx, broken, sim.period_start(DAYS))
    promoted_at = loop.champion_info(ctx).promoted_at
    unscored = len(ctx.store.load(config.name, config.feature_names, unscored_only=True, ts_after=promoted_at))
    assert unscored > 3 * 70
    result = loop.score(ctx, run(2))
    # Every other row scored, across several pages; the bad row quarantined with its reason.
    assert result == {"scored": unscored - 1, "champion": 1, "quarantined": 1}
    assert ctx.store.load(config.name, config.feature_names, unscored_only=True, ts_after=promoted_at).empty
    assert bad_id not in set(ctx.store.load(config.name, config.feature_names)["row_id"])
    [entry] = ctx.store.audit_log(config.name, ["quarantine"])
    assert entry["actor"] == "driftline-score" and "column 'income' holds inf" in entry["details"]["reason"]


def test_a_bad_score_chunk_setting_is_refused(monkeypatch):
    monkeypatch.setenv("DRIFTLINE_SCORE_CHUNK_ROWS", "0")
    with pytest.raises(ValueError, match="DRIFTLINE_SCORE_CHUNK_ROWS: expected a whole number >= 1, got '0'"):
        get_settings()


def test_a_version_page_opens_with_what_became_of_it_and_keeps_few_tags(config, stream):
    from ml.registry import DETAILS, TAG

    _, _, ctx = _champion_ctx(config, stream)
    info = ctx.registry.info(1)
    description = ctx.registry.description(1)
    assert description.startswith("**v1 promoted: time retrain")
    assert "\n\n### Why this version exists" in description
    own = sorted(k for k in info.tags if k.startswith(TAG))
    # What a person filters the versions table on, plus one JSON tag with the rest.
    assert set(own) <= {TAG + k for k in ("trigger", "verdict", "data_start", "data_end", "dag_run_id", "promoted_at",
                                          "eval_roc_auc", "eval_improvement")} | {DETAILS}
    assert len(own) <= 9
    assert info.tag("mlflow_run_id") and info.tag("data_hash") and info.tag("reasons")  # still read through tag()
    out = loop.run_cycle(ctx, run(2, retrain=True, reason="check the page"))
    version = out["candidate"]["version"]
    head = ctx.registry.description(version).split("\n", 1)[0]
    assert head.startswith(f"**v{version} {'promoted' if 'promote' in out else 'rejected'}: manual retrain")


def test_details_tag_shortens_long_values_instead_of_breaking_its_json():
    import json

    from ml.registry import _fit_json

    text = _fit_json({"reasons": "x" * 20000, "strategy": "full"}, 7900)
    assert len(text) <= 7900
    values = json.loads(text)
    assert values["strategy"] == "full" and values["reasons"].endswith("…")


# ---- promotion.refit and windows.max_training -----------------------------------------------------


def _with(config, **sections):
    """``config`` with some fields of its sections replaced, e.g. promotion={"refit": True}."""
    return config.model_copy(update={name: getattr(config, name).model_copy(update=values)
                                     for name, values in sections.items()})


def _steps_to_evaluation(ctx: loop.Context, info: loop.RunInfo) -> tuple[dict, dict]:
    """The continuous-training steps up to the gate's verdict (what run_cycle does before promote)."""
    assert loop.guard_champion(ctx, info)["action"] == "keep"
    check = loop.check_drift(ctx, info, loop.validate_windows(ctx, info), keep_report=False)
    decision = loop.decide(ctx, info, check)
    candidate = loop.train_candidate(ctx, info, decision, check)
    return candidate, loop.evaluate_candidate(ctx, info, candidate)


def test_refit_promotes_the_blessed_candidate_refitted_on_training_plus_holdout(config, stream):
    from ml.registry import UnblessedModelError

    sim, frame = stream
    cfg = _with(config, promotion={"refit": True})
    ctx = context(cfg, frame)
    upto(ctx, frame, sim.period_start(DAYS))
    out = loop.run_cycle(ctx, run(1))
    blessed, refit = out["candidate"]["version"], out["promote"]["refit"]["version"]
    assert out["evaluation"]["verdict"] == "promote" and (blessed, refit) == (1, 2)
    assert ctx.registry.champion() == refit and out["promote"]["refit_of"] == blessed
    assert out["record"]["champion_version"] == refit and out["record"]["refit_version"] == refit
    # It learned the candidate's training rows plus the holdout the gate judged on: up to the newest label.
    b, r = ctx.registry.info(blessed), ctx.registry.info(refit)
    holdout_rows = out["evaluation"]["n_rows"]
    assert int(r.tag("data_rows")) == int(b.tag("data_rows")) + holdout_rows
    assert r.tag("data_start") == b.tag("data_start")
    as_of = pd.Timestamp(out["windows"]["as_of"]).to_pydatetime()
    assert pd.Timestamp(r.tag("data_end")) == pd.Timestamp(ctx.store.latest_labelled_ts(cfg.name, known_at=as_of))
    assert pd.Timestamp(r.tag("data_end")) > pd.Timestamp(b.tag("data_end"))
    # Lineage both ways, on the tags and on each version's page.
    assert r.tag("refit_of") == str(blessed) and b.tag("refit_version") == str(refit)
    assert (b.tag("verdict"), r.tag("verdict")) == ("refitted", "promoted")
    assert r.tag_float(f"eval_{cfg.promotion.metric}") == pytest.approx(out["evaluation"]["challenger"])
    assert ctx.registry.description(refit).startswith(f"**v{refit} promoted: time retrain")
    assert f"**Refit of v{blessed}**" in ctx.registry.description(refit)
    assert ctx.registry.description(blessed).startswith(f"**v{blessed} passed the gate and was refitted: v{refit}")
    assert [(e["action"], e["version"]) for e in ctx.store.audit_log(cfg.name)] == [
        ("registered", blessed), ("registered", refit), ("promote_requested", refit), ("refitted", blessed),
        ("promoted", refit), ("run", refit)]
    assert [v.version for v in ctx.registry.versions() if v.aliases] == [refit]  # no challenger left behind
    # The refit serves; the blessed original, never promoted, does not.
    ctx.registry.check_blessed(refit, serving=True)
    with pytest.raises(UnblessedModelError, match="never promoted"):
        ctx.registry.check_blessed(blessed, serving=True)
    upto(ctx, frame, sim.period_start(DAYS) + timedelta(days=1))
    assert loop.score(ctx, run(2))["champion"] == refit


def test_refit_is_watched_by_the_guard_like_any_champion(config, stream):
    sim, frame = stream
    cfg = _with(config, promotion={"refit": True}, rollback={"min_labelled_rows": 50})
    ctx = context(cfg, frame)
    upto(ctx, frame, sim.period_start(DAYS - 3))
    loop.run_cycle(ctx, run(1))
    first = ctx.registry.champion()
    upto(ctx, frame, sim.period_start(DAYS - 2))
    loop.score(ctx, run(2))
    out = loop.run_cycle(ctx, run(3, retrain=True, force=True, reason="test"))
    # Forced past the gate: promoted as judged (a person overrode the gate; nothing to refit).
    if out["evaluation"]["verdict"] != "promote":
        assert "refit" not in out["promote"] and ctx.registry.champion() == out["candidate"]["version"]
    champion = ctx.registry.champion()
    assert champion != first
    upto(ctx, frame, sim.period_start(DAYS))
    loop.score(ctx, run(4))
    guard = loop.guard_champion(ctx, run(5))
    assert guard["champion"] == champion and guard["target"] == first and guard["rows"] >= 50


def test_a_forced_promotion_is_not_refitted(config, stream):
    sim, frame = stream
    cfg = _with(config, promotion={"refit": True, "floor": 0.99})  # the gate rejects every candidate
    ctx = context(cfg, frame)
    upto(ctx, frame, sim.period_start(DAYS))
    out = loop.run_cycle(ctx, run(1, retrain=True, force=True, reason="test"))
    assert out["evaluation"]["verdict"] == "reject" and out["promote"]["forced"] is True
    assert "refit" not in out["promote"] and ctx.registry.champion() == out["candidate"]["version"]
    assert [v.version for v in ctx.registry.versions()] == [out["candidate"]["version"]]


def test_a_refit_that_cannot_be_made_promotes_the_blessed_candidate_and_says_so(config, stream):
    sim, frame = stream
    cfg = _with(config, promotion={"refit": True})
    ctx = context(cfg, frame)
    upto(ctx, frame, sim.period_start(DAYS))
    info = run(1)
    candidate, evaluation = _steps_to_evaluation(ctx, info)
    assert evaluation["verdict"] == "promote"
    # Between the gate and the promotion a training row is taken out: the refit would not learn the
    # rows the candidate did, so none is made.
    first = ctx.store.load(cfg.name, cfg.feature_names, labelled_only=True)["row_id"].iloc[0]
    ctx.store.quarantine(cfg.name, ids=[first], reason="test")
    out = loop.promote(ctx, info, candidate, evaluation)
    version = candidate["version"]
    assert out["action"] == "promoted" and ctx.registry.champion() == version
    assert "training rows changed since it was trained" in out["refit"]["error"]
    assert [v.version for v in ctx.registry.versions()] == [version]  # no refit version registered
    assert ctx.registry.info(version).tag("verdict") == "promoted"
    assert "**Not refitted:** refit of v1 not made" in ctx.registry.description(version)


def test_a_retried_promote_reuses_the_refit_it_registered(config, stream, monkeypatch):
    sim, frame = stream
    cfg = _with(config, promotion={"refit": True})
    ctx = context(cfg, frame)
    upto(ctx, frame, sim.period_start(DAYS))
    info = run(1)
    candidate, evaluation = _steps_to_evaluation(ctx, info)
    real = type(ctx.registry).promote

    def down(*args, **kwargs):
        raise RuntimeError("registry down")

    monkeypatch.setattr(type(ctx.registry), "promote", down)
    with pytest.raises(RuntimeError, match="registry down"):
        loop.promote(ctx, info, candidate, evaluation)
    monkeypatch.setattr(type(ctx.registry), "promote", real)
    assert ctx.registry.champion() is None and len(ctx.registry.versions()) == 2
    out = loop.promote(ctx, info, candidate, evaluation)  # the task's retry
    assert out["refit"]["reused"] is True and ctx.registry.champion() == out["refit"]["version"] == 2
    assert len(ctx.registry.versions()) == 2
    # A retried train task still finds the run's candidate, not its refit.
    assert loop.train_candidate(ctx, info, {"kind": "time", "reasons": []}, {})["version"] == candidate["version"]


def test_a_refit_superseded_by_a_newer_champion_is_rejected_with_its_candidate(config, stream):
    from ml.ports import LoggedModel

    sim, frame = stream
    ctx = context(_with(config, promotion={"refit": True}), frame)
    upto(ctx, frame, sim.period_start(DAYS))
    model = ctx.registry.load_model  # noqa: F841 (the registry keeps fitted models by version)
    registry = ctx.registry
    trained = loop.run_cycle(ctx, run(1))["promote"]["refit"]["version"]
    blessed = registry.register(LoggedModel("memory", "b", None, None, registry.models[trained]))
    registry.mark_challenger(blessed, {"mlflow_run_id": "b", "model_source": ""}, run_id="late", actor=None)
    refit = registry.register(LoggedModel("memory", "r", None, None, registry.models[trained]))
    registry.mark_challenger(refit, {"mlflow_run_id": "r", "model_source": "", "refit_of": blessed},
                             run_id="late", actor=None)
    newer = registry.register(LoggedModel("memory", "n", None, None, registry.models[trained]))
    registry.promote(newer, run_id="other", actor=None, reasons=["newer"])
    # The refit's own number is above the champion's, but it stands for the older candidate.
    newest = registry.register(LoggedModel("memory", "x", None, None, registry.models[trained]))
    assert refit < newer < newest
    result = registry.promote(refit, run_id="late", actor=None, reasons=["gate"], refit_of=blessed)
    assert result["action"] == "rejected" and result["superseded_by"] == newer
    assert registry.champion() == newer
    assert (registry.info(refit).tag("verdict"), registry.info(blessed).tag("verdict")) == ("rejected", "rejected")


def test_widening_trains_on_up_to_max_training_when_no_drift_episode_is_answered(config, stream):
    sim, frame = stream
    wide = _with(config, windows={"training": timedelta(days=2), "max_training": timedelta(days=4)})
    narrow = _with(config, windows={"training": timedelta(days=2)})
    starts, notes = {}, {}
    for name, cfg in (("wide", wide), ("narrow", narrow)):
        ctx = context(cfg, frame)
        upto(ctx, frame, sim.period_start(DAYS))
        out = loop.run_cycle(ctx, run(1))
        info = ctx.registry.info(out["candidate"]["version"])
        starts[name] = pd.Timestamp(info.tag("data_start"))
        as_of = pd.Timestamp(out["windows"]["as_of"]).to_pydatetime()
        holdout_start = pd.Timestamp(ctx.store.latest_labelled_ts(cfg.name, known_at=as_of)) - cfg.windows.holdout
        notes[name] = info.tag("notes")
    assert starts["narrow"] >= holdout_start - timedelta(days=2)
    assert holdout_start - timedelta(days=4) < starts["wide"] < holdout_start - timedelta(days=3)
    assert notes == {"wide": "no drift episode: training window widened to windows.max_training (4d)", "narrow": ""}


def test_training_start_widens_only_without_a_drift_episode():
    from ml.config import parse_config
    from ml.policy import last_drift_onset, training_start

    cfg = parse_config({
        "name": "m", "task": "regression", "features": [{"name": "x", "kind": "numerical"}], "target": {"name": "y"},
        "estimator": {"class": "sklearn.linear_model.Ridge"},
        "windows": {"training": "4w", "holdout": "2d", "max_training": "12w"}, "promotion": {"metric": "mae"},
    })
    holdout = datetime(2026, 6, 1, tzinfo=UTC)
    week = timedelta(weeks=1)
    assert training_start(cfg, holdout, None) == (holdout - 4 * week, [])  # the replay's baselines: never wider
    start, notes = training_start(cfg, holdout, None, widen=True)
    assert start == holdout - 12 * week and notes == ["no drift episode: training window widened to windows.max_training (12w)"]
    # A drift episode being answered: from its onset, as without the option.
    onset = holdout - week
    assert training_start(cfg, holdout, onset.isoformat(), widen=True)[0] == onset
    assert training_start(cfg, holdout, (holdout - 8 * week).isoformat(), widen=True)[0] == holdout - 4 * week
    # An older drift onset on record stops the widening there, never narrower than windows.training.
    assert training_start(cfg, holdout, None, widen=True, last_onset=holdout - 6 * week)[0] == holdout - 6 * week
    assert training_start(cfg, holdout, None, widen=True, last_onset=holdout - week) == (holdout - 4 * week, [])
    history = [(holdout - 9 * week, 0.1), (holdout - 8 * week, 0.5), (holdout - 7 * week, 0.6),
               (holdout - 6 * week, 0.2), (holdout - 5 * week, None)]
    assert last_drift_onset(history, 0.3) == holdout - 8 * week
    assert last_drift_onset(history, None) is None and last_drift_onset(history[:1], 0.3) is None


# ---- the shadow gate ----------------------------------------------------------------------------


def _shadow_config(config, **gate):
    return config.model_copy(update={"promotion": config.promotion.model_copy(
        update={"gate": "shadow", "min_shadow_rows": 100, **gate})})


def test_shadow_gate_trains_on_every_label_waits_in_shadow_then_judges_on_the_rows_both_scored(config, stream):
    from ml.evaluation import evaluate_candidate

    sim, frame = stream
    config = _shadow_config(config)
    ctx = context(config, frame)
    upto(ctx, frame, sim.period_start(3))
    first = loop.run_cycle(ctx, run(1))
    assert first["shadow"]["status"] == "none"
    assert first["candidate"]["gate"] == "holdout" and ctx.registry.champion() == 1  # no champion to shadow

    upto(ctx, frame, sim.period_start(4))
    loop.score(ctx, run(2))
    out = loop.run_cycle(ctx, run(3, retrain=True, reason="test"))
    candidate = out["candidate"]
    assert candidate["gate"] == "shadow" and out["evaluation"]["verdict"] == "pending"
    assert "promote" not in out and "reject" not in out and out["record"]["action"] == "shadow"
    assert ctx.registry.champion() == 1 and ctx.registry.version_for("challenger") == candidate["version"]
    info = ctx.registry.info(candidate["version"])
    assert info.tag("verdict") == "pending" and info.tag("gate") == "shadow"
    # No holdout given up: it learned up to the newest label known at as_of.
    latest = ctx.store.latest_labelled_ts(config.name, known_at=pd.Timestamp(out["windows"]["as_of"]))
    assert pd.Timestamp(info.tag("data_end")) == pd.Timestamp(latest)

    upto(ctx, frame, sim.period_start(5))
    scored = loop.score(ctx, run(4))
    assert scored["challenger"] == candidate["version"] and scored["shadowed"] == scored["scored"] > 0
    paired = ctx.store.load_shadow(config.name, config.feature_names, candidate["version"])
    assert len(paired) == scored["shadowed"] and (paired["model_version"] == 1).all()  # the champion's stay
    assert (paired["ts"] > pd.Timestamp(info.tag("data_time"))).all()
    waiting = loop.run_cycle(ctx, run(5, retrain=True, reason="again"))
    assert waiting["shadow"]["status"] == "waiting" and waiting["shadow"]["rows"] == 0
    assert "0/100" in waiting["shadow"]["summary"]
    assert "candidate" not in waiting and any("is in shadow" in h for h in waiting["decision"]["held_back"])
    assert any("is in shadow" in h for h in waiting["record"]["held_back"])

    upto(ctx, frame, sim.period_start(6))
    loop.score(ctx, run(6))
    judged = loop.run_cycle(ctx, run(7))
    assert judged["shadow"]["status"] == "evaluated"
    evaluation = judged["shadow"]["evaluation"]
    as_of = pd.Timestamp(judged["windows"]["as_of"])
    rows = ctx.store.load_shadow(config.name, config.feature_names, candidate["version"], champion=1,
                                 labelled_until=as_of, labelled_only=True)
    assert evaluation["n_rows"] == len(rows) >= 100
    # The holdout gate's own function on the paired rows gives the same verdict and interval.
    same = evaluate_candidate(metric=config.promotion.metric, y_true=rows["label"],
                              challenger_pred=rows["shadow_prediction"].to_numpy(),
                              challenger_score=rows["shadow_score"].to_numpy(), champion_pred=rows["prediction"].to_numpy(),
                              champion_score=rows["score"].to_numpy(), min_improvement=config.promotion.min_improvement,
                              significance=config.promotion.significance, floor=config.promotion.floor,
                              n_resamples=config.promotion.bootstrap_samples, seed=config.training.random_state,
                              pos_label=config.positive_label)
    assert (evaluation["verdict"], evaluation["ci_low"], evaluation["improvement"]) == (
        same.verdict, same.ci_low, same.improvement)
    moved = judged.get("shadow_promote") or judged.get("shadow_reject")
    assert moved["action"] == {"promote": "promoted", "reject": "rejected"}[same.verdict]
    # The hold is lifted in the same run: a new candidate may follow it into shadow.
    follower = (judged.get("candidate") or {}).get("version")
    assert ctx.registry.version_for("challenger") == follower != candidate["version"]
    assert ctx.registry.info(candidate["version"]).tag("verdict") == moved["action"]
    assert judged["record"]["shadow_action"] == moved["action"] and judged["record"]["shadow_version"] == 2
    audit = [e["action"] for e in ctx.store.audit_log(config.name) if e["version"] == candidate["version"]]
    assert moved["action"] in audit
    assert "shadow" in ctx.registry.description(candidate["version"])


def test_shadow_gate_holds_no_candidate_under_the_holdout_gate_and_a_forced_run_is_judged_at_once(config, stream):
    sim, frame = stream
    ctx = context(_shadow_config(config), frame)
    upto(ctx, frame, sim.period_start(3))
    loop.run_cycle(ctx, run(1))
    upto(ctx, frame, sim.period_start(4))
    loop.score(ctx, run(2))
    forced = loop.run_cycle(ctx, run(3, force=True, reason="a person says so"))
    assert forced["candidate"]["gate"] == "holdout" and forced["promote"]["action"] == "promoted"
    assert loop.shadow_challenger(ctx) is None
    # the default gate: nothing in shadow, no shadow scoring
    plain = context(config, frame)
    upto(plain, frame, sim.period_start(4))
    assert loop.run_cycle(plain, run(1))["shadow"] == {"status": "off"}
    assert "shadowed" not in loop.score(plain, run(2))


# ---- canary (serving.canary_fraction): the challenger answered a share of the rows ----------------


def _canary_config(config, fraction: float = 0.3, min_rows: int = 60):
    config = _shadow_config(config, min_shadow_rows=min_rows)
    return config.model_copy(update={"serving": config.serving.model_copy(update={"canary_fraction": fraction})})


def _serve_with_canary(ctx: loop.Context, frame: pd.DataFrame, challenger: int, *, challenger_right: bool) -> list:
    """What ``driftline serve`` stores for the rows since the challenger's data: a canary row (by its
    key's bucket) under the challenger's version with the champion's prediction beside it (the shadow
    table, under the champion's version); any other row under the champion's. The challenger's
    answers are made to be right (or wrong) on every row, so the gate's verdict is known. Returns the
    canary keys."""
    from ml.serving import canary_bucket
    from ml.training import predict

    config = ctx.config
    champion = ctx.registry.champion()
    after = pd.Timestamp(ctx.registry.info(challenger).tag("data_time"))
    rows = ctx.store.load(config.name, config.feature_names, unscored_only=True, ts_after=after)
    prediction, score = predict(config, ctx.registry.load_model(champion), rows)
    truth = frame.set_index("row_id").loc[rows["row_id"], "label"].astype(int).to_numpy()
    theirs = truth if challenger_right else 1 - truth
    canary = np.array([canary_bucket(config.name, key) < config.serving.canary_fraction for key in rows["row_id"]])
    at = rows["ts"].max().to_pydatetime()

    def frame_of(mask, values, scores):
        return pd.DataFrame({"row_id": rows.loc[mask, "row_id"], "prediction": list(values[mask]),
                             "score": scores[mask]})

    ctx.store.record_predictions(config.name, frame_of(~canary, prediction, score), champion, at)
    ctx.store.record_predictions(config.name, frame_of(canary, theirs, theirs.astype(float)), challenger, at)
    ctx.store.record_shadow_predictions(config.name, frame_of(canary, prediction, score), champion, at)
    return list(rows.loc[canary, "row_id"])


def _into_canary(config, stream):
    """Champion v1, then v2 trained for the shadow gate: pending, the challenger alias on it."""
    sim, frame = stream
    ctx = context(config, frame)
    upto(ctx, frame, sim.period_start(3))
    loop.run_cycle(ctx, run(1))
    upto(ctx, frame, sim.period_start(4))
    loop.score(ctx, run(2))
    out = loop.run_cycle(ctx, run(3, retrain=True, reason="test"))
    assert out["candidate"]["gate"] == "shadow" and ctx.registry.version_for("challenger") == 2
    upto(ctx, frame, sim.period_start(5))
    return sim, frame, ctx


def test_canary_rows_are_paired_the_other_way_round_and_a_worse_challenger_is_aborted(config, stream):
    config = _canary_config(config)
    sim, frame, ctx = _into_canary(config, stream)
    canary_keys = _serve_with_canary(ctx, frame, 2, challenger_right=False)
    served = ctx.store.load(config.name, config.feature_names, ts_after=pd.Timestamp(ctx.registry.info(2).tag("data_time")))
    assert 0.2 < len(canary_keys) / len(served) < 0.4  # near the fraction (0.3) on a day's keys

    # paired_rows: canary rows with the roles swapped back (the row's own answer is the challenger's).
    as_of = pd.Timestamp(sim.period_start(6))
    paired = loop.paired_rows(ctx, 2, 1, as_of).set_index("row_id")
    assert sorted(paired.index) == sorted(canary_keys) and (paired["answered_by"] == 2).all()
    stored = served.set_index("row_id").loc[canary_keys]
    assert paired.loc[canary_keys, "challenger_prediction"].tolist() == stored["prediction"].tolist()
    assert (stored["model_version"] == 2).all()  # stored under the version that answered
    shadow = ctx.store.load_shadow(config.name, config.feature_names, 1, champion=2).set_index("row_id")
    assert paired.loc[canary_keys, "champion_prediction"].tolist() == shadow.loc[canary_keys, "shadow_prediction"].tolist()

    upto(ctx, frame, sim.period_start(6))  # the canary rows' labels are known now
    judged = loop.run_cycle(ctx, run(4))
    assert judged["shadow"]["status"] == "evaluated" and judged["shadow"]["evaluation"]["verdict"] == "reject"
    canary = judged["shadow"]["candidate"]["canary"]
    labelled = int(paired["label"].notna().sum())
    assert canary == {"fraction": 0.3, "rows": labelled, "paired_rows": labelled, "champion": 1}
    assert judged["shadow"]["rows"] == labelled >= config.promotion.min_shadow_rows
    aborted = judged["shadow_reject"]
    assert aborted["action"] == "rejected" and aborted["canary"]["action"] == "aborted"
    assert ctx.registry.champion() == 1 and ctx.registry.version_for("challenger") != 2
    info = ctx.registry.info(2)
    assert (info.tag("verdict"), info.tag("canary"), info.tag("canary_rows")) == ("rejected", "aborted", str(labelled))
    assert info.tag("rejected_reasons").startswith("canary aborted: v2 answered")
    [entry] = [e for e in ctx.store.audit_log(config.name, ["canary_aborted"]) if e["version"] == 2]
    assert entry["run_id"] == "test/4" and entry["details"]["rows"] == labelled
    assert entry["details"]["reasons"][0].startswith("canary aborted")
    actions = [e["action"] for e in ctx.store.audit_log(config.name) if e["version"] == 2]
    assert actions[-2:] == ["canary_aborted", "rejected"]
    page = ctx.registry.description(2)
    assert page.startswith("**v2 canary aborted: it answered") and "as the canary" in page
    assert judged["record"]["shadow_action"] == "rejected"


def test_a_better_canary_is_promoted_by_the_shadow_gate(config, stream):
    config = _canary_config(config)
    sim, frame, ctx = _into_canary(config, stream)
    # Before its rows are labelled: waiting, and the summary says some were canary rows.
    _serve_with_canary(ctx, frame, 2, challenger_right=True)
    waiting = loop.evaluate_shadow(ctx, run(4, as_of=sim.period_start(5).isoformat()))
    assert waiting["status"] == "waiting" and waiting["rows"] == 0
    upto(ctx, frame, sim.period_start(6))
    judged = loop.run_cycle(ctx, run(5))
    assert judged["shadow"]["evaluation"]["verdict"] == "promote"
    assert judged["shadow_promote"]["action"] == "promoted" and ctx.registry.champion() == 2
    info = ctx.registry.info(2)
    assert (info.tag("canary"), info.tag("canary_rows")) == ("passed", str(judged["shadow"]["candidate"]["canary"]["rows"]))
    assert not ctx.store.audit_log(config.name, ["canary_aborted"])


def test_a_rolled_back_version_says_so_first_once_in_the_words_of_the_alert(config, stream):
    _, _, ctx = _champion_ctx(config, stream)
    loop.run_cycle(ctx, run(2, retrain=True, force=True, reason="a second version"))
    assert ctx.registry.champion() == 2
    before = ctx.registry.description(2)
    out = loop.rollback(ctx, run(3), 1, "complaints from ops", automatic=False)
    assert (out["action"], ctx.registry.champion()) == ("rolled_back", 1)
    head, rest = ctx.registry.description(2).split("\n\n", 1)
    # The versions table shows a description's first line only: who took v2 back, to what, and why.
    assert head == "**v2 rolled back to v1 by tester: complaints from ops**"
    assert rest == before  # the page still says why v2 existed, below
    loop.rollback(ctx, run(4), 2, "undo", automatic=False)
    loop.rollback(ctx, run(5), 1, "complaints from ops", automatic=False)
    assert ctx.registry.description(2).count("rolled back to v1 by tester: complaints from ops") == 1
