"""``driftline up``: the Airflow UI (``airflow standalone``: api-server, scheduler, dag-processor,
triggerer) and the MLflow UI (``mlflow server``) on the embedded state, until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driftline import env

DEV_USER, DEV_PASSWORD = "admin", "admin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def wait_http(url: str, timeout: float, procs: list[subprocess.Popen] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs and any(p.poll() is not None for p in procs):
            return False
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status < 500:
                    return True
        except OSError:  # refused, reset or timed out: not up yet
            time.sleep(1)
    return False


def seed_dev_login(airflow_home: Path) -> None:
    """SimpleAuthManager keeps a password already in its file: pre-seed a known dev login."""
    path = airflow_home / "simple_auth_manager_passwords.json.generated"
    users = json.loads(path.read_text()) if path.exists() else {}
    users.setdefault(DEV_USER, DEV_PASSWORD)
    path.write_text(json.dumps(users))


# MLflow 3.17's server starts a job runner (Huey consumers, ~6 processes) for its GenAI features by
# default; Driftline uses none of them, and on 2 cores they slow everything else down.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_server_command(settings, port: int, backend_store_uri: str | None = None,
                          artifacts: Path | None = None) -> list[str]:
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    return [mlflow, "server", "--backend-store-uri", backend_store_uri or settings.tracking_uri,
            "--artifacts-destination", str(artifacts or settings.artifact_root), "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


class Stack:
    """Airflow (standalone) and the MLflow server as child process groups, logs under the state folder."""

    def __init__(self, airflow_port: int = 8080, mlflow_port: int = 5000) -> None:
        self.airflow_port, self.mlflow_port = airflow_port, mlflow_port
        self.airflow_url = f"http://127.0.0.1:{airflow_port}"
        self.mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        self.procs: list[subprocess.Popen] = []
        self.logs: Path | None = None

    def check_ports(self) -> str | None:
        """None if every port is free, else which one is taken."""
        log_port = int(os.environ.get("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "8793"))
        trigger_log_port = int(os.environ.get("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", "8794"))
        for port, what in ((self.airflow_port, "Airflow"), (self.mlflow_port, "MLflow"),
                           (log_port, "Airflow log server"), (trigger_log_port, "Airflow triggerer log server")):
            if not port_free(port):
                return f"port {port} ({what}) is in use"
        return None

    def start(self) -> None:
        from ml.settings import get_settings

        variables = env.apply()
        settings = get_settings()
        env.migrate_airflow_db()
        seed_dev_login(settings.airflow_home)
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        child_env = {
            **os.environ, **variables,
            "AIRFLOW__API__PORT": str(self.airflow_port),
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "DRIFTLINE_MLFLOW_UI_URL": os.environ.get("DRIFTLINE_MLFLOW_UI_URL", self.mlflow_url),
            **MLFLOW_SERVER_ENV,
            # MLflow's usage telemetry thread raced a task's requests on the production stack; off here too.
            "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
            # `airflow standalone` starts its components by name from PATH: put the venv first.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        self.logs = settings.home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        for name, command in (("mlflow", mlflow_server_command(settings, self.mlflow_port)),
                              ("airflow", [env.airflow_bin(), "standalone"])):
            log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
            self.procs.append(subprocess.Popen(command, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def wait_ready(self, timeout: float = 300) -> bool:
        started = time.monotonic()
        return wait_http(f"{self.mlflow_url}/health", timeout, self.procs) and wait_http(
            f"{self.airflow_url}/api/v2/monitor/health", max(1.0, timeout - (time.monotonic() - started)), self.procs
        )

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        stop(self.procs)


def up(airflow_port: int = 8080, mlflow_port: int = 5000) -> int:
    stack = Stack(airflow_port, mlflow_port)
    from ml.settings import get_settings

    return serve(
        stack, command="driftline up", ready_timeout=360,
        starting=f"Starting MLflow and Airflow (logs in {get_settings().home / 'logs'}) ...",
        banner=lambda: [f"  Airflow UI : {stack.airflow_url}   (login {DEV_USER} / {DEV_PASSWORD})",
                        f"  MLflow UI  : {stack.mlflow_url}", f"  State      : {get_settings().home}"],
        not_ready=lambda: f"see {stack.logs}/mlflow.log and {stack.logs}/airflow.log",
        died=lambda: "a component exited; stopping the rest",
    )


def serve(stack: Any, *, command: str, ready_timeout: float, starting: str, banner: Callable[[], list[str]],
          not_ready: Callable[[], str], died: Callable[[], str],
          preflight: Callable[[], str | None] = lambda: None) -> int:
    """Start ``stack`` (``check_ports``/``start``/``wait_ready``/``alive``/``stop``), print ``banner()``
    once it is ready and keep it up until Ctrl-C or SIGTERM (0) or until a component exits (1); always
    stop it on the way out. A taken port, or a problem ``preflight()`` names (checked after the
    ports), ends it before anything starts (2). Shared by ``driftline up`` and ``driftline up --celery``."""
    taken = stack.check_ports()
    if taken:
        print(f"{command}: {taken}; stop what holds it or choose another port (--airflow-port / --mlflow-port)",
              file=sys.stderr)
        return 2
    problem = preflight()
    if problem:
        print(f"{command}: {problem}", file=sys.stderr)
        return 2

    def interrupt(signum, frame):  # also when started in the background, where SIGINT may be ignored
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        print(starting, flush=True)
        stack.start()
        if not stack.wait_ready(ready_timeout):
            print(f"{command}: a component did not start; {not_ready()}", file=sys.stderr)
            return 1
        print("\n" + "\n".join(banner()) + "\n\nCtrl-C stops everything.", flush=True)
        while stack.alive():
            time.sleep(1)
        print(f"{command}: {died()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping ...", flush=True)
        return 0
    finally:
        stack.stop()


def stop(procs: list[subprocess.Popen], grace: float = 20) -> None:
    """SIGTERM each process group, wait, then SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
