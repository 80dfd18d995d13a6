"""The continuous-training loop, one plain function per DAG task.

Each step takes a :class:`Context` (the model config and the adapters: store, registry, tracker;
see :mod:`ml.ports`), a :class:`RunInfo` (run id, who asked, the run's params) and the small dicts
earlier steps returned, and returns a small JSON-ready dict (it travels as an Airflow XCom). The
entry point builds the context once and hands it in: a DAG task with the SQL store and MLflow
(:meth:`Context.open`), the replay with in-memory adapters (:mod:`ml.memory`). Both run these same
steps; :func:`run_cycle` is the DAG's graph as one in-process call.

Every step reloads what it needs from the store and the registry, so a retried task sees the world
as it is, not as it was. Time is *data time*: ``as_of`` is the newest stored row (or the ``as_of``
param), resolved once per run by :func:`validate_windows` and passed on; windows, model age and
cooldown are measured against it, so a replayed stream behaves exactly like a live one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from ml import registry as reg
from ml.config import APPROVAL_APPROVE, APPROVAL_REJECT, ModelConfig, format_duration
from ml.policy import (
    as_utc,
    candidate_gate,
    choose_outcome,
    drift_onset,
    guard_verdict,
    last_drift_onset,
    training_start,
)
from ml.ports import ModelRegistry, RowStore, Tracker
from ml.settings import Settings, get_settings
from ml.training import DataWindow, TrainingError, data_window, fit_full, fit_incremental, predict
from ml.triggers import BRANCH_FOR_KIND, Decision, TriggerInputs, drop_reference
from ml.triggers import decide as decide_trigger
from ml.validation import DataValidationError, validate_window

log = logging.getLogger("driftline")


class ParamError(ValueError):
    """A run's params that cannot work (e.g. force without a reason)."""


# Errors that fail again on a retry: the entry point reports them instead of retrying.
USER_ERRORS: tuple[type[Exception], ...] = (ParamError, DataValidationError, reg.RegistryError, TrainingError)

# Who a rollback made by the guard is recorded as.
GUARD_ACTOR = "driftline-guard"
_time = as_utc


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    actor: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def param(self, key: str, default: Any = None) -> Any:
        value = self.params.get(key, default)
        return default if value in (None, "") else value


class Context:
    """What one run's steps work with: the model config, settings and the adapters. The registry
    and tracker may be given, or made on first use by ``connect`` (so a step that needs only the
    store does not pay for MLflow)."""

    def __init__(self, config: ModelConfig, settings: Settings, store: RowStore, registry: ModelRegistry | None = None,
                 tracker: Tracker | None = None, *,
                 connect: Callable[[], tuple[ModelRegistry, Tracker]] | None = None) -> None:
        if (registry is None or tracker is None) and connect is None:
            raise ValueError("Context: give registry and tracker, or connect to make them")
        self.config = config
        self.settings = settings
        self.store = store
        self._registry = registry
        self._tracker = tracker
        self._connect = connect

    def _connected(self) -> None:
        registry, tracker = self._connect()  # type: ignore[misc]
        self._registry = self._registry or registry
        self._tracker = self._tracker or tracker

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            self._connected()
        return self._registry  # type: ignore[return-value]

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._connected()
        return self._tracker  # type: ignore[return-value]

    @classmethod
    def open(cls, config: ModelConfig, settings: Settings | None = None) -> Context:
        """The production adapters: the SQL store, MLflow's registry and tracking."""
        from ml.store import Store

        settings = settings or get_settings()
        store = Store(config.data.store_url or settings.store_url)

        def connect() -> tuple[ModelRegistry, Tracker]:
            from ml import tracking

            client = tracking.client(settings)
            return reg.Registry(config.name, store, client), tracking.MlflowTracker(config, settings, client)

        return cls(config, settings, store, connect=connect)


def check_params(params: dict[str, Any]) -> None:
    """Hand-trigger input the form cannot check on its own; the first task calls this."""
    if params.get("force") and not str(params.get("reason") or "").strip():
        raise ParamError("param 'force': forcing a promotion needs a 'reason' (it is recorded on the version)")
    for key in ("train_until", "as_of"):
        value = params.get(key)
        if value not in (None, ""):
            try:
                _time(value)
            except (ValueError, TypeError):
                raise ParamError(f"param '{key}': {value!r} is not an ISO date-time (e.g. 2026-01-31T00:00:00Z)") from None


# ---- windows ------------------------------------------------------------------------------------


def resolve_as_of(ctx: Context, run: RunInfo) -> datetime:
    explicit = run.param("as_of")
    if explicit:
        return _time(explicit)
    latest = ctx.store.latest_ts(ctx.config.name)
    if latest is None:
        raise DataValidationError(f"{ctx.config.name}: no rows stored yet; ingest data before the first run")
    return latest


@dataclass(frozen=True)
class ChampionInfo:
    version: int
    data_start: datetime | None
    data_end: datetime | None
    metric: float | None  # its own evaluation at promotion
    promoted_at: datetime | None
    previous: int | None


def champion_info(ctx: Context) -> ChampionInfo | None:
    version = ctx.registry.champion()
    if version is None:
        return None
    info = ctx.registry.info(version)
    as_time = lambda key: _time(info.tag(key)) if info.tag(key) else None
    previous = ctx.registry.version_for(reg.PREVIOUS)
    return ChampionInfo(
        version=version,
        data_start=as_time("data_start"),
        data_end=as_time("data_end"),
        metric=info.tag_float(f"eval_{ctx.config.promotion.metric}"),
        promoted_at=as_time("promoted_at"),
        previous=previous,
    )


def load_current(ctx: Context, as_of: datetime) -> pd.DataFrame:
    cfg = ctx.config
    frame = ctx.store.load(cfg.name, cfg.feature_names, ts_after=as_of - cfg.windows.current, ts_until=as_of)
    return validate_window(frame, cfg, window="current")


def load_reference(ctx: Context, as_of: datetime, champion: ChampionInfo | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The drift reference and where it came from (``{"kind", "start", "end", "note"}``): the
    champion's own training rows (what changed since it learned?); with ``windows.reference:
    season``, the current window's span one ``windows.season`` back (a season that comes back is
    not drift); with a duration, or with no champion, the span before the current window. A
    seasonal reference the store cannot give (no rows that old yet, or none in that span) falls back
    to the champion's training rows, and ``note`` says so (the decision log shows it)."""
    cfg = ctx.config
    windows = cfg.windows
    note = None
    if windows.reference == "season":
        end = as_of - windows.season
        start = end - windows.current
        # "That old": the store must reach back to the span's start, or the span is only part of one.
        reaches = not ctx.store.load(cfg.name, [], ts_until=start, limit=1).empty
        frame = ctx.store.load(cfg.name, cfg.feature_names, ts_after=start, ts_until=end) if reaches else None
        if frame is not None and len(frame):
            return validate_window(frame, cfg, window="reference"), _span("season", start, end)
        why = "has no rows" if reaches else "does not reach back"
        note = (f"windows.reference season: the store {why} one season ({format_duration(windows.season)}) back "
                f"({start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M})")
    if windows.reference in ("champion_training", "season") and champion and champion.data_start and champion.data_end:
        start, end = champion.data_start - timedelta(microseconds=1), champion.data_end
        note = note and f"{note}: drift is measured against the champion's training rows instead"
        frame = ctx.store.load(cfg.name, cfg.feature_names, ts_after=start, ts_until=end)
        return validate_window(frame, cfg, window="reference"), _span("champion_training", start, end, note)
    span = windows.reference if isinstance(windows.reference, timedelta) else windows.training
    end = as_of - windows.current
    start = end - span
    note = note and f"{note}: drift is measured against the {format_duration(span)} before the current window instead"
    frame = ctx.store.load(cfg.name, cfg.feature_names, ts_after=start, ts_until=end)
    return validate_window(frame, cfg, window="reference"), _span("before_current", start, end, note)


def _span(kind: str, start: datetime, end: datetime, note: str | None = None) -> dict[str, Any]:
    return {"kind": kind, "start": start.isoformat(), "end": end.isoformat(), "note": note}


def labelled_split(ctx: Context, as_of: datetime, until: datetime | None = None) -> tuple[datetime, datetime]:
    """(holdout start, holdout end): the holdout is the newest ``holdout`` span of labelled rows
    known at ``as_of`` (or at ``until``, to train as of an earlier time); training ends where it
    starts."""
    latest = ctx.store.latest_labelled_ts(ctx.config.name, known_at=as_of)
    if latest is None:
        raise DataValidationError(f"{ctx.config.name}: no labelled rows known at {as_of.isoformat()}")
    if until is not None and until < latest:
        latest = until
    return latest - ctx.config.windows.holdout, latest


def load_labelled(ctx: Context, *, after: datetime, until: datetime, known_at: datetime, window: str, min_rows: int) -> pd.DataFrame:
    cfg = ctx.config
    frame = ctx.store.load(
        cfg.name, cfg.feature_names, ts_after=after, ts_until=until, labelled_until=known_at, labelled_only=True
    )
    return validate_window(frame, cfg, window=window, require_labels=True, min_rows=min_rows)


# ---- guard: is the champion worse than the one before? -----------------------------------------


def resume_moves(ctx: Context) -> list[dict[str, Any]]:
    """Finish the registry moves an earlier run began and did not complete (its intent is in the
    audit log): a promotion a person forced is not lost to a crash or an MLflow outage."""
    results = []
    for intent in ctx.registry.unfinished_moves():
        result = ctx.registry.finish(intent)
        log.info("resumed %s of v%s from run %s: %s", intent["action"], intent["version"], intent["run_id"],
                 result["action"])
        results.append({**result, "intent": intent["action"], "version": intent["version"],
                        "run_id": intent["run_id"]})
    return results


