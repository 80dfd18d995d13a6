"""Driftline's DAGs, generated for every model YAML under ``models/`` (or ``DRIFTLINE_MODELS_DIR``).

Per model ``<m>``:
- ``<m>_continuous_training``: guard -> validate -> drift check -> decide -> retrain? -> evaluate -> promote/reject -> record
- ``<m>_rollback``: by hand; give the champion alias back to the previous (or a named) version
- ``<m>_score``: batch-score new rows with ``models:/<m>@champion``
- ``<m>_new_labels``: announce that labelled rows arrived; its Asset event starts continuous training

Every task body is one call into ``ml.loop``: this file only wires. A bad model YAML fails here, at
parse time, with the file, field and problem in the DAG import error.
"""

from __future__ import annotations

import os
from datetime import timedelta
from functools import cache

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    TriggerRule,
    dag,
    get_current_context,
    task,
)

from driftline import events
from driftline.lazy import lazy_import
from ml import events as messages
from ml import links
from ml.config import ModelConfig, load_all
from ml.settings import get_settings

# The DAG processor re-parses this file every 30 s and every task process parses it again: leave
# ml.loop (pandas, scikit-learn, MLflow) to the first task that calls into it.
loop = lazy_import("ml.loop")

# Steps that are safe to retry (idempotent by run id); a worker lost mid-step is retried.
RETRIES = int(os.environ.get("DRIFTLINE_TASK_RETRIES", "2"))
RETRY_DELAY = timedelta(seconds=int(os.environ.get("DRIFTLINE_RETRY_DELAY_SECONDS", "10")))
JOIN = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS


@cache  # one object per model: the schedule and the outlet must be the same asset (with its watchers)
def new_labels_asset(model: str) -> Asset:
    # With Redis configured (DRIFTLINE_REDIS_URL), a message on the model's channel is an asset event
    # too: the triggerer's watcher starts the run, no polling, no REST call.
    return Asset(messages.asset_name(model), uri=f"driftline://{model}/new-labels", group="driftline",
                 watchers=events.new_labels_watchers(model))


def _run_info() -> loop.RunInfo:
    context = get_current_context()
    dag_run = context["dag_run"]
    return loop.RunInfo(
        run_id=f"{dag_run.dag_id}/{dag_run.run_id}",
        actor=dag_run.triggering_user_name or str(dag_run.run_type),
        params=dict(context["params"]),
    )


def _published(result: dict) -> dict:
    """Publish the step's MLflow links where the Driftline plugin's task-instance buttons read them."""
    ti = get_current_context()["ti"]
    for kind, url in (result.get("links") or {}).items():
        ti.xcom_push(key=links.xcom_key(kind), value=url)
    return result


def _xcom(task_id: str, key: str = "return_value"):
    return get_current_context()["ti"].xcom_pull(task_ids=task_id, key=key)


def _dag_defaults(cfg: ModelConfig, suffix: str) -> dict:
    """What every Driftline DAG shares: id, tags, owner, retries; no catch-up; one run at a time (a
    model never has two promotions or rollbacks racing)."""
    return {
        "dag_id": f"{cfg.name}_{suffix}",
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["driftline", cfg.name],
        "default_args": {"owner": "driftline", "retries": RETRIES, "retry_delay": RETRY_DELAY},
    }


