"""Driftline's DAGs, generated for every model YAML under ``models/`` (or ``DRIFTLINE_MODELS_DIR``).

Per model ``<m>``:
- ``<m>_continuous_training``: guard -> validate -> drift check -> decide -> retrain? -> evaluate -> promote/reject -> record
- ``<m>_rollback``: by hand; give the champion alias back to the previous (or a named) version
- ``<m>_score``: batch-score new rows with ``models:/<m>@champion``
- ``<m>_new_labels``: announce that labelled rows arrived; its Asset event starts continuous training

Every task body is one call into ``ml.loop`` with the context the task builds: this file only
wires. A bad model YAML is refused at parse time: its DAGs are replaced by ``<file>_config_error``,
whose page and failing task show the file, field and problem; the other models' DAGs stay.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from functools import cache
from pathlib import Path

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Label,
    Param,
    TriggerRule,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException

from driftline import approval as approvals
from driftline import channels, notify
from driftline.lazy import lazy_import
from ml import links, messages
from ml.config import ModelConfig, format_duration, load_models
from ml.settings import get_settings
from ml.triggers import BRANCH_FOR_KIND, BRANCHES

log = logging.getLogger("driftline")

# The DAG processor re-parses this file every 30 s and every task process parses it again: leave
# ml.loop (pandas, scikit-learn, MLflow) to the first task that calls into it.
loop = lazy_import("ml.loop")

# Declared once, for every task: steps are idempotent by run id, so a worker lost mid-step is retried.
RETRIES = int(os.environ.get("DRIFTLINE_TASK_RETRIES", "2"))
RETRY_DELAY = timedelta(seconds=int(os.environ.get("DRIFTLINE_RETRY_DELAY_SECONDS", "10")))
JOIN = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS


@cache  # one object per model: the schedule and the outlet must be the same asset (with its watchers)
def new_labels_asset(model: str) -> Asset:
    # With Redis configured (DRIFTLINE_REDIS_URL), a message on the model's channel is an asset event
    # too: the triggerer's watcher starts the run, no polling, no REST call.
    return Asset(messages.asset_name(model), uri=f"driftline://{model}/new-labels", group="driftline",
                 watchers=channels.new_labels_watchers(model))


def _run_info() -> loop.RunInfo:
    context = get_current_context()
    dag_run = context["dag_run"]
    return loop.RunInfo(
        run_id=f"{dag_run.dag_id}/{dag_run.run_id}",
        actor=dag_run.triggering_user_name or str(dag_run.run_type),
        params=dict(context["params"]),
    )


def _step(cfg: ModelConfig, step, *args, **kwargs):
    """Run one ``ml.loop`` step with this task's context (the store, MLflow), built once here.
    An error that will fail again (bad params, a bad batch, no rollback target) fails the task
    without retries; anything else is retried."""
    try:
        return step(loop.Context.open(cfg), *args, **kwargs)
    except loop.USER_ERRORS as exc:
        raise AirflowFailException(str(exc)) from exc


def _published(result: dict) -> dict:
    """Publish the step's MLflow links where the Driftline plugin's task-instance buttons read them."""
    ti = get_current_context()["ti"]
    for kind, url in (result.get("links") or {}).items():
        ti.xcom_push(key=links.xcom_key(kind), value=url)
    return result


def _pull(task_id: str, key: str = "return_value"):
    return get_current_context()["ti"].xcom_pull(task_ids=task_id, key=key)


def _dag_defaults(cfg: ModelConfig, suffix: str) -> dict:
    """What every Driftline DAG shares: id, tags, owner, retries; no catch-up; one run at a time (a
    model never has two promotions or rollbacks racing)."""
    return {
        "dag_id": f"{cfg.name}_{suffix}",
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["driftline", cfg.name],
        "default_args": {"owner": "driftline", "retries": RETRIES, "retry_delay": RETRY_DELAY,
                         # A task failed for good (not a retry): one alert (ml/alerts.py, driftline/notify.py).
                         "on_failure_callback": notify.on_failure(cfg)},
    }


CT_DOC = """\
### Continuous training: `{name}`

Driven by **`{source}`**. Runs {schedule}, when the `{asset}` asset gets an event (new labelled
data), or by hand (**Trigger** with the form below).

1. **guard_champion** — is the champion worse than the previous one on the rows it served? Then
   **rollback_champion** gives the alias back (allowed drop {allowed_drop}); else **keep_champion**.
