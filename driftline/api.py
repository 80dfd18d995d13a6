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
