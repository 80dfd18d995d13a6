"""The approval task of a model with ``promotion.approval: required``: Airflow's human-in-the-loop
branch operator (standard provider, Airflow 3.1+) asking a person, in the Airflow UI (Browse ->
Required Actions) or over the REST API, to approve or reject the candidate the gate passed.

Airflow 3.3 parks the task in the ``awaiting_input`` state: the worker process exits, no trigger
or triggerer is involved, and the task holds no worker or pool slot while it waits. The answer
resumes it; no answer within ``response_timeout`` is answered by the scheduler with the defaults
(here: Reject) and ``timed_out``. The bookkeeping of the answer lives in :mod:`ml.loop`
(``promote`` with the answer, ``not_approved``); this class only asks and hands the answer on.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator
from airflow.sdk import Param

from ml.config import APPROVAL_APPROVE, APPROVAL_REJECT

# The XCom key of the answer, as the promote / not_approved steps read it.
RESPONSE_KEY = "response"
# The XCom key the gate publishes the request (subject, body) under.
REQUEST_KEY = "approval"


def response_of(event: dict[str, Any]) -> dict[str, Any]:
    """The resume event of a HITL task as plain JSON: what was chosen, the form's fields, who answered
    and when; ``timed_out`` when the scheduler answered with the defaults (no one did in time)."""
    user = event.get("responded_by_user") or {}
    at = event.get("responded_at")
    return {"chosen_options": list(event.get("chosen_options") or []),
            "params_input": dict(event.get("params_input") or {}),
            "responded_by": user.get("name") or user.get("id") or None,
            "responded_at": at.isoformat() if hasattr(at, "isoformat") else at,
            "timed_out": bool(event.get("timedout"))}


class AwaitApproval(HITLBranchOperator):
    """Approve -> ``approve_task``; Reject, or no answer within ``timeout`` -> ``reject_task``. The
    subject and body are the ones the ``request_task`` published (``ml.loop.approval_request``)."""

    def __init__(self, *, request_task: str, approve_task: str, reject_task: str, timeout: timedelta,
                 **kwargs: Any) -> None:
        pulled = f"ti.xcom_pull(task_ids='{request_task}', key='{REQUEST_KEY}')"
        # The DAG's own params arrive here too; the HITL operator drops DAG-level params from its
        # form anyway: the person sees only this request's field.
        kwargs.pop("params", None)
        super().__init__(
            subject=f"{{{{ {pulled}['subject'] }}}}",
            body=f"{{{{ {pulled}['body'] }}}}",
            options=[APPROVAL_APPROVE, APPROVAL_REJECT],
            defaults=[APPROVAL_REJECT],  # what the scheduler answers when the timeout passes
            multiple=False,
            options_mapping={APPROVAL_APPROVE: approve_task, APPROVAL_REJECT: reject_task},
            params={"reason": Param(None, type=["null", "string"], title="Reason",
                                    description="Why you approve or reject: kept on the model version and in "
                                                "Driftline's audit log.")},
            response_timeout=timeout,
            **kwargs,
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" not in event:  # an error event fails the task in the base class, as it should
            context["ti"].xcom_push(key=RESPONSE_KEY, value=response_of(event))
        return super().execute_complete(context, event)
