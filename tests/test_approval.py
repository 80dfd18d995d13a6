"""Human approval before promotion (``promotion.approval: required``).

Unit tier: the config, and the loop's approval steps (route, request, answer, promote / not
approved) on the in-memory adapters. The Airflow side, a person answering through Airflow's REST
API and its Required Actions page, is in ``tests/test_approval_live.py``."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import yaml
from helpers import ROOT

from ml import alerts, links, loop
from ml.config import ConfigError, parse_config
from ml.memory import MemoryRegistry, MemoryStore, NullTracker
from ml.settings import get_settings
from ml.simulator import CreditDefaultSimulator

DAYS = 6
BASE = yaml.safe_load((ROOT / "models" / "credit_default.yaml").read_text())


def config_with(**promotion):
    return parse_config({**BASE, "promotion": {**BASE.get("promotion", {}), **promotion}}, "credit_default.yaml")


# ---- config ---------------------------------------------------------------------------------------


def test_approval_defaults_to_none_and_a_day():
    cfg = parse_config(BASE, "credit_default.yaml")
    assert cfg.promotion.approval == "none" and cfg.promotion.approval_timeout == timedelta(days=1)
    required = config_with(approval="required", approval_timeout="90m")
    assert required.promotion.approval == "required" and required.promotion.approval_timeout == timedelta(minutes=90)


@pytest.mark.parametrize("promotion, field, problem", [
    ({"approval": "yes"}, "promotion.approval", "'required' or 'none'"),
    ({"approval": None}, "promotion.approval", "'required' or 'none'"),
    ({"approval": False}, "promotion.approval", "'required' or 'none'"),
    ({"approval": "required", "approval_timeout": "0m"}, "promotion.approval_timeout", "positive"),
    ({"approval": "required", "approval_timeout": "soon"}, "promotion.approval_timeout", "not a duration"),
    ({"approval_timeout": "1h"}, "promotion.approval_timeout", "only used with approval: required"),
])
def test_bad_approval_settings_are_refused_naming_the_field(promotion, field, problem):
    with pytest.raises(ConfigError) as error:
        config_with(**promotion)
    assert f"field '{field}'" in str(error.value) and problem in str(error.value)


# ---- the loop's steps, in memory -----------------------------------------------------------------


@pytest.fixture(scope="module")
def stream():
    sim = CreditDefaultSimulator(seed=11, rows_per_period=300)
    rows = []
    for day in range(DAYS):
        batch = sim.batch(day)
        rows.append(batch.features.merge(batch.labels, on="row_id"))
    return sim, pd.concat(rows, ignore_index=True).sort_values("ts", kind="stable").reset_index(drop=True)


class LinkingTracker(NullTracker):
    """Records nothing, but links versions as MLflow's UI would."""

    def version_links(self, version: int) -> dict[str, str]:
        return {"model_version": links.model_version_url("http://mlflow.test", "credit_default", version)}


def context(cfg, stream) -> loop.Context:
    sim, frame = stream
    store = MemoryStore(frame, cfg.feature_names)
    store.show(int((pd.to_datetime(frame["ts"], utc=True) <= pd.Timestamp(sim.period_start(DAYS))).sum()))
    return loop.Context(cfg, get_settings(), store, MemoryRegistry(cfg.name, store), LinkingTracker())


def run(step: int, **params) -> loop.RunInfo:
    return loop.RunInfo(f"test/{step}", actor="scheduled", params=params)


def answer(option: str | None, by: str | None = "alice", reason: str | None = None, timed_out: bool = False) -> dict:
    """A response as the DAG's approval task hands it on (driftline.approval.AwaitApproval)."""
    return {"chosen_options": [option] if option else [], "params_input": {"reason": reason},
            "responded_by": by, "responded_at": "2026-01-07T09:00:00+00:00", "timed_out": timed_out}


def first_candidate(ctx):
    """Train v1 and evaluate it (no champion yet, so the gate passes)."""
    r = run(1)
    loop.guard_champion(ctx, r)
    windows = loop.validate_windows(ctx, r)
    check = loop.check_drift(ctx, r, windows, keep_report=False)
    decision = loop.decide(ctx, r, check)
    candidate = loop.train_candidate(ctx, r, decision, check)
    return r, candidate, loop.evaluate_candidate(ctx, r, candidate)


def test_a_model_without_approval_routes_straight_to_promote(stream):
    ctx = context(config_with(), stream)
    r, candidate, evaluation = first_candidate(ctx)
    assert evaluation["verdict"] == "promote"
    assert loop.route_candidate(ctx, r, candidate, evaluation) == {"branch": "promote"}