2. **validate_windows** — pins the run's data time (`as_of`) and checks the current and reference
   windows: columns, types, nulls, labels. A bad batch stops the run here.
3. **check_drift** — Evidently drift of current vs the champion's training data, and the live
   `{metric}` on newly labelled rows. The HTML report is logged to MLflow.
4. **decide** — the branch taken says why:
{branches}
5. **train_candidate** — {strategy} training, registered as the `challenger`.
6. **evaluate_candidate** — champion and challenger on the newest labelled holdout; paired bootstrap.
7. **gate** — `promote` (alias `champion`, stage Production) or `reject` (champion stays).{approval}
8. **record** — one audit entry: what drifted, what was decided, who is champion.

Thresholds: drift share ≥ {drift_share}; max model age {max_age}.
"""


def build_continuous_training(cfg: ModelConfig):
    asset = new_labels_asset(cfg.name)
    # Only a model that requires approval gets the approval tasks.
    approval = cfg.promotion.approval == "required"
    # Only a model with the shadow gate gets its tasks (judge the challenger in shadow; await_shadow).
    shadow = cfg.promotion.gate == "shadow"
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
            drift_share=cfg.triggers.drift_share,
            max_age=format_duration(cfg.triggers.max_model_age) if cfg.triggers.max_model_age else "none",
            strategy=cfg.training.strategy,
            branches="\n".join(f"   - `{b.task_id}`: {b.when}" for b in BRANCHES),
            approval="" if not approval else (
                "\n   **Approval required:** a candidate that passed waits in `await_approval` for a person "
                "(Browse → Required Actions): Approve → `promote`; Reject, or no answer within "
                f"{format_duration(cfg.promotion.approval_timeout)} → `not_approved`. A forced run is not asked."),
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
            result = _step(cfg, loop.guard_champion, _run_info())
            get_current_context()["ti"].xcom_push(key="guard", value=result)
            return "rollback_champion" if result["action"] == "rollback" else "keep_champion"

        @task(on_success_callback=notify.on_outcome(cfg, "guard_rollback"))
        def rollback_champion(guard: dict) -> dict:
            return _published(_step(cfg, loop.rollback_on_guard, _run_info(), guard))

        @task.branch(trigger_rule=JOIN,
                     doc_md=f"The shadow gate: once {cfg.promotion.min_shadow_rows} of the rows the `challenger` "
                            "scored in shadow beside the champion (or answered as the canary, with the champion's "
                            "answer stored beside) are labelled, both are compared on them (paired bootstrap, as "
                            "the holdout gate) -> `promote_challenger` or `reject_challenger` (a canary's "
                            "rejection aborts it); until then `shadow_waits`.")
        def shadow_gate() -> str:
            result = _step(cfg, loop.evaluate_shadow, _run_info())
            get_current_context()["ti"].xcom_push(key="shadow", value=result)
            if result["status"] != "evaluated":
                return "shadow_waits"
            return f"{loop.choose_outcome(result['evaluation'], False)}_challenger"

        @task(on_success_callback=notify.on_outcome(cfg, "promote"),
              doc_md="The challenger beat the champion on the rows both scored: it becomes `champion`.")
        def promote_challenger() -> dict:
            judged = _pull("shadow_gate", "shadow")
            return _published(_step(cfg, loop.promote, _run_info(), judged["candidate"], judged["evaluation"]))

        @task(on_success_callback=notify.on_outcome(cfg, "reject"),
              doc_md="The challenger did not beat the champion on the rows both scored: tagged `rejected`.")
        def reject_challenger() -> dict:
            judged = _pull("shadow_gate", "shadow")
            return _published(_step(cfg, loop.reject, _run_info(), judged["candidate"], judged["evaluation"]))

        @task(trigger_rule=JOIN, doc_md="Pins the run's as_of and checks each window before use; a bad batch "
                                        "stops the run here.")
        def validate_windows() -> dict:
            consumed = getattr(get_current_context()["dag_run"], "consumed_asset_events", None) or []
            _step(cfg, loop.record_asset_events,
                  [{"extra": dict(e.extra or {}), "timestamp": e.timestamp} for e in consumed])
            return _step(cfg, loop.validate_windows, _run_info())

        @task(doc_md="Evidently drift report and live metric; logged to MLflow as a drift-check run.")
        def check_drift(windows: dict) -> dict:
            return _published(_step(cfg, loop.check_drift, _run_info(), windows))

        @task.branch(doc_md="Chooses the branch: threshold, schedule, event, demand, or skip. Logs why.")
        def decide(check: dict) -> str:
            decision = _step(cfg, loop.decide, _run_info(), check)
            get_current_context()["ti"].xcom_push(key="decision", value=decision)
            return decision["branch"]

        # Upstream are only the retrain markers, and its inputs are pulled: a data dependency on
        # check_drift or decide (both succeeded) would let the join rule run training after
        # skip_retraining too.
        @task(trigger_rule=JOIN,
              doc_md=f"Trains a candidate ({cfg.training.strategy} by default), logs it to MLflow with its data "
                     "window, config and drift report, and registers it as the `challenger`. Links: MLflow run, "
                     "model version, drift report (Details tab).")
        def train_candidate() -> dict:
            return _published(_step(cfg, loop.train_candidate, _run_info(), _pull("decide", "decision"),
                                    _pull("check_drift")))

        @task(doc_md="Scores champion and challenger on the newest labelled holdout neither trained on; writes the "
                     "comparison table into the version description and the plot into the run.")
        def evaluate_candidate(candidate: dict) -> dict:
            return _published(_step(cfg, loop.evaluate_candidate, _run_info(), candidate))

        @task.branch(doc_md="`promote` if the floor, minimum improvement and significance gates pass (or a person "
                            "forced it), else `reject`."
                            + (" With approval required, a passing candidate goes to `await_approval` first (a "
                               "forced one does not: a person asked for it)." if approval else ""))
        def gate(candidate: dict, evaluation: dict) -> str:
            if not approval:
                return loop.choose_outcome(evaluation, candidate["force"])
            route = _step(cfg, loop.route_candidate, _run_info(), candidate, evaluation)
            if "request" in route:  # the approval task's subject and body
                get_current_context()["ti"].xcom_push(key=approvals.REQUEST_KEY, value=route["request"])
            return route["branch"]

        # JOIN: with approval, promote follows the gate (forced) or the approval (approved).
        @task(on_success_callback=notify.on_outcome(cfg, "promote"), trigger_rule=JOIN if approval else "all_success",
              doc_md="Moves `champion` to the candidate (old one becomes `previous-champion`, stage Archived).")
        def promote(candidate: dict, evaluation: dict) -> dict:
            answer = _pull("await_approval", approvals.RESPONSE_KEY) if approval else None
            return _published(_step(cfg, loop.promote, _run_info(), candidate, evaluation, answer))

        @task(on_success_callback=notify.on_outcome(cfg, "reject"),
              doc_md="The candidate passed the gate but a person rejected it, or no one answered within "
                     f"{format_duration(cfg.promotion.approval_timeout)}: tagged `rejected` with the person's reason "
                     "(or the timeout), actor = that person; the champion stays.")
        def not_approved(candidate: dict, evaluation: dict) -> dict:
            answer = _pull("await_approval", approvals.RESPONSE_KEY)
            return _published(_step(cfg, loop.not_approved, _run_info(), candidate, evaluation, answer))

        @task(on_success_callback=notify.on_outcome(cfg, "reject"),
              doc_md="Keeps the champion; tags the candidate `rejected` with the gate's reasons, stage Archived.")
        def reject(candidate: dict, evaluation: dict) -> dict:
            return _published(_step(cfg, loop.reject, _run_info(), candidate, evaluation))

        @task(trigger_rule=JOIN, doc_md="One audit-log entry for the run: drift, decision, registry move, champion.")
        def record(check: dict) -> dict:
            # Pulled, not arguments: guard and decide are branches (a branch skips every direct
            # downstream task it does not choose), and training, evaluation and the move are
            # skipped on the skip branch (an argument from a skipped task cannot be resolved).
            outcome = _pull("promote") or _pull("reject") or (_pull("not_approved") if approval else None)
            judged = (_pull("promote_challenger") or _pull("reject_challenger")) if shadow else None
            return _step(cfg, loop.record, _run_info(), guard=_pull("guard_champion", "guard"), check=check,
                         decision=_pull("decide", "decision"), candidate=_pull("train_candidate"),
                         evaluation=_pull("evaluate_candidate"), outcome=outcome,
                         shadow=_pull("shadow_gate", "shadow") if shadow else None, shadow_outcome=judged)

        guard = guard_champion()
        restore, keep = rollback_champion(guard["guard"]), EmptyOperator(task_id="keep_champion")
        guard >> Label("worse than the previous champion") >> restore
        guard >> Label("keep") >> keep
        windows = validate_windows()
        if shadow:
            judge = shadow_gate()
            [restore, keep] >> judge
            judged = {"promote": promote_challenger(), "reject": reject_challenger(),
                      "wait": EmptyOperator(task_id="shadow_waits", doc_md="No verdict yet (or no challenger).")}
            judge >> Label("challenger better on the shadow rows") >> judged["promote"]
            judge >> Label("not better") >> judged["reject"]
            judge >> Label("waiting for labels") >> judged["wait"]
            list(judged.values()) >> windows
        else:
            [restore, keep] >> windows
        check = check_drift(windows)
        decision = decide(check)
        candidate = train_candidate()
        markers = {b.task_id: EmptyOperator(task_id=b.task_id, doc_md=f"Branch marker: {b.when}.") for b in BRANCHES}
        for branch in BRANCHES:
            decision >> Label(branch.kind) >> markers[branch.task_id]
        skip = markers[BRANCH_FOR_KIND["none"]]
        [marker for task_id, marker in markers.items() if marker is not skip] >> candidate
        evaluation = evaluate_candidate(candidate)
        outcome = gate(candidate, evaluation)
        # With the shadow gate the candidate goes into shadow; a later run's shadow_gate judges it.
        waiting = [EmptyOperator(task_id="await_shadow", doc_md="In shadow beside the champion.")] if shadow else []
        for marker in waiting:
            outcome >> Label("into shadow") >> marker
        promoted, rejected = promote(candidate, evaluation), reject(candidate, evaluation)
        outcome >> Label("gate failed") >> rejected
        if not approval:
            outcome >> Label("gate passed (or forced)") >> promoted
            [promoted, rejected, skip, *waiting] >> record(check)
        else:
            # A person decides: the request waits in Browse -> Required Actions, holding no worker slot.
            ask = approvals.AwaitApproval(
                task_id="await_approval", request_task="gate", approve_task="promote", reject_task="not_approved",
                timeout=cfg.promotion.approval_timeout,
                doc_md=f"Waits for a person to approve or reject the candidate (Browse -> Required Actions); "
                       f"no answer within {format_duration(cfg.promotion.approval_timeout)} rejects it.")
            declined = not_approved(candidate, evaluation)
            outcome >> Label("gate passed") >> ask
            outcome >> Label("forced by a person") >> promoted
            ask >> Label("approved") >> promoted
            ask >> Label("rejected or no answer") >> declined
            [promoted, rejected, declined, skip, *waiting] >> record(check)

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
            return _step(cfg, loop.resolve_rollback_target, get_current_context()["params"]["target"])

        @task(on_success_callback=notify.on_outcome(cfg, "rollback"))
        def roll_back(version: int) -> dict:
            run = _run_info()
            return _published(_step(cfg, loop.rollback, run, version, run.params["reason"], automatic=False))

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
        @task
        def score_new_rows() -> dict:
            return _step(cfg, loop.score, _run_info())

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
            message = _step(cfg, loop.announce_new_labels, run, run.params["rows"], run.params["key"])
            context["outlet_events"][asset].extra = message
            return message

        announce()

    return new_labels()


def build_config_error(path: str, error: str):
    """A bad model YAML gets this in place of its DAGs: one team's typo must not take every other
    model's DAGs (their rollbacks among them) down with it, and the error stays in sight."""
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in Path(path).stem)

    @dag(dag_id=f"{stem}_config_error", schedule=None, catchup=False, tags=["driftline", "config-error"],
         doc_md=f"### `{Path(path).name}` cannot be loaded\n\n```\n{error}\n```\n\nFix the file; its DAGs "
                "come back at the next parse.", default_args={"owner": "driftline", "retries": 0})
    def config_error():
        @task
        def explain() -> None:
            raise AirflowFailException(error)

        explain()

    return config_error()


_configs, _errors = load_models(get_settings().models_dir)
for _cfg in _configs:
    for _build in (build_continuous_training, build_rollback, build_score, build_new_labels):
        _build(_cfg)
for _path, _error in _errors.items():
    log.error("model config %s: %s", _path, _error)
    build_config_error(_path, _error)
