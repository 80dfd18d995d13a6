"""Whether and why to retrain: a pure function from the facts of one run to a :class:`Decision`.

Kinds, highest priority first: ``manual`` (a person asked), ``threshold`` (drift share, prediction
drift, metric floor, relative drop or label-free estimated drop crossed), ``event`` (new labelled data announced), ``time``
(the champion's data is older than ``max_model_age``, or there is no champion), ``none``.
Cooldown, rejection-backoff and minimum-new-labels rules hold back the automatic kinds; a manual
request is not held back (``force`` goes further and promotes past the gate: see the evaluation step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from ml.config import REGRESSION_METRICS, TriggerPolicy, format_duration

if TYPE_CHECKING:  # ml.detectors imports pandas: not at DAG-parse time
    from ml.detectors import Change

Kind = Literal["manual", "threshold", "event", "time", "none"]



@dataclass(frozen=True)
class Branch:
    """One way out of the decision: its kind, the DAG's branch task, and when it is taken."""

    kind: Kind
    task_id: str
    when: str


# The decision's branches, in priority order; the DAG draws one branch marker per entry.
BRANCHES: tuple[Branch, ...] = (
    Branch("manual", "retrain_on_demand", "a person asked"),
    Branch("threshold", "retrain_on_threshold", "a drift or performance threshold was crossed"),
    Branch("event", "retrain_on_event", "new labelled data was announced"),
    Branch("time", "retrain_on_schedule", "the champion is older than max_model_age (or there is none)"),
    Branch("none", "skip_retraining", "no rule fired, or it was held back by cooldown / minimum labels"),
)
BRANCH_FOR_KIND: dict[str, str] = {b.kind: b.task_id for b in BRANCHES}


@dataclass(frozen=True)
class TriggerInputs:
    has_champion: bool
    drift_share: float | None = None
    drifted_features: tuple[str, ...] = ()
    n_features: int = 0
    prediction_drifted: bool = False
    metric: str = ""
    greater_is_better: bool = True
    live_metric: float | None = None  # champion's metric on newly labelled rows
    live_rows: int = 0
    reference_metric: float | None = None  # what max_relative_drop compares with (policy.drop_reference)
    reference_label: str = "at promotion"  # how the decision names it
    model_age: timedelta | None = None  # data time since the end of the champion's training window
    since_last_retrain: timedelta | None = None  # None: never retrained
    since_last_rejection: timedelta | None = None  # data time since the last rejected candidate's; None: none yet
    new_labels: int = 0  # labelled rows newer than the champion's training data
    pending_event_rows: tuple[int, ...] = ()  # rows announced by each unconsumed new-labels event
    manual: bool = False
    force: bool = False
    requested_by: str | None = None
    reason: str | None = None
    # A data-drift episode in progress: when it began, and how many labelled rows from after that
    # are available for training (outside the holdout).
    drift_onset: datetime | None = None
    labels_after_onset: int = 0
    min_train_rows: int = 1  # training.min_rows: a drift retrain waits for this many rows after the onset
    # triggers.error_detector: the newest rise in the champion's served error found since the last
    # candidate was trained (None: none), and how many labelled served rows the detector was fed.
    error_change: Change | None = None
    error_rows: int = 0
    # Why the drift reference is not the one the config asked for (a seasonal reference with no rows
    # one season back), said in the decision log; None: it is.
    reference_note: str | None = None
    # The champion's metric estimated without labels on the current rows (CBPE, ml/estimation.py),
    # the labelled rows its scores were calibrated on, and why there is no estimate when there is none.
    estimated_metric: float | None = None
    calibration_rows: int = 0
    estimate_note: str | None = None


@dataclass(frozen=True)
class Decision:
    kind: Kind
    reasons: tuple[str, ...]
    # With kind "none": why the rules in `reasons` fired but did not retrain (cooldown, min labels).
    held_back: tuple[str, ...] = field(default=())
    force: bool = False
    # Train only on rows after this time (ISO): the start of the drift episode being answered.
    train_after: str | None = None
    # Rules the policy sets that could not run this time, and why (e.g. too few labelled rows).
    not_run: tuple[str, ...] = field(default=())

    @property
    def retrain(self) -> bool:
        return self.kind != "none"

    @property
    def branch(self) -> str:
        return BRANCH_FOR_KIND[self.kind]

    def summary(self) -> str:
        action = f"retrain ({self.kind})" if self.retrain else "no retrain"
        text = "; ".join(self.reasons) if self.reasons else "nothing crossed a threshold"
        if self.held_back:
            text += "; held back: " + "; ".join(self.held_back)
        return f"{text} -> {action}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(reasons=list(self.reasons), held_back=list(self.held_back), branch=self.branch,
                    not_run=list(self.not_run))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(
            kind=data["kind"],
            reasons=tuple(data.get("reasons", ())),
            held_back=tuple(data.get("held_back", ())),
            force=bool(data.get("force", False)),
            train_after=data.get("train_after"),
            not_run=tuple(data.get("not_run", ())),
        )