CT_DOC = """\
### Continuous training: `{name}`

Driven by **`{source}`**. Runs {schedule}, when the `{asset}` asset gets an event (new labelled
data), or by hand (**Trigger** with the form below).

1. **guard_champion** — is the champion worse than the previous one on the rows it served? Then
   **rollback_champion** gives the alias back (allowed drop {allowed_drop}); else **keep_champion**.
2. **validate_windows** — current and reference windows: columns, types, nulls, labels. A bad batch stops the run here.
3. **check_drift** — Evidently drift of current vs the champion's training data, and the live
   `{metric}` on newly labelled rows. The HTML report is logged to MLflow.
4. **decide** — the branch taken says why:
   `retrain_on_threshold` (drift share ≥ {drift_share}, metric floor or relative drop),
   `retrain_on_schedule` (champion's data older than {max_age}), `retrain_on_event` (new labels announced),
   `retrain_on_demand` (a person asked), or `skip_retraining`.
5. **train_candidate** — {strategy} training, registered as the `challenger`.
6. **evaluate_candidate** — champion and challenger on the newest labelled holdout; paired bootstrap.
7. **gate** — `promote` (alias `champion`, stage Production) or `reject` (champion stays).
8. **record** — one audit entry: what drifted, what was decided, who is champion.
"""