def guard_champion(ctx: Context, run: RunInfo) -> dict[str, Any]:
    """The run's first step: check its params, finish any registry move an earlier run left
    half-done, then compare the champion with the previous champion on the rows the champion served
    since its promotion, once enough of them are labelled. Returns ``action`` "rollback" or "keep"."""
    check_params(run.params)
    config = ctx.config
    resumed = resume_moves(ctx)  # intents are read from the store: no registry call when there are none
    champion = champion_info(ctx)
    if champion is None:
        return {"action": "keep", "reason": "no champion yet", "resumed": resumed}
    previous = champion.previous
    if previous is None or not config.rollback.auto:
        why = "no previous champion" if previous is None else "automatic rollback is off"
        return {"action": "keep", "champion": champion.version, "reason": why, "resumed": resumed}
    taken_back = ctx.registry.info(previous)
    if taken_back.tag("verdict") == "rolled_back":
        # After a rollback, previous-champion is the version taken out of service (so a person can
        # undo the rollback); the guard bringing it back would undo a person's or its own decision.
        who = taken_back.tag("rolled_back_by") or "the guard"
        why = (f"v{previous} was rolled back by {who}; the guard does not bring it back "
               f"(roll back to 'previous' by hand to undo)")
        return {"action": "keep", "champion": champion.version, "reason": why, "resumed": resumed}
    as_of = resolve_as_of(ctx, run)
    rows = ctx.store.load(
        config.name,
        config.feature_names,
        ts_after=champion.promoted_at,
        labelled_until=as_of,
        labelled_only=True,
        version=champion.version,
    )
    need = config.rollback.min_labelled_rows
    if len(rows) < need:
        return {
            "action": "keep",
            "champion": champion.version,
            "reason": f"waiting for labels: {len(rows)}/{need} rows served by v{champion.version} are labelled",
            "resumed": resumed,
        }
    rows = validate_window(rows, config, window="guard", require_labels=True)
    from ml.evaluation import compute_metric

    metric, pos = config.promotion.metric, config.positive_label
    live = compute_metric(metric, rows["label"], rows["prediction"].to_numpy(), _scores(rows), pos_label=pos)
    before_pred, before_score = predict(config, ctx.registry.load_model(previous), rows)
    before = compute_metric(metric, rows["label"], before_pred, before_score, pos_label=pos)
    facts = (
        f"v{champion.version} {metric} {live:.3f} vs v{previous} {before:.3f} on {len(rows)} rows it served "
        f"(allowed drop {config.rollback.allowed_drop:.3f})"
    )
    action = guard_verdict(config, live, before)
    log.info("guard: %s -> %s", facts, action)
    return {
        "action": action,
        "champion": champion.version,
        "target": previous,
        "reason": facts,
        "live": live,
        "previous_metric": before,
        "rows": len(rows),
        "resumed": resumed,
    }


def _scores(rows: pd.DataFrame, column: str = "score") -> Any:
    score = rows[column]
    return None if score.isna().any() else score.to_numpy()


def rollback(ctx: Context, run: RunInfo, target: str | int, reason: str, *, automatic: bool) -> dict[str, Any]:
    version = ctx.registry.resolve_rollback_target(target) if not isinstance(target, int) else target
    if run.param("dry_run", False):
        return {"action": "dry_run", "champion": ctx.registry.champion(), "would_restore": version}
    as_of = ctx.store.latest_ts(ctx.config.name)
    result = ctx.registry.rollback(
        version, run_id=run.run_id, actor=run.actor, reason=reason, automatic=automatic
    )
    # The restored champion starts a new probation: the guard judges it on rows from now on.
    ctx.registry.set_tags(version, {"promoted_at": (as_of or datetime.now().astimezone()).isoformat()})
    demoted = result.get("from_version")
    if demoted is not None:
        # The demoted version's page must not still read as a promotion: its first line (all the
        # versions table shows) says who took it back and why, in the words of the rollback alert.
        from ml.alerts import rolled_back

        headline = rolled_back(ctx.config.name, result, actor=run.actor, reason=reason, automatic=automatic)
        if headline is not None:  # bold, without the model's name, like the promoted / rejected headlines
            head = f"**{headline.summary.removeprefix(ctx.config.name + ' ')}**"
            current = ctx.registry.description(demoted)
            if not current.startswith(head):
                ctx.registry.describe(demoted, f"{head}\n\n{current}")
    log.info("rollback: v%s -> v%s (%s)", result.get("from_version"), version, reason)
    return {**result, "links": ctx.tracker.version_links(version)}


def rollback_on_guard(ctx: Context, run: RunInfo, guard: dict[str, Any]) -> dict[str, Any]:
    """The automatic rollback the guard asked for, recorded as made by the guard."""
    return rollback(ctx, replace(run, actor=GUARD_ACTOR), int(guard["target"]), guard["reason"], automatic=True)


def resolve_rollback_target(ctx: Context, target: str) -> int:
    return ctx.registry.resolve_rollback_target(target)


# ---- validate, check drift, decide --------------------------------------------------------------


def validate_windows(ctx: Context, run: RunInfo) -> dict[str, Any]:
    """Resolve the run's ``as_of`` (once: the later steps take it from here) and check the windows
    the drift step reads; labelled rows are checked by the steps that use them."""
    config = ctx.config
    as_of = resolve_as_of(ctx, run)
    champion = champion_info(ctx)
    current = load_current(ctx, as_of)
    reference, _ = load_reference(ctx, as_of, champion)
    labelled = ctx.store.load(
        config.name, config.feature_names, ts_after=as_of - config.windows.current - config.windows.training,
        ts_until=as_of, labelled_until=as_of, labelled_only=True,
    )
    if len(labelled):
        validate_window(labelled, config, window="recent labelled", require_labels=True)
    summary = {"as_of": as_of.isoformat(), "current_rows": len(current), "reference_rows": len(reference),
               "recent_labelled_rows": len(labelled)}
    log.info("windows ok as of %s: %s", as_of.isoformat(), summary)
    return summary


def _safe(run_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)