def drop_reference(
    policy: TriggerPolicy, evaluation: float | None, served: float | None, span: timedelta
) -> tuple[float | None, str]:
    """What ``max_relative_drop`` compares the live metric with, and how a decision names it:
    the champion's level over its first ``span`` served when the policy asks for it and it is known
    (``served``, see :func:`ml.evaluation.served_baseline`), else its evaluation at promotion."""
    if policy.drop_reference == "served" and served is not None:
        return served, f"in its first {format_duration(span)} served"
    return evaluation, "at promotion"


def _live_metric_usable(policy: TriggerPolicy, facts: TriggerInputs) -> bool:
    """The floor and relative-drop rules judge the live metric only on enough rows."""
    return facts.live_metric is not None and facts.live_rows >= policy.min_live_rows


def _estimate_usable(policy: TriggerPolicy, facts: TriggerInputs) -> bool:
    """The estimated-drop rule judges an estimate only from enough calibration rows."""
    return facts.estimated_metric is not None and facts.calibration_rows >= policy.min_calibration_rows


def _relative_drop(value: float, reference: float, greater_is_better: bool) -> float:
    """How much worse ``value`` is than ``reference``, as a fraction of it (> 0: worse)."""
    return (reference - value) / abs(reference) if greater_is_better else (value - reference) / abs(reference)


def _threshold_reasons(policy: TriggerPolicy, facts: TriggerInputs) -> list[str]:
    reasons: list[str] = []
    if policy.drift_share is not None and facts.drift_share is not None and facts.drift_share >= policy.drift_share:
        names = ", ".join(facts.drifted_features[:5]) + ("…" if len(facts.drifted_features) > 5 else "")
        reasons.append(
            f"drift share {facts.drift_share:.2f} >= {policy.drift_share:.2f} "
            f"on {len(facts.drifted_features)}/{facts.n_features} features: {names}"
        )
    if policy.prediction_drift and facts.prediction_drifted:
        reasons.append("prediction drift detected")
    if _live_metric_usable(policy, facts):
        live, better = facts.live_metric, facts.greater_is_better
        if policy.metric_floor is not None and (live < policy.metric_floor if better else live > policy.metric_floor):
            relation = "<" if better else ">"
            reasons.append(
                f"live {facts.metric} {live:.3f} {relation} floor {policy.metric_floor:.3f} (n={facts.live_rows})"
            )
        ref = facts.reference_metric
        if policy.max_relative_drop is not None and ref:
            drop = _relative_drop(live, ref, better)
            if drop >= policy.max_relative_drop:
                reasons.append(
                    f"live {facts.metric} {live:.3f} is {drop:.1%} worse than {facts.reference_label} ({ref:.3f}), "
                    f">= {policy.max_relative_drop:.0%} allowed (n={facts.live_rows})"
                )
    ref = facts.reference_metric
    if policy.estimated_drop is not None and ref and _estimate_usable(policy, facts):
        estimated = facts.estimated_metric
        drop = _relative_drop(estimated, ref, facts.greater_is_better)  # type: ignore[arg-type]
        if drop >= policy.estimated_drop:
            reasons.append(
                f"estimated {facts.metric} {estimated:.3f} (label-free, calibrated on {facts.calibration_rows} rows) "
                f"is {drop:.1%} worse than {facts.reference_label} ({ref:.3f}), >= {policy.estimated_drop:.0%} allowed"
            )
    detector = policy.error_detector
    change = facts.error_change
    if detector is not None and change is not None and facts.error_rows >= detector.min_rows:
        measure = "absolute error" if facts.metric in REGRESSION_METRICS else "error rate"
        level = (f"{change.before:.3f} -> {change.after:.3f}" if change.before is not None
                 else f"{change.after:.3f} over its newest rows")
        reasons.append(f"{measure} changed ({detector.detector_name}) at {change.at:%Y-%m-%d %H:%M}: {level} "
                       f"on rows the champion served (n={facts.error_rows})")
    return reasons