def build_continuous_training(cfg: ModelConfig):
    asset = new_labels_asset(cfg.name)
    if cfg.triggers.schedule:
        schedule = AssetOrTimeSchedule(timetable=CronTriggerTimetable(cfg.triggers.schedule, timezone="UTC"),
                                       assets=asset)
    else:
        schedule = asset

    @dag(
        **_dag_defaults(cfg, "continuous_training"),
        schedule=schedule,
        doc_md=CT_DOC.format(
            name=cfg.name, source=cfg.source, schedule=f"on `{cfg.triggers.schedule}`" if cfg.triggers.schedule else "",
            asset=asset.name, allowed_drop=cfg.rollback.allowed_drop, metric=cfg.promotion.metric,
            drift_share=cfg.triggers.drift_share, max_age=cfg.triggers.max_model_age, strategy=cfg.training.strategy,
        ),
        params={
            "retrain": Param(False, type="boolean", title="Retrain now",
                             description="Train a candidate now, whatever the automatic rules say (trigger kind "
                                         "'manual'; cooldown and minimum-new-labels rules do not apply)."),
            "force": Param(False, type="boolean", title="Force promotion",
                           description="Promote the candidate even if the evaluation gate rejects it. Needs a "
                                       "reason. The rollback guard still watches it afterwards."),
            "strategy": Param("config", type="string", enum=["config", "full", "incremental"], title="Strategy",
                              description=f"'config' uses the YAML's ({cfg.training.strategy}); 'full' retrains on "
                                          "the training window; 'incremental' warm-starts the champion (partial_fit)."),
            "reason": Param(None, type=["null", "string"], title="Reason",
                            description="Why you trigger this run; recorded on the model version and in the audit log."),
            "dry_run": Param(False, type="boolean", title="Dry run",
                             description="Check and decide, log what would happen, but train and move nothing."),
            "train_until": Param(None, type=["null", "string"], title="Train until (ISO time)",
                                 description="Train on the window ending here instead of the newest data "
                                             "(reproduce or compare an older model). Evaluation still uses the newest holdout."),
            "as_of": Param(None, type=["null", "string"], title="As of (ISO time)",
                           description="Act as of this data time instead of the newest stored row (replays, backfills)."),
        },
    )
    def continuous_training():
        @task.branch(doc_md="Rolls back if the champion is worse than the previous champion on the rows it served.")
        def guard_champion() -> str:
            run = _run_info()
            loop.check_params(run.params)
            result = loop.guard_champion(cfg, run)
            get_current_context()["ti"].xcom_push(key="guard", value=result)
            print(f"guard: {result['action']}: {result.get('reason', '')}")
            return "rollback_champion" if result["action"] == "rollback" else "keep_champion"

        @task(retries=RETRIES, retry_delay=RETRY_DELAY)
        def rollback_champion() -> dict:
            guard = _xcom("guard_champion", "guard")
            run = _run_info()
            return _published(loop.rollback(cfg, loop.RunInfo(run.run_id, "driftline-guard", run.params),
                                            int(guard["target"]), guard["reason"], automatic=True))

        @task
        def keep_champion() -> None:
            """Nothing to do: the champion stays."""

        @task(trigger_rule=JOIN, doc_md="Checks each window before use; a bad batch stops the run here.")
        def validate_windows() -> dict:
            run = _run_info()
            consumed = getattr(get_current_context()["dag_run"], "consumed_asset_events", None) or []
            loop.record_asset_events(cfg, [{"extra": dict(e.extra or {}), "timestamp": e.timestamp} for e in consumed])
            return loop.validate_windows(cfg, run)

        @task(doc_md="Evidently drift report and live metric; logged to MLflow as a drift-check run.")
        def check_drift(_windows: dict) -> dict:
            return _published(loop.check_drift(cfg, _run_info()))

        @task.branch(doc_md="Chooses the branch: threshold, schedule, event, demand, or skip. Logs why.")
        def decide(check: dict) -> str:
            decision = loop.decide(cfg, _run_info(), check)
            get_current_context()["ti"].xcom_push(key="decision", value=decision)
            print(f"decision: {decision['summary']}")
            return decision["branch"]

        branches = {
            name: task(task_id=name, doc_md=f"Branch marker: {why}.")(lambda: None)()
            for name, why in [
                ("retrain_on_threshold", "a drift or performance threshold was crossed"),
                ("retrain_on_schedule", "the champion is older than max_model_age (or there is none)"),
                ("retrain_on_event", "new labelled data was announced"),
                ("retrain_on_demand", "a person asked"),
                ("skip_retraining", "no rule fired, or it was held back by cooldown / minimum labels"),
            ]
        }

        # Upstream are only the four retrain markers: a data dependency on check_drift would let the
        # join rule run training after skip_retraining too.
        @task(trigger_rule=JOIN, retries=RETRIES, retry_delay=RETRY_DELAY,
              doc_md=f"Trains a candidate ({cfg.training.strategy} by default), logs it to MLflow with its data "
                     "window, config and drift report, and registers it as the `challenger`. Links: MLflow run, "
                     "model version, drift report (Details tab).")
        def train_candidate() -> dict:
            return _published(loop.train_candidate(cfg, _run_info(), _xcom("decide", "decision"), _xcom("check_drift")))

        @task(retries=RETRIES, retry_delay=RETRY_DELAY,
              doc_md="Scores champion and challenger on the newest labelled holdout neither trained on; writes the "
                     "comparison table into the version description and the plot into the run.")
        def evaluate_candidate(candidate: dict) -> dict:
            return _published(loop.evaluate_candidate(cfg, _run_info(), candidate))

        @task.branch(doc_md="`promote` if the floor, minimum improvement and significance gates pass (or a person "
                            "forced it), else `reject`.")
        def gate(evaluation: dict) -> str:
            outcome = loop.choose_outcome(evaluation, _xcom("decide", "decision"))
            print(f"gate: {evaluation['summary']} -> {outcome}")
            return outcome

        @task(retries=RETRIES, retry_delay=RETRY_DELAY,
              doc_md="Moves `champion` to the candidate (old one becomes `previous-champion`, stage Archived).")
        def promote(candidate: dict, evaluation: dict) -> dict:
            return _published(loop.promote(cfg, _run_info(), candidate, evaluation, _xcom("decide", "decision")))

        @task(retries=RETRIES, retry_delay=RETRY_DELAY,
              doc_md="Keeps the champion; tags the candidate `rejected` with the gate's reasons, stage Archived.")
        def reject(candidate: dict, evaluation: dict) -> dict:
            return _published(loop.reject(cfg, _run_info(), candidate, evaluation))

        @task(trigger_rule=JOIN, doc_md="One audit-log entry for the run: drift, decision, registry move, champion.")
        def record() -> dict:
            outcome = _xcom("promote") or _xcom("reject")
            return loop.record(
                cfg, _run_info(), guard=_xcom("guard_champion", "guard"), check=_xcom("check_drift"),
                decision=_xcom("decide", "decision"), candidate=_xcom("train_candidate"),
                evaluation=_xcom("evaluate_candidate"), outcome=outcome,
            )

        guard = guard_champion()
        windows = validate_windows()
        guard >> [rollback_champion(), keep_champion()] >> windows
        check = check_drift(windows)
        decision = decide(check)
        candidate = train_candidate()
        for name, marker in branches.items():
            decision >> marker
            if name != "skip_retraining":
                marker >> candidate
        evaluation = evaluate_candidate(candidate)
        outcome = gate(evaluation)
        promoted, rejected = promote(candidate, evaluation), reject(candidate, evaluation)
        outcome >> [promoted, rejected]
        [promoted, rejected, branches["skip_retraining"]] >> record()

    return continuous_training()