def test_a_passing_candidate_waits_for_a_person_with_the_table_reasons_and_links(stream):
    ctx = context(config_with(approval="required", approval_timeout="2h"), stream)
    r, candidate, evaluation = first_candidate(ctx)
    route = loop.route_candidate(ctx, r, candidate, evaluation)
    assert route["branch"] == "await_approval"
    request = route["request"]
    assert request["subject"].startswith("Promote credit_default v1?")
    body = request["body"]
    assert "### Champion vs challenger" in body and "| challenger | v1 |" in body
    assert all(reason in body for reason in evaluation["reasons"])
    assert all(reason in body for reason in candidate["reasons"])
    assert "[Challenger v1](http://mlflow.test/#/models/credit_default/versions/1)" in body
    assert "No answer within 2h" in body
    # Nothing moved while it waits: v1 is the challenger, no champion.
    assert ctx.registry.champion() is None and ctx.registry.info(1).tag("verdict") == "pending"


def test_the_request_links_the_champion_it_would_replace(stream):
    ctx = context(config_with(approval="required"), stream)
    r, candidate, evaluation = first_candidate(ctx)
    loop.promote(ctx, r, candidate, evaluation, approval=answer(loop.APPROVE))
    forced = run(2, retrain=True, reason="second candidate")
    windows = loop.validate_windows(ctx, forced)
    check = loop.check_drift(ctx, forced, windows, keep_report=False)
    second = loop.train_candidate(ctx, forced, loop.decide(ctx, forced, check), check)
    evaluation2 = loop.evaluate_candidate(ctx, forced, second)
    body = loop.approval_request(ctx, forced, second, evaluation2)["body"]
    assert "[Champion v1](http://mlflow.test/#/models/credit_default/versions/1)" in body
    assert "v1 becomes `previous-champion`" in body and "| champion | v1 |" in body


def test_a_forced_run_is_not_asked_again(stream):
    ctx = context(config_with(approval="required"), stream)
    r, candidate, evaluation = first_candidate(ctx)
    assert loop.route_candidate(ctx, r, {**candidate, "force": True}, evaluation) == {"branch": "promote"}
    failed = {**evaluation, "verdict": "reject"}
    assert loop.route_candidate(ctx, r, candidate, failed) == {"branch": "reject"}


@pytest.mark.parametrize("response, expected", [
    (answer("Approve"), ("approved", "alice", "approved by alice")),
    (answer("Approve", reason="looks right"), ("approved", "alice", "approved by alice: looks right")),
    (answer("Reject", reason="holdout too small"), ("rejected", "alice", "rejected by alice at approval: holdout too small")),
    (answer("Reject"), ("rejected", "alice", "rejected by alice at approval: no reason given")),
    (answer("Reject", by=None, timed_out=True), ("timed_out", loop.APPROVAL_TIMEOUT_ACTOR, "no approval within 1d")),
    # Fail closed: an Approve without a person, several options, no options, no response at all.
    (answer("Approve", by=None), ("timed_out", loop.APPROVAL_TIMEOUT_ACTOR, "no approval within 1d")),
    ({**answer("Approve"), "chosen_options": ["Approve", "Reject"]}, ("rejected", "alice", "rejected by alice")),
    (answer(None), ("rejected", "alice", "rejected by alice")),
    (None, ("timed_out", loop.APPROVAL_TIMEOUT_ACTOR, "no approval within 1d")),
])
def test_approval_answer_reads_only_an_explicit_approve_by_a_person_as_approval(response, expected):
    got = loop.approval_answer(response, config_with(approval="required"))
    assert (got["answer"], got["by"]) == expected[:2] and got["line"].startswith(expected[2])


def test_approved_the_person_promotes_it(stream):
    ctx = context(config_with(approval="required"), stream)
    r, candidate, evaluation = first_candidate(ctx)
    out = loop.promote(ctx, r, candidate, evaluation, approval=answer("Approve", reason="checked the table"))
    assert out["action"] == "promoted" and ctx.registry.champion() == 1
    info = ctx.registry.info(1)
    assert (info.tag("approval"), info.tag("approval_by"), info.tag("approval_reason")) == (
        "approved", "alice", "checked the table")
    promoted = ctx.store.audit_log("credit_default", ["promoted"])[-1]
    assert promoted["actor"] == "alice" and promoted["details"]["reasons"][0] == "approved by alice: checked the table"
    assert "approved by alice" in alerts.promoted("credit_default", out, candidate=candidate, evaluation=evaluation).summary
    assert ctx.registry.description(1).startswith("**v1 promoted")


def test_rejected_by_a_person_with_their_reason_on_the_version_and_in_the_audit_log(stream):
    ctx = context(config_with(approval="required"), stream)
    r, candidate, evaluation = first_candidate(ctx)
    out = loop.not_approved(ctx, r, candidate, evaluation, answer("Reject", by="bob", reason="trained on a holiday week"))
    assert out["action"] == "rejected" and ctx.registry.champion() is None
    info = ctx.registry.info(1)
    assert info.tag("verdict") == "rejected"
    assert (info.tag("approval"), info.tag("approval_by"), info.tag("approval_reason")) == (
        "rejected", "bob", "trained on a holiday week")
    assert info.tag("rejected_reasons").startswith("rejected by bob at approval: trained on a holiday week")
    assert "trained on a holiday week" in ctx.registry.description(1).split("\n")[0]
    entry = ctx.store.audit_log("credit_default", ["rejected"])[-1]
    assert entry["actor"] == "bob" and entry["version"] == 1
    assert entry["details"]["reasons"][0] == "rejected by bob at approval: trained on a holiday week"
    assert entry["details"]["reasons"][1].startswith("the gate had passed it: promote")
    assert alerts.from_outcome("credit_default", out, candidate=candidate, evaluation=evaluation).summary.startswith(
        "credit_default v1 rejected: rejected by bob at approval: trained on a holiday week")


