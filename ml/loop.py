"""The continuous-training loop, one plain function per DAG task.

DAG files only wire these together; each takes the model config, a :class:`RunInfo` (run id, who
asked, the run's params) and the small dicts earlier steps returned, and returns a small JSON-ready
dict (it travels as an Airflow XCom). Every step reloads what it needs from the store and the
registry, so a retried task sees the world as it is, not as it was.

Time is *data time*: ``as_of`` is the newest stored row (or the ``as_of`` param), and windows, model
age and cooldown are measured against it. A replayed or simulated stream therefore behaves exactly
like a live one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from ml import links
from ml import registry as reg
from ml.config import ModelConfig, format_duration
from ml.settings import Settings, get_settings
from ml.store import Store
from ml.training import DataWindow, data_window, fit_full, fit_incremental, predict
from ml.triggers import Decision, TriggerInputs, drift_onset, drop_reference
from ml.triggers import decide as decide_trigger
from ml.validation import DataValidationError, validate_window

log = logging.getLogger("driftline")

# Fewer rows than this in a training or holdout window and the run stops: a model or a verdict from
# a handful of rows is noise.
MIN_TRAIN_ROWS = 50
MIN_HOLDOUT_ROWS = 30


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    actor: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def param(self, key: str, default: Any = None) -> Any:
        value = self.params.get(key, default)
        return default if value in (None, "") else value


@dataclass
class Context:
    """The side-effect edges one step needs."""

    config: ModelConfig
    settings: Settings
    store: Store
    registry: reg.Registry

    @classmethod
    def open(cls, config: ModelConfig, settings: Settings | None = None) -> Context:
        from ml import tracking

        settings = settings or get_settings()
        store = Store(config.data.store_url or settings.store_url)
        return cls(config, settings, store, reg.Registry(config.name, store, tracking.client(settings)))


def check_params(params: dict[str, Any]) -> None:
    """Hand-trigger input the form cannot check on its own; the first task calls this."""
    if params.get("force") and not str(params.get("reason") or "").strip():
        raise ValueError("param 'force': forcing a promotion needs a 'reason' (it is recorded on the version)")
    for key in ("train_until", "as_of"):
        value = params.get(key)
        if value not in (None, ""):
            try:
                _time(value)
            except (ValueError, TypeError):
                raise ValueError(f"param '{key}': {value!r} is not an ISO date-time (e.g. 2026-01-31T00:00:00Z)") from None


# ---- windows ------------------------------------------------------------------------------------


def _time(value: Any) -> datetime:
    return pd.Timestamp(value).tz_convert("UTC").to_pydatetime() if pd.Timestamp(value).tzinfo else (
        pd.Timestamp(value).tz_localize("UTC").to_pydatetime()
    )


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


def load_reference(ctx: Context, as_of: datetime, champion: ChampionInfo | None) -> pd.DataFrame:
    """The champion's own training rows (what changed since it learned?), else the span before
    the current window."""
    cfg = ctx.config
    if cfg.windows.reference == "champion_training" and champion and champion.data_start and champion.data_end:
        start, end = champion.data_start - timedelta(microseconds=1), champion.data_end
    else:
        span = cfg.windows.reference if isinstance(cfg.windows.reference, timedelta) else cfg.windows.training
        end = as_of - cfg.windows.current
        start = end - span
    frame = ctx.store.load(cfg.name, cfg.feature_names, ts_after=start, ts_until=end)
    return validate_window(frame, cfg, window="reference")


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


def guard_champion(config: ModelConfig, run: RunInfo) -> dict[str, Any]:
    """Compare the champion with the previous champion on the rows the champion served since its
    promotion, once enough of them are labelled. Returns ``action`` "rollback" or "keep"."""
    ctx = Context.open(config)
    champion = champion_info(ctx)
    if champion is None:
        return {"action": "keep", "reason": "no champion yet"}
    previous = champion.previous
    if previous is None or not config.rollback.auto:
        why = "no previous champion" if previous is None else "automatic rollback is off"
        return {"action": "keep", "champion": champion.version, "reason": why}
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
    }


def guard_verdict(config: ModelConfig, live: float, before: float) -> str:
    """"rollback" when the champion's metric is worse than its predecessor's on the same rows by
    more than ``rollback.allowed_drop``, else "keep". Pure: the replay (ml.replay) calls it too."""
    worse_by = (before - live) if config.greater_is_better else (live - before)
    return "rollback" if worse_by > config.rollback.allowed_drop else "keep"


def _scores(rows: pd.DataFrame) -> Any:
    score = rows["score"]
    return None if score.isna().any() else score.to_numpy()


def rollback(config: ModelConfig, run: RunInfo, target: str | int, reason: str, *, automatic: bool) -> dict[str, Any]:
    ctx = Context.open(config)
    version = ctx.registry.resolve_rollback_target(target) if not isinstance(target, int) else target
    if run.param("dry_run", False):
        return {"action": "dry_run", "champion": ctx.registry.champion(), "would_restore": version}
    as_of = ctx.store.latest_ts(config.name)
    result = ctx.registry.rollback(
        version, run_id=run.run_id, actor=run.actor, reason=reason, automatic=automatic
    )
    # The restored champion starts a new probation: the guard judges it on rows from now on.
    ctx.registry.set_tags(version, {"promoted_at": (as_of or datetime.now().astimezone()).isoformat()})
    log.info("rollback: v%s -> v%s (%s)", result.get("from_version"), version, reason)
    return {**result, "links": _version_links(ctx, version)}


def resolve_rollback_target(config: ModelConfig, target: str) -> int:
    return Context.open(config).registry.resolve_rollback_target(target)


# ---- validate, check drift, decide --------------------------------------------------------------


def validate_windows(config: ModelConfig, run: RunInfo) -> dict[str, Any]:
    """Check the windows the drift step reads; labelled rows are checked by the steps that use them."""
    ctx = Context.open(config)
    as_of = resolve_as_of(ctx, run)
    champion = champion_info(ctx)
    current = load_current(ctx, as_of)
    reference = load_reference(ctx, as_of, champion)
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


def check_drift(config: ModelConfig, run: RunInfo, *, keep_report: bool = True) -> dict[str, Any]:
    """Evidently drift of current vs reference, and the champion's live metric on newly labelled
    rows compared with its own evaluation. Logs a drift-check run to MLflow with the HTML report."""
    from ml.drift import compute_drift
    from ml.evaluation import compute_metric

    ctx = Context.open(config)
    as_of = resolve_as_of(ctx, run)
    champion = champion_info(ctx)
    current = load_current(ctx, as_of)
    reference = load_reference(ctx, as_of, champion)
    report_path = ctx.settings.reports_dir / config.name / _safe(run.run_id) / "drift.html" if keep_report else None
    drift = compute_drift(
        reference, current, config.features,
        num_method=config.triggers.num_method, cat_method=config.triggers.cat_method,
        prediction_column="score" if config.triggers.prediction_drift else None,
        report_path=report_path,
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
    performance = {
        "metric": config.promotion.metric,
        "live": live,
        "rows": len(fresh),
        "champion_metric": champion.metric if champion else None,
        "champion": champion.version if champion else None,
        "served_baseline": baseline,
        "served_baseline_rows": baseline_rows,
    }
    experiment, check_run = _log_check(ctx, run, as_of, drift, performance)
    base = ctx.settings.mlflow_ui_url
    check_links = {"mlflow_run": links.run_url(base, experiment, check_run)}
    if report_path:
        check_links["drift_report"] = links.artifact_url(base, experiment, check_run, "drift/drift.html")
    log.info("drift check as of %s: %s; live %s=%s on %s rows", as_of.isoformat(), drift.summary(),
             performance["metric"], _fmt(live), performance["rows"])
    return {
        "as_of": as_of.isoformat(),
        "drift": drift.to_dict(),
        "performance": performance,
        "report_path": str(report_path) if report_path else None,
        "mlflow_run_id": check_run,
        "links": check_links,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _log_check(
    ctx: Context, run: RunInfo, as_of: datetime, drift: Any, performance: dict[str, Any]
) -> tuple[str, str]:
    """Returns (experiment id, run id) of the drift-check run."""
    import mlflow

    from ml import tracking

    experiment = tracking.ensure_experiment(ctx.config.name, ctx.settings)
    with mlflow.start_run(experiment_id=experiment, run_name=f"drift check {as_of:%Y-%m-%d %H:%M}") as active:
        mlflow.set_tags({"driftline.kind": "drift_check", "driftline.dag_run_id": run.run_id,
                         "driftline.as_of": as_of.isoformat(), "driftline.summary": drift.summary()[:4900]})
        metrics = {"drift_share": drift.drift_share, "drifted_features": len(drift.drifted_features)}
        metrics.update({f"drift_score.{f.name}": f.score for f in drift.features})
        if performance["live"] is not None:
            metrics[f"live_{performance['metric']}"] = performance["live"]
        mlflow.log_metrics(metrics)
        mlflow.log_dict(drift.to_dict(), "drift/drift.json")
        if drift.report_path:
            mlflow.log_artifact(drift.report_path, "drift")
        return experiment, active.info.run_id


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
    onset = _drift_onset(ctx, as_of, drift.drift_share)
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
    )


def _drift_onset(ctx: Context, as_of: datetime, share: float) -> datetime | None:
    """Earlier checks come from the audit log's run entries (each records its as_of and drift share)."""
    current = ctx.config.windows.current
    history = [
        (_time(e["details"]["as_of"]) - current, e["details"].get("drift_share"))
        for e in ctx.store.audit_log(ctx.config.name, ["run"])
        if (e["details"] or {}).get("as_of") and _time(e["details"]["as_of"]) < as_of
    ]
    history.sort(key=lambda item: item[0])
    return drift_onset(history, (as_of - current, share), ctx.config.triggers.drift_share)


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