def check_drift(ctx: Context, run: RunInfo, windows: dict[str, Any], *, keep_report: bool = True) -> dict[str, Any]:
    """Evidently drift of current vs reference, and the champion's live metric on newly labelled
    rows compared with its own evaluation, as of the time :func:`validate_windows` pinned. Logs a
    drift-check run (with the HTML report when kept) through the tracker."""
    from ml.drift import compute_drift
    from ml.evaluation import compute_metric

    config = ctx.config
    as_of = _time(windows["as_of"])
    champion = champion_info(ctx)
    current = load_current(ctx, as_of)
    reference, reference_span = load_reference(ctx, as_of, champion)
    if reference_span["note"]:
        log.info("drift reference: %s", reference_span["note"])
    report_path = ctx.settings.reports_dir / config.name / _safe(run.run_id) / "drift.html" if keep_report else None
    drift = compute_drift(
        reference, current, config.features,
        num_method=config.triggers.num_method, cat_method=config.triggers.cat_method,
        prediction_column="score" if config.triggers.prediction_drift else None,
        report_path=report_path, title=f"{config.name}: drift as of {as_of:%Y-%m-%d %H:%M} UTC",
        drift_share_threshold=config.triggers.drift_share,
    )
    # Newly labelled rows: labels that arrived within the current span, with what was predicted then.
    fresh = ctx.store.load(
        config.name, config.feature_names, labelled_after=as_of - config.windows.current,
        labelled_until=as_of, labelled_only=True,
    )
    # Only rows the current champion served say how it is doing (its predecessor scored the rest).
    served_by = champion.version if champion else None
    fresh = fresh[fresh["prediction"].notna() & (fresh["model_version"] == served_by)] if served_by else fresh[:0]
    live = None
    if len(fresh):
        fresh = validate_window(fresh, config, window="newly labelled", require_labels=True)
        try:
            live = compute_metric(
                config.promotion.metric, fresh["label"], fresh["prediction"].to_numpy(), _scores(fresh),
                pos_label=config.positive_label,
            )
        except ValueError as exc:  # e.g. one class only in a small batch: no live metric this time
            log.info("live metric not computed: %s", exc)
    baseline, baseline_rows = _served_baseline(ctx, champion, as_of)
    estimate = estimate_performance(ctx, champion, as_of, current)
    performance = {
        "metric": config.promotion.metric,
        "live": live,
        "rows": len(fresh),
        "champion_metric": champion.metric if champion else None,
        "champion": champion.version if champion else None,
        "served_baseline": baseline,
        "served_baseline_rows": baseline_rows,
        "estimated": estimate.value,
        "estimated_rows": estimate.rows,
        "calibration_rows": estimate.calibration_rows,
        "estimate_note": estimate.note,
    }
    check_links = ctx.tracker.log_check(run.run_id, as_of, drift, performance)
    log.info("drift check as of %s: %s; live %s=%s on %s rows; estimated %s", as_of.isoformat(), drift.summary(),
             performance["metric"], _fmt(live), performance["rows"],
             _fmt(estimate.value) if estimate.value is not None else f"n/a ({estimate.note})")
    return {
        "as_of": as_of.isoformat(),
        "drift": drift.to_dict(),
        "performance": performance,
        "report_path": str(report_path) if report_path else None,
        "links": check_links,
        "reference": reference_span,
        "error_detector": served_error_changes(ctx, champion, as_of),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def served_error_changes(ctx: Context, champion: ChampionInfo | None, as_of: datetime) -> dict[str, Any] | None:
    """``triggers.error_detector``: the rises in the champion's error a river detector finds on the
    rows it served since its promotion whose labels are known by ``as_of`` (``{"detector", "rows",
    "changes"}``, changes as :class:`ml.detectors.Change` dicts); None when the policy has no
    detector or there is no champion. Recomputed from the store every run (see :mod:`ml.detectors`
    for why that is the detector's state); below ``min_rows`` rows the detector is not run."""
    from ml.detectors import served_changes

    cfg = ctx.config
    spec = cfg.triggers.error_detector
    if spec is None or champion is None:
        return None
    rows = ctx.store.load(cfg.name, [], ts_after=champion.promoted_at, ts_until=as_of, labelled_until=as_of,
                          labelled_only=True, version=champion.version)
    rows = rows[rows["prediction"].notna()]
    out = {"detector": spec.detector_name, "rows": len(rows), "changes": []}
    if len(rows) >= spec.min_rows:
        out["changes"] = [c.to_dict() for c in served_changes(spec, cfg.task, rows)]
    log.info("error detector (%s): %s rising change(s) in %s labelled rows served by v%s", spec.detector_name,
             len(out["changes"]), len(rows), champion.version)
    return out


def estimate_performance(ctx: Context, champion: ChampionInfo | None, as_of: datetime,
                         current: pd.DataFrame) -> Any:
    """The champion's metric on the current rows estimated without their labels (CBPE,
    :mod:`ml.estimation`): an :class:`ml.estimation.Estimate`, with a note when there is none.

    Calibration rows: labelled rows newer than the champion's training data (it never fit them),
    before the current window (those are the rows being estimated), labels known by ``as_of``, at most
    ``windows.training`` of them. Right after a promotion that is the gate's holdout (the newest rows
    before the candidate's training cut); later, the rows it served whose labels came in. Both the
    DAG and the replay have exactly these rows in the store, and they follow a refit champion too
    (its training data then covers the holdout, and only served rows calibrate it). The gate's holdout
    alone would be too few rows (e.g. 2 days) and stays fixed while the served rows show how the
    champion's scores read now. Every row is scored here by the champion itself (a stored score may
    be its predecessor's, and the holdout was never served)."""
    from ml.estimation import Estimate, cannot_estimate, estimate

    cfg = ctx.config
    metric = cfg.promotion.metric
    if cfg.task != "classification" or len(cfg.target.labels or []) != 2:
        return Estimate(metric, None, note="the label-free estimate (CBPE) needs a binary classifier's probabilities")
    if champion is None:
        return Estimate(metric, None, note="no champion to estimate")
    if champion.data_end is None:
        return Estimate(metric, None, note=f"v{champion.version}'s training window is unknown (no data_end tag)")
    end = as_of - cfg.windows.current
    start = max(champion.data_end, end - cfg.windows.training)
    calibration = ctx.store.load(cfg.name, cfg.feature_names, ts_after=start, ts_until=end,
                                 labelled_until=as_of, labelled_only=True) if start < end else None
    need = cfg.triggers.min_calibration_rows
    refused = cannot_estimate(metric, 0 if calibration is None else len(calibration), len(current), need)
    if refused is not None:  # said without loading the model (no calibration rows is among these)
        return refused
    calibration = validate_window(calibration, cfg, window="calibration", require_labels=True)
    model = ctx.registry.load_model(champion.version)
    _, calibration_scores = predict(cfg, model, calibration)
    predictions, scores = predict(cfg, model, current)
    if scores is None or calibration_scores is None:
        return Estimate(metric, None, len(current), len(calibration),
                        f"v{champion.version} gives no probability for {cfg.positive_label!r} (no predict_proba)")
    return estimate(metric, calibration_labels=calibration["label"].to_numpy(), calibration_scores=calibration_scores,
                    current_predictions=predictions, current_scores=scores, pos_label=cfg.positive_label,
                    min_calibration_rows=need)


def _served_baseline(ctx: Context, champion: ChampionInfo | None, as_of: datetime) -> tuple[float | None, int]:
    """The champion's level over its first ``windows.current`` served (labels known by ``as_of``),
    for ``triggers.drop_reference: served``; (None, 0) when the policy does not use it."""
    from ml.evaluation import served_baseline

    cfg = ctx.config
    if champion is None or cfg.triggers.drop_reference != "served":
        return None, 0
    served = ctx.store.load(cfg.name, cfg.feature_names, ts_until=as_of, labelled_until=as_of,
                            version=champion.version)
    labelled = served[served["label"].notna() & served["prediction"].notna()]
    if labelled.empty:
        return None, 0
    labelled = validate_window(labelled, cfg, window="served by the champion", require_labels=True)
    return served_baseline(cfg.promotion.metric, labelled, served["ts"].min(), cfg.windows.current,
                           cfg.rollback.min_labelled_rows, pos_label=cfg.positive_label)


def gather_facts(ctx: Context, run: RunInfo, check: dict[str, Any], as_of: datetime) -> TriggerInputs:
    """Everything the trigger policy weighs, from the check, the store and the registry. A new
    trigger kind adds its fact here, its rule in :mod:`ml.triggers`, its setting in the config."""
    from ml.drift import DriftResult

    cfg = ctx.config
    drift = DriftResult.from_dict(check["drift"])
    champion = champion_info(ctx)
    candidates = _candidate_times(ctx)
    last = max(candidates.values(), default=None)
    rejected = _last_rejection_time(ctx, candidates)
    perf = check["performance"]
    reference, reference_label = drop_reference(cfg.triggers, perf["champion_metric"], perf.get("served_baseline"),
                                                cfg.windows.current)
    force = bool(run.param("force", False))
    onset = _drift_onset(ctx, as_of, drift.drift_share) if champion is not None else None
    labels_after_onset = 0
    if onset is not None:
        latest = ctx.store.latest_labelled_ts(cfg.name, known_at=as_of)
        if latest is not None:
            labels_after_onset = ctx.store.count_labels(
                cfg.name, ts_after=onset, ts_until=latest - cfg.windows.holdout, known_at=as_of
            )
    return TriggerInputs(
        has_champion=champion is not None,
        drift_share=drift.drift_share,
        drifted_features=tuple(drift.drifted_features),
        n_features=len(drift.features),
        prediction_drifted=bool(drift.prediction and drift.prediction.drifted),
        metric=cfg.promotion.metric,
        greater_is_better=cfg.greater_is_better,
        live_metric=perf["live"],
        live_rows=perf["rows"],
        reference_metric=reference,
        reference_label=reference_label,
        model_age=(as_of - champion.data_end) if champion and champion.data_end else None,
        since_last_retrain=(as_of - last) if last else None,
        since_last_rejection=(as_of - rejected) if rejected else None,
        new_labels=ctx.store.count_labels(
            cfg.name, ts_after=champion.data_end if champion else None, known_at=as_of
        ),
        pending_event_rows=tuple(e["rows"] for e in ctx.store.pending_events(cfg.name)),
        manual=bool(run.param("retrain", False)) or force,
        force=force,
        requested_by=run.actor,
        reason=run.param("reason"),
        drift_onset=onset,
        labels_after_onset=labels_after_onset,
        min_train_rows=cfg.training.min_rows,
        estimated_metric=perf.get("estimated"),
        calibration_rows=perf.get("calibration_rows", 0),
        estimate_note=perf.get("estimate_note"),
        error_change=_new_error_change(check.get("error_detector"), last),
        error_rows=(check.get("error_detector") or {}).get("rows", 0),
        reference_note=(check.get("reference") or {}).get("note"),
    )


def _new_error_change(found: dict[str, Any] | None, last_candidate: datetime | None) -> Any:
    """The newest rise in the champion's error (from :func:`served_error_changes`) that was not yet
    known when the last candidate was trained: that candidate answered what was known then (promoted,
    or rejected because the champion still beat it), so only a later change is a reason to retrain
    again. A held-back change (cooldown, backoff) stays new until a candidate is trained."""
    from ml.detectors import Change

    changes = [Change.from_dict(c) for c in (found or {}).get("changes", [])]
    new = [c for c in changes if last_candidate is None or c.known_at > last_candidate]
    return new[-1] if new else None


def _drift_history(ctx: Context, as_of: datetime) -> list[tuple[datetime, float | None]]:
    """Earlier checks, oldest first, as (start of their current window, drift share), from the audit
    log's run entries (each records its as_of and drift share)."""
    current = ctx.config.windows.current
    # Only checks made while there was a champion: a check without one compared two arbitrary spans.
    history = [
        (_time(e["details"]["as_of"]) - current, e["details"].get("drift_share"))
        for e in ctx.store.audit_log(ctx.config.name, ["run"])
        if (e["details"] or {}).get("as_of") and _time(e["details"]["as_of"]) < as_of
        and e["details"].get("checked_champion", 0) is not None
    ]
    history.sort(key=lambda item: item[0])
    return history


def _drift_onset(ctx: Context, as_of: datetime, share: float) -> datetime | None:
    current = ctx.config.windows.current
    return drift_onset(_drift_history(ctx, as_of), (as_of - current, share), ctx.config.triggers.drift_share)


def _candidate_times(ctx: Context) -> dict[int, datetime]:
    """Data time of every registered candidate, by version (from the audit log)."""
    entries = ctx.store.audit_log(ctx.config.name, ["registered"])
    return {e["version"]: _time(e["details"]["data_time"]) for e in entries if (e["details"] or {}).get("data_time")}


def _last_rejection_time(ctx: Context, times: dict[int, datetime] | None = None) -> datetime | None:
    """Data time of the newest candidate the gate rejected (for the policy's rejection_backoff);
    ``times``: :func:`_candidate_times`, when the caller has them already."""
    times = _candidate_times(ctx) if times is None else times
    rejected = {e["version"] for e in ctx.store.audit_log(ctx.config.name, ["rejected"])}
    return max((t for version, t in times.items() if version in rejected), default=None)


def record_asset_events(ctx: Context, events: list[dict[str, Any]]) -> int:
    """Store the new-labels events a run consumed (idempotent per event key). Each item is
    ``{"extra": <asset event extra>, "timestamp": <when Airflow recorded it>}``; the extra may come
    from the new-labels DAG, Airflow's REST API or the Redis watcher (see :mod:`ml.messages`). A
    message that cannot be read stops the run with the reason."""
    from ml.messages import from_asset_event

    config = ctx.config
    added = 0
    for event in events:
        message = from_asset_event(event.get("extra"), config.name, timestamp=event.get("timestamp"))
        new = ctx.store.add_event(config.name, "new_labels", message["key"], message["rows"],
                                  _time(message["occurred_at"]), message)
        added += new
        log.info("new-labels event %s via %s: %s rows (%s)", message["key"], message["via"], message["rows"],
                 "recorded" if new else "already recorded")
    return added


def announce_new_labels(ctx: Context, run: RunInfo, rows: Any, key: str | None) -> dict[str, Any]:
    """The new-labels DAG's message: checked, recorded, and returned for the asset event's extra."""
    from ml.messages import new_labels_message

    message = new_labels_message(ctx.config.name, rows, key=key or run.run_id, source=run.actor)
    record_asset_events(ctx, [{"extra": message}])
    return message


def decide(ctx: Context, run: RunInfo, check: dict[str, Any]) -> dict[str, Any]:
    config = ctx.config
    as_of = _time(check["as_of"])
    facts = gather_facts(ctx, run, check, as_of)
    decision = decide_trigger(config.triggers, facts)
    if decision.retrain and run.param("dry_run", False):
        decision = Decision(
            "none", decision.reasons, held_back=(f"dry run: would retrain ({decision.kind})",), force=decision.force
        )
    pending = shadow_challenger(ctx)
    if decision.retrain and pending is not None:
        # One challenger at a time: the alias names one version, and a second candidate would be
        # judged against a champion the first may replace.
        held = (f"challenger v{pending.version} is in shadow: no other candidate is trained until the shadow "
                f"gate judges it ({decision.kind} retrain held)")
        decision = Decision("none", decision.reasons, held_back=(*decision.held_back, held), force=decision.force,
                            not_run=decision.not_run)
    # A retrain answers the announced labels, whatever kind won; they are consumed by record, once
    # the run got that far (a failed training leaves them pending for the next run).
    events = [e["id"] for e in ctx.store.pending_events(config.name)] if decision.retrain else []
    line = decision.summary()
    log.info("decision: %s", line)
    for note in decision.not_run:
        log.info("decision: %s", note)
    return {**decision.to_dict(), "summary": line, "as_of": as_of.isoformat(),
            "model_age": format_duration(facts.model_age) if facts.model_age else None,
            "new_labels": facts.new_labels, "events": events}


# ---- train, evaluate, promote or reject --------------------------------------------------------


def train_candidate(ctx: Context, run: RunInfo, decision: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    """Train, log through the tracker (params, metrics, data window, git commit, config, signature,
    input example, model) and register as a new version with the ``challenger`` alias. A retried
    task reuses the version its first attempt registered."""
    from ml import tracking

    config = ctx.config
    reused = _version_of_run(ctx, run.run_id)
    if reused is not None:
        log.info("train: reusing v%s registered by this run's earlier attempt", reused["version"])
        return {**reused, "force": bool(decision.get("force"))}
    as_of = _time(check["as_of"])
    until = _time(run.param("train_until")) if run.param("train_until") else None
    holdout_start, _ = labelled_split(ctx, as_of, until)
    strategy = run.param("strategy", "config")
    strategy = config.training.strategy if strategy == "config" else strategy
    champion = champion_info(ctx)
    gate = candidate_gate(config, champion is not None, bool(decision.get("force")))
    if gate == "shadow":
        # Judged later on the rows that come next, not on a holdout: it trains up to the newest label.
        holdout_start = labelled_split(ctx, as_of, until)[1]
    notes = []
    if strategy == "incremental" and champion is None:
        strategy, notes = "full", ["no champion to warm-start: trained in full"]
    if strategy == "incremental":
        after = champion.data_end if champion.data_end else holdout_start - config.windows.training
        train = load_labelled(ctx, after=after, until=holdout_start, known_at=as_of, window="incremental training",
                              min_rows=config.training.min_rows)
        model = fit_incremental(config, ctx.registry.load_model(champion.version), train)
    else:
        # Widening (windows.max_training) stops at the newest drift onset on record, this check's included.
        last_onset = None
        if config.windows.max_training is not None and config.triggers.drift_share is not None and not until:
            history = _drift_history(ctx, as_of)
            if champion is not None:  # a check without a champion compared two arbitrary spans
                history.append((as_of - config.windows.current, (check.get("drift") or {}).get("drift_share")))
            last_onset = last_drift_onset(history, config.triggers.drift_share)
        after, clipped = training_start(config, holdout_start, None if until else decision.get("train_after"),
                                        widen=True, last_onset=last_onset)
        notes += clipped
        train = load_labelled(ctx, after=after, until=holdout_start, known_at=as_of, window="training",
                              min_rows=config.training.min_rows)
        model = fit_full(config, train)
    window = data_window(train, config)
    if strategy == "incremental":
        # The warm-started model also carries everything the champion learned.
        window = DataWindow(window.rows, champion.data_start.isoformat() if champion.data_start else window.start,
                            window.end, window.content_hash)
    ctx.registry.ensure_model(_model_description(config), tags={"driftline.config": config.source or ""})
    logged = ctx.tracker.log_candidate(run_id=run.run_id, model=model, train=train, strategy=strategy,
                                       decision=decision, check=check, window=window, as_of=as_of)
    version = ctx.registry.register(logged)
    tags = {
        "trigger": decision["kind"], "reasons": "; ".join(decision["reasons"]), "dag_run_id": run.run_id,
        "mlflow_run_id": logged.run_id, "model_source": ctx.registry.source(version), "strategy": strategy,
        "git_commit": tracking.git_commit(),
        "data_rows": window.rows, "data_start": window.start, "data_end": window.end, "data_hash": window.content_hash,
        "data_time": as_of.isoformat(), "notes": "; ".join(notes), "gate": gate,
    }
    ctx.registry.mark_challenger(version, tags, run_id=run.run_id, actor=run.actor)
    log.info("trained v%s (%s, %s rows %s..%s)", version, strategy, window.rows, window.start, window.end)
    return {"version": version, "mlflow_run_id": logged.run_id, "experiment_id": logged.experiment_id,
            "strategy": strategy, "window": window.to_dict(), "as_of": as_of.isoformat(), "trigger": decision["kind"],
            "reasons": list(decision["reasons"]), "force": bool(decision.get("force")), "gate": gate,
            "links": ctx.tracker.candidate_links(logged.experiment_id, logged.run_id, version)}


def _version_of_run(ctx: Context, run_id: str) -> dict[str, Any] | None:
    if not ctx.registry.exists():
        return None
    for info in ctx.registry.versions():
        if info.tag("dag_run_id") == run_id and not info.tag("refit_of"):  # a refit is not the run's candidate
            return _candidate_of(ctx, info)
    return None


def _candidate_of(ctx: Context, info: Any) -> dict[str, Any]:
    """A registered candidate as :func:`train_candidate` returned it, read back from its tags."""
    window = {"rows": info.tag("data_rows"), "start": info.tag("data_start"), "end": info.tag("data_end"),
              "content_hash": info.tag("data_hash")}
    logged_run = info.tag("mlflow_run_id")
    experiment = ctx.tracker.experiment_of(logged_run)
    return {"version": info.version, "mlflow_run_id": logged_run, "experiment_id": experiment,
            "strategy": info.tag("strategy"), "window": window, "as_of": info.tag("data_time"),
            "trigger": info.tag("trigger"), "reasons": (info.tag("reasons") or "").split("; "),
            "gate": info.tag("gate") or "holdout",
            "links": ctx.tracker.candidate_links(experiment, logged_run, info.version)}


def _model_description(config: ModelConfig) -> str:
    return (
        f"{config.description.strip()}\n\nManaged by Driftline from `{Path(config.source or '').name}` "
        f"({config.task}; primary metric `{config.promotion.metric}`). Aliases: `champion` serves, "
        f"`challenger` is under evaluation, `previous-champion` is the rollback target."
    )


def evaluate_candidate(ctx: Context, run: RunInfo, candidate: dict[str, Any]) -> dict[str, Any]:
    """Champion and challenger on the same newest labelled holdout that neither trained on."""
    config = ctx.config
    if candidate.get("gate") == "shadow":
        return _into_shadow(ctx, run, candidate)
    as_of = _time(candidate["as_of"])
    # The holdout is always the newest labelled span, also when training was moved into the past.
    start, end = labelled_split(ctx, as_of)
    holdout = load_labelled(ctx, after=start, until=end, known_at=as_of, window="holdout",
                            min_rows=config.promotion.min_holdout_rows)
    version = int(candidate["version"])
    champion = champion_info(ctx)
    challenger_pred, challenger_score = predict(config, ctx.registry.load_model(version), holdout)
    champion_pred = champion_score = None
    notes = []
    if champion is not None:
        champion_pred, champion_score = predict(config, ctx.registry.load_model(champion.version), holdout)
        if champion.data_end and champion.data_end > start:
            notes.append(f"the champion trained on part of this holdout (its data ends {champion.data_end:%Y-%m-%d %H:%M}): "
                         "its score is optimistic, which favours keeping it")
    result = _gate(config, holdout["label"], (challenger_pred, challenger_score), (champion_pred, champion_score),
                   version, champion.version if champion else None)
    if champion is None and result.verdict == "promote":
        lost = _champion_lost(ctx)
        if lost:
            # Fail closed: a model that had a champion and now has none lost it outside Driftline (or a
            # registry fault); no candidate takes its place without a person (force).
            result = replace(result, verdict="reject", reasons=(*result.reasons, f"no champion failed: {lost}"))
    evaluated_on = (f"{len(holdout)} newest labelled rows, {holdout['ts'].min():%Y-%m-%d %H:%M} .. "
                    f"{holdout['ts'].max():%Y-%m-%d %H:%M}")
    return _judged(ctx, run, candidate, result, evaluated_on, notes, champion)


def _gate(config: ModelConfig, y_true: Any, challenger: tuple[Any, Any], champion: tuple[Any, Any],
          version: int, champion_version: int | None) -> Any:
    """The promotion gate (:func:`ml.evaluation.evaluate_candidate`) with the model's settings, for
    the holdout and the shadow gate alike: (prediction, score) of each model on the same rows."""
    from ml.evaluation import evaluate_candidate as gate_candidate

    gate = config.promotion
    return gate_candidate(
        metric=gate.metric, y_true=y_true, challenger_pred=challenger[0], challenger_score=challenger[1],
        champion_pred=champion[0], champion_score=champion[1], challenger_version=version,
        champion_version=champion_version, min_improvement=gate.min_improvement, significance=gate.significance,
        floor=gate.floor, n_resamples=gate.bootstrap_samples, seed=config.training.random_state,
        pos_label=config.positive_label,
    )


def _judged(ctx: Context, run: RunInfo, candidate: dict[str, Any], result: Any, evaluated_on: str,
            notes: list[str], champion: ChampionInfo | None) -> dict[str, Any]:
    """The gate's verdict written where people look: the version's description and tags, the
    candidate's run (through the tracker), the log; returned as the step's result."""
    config, gate, version = ctx.config, ctx.config.promotion, int(candidate["version"])
    description = _version_description(config, run, candidate, result, evaluated_on, notes)
    ctx.registry.describe(version, description)
    ctx.registry.set_tags(version, {
        f"eval_{gate.metric}": result.challenger, "eval_champion": result.champion, "eval_improvement": result.improvement,
        "eval_ci_low": result.ci_low, "eval_ci_high": result.ci_high, "eval_rows": result.n_rows,
        "eval_verdict": result.verdict, "compared_with": champion.version if champion else "",
    })
    ctx.tracker.log_evaluation(candidate["mlflow_run_id"], result, _live_history(ctx))
    log.info("evaluation: %s", result.summary())
    return {**result.to_dict(), "summary": result.summary(), "notes": notes, "links": candidate.get("links", {})}


def _champion_lost(ctx: Context) -> str | None:
    """Why the missing champion is suspect: the audit log says one was promoted before."""
    promoted = [e["version"] for e in ctx.store.audit_log(ctx.config.name, ["promoted", "rolled_back"])]
    if not promoted:
        return None
    return (f"the model has no champion but v{promoted[-1]} was champion before; a person must promote "
            "(force) after checking the registry")


def _live_history(ctx: Context) -> list[tuple[datetime, float]]:
    """The champion's live metric at each earlier run (from the audit log), for the evaluation plot."""
    return [
        (_time(e["details"]["as_of"]), float(e["details"]["live_metric"]))
        for e in ctx.store.audit_log(ctx.config.name, ["run"])
        if (e["details"] or {}).get("live_metric") is not None and e["details"].get("as_of")
    ]


def _version_description(config: ModelConfig, run: RunInfo, candidate: dict[str, Any], result: Any,
                         evaluated_on: str, notes: list[str]) -> str:
    window = candidate["window"]
    lines = [
        "### Why this version exists",
        f"- **Trigger:** `{candidate['trigger']}`",
        *[f"- {reason}" for reason in candidate["reasons"]],
        f"- **Strategy:** {candidate['strategy']}",
        f"- **Trained on:** {window['rows']} rows, {window['start']} .. {window['end']} (hash `{window['content_hash']}`)",
        f"- **Evaluated on:** {evaluated_on}",
        "",
        "### Champion vs challenger",
        result.table_markdown(),
    ]
    lines += [f"\n> {note}" for note in notes]
    lines.append(f"\nConfig: `{Path(config.source or '').name}` · Airflow run: `{run.run_id}`")
    return "\n".join(lines)


def promote(ctx: Context, run: RunInfo, candidate: dict[str, Any], evaluation: dict[str, Any],
            approval: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make the candidate champion; with ``promotion.refit`` and a candidate the gate blessed (not
    one forced past it), first refit it on its training rows plus the holdout and promote the refit
    in its place (:func:`refit_candidate`). A refit that cannot be made promotes the blessed
    candidate itself, and the result, the log and the version page say why. ``approval``: the
    approval task's response when the model requires one (:func:`approval_answer`); the move is
    then recorded as the approver's."""
    forced = evaluation["verdict"] != "promote"
    reasons = list(evaluation["reasons"])
    if forced:
        reasons.insert(0, f"forced by {run.actor or 'a person'} past the gate")
    answer = None
    if approval is not None:
        answer = approval_answer(approval, ctx.config)
        if answer["answer"] != "approved":  # fail closed: the branch said approved, the answer does not
            raise ParamError(f"v{candidate['version']} was not approved ({answer['line']}); not promoting it")
        run = replace(run, actor=answer["by"])
        reasons.insert(0, answer["line"])
        ctx.registry.set_tags(int(candidate["version"]), _approval_tags(answer))
    blessed = int(candidate["version"])
    if candidate.get("canary") is not None:  # it answered live requests before the gate passed it
        ctx.registry.set_tags(blessed, {"canary": "passed", "canary_rows": candidate["canary"]["rows"]})
    refit = None
    current = ctx.registry.champion()
    # A candidate a newer champion superseded is not refitted: the promotion below rejects it.
    if ctx.config.promotion.refit and not forced and not (current is not None and current > blessed):
        refit = refit_candidate(ctx, run, candidate, evaluation)
    version = refit["version"] if refit and refit.get("version") else blessed
    if refit and refit.get("error"):
        note = f"> **Not refitted:** {refit['error']}; the blessed v{blessed} is promoted as the gate judged it."
        current_text = ctx.registry.description(blessed)
        if "**Not refitted:**" not in current_text:
            ctx.registry.describe(blessed, f"{note}\n\n{current_text}")
    if forced:
        # The description still shows the gate's verdict; say plainly who overrode it and why.
        current = ctx.registry.description(version)
        if "Promoted by force" not in current:
            why = run.param("reason", "no reason given")
            ctx.registry.describe(version, f"> **Promoted by force** by {run.actor or 'a person'}, past the gate: {why}\n\n"
                                           + current)
    result = ctx.registry.promote(version, run_id=run.run_id, actor=run.actor, reasons=reasons,
                                  forced=forced, data_time=_time(candidate["as_of"]),
                                  refit_of=blessed if version != blessed else None)
    if result.get("action") == "rejected":  # a newer version became champion while this one waited
        log.info("v%s not promoted: superseded by v%s", version, result.get("superseded_by"))
    else:
        log.info("promoted v%s (previous champion %s)%s", result["champion"], result["previous_champion"],
                 " [forced]" if forced else "")
    out = {**result, "forced": forced, "links": ctx.tracker.version_links(result["champion"])}
    if refit is not None:
        out["refit"] = refit
    if answer is not None:
        out["approval"] = answer
    from ml import alerts

    _headline(ctx, version, alerts.promoted(ctx.config.name, out, candidate=candidate, evaluation=evaluation,
                                            actor=run.actor, reason=run.param("reason")).summary)
    if version != blessed and result.get("action") == "promoted":
        _headline(ctx, blessed, f"{ctx.config.name} v{blessed} passed the gate and was refitted: v{version}, the same "
                                f"estimator on its training rows plus the holdout, was promoted in its place")
    return out


def refit_candidate(ctx: Context, run: RunInfo, candidate: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """``promotion.refit``: the candidate the gate blessed, fitted again with the same estimator and
    params on its own training rows plus the holdout it was judged on (an incremental candidate:
    warm-started further on the holdout), registered as a new version tagged ``refit_of`` and
    marked challenger. Returns ``{"version", "refit_of", "rows", ...}``; ``{"error"}`` when it cannot
    be made from the rows as they are (the training rows changed since, too few rows, one class):
    the caller then promotes the blessed candidate. Any other error fails the step (and the champion
    stays). A retried task reuses the refit its first attempt registered."""
    from ml import tracking
    from ml.evaluation import EvaluationResult

    config = ctx.config
    blessed = int(candidate["version"])
    for info in ctx.registry.versions():
        if info.tag("refit_of") == str(blessed) and info.tag("dag_run_id") == run.run_id:
            log.info("refit: reusing v%s registered by this run's earlier attempt", info.version)
            return {"version": info.version, "refit_of": blessed, "rows": info.tag("data_rows"), "reused": True}
    as_of = _time(candidate["as_of"])
    window = candidate["window"]
    try:
        start, end = labelled_split(ctx, as_of)
        holdout = load_labelled(ctx, after=start, until=end, known_at=as_of, window="holdout",
                                min_rows=config.promotion.min_holdout_rows)
        if candidate["strategy"] == "incremental":
            model = fit_incremental(config, ctx.registry.load_model(blessed), holdout)
            rows = holdout
            learned = data_window(holdout, config)
            learned = DataWindow(int(window["rows"]) + learned.rows, window["start"], learned.end, learned.content_hash)
        else:
            train = load_labelled(ctx, after=_time(window["start"]) - timedelta(microseconds=1),
                                  until=_time(window["end"]), known_at=as_of, window="refit training",
                                  min_rows=config.training.min_rows)
            if data_window(train, config).content_hash != window["content_hash"]:
                raise TrainingError(f"v{blessed}'s training rows changed since it was trained (hash "
                                    f"{window['content_hash']}; rows quarantined or relabelled since?)")
            rows = pd.concat([train, holdout[~holdout["row_id"].isin(train["row_id"])]], ignore_index=True)
            model = fit_full(config, rows)
            learned = data_window(rows, config)
    except (TrainingError, DataValidationError) as exc:
        log.warning("refit of v%s not made, promoting it as blessed: %s", blessed, exc)
        return {"error": f"refit of v{blessed} not made: {exc}"}
    summary = (f"refit of v{blessed} on its {window['rows']} training rows plus the {len(holdout)} holdout rows "
               f"the gate judged it on")
    decision = {"kind": candidate["trigger"], "reasons": list(candidate["reasons"]), "summary": summary,
                "refit_of": blessed}
    logged = ctx.tracker.log_candidate(run_id=run.run_id, model=model, train=rows, strategy=candidate["strategy"],
                                       decision=decision, check={"drift": {}, "report_path": None}, window=learned,
                                       as_of=as_of)
    version = ctx.registry.register(logged)
    metric = config.promotion.metric
    tags = {
        "trigger": candidate["trigger"], "reasons": "; ".join(candidate["reasons"]), "dag_run_id": run.run_id,
        "mlflow_run_id": logged.run_id, "model_source": ctx.registry.source(version),
        "strategy": candidate["strategy"], "git_commit": tracking.git_commit(),
        "data_rows": learned.rows, "data_start": learned.start, "data_end": learned.end,
        "data_hash": learned.content_hash, "data_time": as_of.isoformat(), "notes": summary,
        "refit_of": blessed,
        # Its holdout is in its training rows: the level it is watched against is the blessed
        # candidate's score on that holdout (what triggers.drop_reference "evaluation" reads).
        f"eval_{metric}": evaluation["challenger"], "eval_of": blessed,
    }
    ctx.registry.mark_challenger(version, tags, run_id=run.run_id, actor=run.actor)
    ctx.registry.describe(version, "\n".join([
        "### Why this version exists",
        (f"- **Refit of v{blessed}**, which passed the gate: the same estimator and params on v{blessed}'s "
        f"training rows plus the {len(holdout)} newest labelled rows the gate judged it on, so promoting it "
        "gives up no rows to the holdout (`promotion.refit`)."),
        f"- **Trigger of v{blessed}:** `{candidate['trigger']}`",
        *[f"- {reason}" for reason in candidate["reasons"]],
        f"- **Trained on:** {learned.rows} rows, {learned.start} .. {learned.end} (hash `{learned.content_hash}`)",
        (f"- **Its level:** v{blessed}'s holdout {metric} {evaluation['challenger']:.4f}: this version has no "
        "holdout of its own; the post-promotion guard watches it on the rows it serves."),
        "",
        f"### The gate's comparison (of v{blessed})",
        EvaluationResult.from_dict(evaluation).table_markdown(),
        f"\nConfig: `{Path(config.source or '').name}` · Airflow run: `{run.run_id}`",
    ]))
    log.info("refit v%s of v%s on %s rows %s..%s", version, blessed, learned.rows, learned.start, learned.end)
    return {"version": version, "refit_of": blessed, "rows": learned.rows, "window": learned.to_dict(),
            "links": ctx.tracker.version_links(version)}


def _headline(ctx: Context, version: int, line: str) -> None:
    """The version page's first line says what became of it (the versions table shows the
    description's start): the same one-line summary the alerts send."""
    current = ctx.registry.description(version)
    body = current.split("\n\n", 1)[1] if current.startswith("**v") and "\n\n" in current else current
    ctx.registry.describe(version, f"**{line.split(' ', 1)[1]}**\n\n{body}")


def reject(ctx: Context, run: RunInfo, candidate: dict[str, Any], evaluation: dict[str, Any],
           *, answer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keep the champion; the candidate is tagged rejected with the gate's reasons (or, when it
    passed the gate and a person turned it down or no one answered in time, with that: ``answer``)."""
    reasons = list(evaluation["reasons"])
    if answer is not None:
        reasons = [answer["line"], f"the gate had passed it: {evaluation.get('summary') or '; '.join(reasons)}"]
    canary = candidate.get("canary")  # it answered live requests (evaluate_shadow): this aborts the canary
    if canary is not None:
        reasons.insert(0, f"canary aborted: v{candidate['version']} answered {canary['rows']} of the "
                          f"{canary['paired_rows']} labelled rows judged (serving.canary_fraction "
                          f"{canary['fraction']:g}); champion v{canary['champion']} answers every request again")
    result = ctx.registry.reject(int(candidate["version"]), run_id=run.run_id, actor=run.actor, reasons=reasons,
                                 canary=canary)
    log.info("rejected v%s; champion stays v%s", candidate["version"], result["champion"])
    out = {**result, "links": ctx.tracker.version_links(int(candidate["version"]))}
    if answer is not None:
        out["approval"] = answer
    from ml import alerts

    _headline(ctx, int(candidate["version"]),
              alerts.rejected(ctx.config.name, out, candidate=candidate, evaluation=evaluation).summary)
    return out


# ---- human approval (promotion.approval: required) ----------------------------------------------

# The options a person is offered in Airflow's Required Actions page (ml.config has them: the DAG
# file reads them without importing this module); no answer in time counts as REJECT.
APPROVE, REJECT = APPROVAL_APPROVE, APPROVAL_REJECT
# Who a rejection for want of an answer is recorded as.
APPROVAL_TIMEOUT_ACTOR = "driftline-approval-timeout"


def route_candidate(ctx: Context, run: RunInfo, candidate: dict[str, Any],
                    evaluation: dict[str, Any]) -> dict[str, Any]:
    """The gate's branch: ``promote``, ``reject``, or ``await_approval`` (the gate passed and the
    model requires a person's approval; ``request`` is then what that person is shown). A forced
    run is not asked again: a person triggered it, with a reason, to promote past the gate."""
    outcome = choose_outcome(evaluation, candidate["force"])
    if outcome == "promote" and ctx.config.promotion.approval == "required" and not candidate["force"]:
        return {"branch": "await_approval", "request": approval_request(ctx, run, candidate, evaluation)}
    return {"branch": outcome}


def approval_request(ctx: Context, run: RunInfo, candidate: dict[str, Any],
                     evaluation: dict[str, Any]) -> dict[str, str]:
    """Subject and Markdown body of the approval request: what each answer does, the
    champion-vs-challenger table, why the candidate was trained, the gate's reasons, and links to
    both versions in MLflow."""
    from ml.evaluation import EvaluationResult

    config, version = ctx.config, int(candidate["version"])
    champion = evaluation.get("champion_version")
    timeout = format_duration(config.promotion.approval_timeout)
    window = candidate.get("window") or {}
    lines = [
        f"**{config.name} v{version}** passed the evaluation gate. It becomes the champion only if you approve.",
        "",
        f"- **Approve**: v{version} is promoted"
        + (f" and v{champion} becomes `previous-champion`." if champion is not None else " (the first champion)."),
        f"- **Reject**: v{version} is archived; write why in *Reason*: it is kept on the version and in the audit log.",
        f"- **No answer within {timeout}**: v{version} is rejected, recorded as timed out.",
        "",
        "### Champion vs challenger",
        EvaluationResult.from_dict(evaluation).table_markdown(),
        "",
        "### Why it was trained",
        f"- **Trigger:** `{candidate.get('trigger')}`",
        *[f"- {reason}" for reason in candidate.get("reasons") or []],
        f"- **Trained on:** {window.get('rows')} rows, {window.get('start')} .. {window.get('end')}",
        "",
        "### The gate",
        *[f"- {reason}" for reason in evaluation.get("reasons") or []],
        *[f"- {note}" for note in evaluation.get("notes") or []],
        "",
        "### In MLflow",
    ]
    found = [(f"Challenger v{version}", ctx.tracker.version_links(version).get("model_version")),
             (f"Training run of v{version}", (candidate.get("links") or {}).get("mlflow_run"))]
    if champion is not None:
        found.insert(1, (f"Champion v{champion}", ctx.tracker.version_links(int(champion)).get("model_version")))
    lines += [f"- [{name}]({url})" for name, url in found if url] or ["- (no tracking server links here)"]
    lines.append(f"\nAirflow run: `{run.run_id}`")
    against = f"replace champion v{champion}" if champion is not None else "become the first champion"
    return {"subject": f"Promote {config.name} v{version}? It would {against}.", "body": "\n".join(lines)}


def approval_answer(response: dict[str, Any] | None, config: ModelConfig) -> dict[str, Any]:
    """What a person answered, or that no one did, from the approval task's response
    (``chosen_options``, ``params_input`` with the *Reason* field, ``responded_by``,
    ``responded_at``, ``timed_out``). Anything but a person's explicit Approve reads as not approved
    (fail closed). Returns ``answer`` ("approved" / "rejected" / "timed_out"), ``by``, ``reason``,
    ``at`` and ``line``, one line for the reasons, the audit log and the alerts."""
    response = response or {}
    by = response.get("responded_by") or None
    reason = str((response.get("params_input") or {}).get("reason") or "").strip() or None
    at = response.get("responded_at")
    if response.get("timed_out") or by is None:
        timeout = format_duration(config.promotion.approval_timeout)
        return {"answer": "timed_out", "by": APPROVAL_TIMEOUT_ACTOR, "reason": None, "at": at,
                "line": f"no approval within {timeout}: rejected (approval timed out)"}
    if list(response.get("chosen_options") or []) == [APPROVE]:
        return {"answer": "approved", "by": by, "reason": reason, "at": at,
                "line": f"approved by {by}" + (f": {reason}" if reason else "")}
    return {"answer": "rejected", "by": by, "reason": reason, "at": at,
            "line": f"rejected by {by} at approval: {reason or 'no reason given'}"}


def _approval_tags(answer: dict[str, Any]) -> dict[str, Any]:
    return {"approval": answer["answer"], "approval_by": answer["by"], "approval_reason": answer["reason"] or "",
            "approval_at": answer["at"] or ""}


def not_approved(ctx: Context, run: RunInfo, candidate: dict[str, Any], evaluation: dict[str, Any],
                 response: dict[str, Any] | None) -> dict[str, Any]:
    """The candidate passed the gate but was not approved: rejected with the person's reason (actor:
    that person), or for want of an answer within ``promotion.approval_timeout`` (actor:
    :data:`APPROVAL_TIMEOUT_ACTOR`). The answer goes on the version's tags, its description's first
    line and the audit log's ``rejected`` entry."""
    answer = approval_answer(response, ctx.config)
    if answer["answer"] == "approved":  # the branch said not approved: never reject an approval
        raise ParamError(f"v{candidate['version']} was approved by {answer['by']}; it is promoted, not rejected")
    ctx.registry.set_tags(int(candidate["version"]), _approval_tags(answer))
    log.info("v%s not approved: %s", candidate["version"], answer["line"])
    return reject(ctx, replace(run, actor=answer["by"]), candidate, evaluation, answer=answer)


def record(ctx: Context, run: RunInfo, *, guard: dict | None, check: dict | None, decision: dict | None,
           candidate: dict | None, evaluation: dict | None, outcome: dict | None, shadow: dict | None = None,
           shadow_outcome: dict | None = None) -> dict[str, Any]:
    """One audit entry per run with what a person asks afterwards: what drifted, what was decided,
    what the registry did, and who is champion now."""
    config = ctx.config
    drift = (check or {}).get("drift") or {}
    performance = (check or {}).get("performance") or {}
    summary = {
        "as_of": (check or {}).get("as_of"),
        "drift_share": drift.get("drift_share"),
        "live_metric": performance.get("live"),
        "live_rows": performance.get("rows", 0),
        "estimated_metric": performance.get("estimated"),  # label-free (CBPE) on the current rows
        "calibration_rows": performance.get("calibration_rows", 0),
        "checked_champion": performance.get("champion"),  # the champion the drift check judged (None: none)
        "metric": config.promotion.metric,
        "trigger": (decision or {}).get("kind", "none"),
        "reasons": (decision or {}).get("reasons", []),
        "held_back": (decision or {}).get("held_back", []),
        "not_run": (decision or {}).get("not_run", []),
        "decision": (decision or {}).get("summary"),
        "candidate_version": (candidate or {}).get("version"),
        "evaluation": (evaluation or {}).get("summary"),
        "verdict": (evaluation or {}).get("verdict"),
        "action": outcome["action"] if outcome else "skipped",
        "refit_version": ((outcome or {}).get("refit") or {}).get("version"),  # promotion.refit's, promoted instead
        "approval": ((outcome or {}).get("approval") or {}).get("line"),
        "guard": (guard or {}).get("action"),
        "guard_reason": (guard or {}).get("reason"),
        "champion_version": ctx.registry.champion(),
        "report_path": (check or {}).get("report_path"),
    }
    summary.update(_shadow_record(shadow, shadow_outcome, summary, evaluation))
    ctx.store.consume_events((decision or {}).get("events", []), run.run_id)
    ctx.store.audit(config.name, "run", version=summary["champion_version"], actor=run.actor, run_id=run.run_id,
                    details=summary)
    log.info("run %s: trigger=%s action=%s champion=v%s", run.run_id, summary["trigger"], summary["action"],
             summary["champion_version"])
    return summary


def run_cycle(ctx: Context, run: RunInfo, *, keep_report: bool = False,
              trace: dict[str, Any] | None = None,
              approve: Callable[[dict[str, str]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """One continuous-training run in this process: the same steps, in the same order and on the
    same branches, as the ``<model>_continuous_training`` DAG (the replay runs this). Returns each
    step's result by name, ``record`` last; ``trace``, when given, is filled as the steps finish,
    so a caller sees what was done before a step failed. A step's error propagates, as a failed
    task fails the DAG run (and no record is written). ``approve`` answers an approval request
    (``promotion.approval: required``) as the Airflow task's response would; without it there is
    no one to ask in this process (the replay), and the gate's verdict stands."""
    out: dict[str, Any] = trace if trace is not None else {}
    out["guard"] = guard_champion(ctx, run)
    if out["guard"]["action"] == "rollback":
        out["rollback"] = rollback_on_guard(ctx, run, out["guard"])
    out["shadow"] = evaluate_shadow(ctx, run)
    shadow_outcome = None
    if out["shadow"]["status"] == "evaluated":
        judged, verdict = out["shadow"]["candidate"], out["shadow"]["evaluation"]
        if choose_outcome(verdict, False) == "promote":
            shadow_outcome = out["shadow_promote"] = promote(ctx, run, judged, verdict)
        else:
            shadow_outcome = out["shadow_reject"] = reject(ctx, run, judged, verdict)
    out["windows"] = validate_windows(ctx, run)
    out["check"] = check_drift(ctx, run, out["windows"], keep_report=keep_report)
    out["decision"] = decide(ctx, run, out["check"])
    candidate = evaluation = outcome = None
    if out["decision"]["branch"] != BRANCH_FOR_KIND["none"]:
        candidate = out["candidate"] = train_candidate(ctx, run, out["decision"], out["check"])
        evaluation = out["evaluation"] = evaluate_candidate(ctx, run, candidate)
        route = route_candidate(ctx, run, candidate, evaluation)
        response = None
        if route["branch"] == "await_approval" and approve is not None:
            response = out["approval"] = approve(route["request"])
        if route["branch"] == "await_shadow":
            pass  # a later run judges it on the rows it scores in shadow (evaluate_shadow)
        elif route["branch"] == "reject":
            outcome = out["reject"] = reject(ctx, run, candidate, evaluation)
        elif response is not None and approval_answer(response, ctx.config)["answer"] != "approved":
            outcome = out["not_approved"] = not_approved(ctx, run, candidate, evaluation, response)
        else:
            outcome = out["promote"] = promote(ctx, run, candidate, evaluation, approval=response)
    out["record"] = record(ctx, run, guard=out["guard"], check=out["check"], decision=out["decision"],
                           candidate=candidate, evaluation=evaluation, outcome=outcome, shadow=out["shadow"],
                           shadow_outcome=shadow_outcome)
    return out


# ---- scoring ------------------------------------------------------------------------------------


def score(ctx: Context, run: RunInfo) -> dict[str, Any]:
    """Score every row stored since the champion was promoted and not scored yet, with the
    champion: the version read once, and that version's model loaded (a promotion meanwhile cannot
    file its predictions under the old one). Rows are read ``score_chunk_rows`` at a time; a row no model can score (a non-numeric or
    infinite value) is quarantined with its reason instead of failing every row beside it."""
    from ml.validation import row_problems

    config = ctx.config
    champion = champion_info(ctx)
    if champion is None:
        return {"scored": 0, "reason": "no champion yet"}
    version = champion.version
    # Only rows that arrived after it became champion are served by it: rows stored before (when
    # there was no champion, or before the score DAG ran) include its own training and holdout rows,
    # and predictions there would pass for production performance (the served baseline, the guard).
    after = champion.promoted_at
    chunk = ctx.settings.score_chunk_rows
    if run.param("dry_run", False):
        rows = ctx.store.load(config.name, config.feature_names, unscored_only=True, ts_after=after)
        bad = row_problems(rows, config).notna()
        return {"scored": 0, "would_score": int((~bad).sum()), "would_quarantine": int(bad.sum()),
                "champion": version, "reason": "dry run"}
    model = shadow_model = None
    scored = quarantined = shadowed = 0
    pending = shadow_challenger(ctx)
    while True:
        rows = ctx.store.load(config.name, config.feature_names, unscored_only=True, ts_after=after, limit=chunk)
        if rows.empty:
            break
        problems = row_problems(rows, config)
        if problems.notna().any():
            bad = rows.loc[problems.notna(), "row_id"].tolist()
            ctx.store.quarantine(config.name, ids=bad, actor="driftline-score",
                                 reason=f"cannot be scored: {problems.dropna().iloc[0]}"
                                        + (f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""))
            quarantined += len(bad)
            log.warning("quarantined %s row(s) no model can score, e.g. %s: %s", len(bad), bad[0],
                        problems.dropna().iloc[0])
            rows = rows[problems.isna()]
            if rows.empty:
                continue
        rows = validate_window(rows, config, window="scoring batch")
        model = model or ctx.registry.load_model(version, serving=True)
        prediction, scores = predict(config, model, rows)
        out = pd.DataFrame({"row_id": rows["row_id"], "prediction": list(prediction)})
        if scores is not None:
            out["score"] = scores
        if pending is not None:
            # Before the champion's write: a retry after a failure in between re-scores these rows,
            # and their shadow predictions, first written, stay.
            shadow_model, count = _score_in_shadow(ctx, pending, shadow_model, rows)
            shadowed += count
        if not ctx.store.record_predictions(config.name, out, version, rows["ts"].max().to_pydatetime()):
            raise RuntimeError(f"{config.name}: scoring wrote none of {len(out)} predictions (rows gone meanwhile?)")
        scored += len(out)
    if not scored and not quarantined:
        return {"scored": 0, "champion": version, "reason": "nothing new to score"}
    log.info("scored %s rows with v%s (%s quarantined)", scored, version, quarantined)
    result = {"scored": scored, "champion": version}
    if quarantined:
        result["quarantined"] = quarantined
    if pending is not None:
        result.update(challenger=pending.version, shadowed=shadowed)
    return result


# ---- the shadow gate ----------------------------------------------------------------------------


def shadow_challenger(ctx: Context) -> Any:
    """The ``challenger`` the shadow gate has yet to judge (a :class:`ml.registry.VersionInfo`), or None:
    a version trained for ``promotion.gate: shadow`` whose verdict is still pending."""
    if ctx.config.promotion.gate != "shadow":
        return None
    version = ctx.registry.version_for(reg.CHALLENGER)
    if version is None:
        return None
    info = ctx.registry.info(version)
    return info if info.tag("gate") == "shadow" and info.tag("verdict") == "pending" else None


def _score_in_shadow(ctx: Context, pending: Any, model: Any, rows: pd.DataFrame) -> tuple[Any, int]:
    """The challenger's predictions on the rows of this scoring page it could not have trained on
    (after its data time), stored beside the champion's. Returns the loaded model and how many
    predictions were new."""
    config = ctx.config
    fresh = rows[rows["ts"] > _time(pending.tag("data_time"))]
    if fresh.empty:
        return model, 0
    model = model or ctx.registry.load_model(pending.version)  # the lineage check: Driftline registered it
    prediction, scores = predict(config, model, fresh)
    out = pd.DataFrame({"row_id": fresh["row_id"], "prediction": list(prediction)})
    if scores is not None:
        out["score"] = scores
    return model, ctx.store.record_shadow_predictions(config.name, out, pending.version,
                                                      fresh["ts"].max().to_pydatetime())


def _into_shadow(ctx: Context, run: RunInfo, candidate: dict[str, Any]) -> dict[str, Any]:
    """The evaluation step for a shadow-gated candidate: no verdict yet. Its page and tags say it
    waits in shadow, and for how many labelled rows."""
    config, version = ctx.config, int(candidate["version"])
    champion = champion_info(ctx)
    need = config.promotion.min_shadow_rows
    line = (f"pending: v{version} scores in shadow beside champion v{champion.version if champion else '-'}; the "
            f"gate judges both once {need} of the rows they both score are labelled")
    window = candidate["window"]
    ctx.registry.describe(version, "\n".join([
        f"**{config.name} v{version} in shadow**", "",
        "### Why this version exists",
        f"- **Trigger:** `{candidate['trigger']}`",
        *[f"- {reason}" for reason in candidate["reasons"]],
        (f"- **Trained on:** {window['rows']} rows, {window['start']} .. {window['end']} (every labelled row: "
         "the shadow gate gives up no holdout)"),
        "", "### Champion vs challenger", line,
        f"\nConfig: `{Path(config.source or '').name}` · Airflow run: `{run.run_id}`",
    ]))
    ctx.registry.set_tags(version, {"eval_verdict": "pending", "compared_with": champion.version if champion else ""})
    log.info("evaluation: %s", line)
    return {"verdict": "pending", "summary": line, "reasons": [line], "notes": [], "challenger_version": version,
            "champion_version": champion.version if champion else None, "links": candidate.get("links", {})}


def evaluate_shadow(ctx: Context, run: RunInfo) -> dict[str, Any]:
    """The shadow gate: the pending challenger against the champion on the rows both scored, once
    ``promotion.min_shadow_rows`` of them are labelled, paired, by the same rule as the holdout gate.
    The rows are those the champion answered with the challenger in shadow and, with
    ``serving.canary_fraction``, those the challenger answered as the canary with the champion's
    prediction stored beside (:func:`paired_rows`). Returns ``status``: "off" (holdout gate), "none"
    (no challenger in shadow), "waiting" (too few labelled rows yet) or "evaluated" (with
    ``candidate`` and ``evaluation`` for the promote or reject step; ``candidate["canary"]`` when
    canary rows were among those judged: the reject step then records a canary abort)."""
    config = ctx.config
    if config.promotion.gate != "shadow":
        return {"status": "off"}
    pending = shadow_challenger(ctx)
    if pending is None:
        return {"status": "none", "summary": "no challenger in shadow"}
    version, need = pending.version, config.promotion.min_shadow_rows
    champion = champion_info(ctx)
    if champion is None:  # fail closed: nothing to compare with (a champion lost outside Driftline)
        return {"status": "waiting", "version": version, "rows": 0, "need": need,
                "summary": f"challenger v{version} in shadow, but there is no champion to compare it with"}
    as_of = resolve_as_of(ctx, run)
    rows = paired_rows(ctx, version, champion.version, as_of)
    labelled = rows[rows["label"].notna()]
    canary_rows = int((labelled["answered_by"] == version).sum())
    if len(labelled) < need:
        line = (f"challenger v{version} in shadow beside champion v{champion.version}: {len(labelled)}/{need} of the "
                f"{len(rows)} rows both scored are labelled")
        if canary_rows:
            line += f" ({canary_rows} of them answered by v{version} as the canary)"
        log.info("shadow gate: %s", line)
        return {"status": "waiting", "version": version, "champion": champion.version, "rows": len(labelled),
                "shadowed": len(rows), "need": need, "summary": line}
    labelled = validate_window(labelled, config, window="shadow", require_labels=True)
    result = _gate(config, labelled["label"], (labelled["challenger_prediction"].to_numpy(),
                                               _scores(labelled, "challenger_score")),
                   (labelled["champion_prediction"].to_numpy(), _scores(labelled, "champion_score")),
                   version, champion.version)
    # Its data time is now: a promotion's probation (the guard, scoring) starts from this run.
    candidate = {**_candidate_of(ctx, pending), "as_of": as_of.isoformat(), "force": False}
    span = f"{labelled['ts'].min():%Y-%m-%d %H:%M} .. {labelled['ts'].max():%Y-%m-%d %H:%M}"
    if canary_rows:
        candidate["canary"] = {"fraction": config.serving.canary_fraction, "rows": canary_rows,
                               "paired_rows": len(labelled), "champion": champion.version}
        evaluated_on = (f"{len(labelled)} labelled rows both scored beside champion v{champion.version}: "
                        f"{canary_rows} answered by v{version} as the canary (serving.canary_fraction "
                        f"{config.serving.canary_fraction:g}), {len(labelled) - canary_rows} by the champion with "
                        f"v{version} in shadow, {span}")
    else:
        evaluated_on = f"{len(labelled)} labelled rows scored in shadow beside champion v{champion.version}, {span}"
    evaluation = _judged(ctx, run, candidate, result, evaluated_on, [], champion)
    return {"status": "evaluated", "version": version, "rows": len(labelled), "candidate": candidate,
            "evaluation": evaluation, "summary": evaluation["summary"]}


def paired_rows(ctx: Context, challenger: int, champion: int, as_of: datetime) -> pd.DataFrame:
    """Every stored row both versions scored, labels known at ``as_of``, as :meth:`RowStore.load`
    gives rows plus ``champion_prediction`` / ``champion_score``, ``challenger_prediction`` /
    ``challenger_score`` and ``answered_by`` (the version whose answer the row was: its
    ``model_version``). Two kinds, one table: a row the champion answered carries the challenger's
    shadow prediction (``serving.shadow``, the score step); a canary row the challenger answered
    carries the champion's (``serving.canary_fraction``), i.e. the same shadow table with the two
    versions' roles swapped, so one query shape finds both."""
    config = ctx.config
    shadowed = ctx.store.load_shadow(config.name, config.feature_names, challenger, champion=champion,
                                     labelled_until=as_of)
    canary = ctx.store.load_shadow(config.name, config.feature_names, champion, champion=challenger,
                                   labelled_until=as_of)
    mine, theirs = ("prediction", "score"), ("shadow_prediction", "shadow_score")
    parts = []
    for frame, champion_cols, challenger_cols, by in ((shadowed, mine, theirs, champion),
                                                      (canary, theirs, mine, challenger)):
        part = frame.drop(columns=[*mine, *theirs])
        part["champion_prediction"], part["champion_score"] = frame[champion_cols[0]], frame[champion_cols[1]]
        part["challenger_prediction"], part["challenger_score"] = frame[challenger_cols[0]], frame[challenger_cols[1]]
        part["answered_by"] = by
        parts.append(part)
    parts = [part for part in parts if len(part)] or parts[:1]  # concat warns on empty frames (dtypes)
    rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return rows.sort_values(["ts", "row_id"], kind="stable").reset_index(drop=True)


def _shadow_record(shadow: dict | None, outcome: dict | None, summary: dict[str, Any],
                   evaluation: dict | None) -> dict[str, Any]:
    """The shadow gate's part of the run's audit entry; a run whose only move was the shadow gate's
    reads as that move."""
    shadow = shadow or {}
    out: dict[str, Any] = {"shadow": shadow.get("summary"), "shadow_version": shadow.get("version"),
                           "shadow_action": (outcome or {}).get("action")}
    if (evaluation or {}).get("verdict") == "pending" and summary["action"] == "skipped":
        out["action"] = "shadow"  # the run's candidate went into shadow
    elif outcome is not None and summary["action"] == "skipped":
        out["action"] = outcome["action"]
    return out
