"""The retrain decision as a pure function: which kind wins, why, and what holds it back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ml.config import TriggerPolicy
from ml.policy import drift_onset
from ml.triggers import (
    BRANCH_FOR_KIND,
    Decision,
    TriggerInputs,
    decide,
)

QUIET = {
    "has_champion": True,
    "drift_share": 0.1,
    "n_features": 9,
    "metric": "roc_auc",
    "greater_is_better": True,
    "live_metric": 0.80,
    "live_rows": 400,
    "reference_metric": 0.80,
    "model_age": timedelta(days=1),
    "since_last_retrain": timedelta(days=2),
    "new_labels": 1000,
}


def policy(**kwargs) -> TriggerPolicy:
    base = {
        "drift_share": 0.3,
        "metric_floor": 0.65,
        "max_relative_drop": 0.05,
        "max_model_age": "5d",
        "cooldown": "12h",
        "min_new_labels": 500,
    }
    return TriggerPolicy(**{**base, **kwargs})


def facts(**kwargs) -> TriggerInputs:
    return TriggerInputs(**{**QUIET, **kwargs})


def test_quiet_run_does_not_retrain():
    decision = decide(policy(), facts())
    assert decision.kind == "none"
    assert decision.retrain is False
    assert decision.reasons == ()
    assert decision.held_back == ()
    assert decision.branch == "skip_retraining"
    assert decision.summary() == "nothing crossed a threshold -> no retrain"


# ---- manual -------------------------------------------------------------------------------------


def test_manual_request():
    decision = decide(policy(), facts(manual=True, requested_by="ana", reason="new feature pipeline"))
    assert decision.kind == "manual"
    assert decision.retrain is True
    assert decision.force is False
    assert decision.reasons == ("requested by ana: new feature pipeline",)
    assert decision.branch == "retrain_on_demand"


def test_manual_without_who_or_why():
    decision = decide(policy(), facts(manual=True))
    assert decision.reasons == ("requested by someone: no reason given",)


def test_force_implies_manual_and_says_so():
    decision = decide(policy(), facts(force=True, requested_by="ops", reason="hotfix"))
    assert decision.kind == "manual"
    assert decision.force is True
    assert "with force (promote past the gate)" in decision.reasons[0]
    assert "ops" in decision.reasons[0] and "hotfix" in decision.reasons[0]


def test_manual_is_not_held_back_and_beats_everything():
    everything = facts(
        manual=True,
        drift_share=0.9,
        drifted_features=("income",),
        live_metric=0.5,
        pending_event_rows=(100,),
        model_age=timedelta(days=30),
        since_last_retrain=timedelta(minutes=5),  # inside the cooldown
        new_labels=0,  # below min_new_labels
        drift_onset=datetime(2026, 1, 5, tzinfo=UTC),
        labels_after_onset=0,
    )
    decision = decide(policy(), everything)
    assert decision.kind == "manual"
    assert decision.held_back == ()
    assert decision.train_after is None


# ---- threshold ----------------------------------------------------------------------------------


def test_drift_share_threshold():
    names = ("income", "debt_ratio", "credit_utilization")
    decision = decide(policy(), facts(drift_share=0.33, drifted_features=names))
    assert decision.kind == "threshold"
    assert decision.branch == "retrain_on_threshold"
    assert decision.reasons == ("drift share 0.33 >= 0.30 on 3/9 features: income, debt_ratio, credit_utilization",)


def test_drift_share_at_threshold_fires_below_does_not():
    assert decide(policy(drift_share=0.5), facts(drift_share=0.5)).kind == "threshold"
    assert decide(policy(drift_share=0.5), facts(drift_share=0.49)).kind == "none"


def test_drift_share_lists_at_most_five_features():
    names = tuple(f"f{i}" for i in range(7))
    reason = decide(policy(), facts(drift_share=0.78, drifted_features=names)).reasons[0]
    assert "on 7/9 features: f0, f1, f2, f3, f4…" in reason
    assert "f5" not in reason


def test_drift_share_disabled_or_unknown():
    assert decide(policy(drift_share=None), facts(drift_share=0.9)).kind == "none"
    assert decide(policy(), facts(drift_share=None)).kind == "none"


def test_prediction_drift_only_when_enabled():
    assert decide(policy(), facts(prediction_drifted=True)).kind == "none"
    decision = decide(policy(prediction_drift=True), facts(prediction_drifted=True))
    assert decision.kind == "threshold"
    assert decision.reasons == ("prediction drift detected",)


def test_metric_floor_greater_is_better():
    decision = decide(policy(max_relative_drop=None), facts(live_metric=0.612, live_rows=120))
    assert decision.kind == "threshold"
    assert decision.reasons == ("live roc_auc 0.612 < floor 0.650 (n=120)",)
    assert decide(policy(max_relative_drop=None), facts(live_metric=0.66)).kind == "none"


def test_metric_floor_lower_is_better():
    lower = {"metric": "log_loss", "greater_is_better": False, "reference_metric": None}
    decision = decide(policy(metric_floor=0.5), facts(live_metric=0.731, **lower))
    assert decision.kind == "threshold"
    assert decision.reasons == ("live log_loss 0.731 > floor 0.500 (n=400)",)
    # a low loss is good, not a crossing
    assert decide(policy(metric_floor=0.5), facts(live_metric=0.2, **lower)).kind == "none"


def test_relative_drop_greater_is_better():
    decision = decide(policy(metric_floor=None), facts(live_metric=0.72, reference_metric=0.80))
    assert decision.kind == "threshold"
    (reason,) = decision.reasons
    assert "live roc_auc 0.720 is 10.0% worse than at promotion (0.800)" in reason
    assert ">= 5% allowed (n=400)" in reason
    # 2.5 % worse is inside the allowance; better than at promotion never fires
    assert decide(policy(metric_floor=None), facts(live_metric=0.78, reference_metric=0.80)).kind == "none"
    assert decide(policy(metric_floor=None), facts(live_metric=0.95, reference_metric=0.80)).kind == "none"


def test_relative_drop_lower_is_better():
    lower = {"metric": "mae", "greater_is_better": False}
    decision = decide(policy(metric_floor=None), facts(live_metric=1.2, reference_metric=1.0, **lower))
    assert decision.kind == "threshold"
    assert "live mae 1.200 is 20.0% worse than at promotion (1.000)" in decision.reasons[0]
    # a smaller error is an improvement
    assert decide(policy(metric_floor=None), facts(live_metric=0.5, reference_metric=1.0, **lower)).kind == "none"


def test_relative_drop_needs_a_reference():
    assert decide(policy(metric_floor=None), facts(live_metric=0.1, reference_metric=None)).kind == "none"


def test_floor_and_drop_both_reported():
    decision = decide(policy(), facts(live_metric=0.6, reference_metric=0.8))
    assert decision.kind == "threshold"
    assert len(decision.reasons) == 2
    assert "floor 0.650" in decision.reasons[0]
    assert "25.0% worse" in decision.reasons[1]


def test_performance_needs_min_rows():
    few = policy().min_live_rows - 1
    assert decide(policy(), facts(live_metric=0.3, live_rows=few)).kind == "none"
    enough = decide(policy(), facts(live_metric=0.3, live_rows=policy().min_live_rows))
    assert enough.kind == "threshold"
    assert f"(n={policy().min_live_rows})" in enough.reasons[0]


# ---- event --------------------------------------------------------------------------------------


def test_new_labels_event():
    decision = decide(policy(), facts(pending_event_rows=(300, 500)))
    assert decision.kind == "event"
    assert decision.branch == "retrain_on_event"
    assert decision.reasons == ("2 new-labels event(s) announced 800 labelled rows",)


def test_events_ignored_when_disabled():
    assert decide(policy(on_new_labels=False), facts(pending_event_rows=(300,))).kind == "none"


# ---- time ---------------------------------------------------------------------------------------


def test_model_too_old():
    decision = decide(policy(), facts(model_age=timedelta(days=6, hours=12)))
    assert decision.kind == "time"
    assert decision.branch == "retrain_on_schedule"
    assert decision.reasons == ("champion's data is 156h old, >= max age 5d",)
    assert decide(policy(), facts(model_age=timedelta(days=5))).kind == "time"
    assert decide(policy(), facts(model_age=timedelta(days=4))).kind == "none"
    assert decide(policy(max_model_age=None), facts(model_age=timedelta(days=60))).kind == "none"


def test_no_champion_trains_the_first_one():
    decision = decide(policy(), TriggerInputs(has_champion=False))
    assert decision.kind == "time"
    assert decision.reasons == ("no champion yet: train the first one",)
    assert decision.held_back == ()


def test_no_champion_is_not_judged_by_thresholds():
    # Drift against whatever came before, with no champion: still "train the first one", on the whole window.
    onset = datetime(2026, 1, 5, tzinfo=UTC)
    decision = decide(policy(), facts(has_champion=False, drift_share=0.9, drift_onset=onset,
                                      labels_after_onset=10**4, live_metric=0.1))
    assert decision.kind == "time" and decision.reasons == ("no champion yet: train the first one",)
    assert decision.train_after is None


def test_no_champion_ignores_cooldown_and_min_labels():
    decision = decide(policy(), facts(has_champion=False, since_last_retrain=timedelta(0), new_labels=0))
    assert decision.kind == "time"


# ---- priority -----------------------------------------------------------------------------------


def test_priority_threshold_event_time_and_all_reasons_kept():
    all_three = facts(drift_share=0.6, drifted_features=("income",), pending_event_rows=(42,),
                      model_age=timedelta(days=9))
    decision = decide(policy(), all_three)
    assert decision.kind == "threshold"
    assert [r.split(" ")[0] for r in decision.reasons] == ["drift", "1", "champion's"]
    assert "announced 42 labelled rows" in decision.reasons[1]
    assert "9d old" in decision.reasons[2]

    event_and_time = decide(policy(), facts(pending_event_rows=(42,), model_age=timedelta(days=9)))
    assert event_and_time.kind == "event"
    assert len(event_and_time.reasons) == 2


def test_summary_text():
    decision = decide(policy(), facts(pending_event_rows=(10,)))
    assert decision.summary() == "1 new-labels event(s) announced 10 labelled rows -> retrain (event)"


# ---- holds --------------------------------------------------------------------------------------


def test_cooldown_holds_back_automatic_kinds():
    decision = decide(policy(), facts(drift_share=0.6, since_last_retrain=timedelta(hours=3)))
    assert decision.kind == "none"
    assert decision.retrain is False
    assert decision.reasons[0].startswith("drift share 0.60")  # what fired is still reported
    assert decision.held_back == ("cooldown: last retrain 3h ago < 12h",)
    assert "held back: cooldown" in decision.summary()
    assert decision.summary().endswith("-> no retrain")


def test_cooldown_passed_or_never_retrained():
    assert decide(policy(), facts(drift_share=0.6, since_last_retrain=timedelta(hours=12))).kind == "threshold"
    assert decide(policy(), facts(drift_share=0.6, since_last_retrain=None)).kind == "threshold"


def test_rejection_backoff_holds_back_automatic_kinds():
    backoff = policy(rejection_backoff="4w")
    aged = facts(model_age=timedelta(days=9), since_last_rejection=timedelta(days=10))
    decision = decide(backoff, aged)
    assert decision.kind == "none"
    assert decision.reasons[0].startswith("champion's data is 9d old")  # what fired is still reported
    assert decision.held_back == (
        "backoff: a candidate was rejected 10d ago < 4w (the champion beat a model trained on the newest data)",
    )
    assert decide(backoff, facts(drift_share=0.6, since_last_rejection=timedelta(days=1))).kind == "none"
    # Backoff over, no rejection yet, or no backoff configured: the rule fires.
    assert decide(backoff, facts(model_age=timedelta(days=9), since_last_rejection=timedelta(weeks=4))).kind == "time"
    assert decide(backoff, facts(model_age=timedelta(days=9), since_last_rejection=None)).kind == "time"
    assert decide(policy(), aged).kind == "time"


def test_rejection_backoff_counts_the_age_from_the_last_rejection():
    backoff = policy(rejection_backoff="1d")
    # The champion's data is 9 days old, but a candidate lost to it 2 days ago: not stale yet (max 5d).
    assert decide(backoff, facts(model_age=timedelta(days=9), since_last_rejection=timedelta(days=2))).kind == "none"
    decision = decide(backoff, facts(model_age=timedelta(days=9), since_last_rejection=timedelta(days=6)))
    assert decision.kind == "time"
    assert decision.reasons == ("champion last beat a candidate 6d ago, >= max age 5d",)
    # Without a backoff the age is the data's, as before.
    assert decide(policy(), facts(model_age=timedelta(days=9), since_last_rejection=timedelta(days=2))).kind == "time"


def test_rejection_backoff_does_not_hold_back_a_person_or_a_first_model():
    backoff = policy(rejection_backoff="4w")
    assert decide(backoff, facts(manual=True, since_last_rejection=timedelta(hours=1))).kind == "manual"
    first = facts(has_champion=False, since_last_rejection=timedelta(hours=1))
    assert decide(backoff, first).kind == "time"


def test_min_new_labels_holds_back():
    decision = decide(policy(), facts(pending_event_rows=(120,), new_labels=120))
    assert decision.kind == "none"
    assert decision.held_back == ("only 120 new labelled rows < 500 required",)
    assert decide(policy(), facts(pending_event_rows=(120,), new_labels=500)).kind == "event"


def test_both_holds_reported():
    decision = decide(policy(), facts(model_age=timedelta(days=8), new_labels=3, since_last_retrain=timedelta(hours=1)))
    assert decision.kind == "none"
    assert len(decision.held_back) == 2
    assert decision.held_back[0].startswith("cooldown")
    assert "only 3 new labelled rows" in decision.held_back[1]


def test_drift_episode_holds_until_enough_labels_after_onset():
    onset = datetime(2026, 1, 7, 0, 0, tzinfo=UTC)
    held = decide(policy(), facts(drift_share=0.55, drift_onset=onset, labels_after_onset=120))
    assert held.kind == "none"
    assert held.train_after is None
    assert len(held.held_back) == 1
    assert "drift since 2026-01-07 00:00: 120 labelled rows from after it can train a model, 500 needed" in (
        held.held_back[0]
    )

    ready = decide(policy(), facts(drift_share=0.55, drift_onset=onset, labels_after_onset=500))
    assert ready.kind == "threshold"
    assert ready.held_back == ()
    assert ready.train_after == onset.isoformat()
    assert datetime.fromisoformat(ready.train_after) == onset


def test_drift_episode_needs_at_least_one_label_even_without_min():
    onset = datetime(2026, 1, 7, tzinfo=UTC)
    held = decide(policy(min_new_labels=0), facts(drift_share=0.55, drift_onset=onset, labels_after_onset=0))
    assert held.kind == "none"
    assert "1 needed" in held.held_back[0]
    ok = decide(policy(min_new_labels=0), facts(drift_share=0.55, drift_onset=onset, labels_after_onset=1))
    assert ok.kind == "threshold" and ok.train_after == onset.isoformat()


def test_no_onset_no_train_after():
    assert decide(policy(), facts(drift_share=0.55)).train_after is None


# ---- Decision round trip ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "decision",
    [
        Decision("none", ()),
        Decision("none", ("drift share 0.60 >= 0.30",), held_back=("cooldown: last retrain 1h ago < 12h",)),
        Decision("manual", ("requested by ana: why",), force=True),
        Decision("threshold", ("a", "b"), train_after="2026-01-07T00:00:00+00:00"),
        Decision("event", ("1 new-labels event(s)",)),
        Decision("time", ("no champion yet: train the first one",)),
    ],
)
def test_decision_round_trip(decision):
    data = decision.to_dict()
    assert data["branch"] == BRANCH_FOR_KIND[decision.kind]
    assert isinstance(data["reasons"], list) and isinstance(data["held_back"], list)
    assert Decision.from_dict(data) == decision


def test_to_dict_contents():
    data = Decision("threshold", ("x",), train_after="2026-01-07T00:00:00+00:00").to_dict()
    assert data == {
        "kind": "threshold",
        "reasons": ["x"],
        "held_back": [],
        "force": False,
        "train_after": "2026-01-07T00:00:00+00:00",
        "branch": "retrain_on_threshold",
        "not_run": [],
    }


def test_branch_names():
    assert BRANCH_FOR_KIND == {
        "threshold": "retrain_on_threshold",
        "time": "retrain_on_schedule",
        "event": "retrain_on_event",
        "manual": "retrain_on_demand",
        "none": "skip_retraining",
    }
    for kind, branch in BRANCH_FOR_KIND.items():
        assert Decision(kind, ()).branch == branch


# ---- drift_onset --------------------------------------------------------------------------------

D = [datetime(2026, 1, day, tzinfo=UTC) for day in range(1, 11)]  # D[i] = Jan (i + 1)


def test_onset_none_when_no_drift_now():
    history = [(D[0], 0.6), (D[1], 0.7)]
    assert drift_onset(history, (D[2], 0.1), 0.3) is None
    assert drift_onset(history, (D[2], None), 0.3) is None


def test_onset_none_without_threshold():
    assert drift_onset([(D[0], 0.9)], (D[1], 0.9), None) is None


def test_onset_is_now_without_history():
    assert drift_onset([], (D[4], 0.5), 0.3) == D[4]


def test_onset_unbroken_run_goes_back_to_earliest():
    history = [(D[0], 0.3), (D[1], 0.5), (D[2], 0.9)]
    assert drift_onset(history, (D[3], 0.4), 0.3) == D[0]  # 0.3 counts: at or above


def test_onset_broken_run_starts_after_the_break():
    history = [(D[0], 0.8), (D[1], 0.1), (D[2], 0.5), (D[3], 0.6)]
    assert drift_onset(history, (D[4], 0.7), 0.3) == D[2]


def test_onset_missing_share_breaks_the_run():
    history = [(D[0], 0.8), (D[1], None), (D[2], 0.5)]
    assert drift_onset(history, (D[3], 0.7), 0.3) == D[2]


def test_onset_uses_earliest_window_start_not_order():
    # overlapping current windows: an older check may start later than a newer one
    history = [(D[2], 0.5), (D[1], 0.5)]
    assert drift_onset(history, (D[5], 0.5), 0.3) == D[1]


# ---- what max_relative_drop compares with -------------------------------------------------------


def test_drop_reference_uses_the_served_level_only_when_asked_and_known():
    from ml.triggers import drop_reference

    span = timedelta(days=1)
    assert drop_reference(policy(), 0.80, 0.70, span) == (0.80, "at promotion")
    served = policy(drop_reference="served")
    assert drop_reference(served, 0.80, 0.70, span) == (0.70, "in its first 1d served")
    assert drop_reference(served, 0.80, None, span) == (0.80, "at promotion")  # too few labelled rows yet


def test_relative_drop_against_the_served_level_names_it():
    # 0.66 is 17.5% below the 0.80 evaluation but only 5.7% below the 0.70 it showed while serving.
    live = {"live_metric": 0.66, "live_rows": 120}
    assert "worse than at promotion (0.800)" in decide(policy(), facts(**live, reference_metric=0.80)).summary()
    d = decide(policy(max_relative_drop=0.1),
               facts(**live, reference_metric=0.70, reference_label="in its first 1d served"))
    assert d.kind == "none"
    d = decide(policy(max_relative_drop=0.05),
               facts(**live, reference_metric=0.70, reference_label="in its first 1d served"))
    assert d.kind == "threshold" and "5.7% worse than in its first 1d served (0.700)" in d.summary()


def test_bad_drop_reference_is_refused():
    with pytest.raises(ValueError, match="drop_reference"):
        policy(drop_reference="holdout")


def test_live_metric_minimum_is_a_setting():
    assert decide(policy(min_live_rows=10), facts(live_metric=0.3, live_rows=10)).kind == "threshold"
    assert decide(policy(min_live_rows=11), facts(live_metric=0.3, live_rows=10)).kind == "none"


def test_drift_retrain_waits_until_the_onset_has_enough_rows_to_train():
    # Enough labels for min_new_labels, too few for a training window: held back (not trained and
    # failed, which would leave no record and so no drift history for the next run).
    onset = datetime(2026, 1, 5, tzinfo=UTC)
    held = decide(policy(min_new_labels=0), facts(drift_share=0.55, drift_onset=onset, labels_after_onset=24,
                                                  min_train_rows=50))
    assert held.kind == "none" and "24 labelled rows from after it can train a model, 50 needed" in held.held_back[0]
    ready = decide(policy(min_new_labels=0), facts(drift_share=0.55, drift_onset=onset, labels_after_onset=50,
                                                   min_train_rows=50))
    assert ready.kind == "threshold"


def test_a_rule_that_cannot_run_says_so():
    few = decide(policy(), facts(live_metric=0.3, live_rows=12))
    assert few.kind == "none"
    assert few.not_run == (("metric_floor and max_relative_drop: not run, 12 newly labelled rows served by the "
                            "champion < triggers.min_live_rows (50)"),)
    assert Decision.from_dict(few.to_dict()).not_run == few.not_run
    assert decide(policy(), facts()).not_run == ()  # every rule could judge
    assert decide(policy(), TriggerInputs(has_champion=False)).not_run == ()  # nothing to judge yet


# ---- triggers.error_detector ----------------------------------------------------------------------


def _change(before=0.21, after=0.34):
    from ml.detectors import Change

    at = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    return Change(at=at, known_at=at, since=None, before=before, after=after, rows=900)


def test_a_rise_in_the_served_error_is_a_threshold_reason():
    rules = policy(error_detector={"kind": "adwin"})
    decision = decide(rules, facts(error_change=_change(), error_rows=900))
    assert decision.kind == "threshold" and decision.branch == "retrain_on_threshold"
    assert decision.reasons == (("error rate changed (ADWIN) at 2026-03-04 12:00: 0.210 -> 0.340 "
                                 "on rows the champion served (n=900)"),)
    assert decision.not_run == ()
    only_detector = policy(error_detector={"kind": "adwin"}, metric_floor=None, max_relative_drop=None)
    regression = decide(only_detector, facts(metric="mae", greater_is_better=False, error_rows=900, live_metric=40.0,
                                             error_change=_change(before=None, after=41.5)))
    assert len(regression.reasons) == 1 and regression.reasons[0].startswith("absolute error changed (ADWIN) at 2026-03-04 12:00: 41.500 over its newest rows")
    # No change found, or the detector off: nothing fires.
    assert decide(rules, facts(error_rows=900)).kind == "none"
    assert decide(policy(), facts(error_change=_change(), error_rows=900)).kind == "none"


def test_an_error_change_is_held_back_like_the_other_thresholds():
    rules = policy(error_detector={"kind": "page_hinkley"}, cooldown="3d", rejection_backoff="7d")
    held = decide(rules, facts(error_change=_change(), error_rows=900, since_last_retrain=timedelta(days=1),
                               since_last_rejection=timedelta(days=2)))
    assert held.kind == "none" and held.reasons[0].startswith("error rate changed (PageHinkley)")
    assert held.held_back[0].startswith("cooldown") and held.held_back[1].startswith("backoff")


def test_too_few_served_rows_for_the_detector_say_so():
    rules = policy(error_detector={"kind": "adwin", "min_rows": 500})
    decision = decide(rules, facts(error_rows=120))
    assert decision.kind == "none"
    assert decision.not_run == (("error_detector: not run, 120 labelled rows served by the champion since its "
                                 "promotion < triggers.error_detector.min_rows (500)"),)
    # Below min_rows a change (were one passed) is not acted on either.
    assert decide(rules, facts(error_change=_change(), error_rows=120)).kind == "none"


def test_a_seasonal_reference_that_fell_back_is_in_the_decision_log():
    note = "windows.reference season: the store does not reach back one season (52w) (...): drift is measured against the champion's training rows instead"
    assert decide(policy(), facts(reference_note=note)).not_run == (note,)