def record_asset_events(config: ModelConfig, events: list[dict[str, Any]]) -> int:
    """Store the new-labels events a run consumed (idempotent per event key). Each item is
    ``{"extra": <asset event extra>, "timestamp": <when Airflow recorded it>}``; the extra may come
    from the new-labels DAG, Airflow's REST API or the Redis watcher (see :mod:`ml.events`). A message
    that cannot be read stops the run with the reason."""
    from ml.events import from_asset_event

    store = Context.open(config).store
    added = 0
    for event in events:
        message = from_asset_event(event.get("extra"), config.name, timestamp=event.get("timestamp"))
        new = store.add_event(config.name, "new_labels", message["key"], message["rows"],
                              _time(message["occurred_at"]), message)
        added += new
        log.info("new-labels event %s via %s: %s rows (%s)", message["key"], message["via"], message["rows"],
                 "recorded" if new else "already recorded")
    return added


def announce_new_labels(config: ModelConfig, run: RunInfo, rows: Any, key: str | None) -> dict[str, Any]:
    """The new-labels DAG's message: checked, recorded, and returned for the asset event's extra."""
    from ml.events import new_labels_message

    message = new_labels_message(config.name, rows, key=key or run.run_id, source=run.actor)
    record_asset_events(config, [{"extra": message}])
    return message


