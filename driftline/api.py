"""A small client for Airflow's REST API v2 with auth on (a JWT from the api-server's ``/auth/token``).

Used by ``driftline publish-labels --via rest``, ``driftline trigger`` and the production tests; the
README shows the same calls with curl. Standard library only.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

FINISHED = ("success", "failed")


class ApiError(RuntimeError):
    """An answer other than 2xx; the text has the method, path, status and Airflow's own detail."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        super().__init__(f"Airflow REST {method} {path} -> {status}: {detail[:800]}")
        self.status = status


class AirflowApi:
    """``AirflowApi(url, user, password)``; defaults from ``DRIFTLINE_AIRFLOW_URL`` (http://127.0.0.1:8080),
    ``DRIFTLINE_AIRFLOW_USER`` / ``DRIFTLINE_AIRFLOW_PASSWORD`` (else admin and the password
    ``driftline up`` generated for this state folder, see :func:`driftline.env.airflow_login`)."""

    def __init__(self, url: str | None = None, user: str | None = None, password: str | None = None,
                 timeout: float = 30) -> None:
        self.base = (url or os.environ.get("DRIFTLINE_AIRFLOW_URL") or "http://127.0.0.1:8080").rstrip("/")
        self.timeout = timeout
        self.token: str | None = None
        if not password:
            from driftline.env import airflow_login  # the state folder's generated admin password

            user, password = airflow_login(user)
        body = {"username": user or os.environ.get("DRIFTLINE_AIRFLOW_USER") or "admin", "password": password}
        self.token = self.call("POST", "/auth/token", body)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")) from None
        except urllib.error.URLError as exc:
            raise ApiError(method, path, 0, f"cannot reach {self.base}: {exc.reason}") from None
        return json.loads(raw) if raw else {}

    # ---- DAG runs ---------------------------------------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
        """A new run with this conf (no logical date, like the UI's Trigger button)."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def runs(self, dag_id: str, limit: int = 50) -> list[dict[str, Any]]:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit={limit}")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances?limit=100"
        return self.call("GET", path)["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[dict[str, Any] | str]:
        """One try's log as Airflow 3.3 returns it in JSON: structured entries (``event``, ``level``,
        ``error_detail``), or plain lines where the log could not be parsed."""
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/"
                f"{urllib.parse.quote(task_id, safe='')}/logs/{int(try_number)}?full_content=true")
        return self.call("GET", path).get("content") or []

    def failures(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Each failed task of a run: ``task_id``, ``try_number`` and ``error`` (one line from its log,
        else its note, else a line saying where to look). Reading a log must not hide the failure itself,
        so an unreadable log becomes that line, not an exception."""
        out = []
        for ti in self.task_instances(dag_id, run_id):
            if ti.get("state") != "failed":
                continue
            try_number = int(ti.get("try_number") or 1)
            try:
                error = failure_line(self.task_log(dag_id, run_id, ti["task_id"], try_number))
            except ApiError as exc:
                error = f"(log not readable: {exc})"
            error = error or (ti.get("note") or "").strip() or (
                f"(no error line in its log; see the task's log in the UI, try {try_number})")
            out.append({"task_id": ti["task_id"], "try_number": try_number, "error": error})
        return out

    def wait(self, dag_id: str, run_id: str, timeout: float = 900, every: float = 3) -> dict[str, Any]:
        """Poll until the run finishes; returns the run. TimeoutError names the run and its task states."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f} s: "
                                   f"{self.task_states(dag_id, run_id)}")
            time.sleep(every)

    # ---- human approval (promotion.approval: required) --------------------------------------------

    def approvals(self, dag_id: str = "~", run_id: str = "~", *, waiting: bool = True) -> list[dict[str, Any]]:
        """Approval requests (Airflow's human-in-the-loop details), the unanswered ones by default."""
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/hitlDetails"
                f"?response_received={'false' if waiting else 'true'}&limit=100")
        return self.call("GET", path)["hitl_details"]

    def respond(self, dag_id: str, run_id: str, task_id: str, option: str,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Answer a waiting request as the logged-in user, e.g. ``option="Reject"``,
        ``params={"reason": "..."}``; a second answer is refused (409)."""
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/"
                f"{urllib.parse.quote(task_id, safe='')}/-1/hitlDetails")
        return self.call("PATCH", path, {"chosen_options": [option], "params_input": params or {}})

    # ---- assets -----------------------------------------------------------------------------------

    def asset_id(self, name: str) -> int:
        """The integer id of an asset by exact name (it has one once a parsed DAG references it)."""
        found = self.call("GET", f"/api/v2/assets?name_pattern={urllib.parse.quote(name)}&limit=100")["assets"]
        for asset in found:
            if asset["name"] == name:
                return int(asset["id"])
        raise KeyError(f"no asset named {name!r} in Airflow at {self.base} (has the DAG file been parsed?)")

    def post_asset_event(self, name: str, extra: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/api/v2/assets/events", {"asset_id": self.asset_id(name), "extra": extra})


def failure_line(content: list[dict[str, Any] | str]) -> str | None:
    """The line that says why a task failed, from its log entries: the exception the task raised
    (``error_detail``: type and message, the outermost exception of a chain), else the last
    error-level message; None if the log has neither. Pure, so it is tested on hand-made logs."""
    last_error = None
    for entry in reversed(content):
        if not isinstance(entry, dict):
            continue
        detail = entry.get("error_detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            exc_type = str(detail[0].get("exc_type") or "Exception")
            exc_value = str(detail[0].get("exc_value") or "").strip()
            return f"{exc_type}: {exc_value}" if exc_value else exc_type
        if last_error is None and str(entry.get("level", "")).lower() in ("error", "critical"):
            last_error = str(entry.get("event") or "").strip() or None
    if last_error is None:
        # Unparsed logs are plain lines: the last one naming an error is the best there is.
        for line in reversed([e for e in content if isinstance(e, str)]):
            if "Error" in line or "Exception" in line:
                return line.strip()
    return last_error