def build_rollback(cfg: ModelConfig):
    @dag(
        **_dag_defaults(cfg, "rollback"),
        schedule=None,
        doc_md=f"""\
### Roll back `{cfg.name}` by hand

Gives the `champion` alias back to the **previous champion** (alias `previous-champion`) or to a
version you name. The demoted version is tagged `rolled_back` with your reason and name; the stage
mirror follows (Production / Archived). Config: `{cfg.source}`.
""",
        params={
            "target": Param("previous", type="string", pattern=r"^(previous|v?[0-9]+)$", title="Roll back to",
                            description="'previous' (the version before the current champion) or a version number."),
            "reason": Param("", type="string", minLength=3, title="Reason",
                            description="Why: recorded on the demoted version and in the audit log."),
            "dry_run": Param(False, type="boolean", title="Dry run",
                             description="Resolve and report the target, move nothing."),
        },
    )
    def rollback():
        @task(doc_md="Resolves 'previous' or a version number to one existing version; refuses unknown ones.")
        def resolve_target() -> int:
            params = get_current_context()["params"]
            return loop.resolve_rollback_target(cfg, params["target"])

        @task(retries=RETRIES, retry_delay=RETRY_DELAY)
        def roll_back(version: int) -> dict:
            run = _run_info()
            return _published(loop.rollback(cfg, run, version, run.params["reason"], automatic=False))

        roll_back(resolve_target())

    return rollback()


def build_score(cfg: ModelConfig):
    @dag(
        **_dag_defaults(cfg, "score"),
        schedule=None,
        doc_md=f"Batch-scores every stored `{cfg.name}` row without a prediction with "
               f"`models:/{cfg.name}@champion` and writes the predictions back: the next drift check reads them.",
        params={
            "reason": Param(None, type=["null", "string"], title="Reason",
                            description="Why you score now (kept with the run)."),
            "dry_run": Param(False, type="boolean", title="Dry run",
                             description="Count and validate the rows that would be scored; write nothing."),
        },
    )
    def score():
        @task(retries=RETRIES, retry_delay=RETRY_DELAY)
        def score_new_rows() -> dict:
            return loop.score(cfg, _run_info())

        score_new_rows()

    return score()


def build_new_labels(cfg: ModelConfig):
    asset = new_labels_asset(cfg.name)

    @dag(
        **_dag_defaults(cfg, "new_labels"),
        schedule=None,
        doc_md=f"Announces that labelled rows for `{cfg.name}` arrived: records the event and updates the "
               f"`{asset.name}` asset, which starts `{cfg.name}_continuous_training`.",
        params={
            "rows": Param(1, type="integer", minimum=1, title="Labelled rows", description="How many rows were labelled."),
            "key": Param(None, type=["null", "string"], title="Event key",
                         description="Idempotency key: the same key announced twice counts once."),
        },
    )
    def new_labels():
        @task(outlets=[asset])
        def announce() -> dict:
            context = get_current_context()
            run = _run_info()
            message = loop.announce_new_labels(cfg, run, run.params["rows"], run.params["key"])
            context["outlet_events"][asset].extra = message
            return message

        announce()

    return new_labels()


for _cfg in load_all(get_settings().models_dir):
    for _build in (build_continuous_training, build_rollback, build_score, build_new_labels):
        _build(_cfg)