def decide(config: ModelConfig, run: RunInfo, check: dict[str, Any]) -> dict[str, Any]:
    ctx = Context.open(config)
    as_of = _time(check["as_of"])
    facts = gather_facts(ctx, run, check, as_of)
    decision = decide_trigger(config.triggers, facts)
    if decision.retrain and run.param("dry_run", False):
        decision = Decision(
            "none", decision.reasons, held_back=(f"dry run: would retrain ({decision.kind})",), force=decision.force
        )
    if decision.retrain:
        # The retrain consumes the announced labels, whatever kind won.
        ctx.store.consume_events([e["id"] for e in ctx.store.pending_events(config.name)], run.run_id)
    line = decision.summary()
    log.info("decision: %s", line)
    return {**decision.to_dict(), "summary": line, "as_of": as_of.isoformat(),
            "model_age": format_duration(facts.model_age) if facts.model_age else None,
            "new_labels": facts.new_labels}


# ---- train, evaluate, promote or reject --------------------------------------------------------


def training_start(config: ModelConfig, holdout_start: datetime, train_after: str | None) -> tuple[datetime, list[str]]:
    """Start (exclusive) of a full retrain's window: ``windows.training`` before the holdout, or the
    drift onset ``train_after`` when that is later (answering a drift episode: learn only from rows
    after it began). Returns the start and a note when it was clipped. Pure: ml.replay calls it too."""
    after = holdout_start - config.windows.training
    if train_after:
        onset = _time(train_after)
        if onset > after:
            return onset, [f"training window clipped to the drift onset {onset:%Y-%m-%d %H:%M}"]
    return after, []