def rules_not_run(policy: TriggerPolicy, facts: TriggerInputs) -> tuple[str, ...]:
    """The policy's rules that could not judge this run, each with why: said in the decision log
    rather than read as "nothing crossed a threshold"."""
    if not facts.has_champion:
        return ()
    out = []
    live_rules = [name for name, value in (("metric_floor", policy.metric_floor),
                                           ("max_relative_drop", policy.max_relative_drop)) if value is not None]
    if live_rules and not _live_metric_usable(policy, facts):
        why = (f"{facts.live_rows} newly labelled rows served by the champion < triggers.min_live_rows "
               f"({policy.min_live_rows})" if facts.live_rows < policy.min_live_rows
               else "the live metric is undefined on the newly labelled rows (e.g. one class only)")
        out.append(f"{' and '.join(live_rules)}: not run, {why}")
    elif policy.max_relative_drop is not None and not facts.reference_metric:
        out.append("max_relative_drop: not run, no reference level for the champion yet")
    if policy.estimated_drop is not None:
        if facts.calibration_rows < policy.min_calibration_rows:
            out.append(f"estimated_drop: not run, {facts.calibration_rows} labelled rows the champion did not "
                       f"train on to calibrate its scores < triggers.min_calibration_rows ({policy.min_calibration_rows})")
        elif facts.estimated_metric is None:
            out.append(f"estimated_drop: not run, {facts.estimate_note or 'no estimate was computed'}")
        elif not facts.reference_metric:
            out.append("estimated_drop: not run, no reference level for the champion yet")
    if policy.drift_share is not None and facts.drift_share is None:
        out.append("drift_share: not run, no drift share was computed")
    detector = policy.error_detector
    if detector is not None and facts.error_rows < detector.min_rows:
        out.append(f"error_detector: not run, {facts.error_rows} labelled rows served by the champion since its "
                   f"promotion < triggers.error_detector.min_rows ({detector.min_rows})")
    if facts.reference_note:
        out.append(facts.reference_note)
    return tuple(out)


def decide(policy: TriggerPolicy, facts: TriggerInputs) -> Decision:
    return replace(_decide(policy, facts), not_run=rules_not_run(policy, facts))


def _decide(policy: TriggerPolicy, facts: TriggerInputs) -> Decision:
    if facts.manual or facts.force:
        who = facts.requested_by or "someone"
        why = facts.reason or "no reason given"
        extra = " with force (promote past the gate)" if facts.force else ""
        return Decision("manual", (f"requested by {who}{extra}: {why}",), force=facts.force)

    candidates: list[tuple[Kind, list[str]]] = []
    # Thresholds judge the champion (its data gone stale, its metric fallen): without one there is
    # nothing to judge, and a drift "episode" must not clip the first model's training window.
    threshold = _threshold_reasons(policy, facts) if facts.has_champion else []
    if threshold:
        candidates.append(("threshold", threshold))
    if policy.on_new_labels and facts.pending_event_rows:
        rows = sum(facts.pending_event_rows)
        count = len(facts.pending_event_rows)
        candidates.append(("event", [f"{count} new-labels event(s) announced {rows} labelled rows"]))
    revalidated = (
        policy.rejection_backoff is not None
        and facts.since_last_rejection is not None
        and facts.model_age is not None
        and facts.since_last_rejection < facts.model_age
    )
    # With a rejection backoff, a rejected candidate re-validated the champion on the newest data:
    # the time rule then counts from that rejection, not from the end of the champion's data.
    age = facts.since_last_rejection if revalidated else facts.model_age
    if not facts.has_champion:
        candidates.append(("time", ["no champion yet: train the first one"]))
    elif policy.max_model_age is not None and age is not None and age >= policy.max_model_age:
        what = "champion last beat a candidate" if revalidated else "champion's data is"
        reason = (
            f"{what} {format_duration(age)} {'ago' if revalidated else 'old'}, "
            f">= max age {format_duration(policy.max_model_age)}"
        )
        candidates.append(("time", [reason]))
    if not candidates:
        return Decision("none", ())

    holds: list[str] = []
    if facts.has_champion:
        if facts.since_last_retrain is not None and facts.since_last_retrain < policy.cooldown:
            holds.append(
                f"cooldown: last retrain {format_duration(facts.since_last_retrain)} ago "
                f"< {format_duration(policy.cooldown)}"
            )
        backoff = policy.rejection_backoff
        if backoff is not None and facts.since_last_rejection is not None and facts.since_last_rejection < backoff:
            holds.append(
                f"backoff: a candidate was rejected {format_duration(facts.since_last_rejection)} ago "
                f"< {format_duration(backoff)} (the champion beat a model trained on the newest data)"
            )
        if facts.new_labels < policy.min_new_labels:
            holds.append(f"only {facts.new_labels} new labelled rows < {policy.min_new_labels} required")
    if facts.drift_onset is not None:
        needed = max(policy.min_new_labels, facts.min_train_rows, 1)
        if facts.labels_after_onset < needed:
            holds.append(
                f"drift since {facts.drift_onset:%Y-%m-%d %H:%M}: {facts.labels_after_onset} labelled rows from "
                f"after it can train a model, {needed} needed (a retrain now would learn the old data)"
            )
    kind, reasons = candidates[0]
    # Lower-priority rules that also fired are kept in the reasons: a person asks "what else was true?".
    for _, more in candidates[1:]:
        reasons = reasons + more
    if holds:
        return Decision("none", tuple(reasons), held_back=tuple(holds))
    train_after = facts.drift_onset.isoformat() if facts.drift_onset is not None and facts.has_champion else None
    return Decision(kind, tuple(reasons), train_after=train_after)