def test_no_answer_in_time_rejects_recorded_as_timed_out(stream):
    ctx = context(config_with(approval="required", approval_timeout="45m"), stream)
    r, candidate, evaluation = first_candidate(ctx)
    out = loop.not_approved(ctx, r, candidate, evaluation, answer("Reject", by=None, timed_out=True))
    assert out["approval"]["answer"] == "timed_out" and ctx.registry.champion() is None
    info = ctx.registry.info(1)
    assert info.tag("verdict") == "rejected" and info.tag("approval") == "timed_out"
    entry = ctx.store.audit_log("credit_default", ["rejected"])[-1]
    assert entry["actor"] == loop.APPROVAL_TIMEOUT_ACTOR
    assert entry["details"]["reasons"][0] == "no approval within 45m: rejected (approval timed out)"


def test_the_steps_refuse_an_answer_that_contradicts_their_branch(stream):
    ctx = context(config_with(approval="required"), stream)
    r, candidate, evaluation = first_candidate(ctx)
    with pytest.raises(loop.ParamError, match="not approved"):
        loop.promote(ctx, r, candidate, evaluation, approval=answer("Reject", reason="no"))
    with pytest.raises(loop.ParamError, match="approved by alice"):
        loop.not_approved(ctx, r, candidate, evaluation, answer("Approve"))
    assert ctx.registry.champion() is None and ctx.registry.info(1).tag("verdict") == "pending"


def test_run_cycle_asks_the_given_approver_and_records_the_answer(stream):
    cfg = config_with(approval="required")
    asked = []
    ctx = context(cfg, stream)
    out = loop.run_cycle(ctx, run(1), approve=lambda request: asked.append(request) or answer("Reject", reason="no"))
    assert asked and asked[0]["subject"].startswith("Promote credit_default v1?")
    assert "not_approved" in out and "promote" not in out and ctx.registry.champion() is None
    assert out["record"]["action"] == "rejected" and out["record"]["approval"] == "rejected by alice at approval: no"
    # Approved: promoted; and without an approver (the replay: no one to ask) the gate's verdict stands.
    ctx = context(cfg, stream)
    assert loop.run_cycle(ctx, run(1), approve=lambda request: answer("Approve"))["promote"]["action"] == "promoted"
    ctx = context(cfg, stream)
    out = loop.run_cycle(ctx, run(1))
    assert out["promote"]["action"] == "promoted" and "approval" not in out["promote"]


# ---- the DAG: only a model that requires approval gets the approval task (parse only) -------------


def test_only_a_model_requiring_approval_gets_the_approval_task(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.standard.operators.hitl import HITLBranchOperator

    (tmp_path / "credit_default.yaml").write_text(yaml.safe_dump(BASE))
    strict = {**BASE, "name": "credit_strict",
              "promotion": {**BASE.get("promotion", {}), "approval": "required", "approval_timeout": "3h"}}
    (tmp_path / "credit_strict.yaml").write_text(yaml.safe_dump(strict))
    monkeypatch.setenv("DRIFTLINE_MODELS_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    plain = bag.dags["credit_default_continuous_training"].task_dict
    assert "await_approval" not in plain and "not_approved" not in plain
    assert plain["gate"].downstream_task_ids == {"promote", "reject"}
    dag = bag.dags["credit_strict_continuous_training"]
    tasks = dag.task_dict
    ask = tasks["await_approval"]
    assert isinstance(ask, HITLBranchOperator)
    assert tasks["gate"].downstream_task_ids == {"await_approval", "promote", "reject"}
    assert ask.downstream_task_ids == {"promote", "not_approved"}
    assert ask.options_mapping == {"Approve": "promote", "Reject": "not_approved"}
    assert ask.options == ["Approve", "Reject"] and ask.defaults == ["Reject"]  # no answer = Reject
    assert ask.response_timeout == timedelta(hours=3) and "reason" in ask.params
    assert "xcom_pull(task_ids='gate', key='approval')" in ask.body
    # promote runs after the gate (forced) or after an approval: the join rule; record sees all outcomes.
    assert str(tasks["promote"].trigger_rule).endswith(("none_failed_min_one_success", "NONE_FAILED_MIN_ONE_SUCCESS"))
    assert tasks["record"].upstream_task_ids == {"check_drift", "promote", "reject", "not_approved", "skip_retraining"}
    assert dag.get_edge_info("await_approval", "not_approved") == {"label": "rejected or no answer"}
    assert "Approval required" in dag.doc_md