def train_candidate(config: ModelConfig, run: RunInfo, decision: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    """Train, log to MLflow (params, metrics, data window, git commit, config, signature, input
    example) and register as a new version with the ``challenger`` alias. A retried task reuses the
    version its first attempt registered."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from ml import tracking

    ctx = Context.open(config)
    reused = _version_of_run(ctx, run.run_id)
    if reused is not None:
        log.info("train: reusing v%s registered by this run's earlier attempt", reused["version"])
        return reused
    as_of = _time(check["as_of"])
    until = _time(run.param("train_until")) if run.param("train_until") else None
    holdout_start, _ = labelled_split(ctx, as_of, until)
    strategy = run.param("strategy", "config")
    strategy = config.training.strategy if strategy == "config" else strategy
    champion = champion_info(ctx)
    notes = []
    if strategy == "incremental" and champion is None:
        strategy, notes = "full", ["no champion to warm-start: trained in full"]
    if strategy == "incremental":
        after = champion.data_end if champion.data_end else holdout_start - config.windows.training
        train = load_labelled(ctx, after=after, until=holdout_start, known_at=as_of, window="incremental training",
                              min_rows=MIN_TRAIN_ROWS)
        model = fit_incremental(config, ctx.registry.load_model(champion.version), train)
    else:
        after, clipped = training_start(config, holdout_start, None if until else decision.get("train_after"))
        notes += clipped
        train = load_labelled(ctx, after=after, until=holdout_start, known_at=as_of, window="training",
                              min_rows=MIN_TRAIN_ROWS)
        model = fit_full(config, train)
    window = data_window(train, config)
    if strategy == "incremental":
        # The warm-started model also carries everything the champion learned.
        window = DataWindow(window.rows, champion.data_start.isoformat() if champion.data_start else window.start,
                            window.end, window.content_hash)
    experiment = tracking.ensure_experiment(config.name, ctx.settings)
    ctx.registry.ensure_model(_model_description(config), tags={"driftline.config": config.source or ""})
    X = train[config.feature_names]
    pred, score = predict(config, model, train)
    from ml.evaluation import compute_metric

    train_metric = compute_metric(config.promotion.metric, train["label"], pred, score, pos_label=config.positive_label)
    with mlflow.start_run(experiment_id=experiment, run_name=f"candidate {decision['kind']} {as_of:%Y-%m-%d %H:%M}") as active:
        mlflow.set_tags({
            "driftline.kind": "candidate", "driftline.dag_run_id": run.run_id, "driftline.trigger": decision["kind"],
            "driftline.reasons": "; ".join(decision["reasons"])[:4900], "driftline.git_commit": tracking.git_commit(),
            "driftline.strategy": strategy, "mlflow.note.content": decision.get("summary", ""),
        })
        mlflow.log_params({**{f"estimator.{k}": v for k, v in config.estimator.params.items()},
                           "estimator.class": config.estimator.class_path, "strategy": strategy,
                           "window.training": format_duration(config.windows.training),
                           "window.holdout": format_duration(config.windows.holdout),
                           "data.rows": window.rows, "data.start": window.start, "data.end": window.end,
                           "data.hash": window.content_hash})
        mlflow.log_metrics({f"train_{config.promotion.metric}": train_metric, "train_rows": window.rows})
        mlflow.log_dict(config.snapshot(), "config/model_config.json")
        if check.get("report_path") and Path(check["report_path"]).exists():
            mlflow.log_artifact(check["report_path"], "drift")
        mlflow.log_dict(check["drift"], "drift/drift.json")
        # cloudpickle on purpose (skops refuses tree models' types); keep its notice out of task logs.
        logging.getLogger("mlflow.sklearn").setLevel(logging.ERROR)
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(X, pred), input_example=X.head(5),
            serialization_format="cloudpickle", pip_requirements=_pip_requirements(),
        )
        mlflow_run = active.info.run_id
    # Through the client: log_model(registered_model_name=...) prints to stderr, which Airflow logs as ERROR.
    # model_id: a tracking server refuses a models:/m-<id> source without it (a local store does not check).
    version = int(ctx.registry.client.create_model_version(config.name, info.model_uri, run_id=mlflow_run,
                                                           model_id=info.model_id).version)
    tags = {
        "trigger": decision["kind"], "reasons": "; ".join(decision["reasons"]), "dag_run_id": run.run_id,
        "mlflow_run_id": mlflow_run, "strategy": strategy, "git_commit": tracking.git_commit(),
        "data_rows": window.rows, "data_start": window.start, "data_end": window.end, "data_hash": window.content_hash,
        "data_time": as_of.isoformat(), "notes": "; ".join(notes),
    }
    ctx.registry.mark_challenger(version, tags, run_id=run.run_id, actor=run.actor)
    log.info("trained v%s (%s, %s rows %s..%s)", version, strategy, window.rows, window.start, window.end)
    return {"version": version, "mlflow_run_id": mlflow_run, "experiment_id": experiment, "strategy": strategy,
            "window": window.to_dict(), "as_of": as_of.isoformat(), "trigger": decision["kind"],
            "reasons": list(decision["reasons"]), "links": _candidate_links(ctx, experiment, mlflow_run, version)}


def _candidate_links(ctx: Context, experiment: str, mlflow_run: str, version: int) -> dict[str, str]:
    base = ctx.settings.mlflow_ui_url
    return {
        "mlflow_run": links.run_url(base, experiment, mlflow_run),
        "model_version": links.model_version_url(base, ctx.config.name, version),
        "drift_report": links.artifact_url(base, experiment, mlflow_run, "drift/drift.html"),
    }


def _version_of_run(ctx: Context, run_id: str) -> dict[str, Any] | None:
    if not ctx.registry.exists():
        return None
    for info in ctx.registry.versions():
        if info.tag("dag_run_id") == run_id:
            window = {"rows": info.tag("data_rows"), "start": info.tag("data_start"), "end": info.tag("data_end"),
                      "content_hash": info.tag("data_hash")}
            mlflow_run = info.tag("mlflow_run_id")
            experiment = ctx.registry.client.get_run(mlflow_run).info.experiment_id
            return {"version": info.version, "mlflow_run_id": mlflow_run, "experiment_id": experiment,
                    "strategy": info.tag("strategy"), "window": window, "as_of": info.tag("data_time"),
                    "trigger": info.tag("trigger"), "reasons": (info.tag("reasons") or "").split("; "),
                    "links": _candidate_links(ctx, experiment, mlflow_run, info.version)}
    return None


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow's inference imports the model in a subprocess, seconds per candidate.
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "pandas", "numpy", "cloudpickle")]


def _model_description(config: ModelConfig) -> str:
    return (
        f"{config.description.strip()}\n\nManaged by Driftline from `{Path(config.source or '').name}` "
        f"({config.task}; primary metric `{config.promotion.metric}`). Aliases: `champion` serves, "
        f"`challenger` is under evaluation, `previous-champion` is the rollback target."
    )


def evaluate_candidate(config: ModelConfig, run: RunInfo, candidate: dict[str, Any]) -> dict[str, Any]:
    """Champion and challenger on the same newest labelled holdout that neither trained on."""
    from ml.evaluation import evaluate_candidate as gate_candidate

    ctx = Context.open(config)
    as_of = _time(candidate["as_of"])
    # The holdout is always the newest labelled span, also when training was moved into the past.
    start, end = labelled_split(ctx, as_of)
    holdout = load_labelled(ctx, after=start, until=end, known_at=as_of, window="holdout", min_rows=MIN_HOLDOUT_ROWS)
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
    gate = config.promotion
    result = gate_candidate(
        metric=gate.metric, y_true=holdout["label"], challenger_pred=challenger_pred,
        challenger_score=challenger_score, champion_pred=champion_pred, champion_score=champion_score,
        challenger_version=version, champion_version=champion.version if champion else None,
        min_improvement=gate.min_improvement, significance=gate.significance, floor=gate.floor,
        n_resamples=gate.bootstrap_samples, seed=config.training.random_state, pos_label=config.positive_label,
    )
    table = result.table_markdown()
    description = _version_description(config, run, candidate, result, holdout, notes)
    ctx.registry.describe(version, description)
    ctx.registry.set_tags(version, {
        f"eval_{gate.metric}": result.challenger, "eval_champion": result.champion, "eval_improvement": result.improvement,
        "eval_ci_low": result.ci_low, "eval_ci_high": result.ci_high, "eval_rows": result.n_rows,
        "eval_verdict": result.verdict, "compared_with": champion.version if champion else "",
    })
    client = ctx.registry.client
    run_id = candidate["mlflow_run_id"]
    metrics = {f"holdout_{gate.metric}": result.challenger, "holdout_rows": result.n_rows}
    if result.champion is not None:
        metrics.update({f"champion_holdout_{gate.metric}": result.champion, "improvement": result.improvement,
                        "improvement_ci_low": result.ci_low, "improvement_ci_high": result.ci_high})
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    client.log_text(run_id, table, "evaluation/comparison.md")
    _log_evaluation_plot(ctx, run_id, result.to_dict())
    client.set_tag(run_id, "driftline.verdict_suggested", result.verdict)
    log.info("evaluation: %s", result.summary())
    return {**result.to_dict(), "summary": result.summary(), "notes": notes, "links": candidate.get("links", {})}


def _log_evaluation_plot(ctx: Context, run_id: str, evaluation: dict[str, Any]) -> None:
    from ml.plots import evaluation_figure

    history = [
        (_time(e["details"]["as_of"]), float(e["details"]["live_metric"]))
        for e in ctx.store.audit_log(ctx.config.name, ["run"])
        if (e["details"] or {}).get("live_metric") is not None and e["details"].get("as_of")
    ]
    figure = evaluation_figure(evaluation, history, ctx.config.promotion.metric)
    try:
        ctx.registry.client.log_figure(run_id, figure, "evaluation/comparison.png")
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)


def _version_description(config: ModelConfig, run: RunInfo, candidate: dict[str, Any], result: Any,
                         holdout: pd.DataFrame, notes: list[str]) -> str:
    window = candidate["window"]
    lines = [
        "### Why this version exists",
        f"- **Trigger:** `{candidate['trigger']}`",
        *[f"- {reason}" for reason in candidate["reasons"]],
        f"- **Strategy:** {candidate['strategy']}",
        f"- **Trained on:** {window['rows']} rows, {window['start']} .. {window['end']} (hash `{window['content_hash']}`)",
        f"- **Evaluated on:** {len(holdout)} newest labelled rows, {holdout['ts'].min():%Y-%m-%d %H:%M} .. {holdout['ts'].max():%Y-%m-%d %H:%M}",
        "",
        "### Champion vs challenger",
        result.table_markdown(),
    ]
    lines += [f"\n> {note}" for note in notes]
    lines.append(f"\nConfig: `{Path(config.source or '').name}` · Airflow run: `{run.run_id}`")
    return "\n".join(lines)


def choose_outcome(evaluation: dict[str, Any], decision: dict[str, Any]) -> str:
    """"promote" when the gate passed, or when a person forced it; else "reject"."""
    return "promote" if evaluation["verdict"] == "promote" or decision.get("force") else "reject"


def promote(config: ModelConfig, run: RunInfo, candidate: dict[str, Any], evaluation: dict[str, Any],
            decision: dict[str, Any]) -> dict[str, Any]:
    ctx = Context.open(config)
    forced = evaluation["verdict"] != "promote"
    reasons = list(evaluation["reasons"])
    if forced:
        reasons.insert(0, f"forced by {run.actor or 'a person'} past the gate")
    version = int(candidate["version"])
    if forced:
        # The description still shows the gate's verdict; say plainly who overrode it and why.
        current = ctx.registry.client.get_model_version(config.name, str(version)).description or ""
        if "Promoted by force" not in current:
            why = run.param("reason", "no reason given")
            ctx.registry.describe(version, f"> **Promoted by force** by {run.actor or 'a person'}, past the gate: {why}\n\n"
                                           + current)
    result = ctx.registry.promote(version, run_id=run.run_id, actor=run.actor, reasons=reasons,
                                  forced=forced, data_time=_time(candidate["as_of"]))
    if result.get("action") == "rejected":  # a newer version became champion while this one waited
        log.info("v%s not promoted: superseded by v%s", version, result.get("superseded_by"))
    else:
        log.info("promoted v%s (previous champion %s)%s", result["champion"], result["previous_champion"],
                 " [forced]" if forced else "")
    return {**result, "forced": forced, "links": _version_links(ctx, result["champion"])}


def _version_links(ctx: Context, version: int) -> dict[str, str]:
    return {"model_version": links.model_version_url(ctx.settings.mlflow_ui_url, ctx.config.name, version)}


def reject(config: ModelConfig, run: RunInfo, candidate: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    ctx = Context.open(config)
    result = ctx.registry.reject(int(candidate["version"]), run_id=run.run_id, actor=run.actor,
                                 reasons=list(evaluation["reasons"]))
    log.info("rejected v%s; champion stays v%s", candidate["version"], result["champion"])
    return {**result, "links": _version_links(ctx, int(candidate["version"]))}


def record(config: ModelConfig, run: RunInfo, *, guard: dict | None, check: dict | None, decision: dict | None,
           candidate: dict | None, evaluation: dict | None, outcome: dict | None) -> dict[str, Any]:
    """One audit entry per run with what a person asks afterwards: what drifted, what was decided,
    what the registry did, and who is champion now."""
    ctx = Context.open(config)
    drift = (check or {}).get("drift") or {}
    action = "skipped"
    if outcome:
        action = outcome["action"]
    summary = {
        "as_of": (check or {}).get("as_of"),
        "drift_share": drift.get("drift_share"),
        "live_metric": ((check or {}).get("performance") or {}).get("live"),
        "metric": config.promotion.metric,
        "trigger": (decision or {}).get("kind", "none"),
        "reasons": (decision or {}).get("reasons", []),
        "held_back": (decision or {}).get("held_back", []),
        "candidate_version": (candidate or {}).get("version"),
        "evaluation": (evaluation or {}).get("summary"),
        "action": action,
        "guard": (guard or {}).get("action"),
        "guard_reason": (guard or {}).get("reason"),
        "champion_version": ctx.registry.champion(),
        "report_path": (check or {}).get("report_path"),
    }
    ctx.store.audit(config.name, "run", version=summary["champion_version"], actor=run.actor, run_id=run.run_id,
                    details=summary)
    log.info("run %s: trigger=%s action=%s champion=v%s", run.run_id, summary["trigger"], action,
             summary["champion_version"])
    return summary


# ---- scoring ------------------------------------------------------------------------------------


def score(config: ModelConfig, run: RunInfo) -> dict[str, Any]:
    """Batch-score every stored row without a prediction with ``models:/<name>@champion``."""
    ctx = Context.open(config)
    version = ctx.registry.champion()
    if version is None:
        return {"scored": 0, "reason": "no champion yet"}
    rows = ctx.store.load(config.name, config.feature_names, unscored_only=True)
    if rows.empty:
        return {"scored": 0, "champion": version, "reason": "nothing new to score"}
    rows = validate_window(rows, config, window="scoring batch")
    if run.param("dry_run", False):
        return {"scored": 0, "would_score": len(rows), "champion": version, "reason": "dry run"}
    import mlflow.sklearn

    model = mlflow.sklearn.load_model(f"models:/{config.name}@{reg.CHAMPION}")
    prediction, scores = predict(config, model, rows)
    out = pd.DataFrame({"row_id": rows["row_id"], "prediction": list(prediction)})
    if scores is not None:
        out["score"] = scores
    scored_at = rows["ts"].max().to_pydatetime()
    ctx.store.record_predictions(config.name, out, version, scored_at)
    log.info("scored %s rows with v%s", len(out), version)
    return {"scored": len(out), "champion": version}
