"""``driftline up`` (what ``make up`` runs) and ``driftline up --celery`` as a user runs them: the
command starts its stack, prints the UIs' and the scoring service's addresses once they answer, and
Ctrl-C stops every process it started (exit 0, ports free again)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ROOT, require_service

BIN = Path(sys.executable).parent
READY = "Ctrl-C stops everything."


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.status


class Up:
    """``driftline up ...`` in its own process group, with its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([str(BIN / "driftline"), "up", *args], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.lines and time.monotonic() < deadline:
            assert self.proc.poll() is None, f"driftline up exited {self.proc.returncode}:\n{self.output}"
            time.sleep(1)
        assert READY in self.lines, f"not ready after {timeout} s:\n{self.output}"

    def interrupt(self, timeout: float = 120) -> int:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground command
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """Whatever is left (only on failure: a clean stop leaves nothing): the command's group and every
        process it started, which run in sessions of their own (Airflow, MLflow, each scoring service)."""
        from driftline.production import kill_tree, process_tree

        tree = process_tree(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_tree(tree)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "DRIFTLINE_"))}
    return {**env, "DRIFTLINE_HOME": str(home), **extra}


def _banner_url(up: Up, label: str) -> str:
    # The banner's line (label, colon, URL), not a progress line that starts with the same word.
    line = next(line for line in up.lines if line.strip().startswith(label) and "http" in line)
    return line.split(":", 1)[1].split()[0]


def _status(url: str, headers: dict[str, str] | None = None, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _other_addresses() -> list[str]:
    """This machine's own IPv4 addresses other than loopback (none on some CI machines)."""
    import psutil

    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def _assert_loopback_only(ports: tuple[int, ...]) -> None:
    """Nothing answers on the machine's other addresses: the servers bound 127.0.0.1, not 0.0.0.0."""
    for address in _other_addresses():
        for port in ports:
            with socket.socket() as sock:
                sock.settimeout(5)
                assert sock.connect_ex((address, port)) != 0, f"port {port} answers on {address}"


def _check_up_and_down(up: Up, ports: tuple[int, ...], timeout: float,
                       check: Callable[[str, str], None] = lambda airflow, mlflow: None) -> None:
    """``ports``: Airflow's, MLflow's, then the scoring service's."""
    from driftline.stack import port_free

    try:
        up.wait_ready(timeout)
        airflow, mlflow = _banner_url(up, "Airflow UI"), _banner_url(up, "MLflow UI")
        assert airflow == f"http://127.0.0.1:{ports[0]}" and mlflow == f"http://127.0.0.1:{ports[1]}"
        assert _banner_url(up, "Scoring") == f"http://127.0.0.1:{ports[2]}", up.output
        assert _get(f"{airflow}/api/v2/monitor/health") == 200
        assert _get(f"{mlflow}/health") == 200
        _assert_loopback_only(ports)
        # The well-known login of older versions is refused.
        assert _status(f"{airflow}/auth/token", body={"username": "admin", "password": "admin"}) == 401
        check(airflow, mlflow)
    except BaseException:
        up.kill()
        raise
    assert up.interrupt() == 0, up.output
    assert "Stopping ..." in up.lines
    # Every process of the stack is gone: nothing holds the ports any more.
    deadline = time.monotonic() + 30
    while not all(port_free(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(1)
    assert all(port_free(p) for p in ports), f"ports {ports} still held after driftline up stopped"


def _predict(url: str, row: dict) -> dict:
    request = urllib.request.Request(f"{url}/predict", data=json.dumps({"rows": [row]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.load(response)


def _serves(url: str, row: dict, version: int, timeout: float) -> dict:
    """/health and /predict name ``version`` within ``timeout`` s (the service follows the alias)."""
    from driftline.stack import serve_health

    deadline = time.monotonic() + timeout
    answer: dict = {}
    while True:
        # 503 no_model until the service's first alias poll after the promotion: not yet, not a failure.
        health = serve_health(url) or {"status": "down", "version": None}
        if health["status"] == "ok":
            answer = _predict(url, {**row, "key": f"{row['key']}-{time.monotonic_ns()}"})
        if (health["version"], answer.get("version")) == (version, version) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health["status"] == "ok" and health["version"] == version, health
    assert answer["version"] == version and len(answer["predictions"]) == 1, answer
    assert 0.0 <= answer["predictions"][0]["score"] <= 1.0, answer
    return answer


def _champion(state: Path, monkeypatch, env: dict[str, str] | None = None) -> tuple[Callable[[int], None], dict]:
    """Three versions registered in the registry of ``state`` (or of ``env``'s servers), v1 the
    champion, as test_serve makes them; returns a promote(version) and a valid request row."""
    from test_serve import _promote, _row, _world

    from ml.config import load_config

    monkeypatch.setenv("DRIFTLINE_HOME", str(state))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DRIFTLINE_STORE_URL"):
        monkeypatch.delenv(var, raising=False)
    for var, value in (env or {}).items():
        monkeypatch.setenv(var, value)
    world = _world(load_config(ROOT / "models" / "credit_default.yaml"))
    return (lambda version: _promote(world.registry, version)), _row(world, "up")


def _token(airflow: str, password: str) -> str:
    request = urllib.request.Request(f"{airflow}/auth/token", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"username": "admin", "password": password}).encode())
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.load(response)["access_token"]


@pytest.mark.integration  # boots airflow standalone, an MLflow server and driftline serve
def test_up_serves_both_uis_and_ctrl_c_stops_them(tmp_path, monkeypatch):
    """Also: the login is the one generated for the state folder, printed once, kept 0600; a task of a
    run made in process before (as `make demo` makes them) shows its log in the UI's API; the scoring
    service answers /health and /predict with the champion's version, and with the new one after a
    promotion while it runs."""
    from driftline.stack import free_port

    state = tmp_path / "state"
    promote, row = _champion(state, monkeypatch)
    run = subprocess.run([str(BIN / "driftline"), "run", "credit_default_new_labels", "--conf",
                          json.dumps({"rows": 5, "key": "ui-log"})], cwd=ROOT, env=_env(state),
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    run_id = json.loads(run.stdout[run.stdout.index("{"):])["run_id"].split("/", 1)[1]
    ports = (free_port(), free_port(), free_port())
    log_ports = {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                 "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())}
    up = Up(["--airflow-port", str(ports[0]), "--mlflow-port", str(ports[1]), "--serve-port", str(ports[2])],
            _env(state, **log_ports))
    passwords = state / "airflow" / "simple_auth_manager_passwords.json.generated"

    def check(airflow: str, mlflow: str) -> None:
        password = json.loads(passwords.read_text())["admin"]
        assert os.stat(passwords).st_mode & 0o777 == 0o600
        assert any(line.strip() == f"Login      : admin / {password}" for line in up.lines), up.output
        token = _token(airflow, password)
        path = (f"/api/v2/dags/credit_default_new_labels/dagRuns/{urllib.parse.quote(run_id, safe='')}"
                "/taskInstances/announce/logs/1?full_content=true")
        request = urllib.request.Request(airflow + path, headers={"Authorization": f"Bearer {token}",
                                                                   "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            content = json.load(response)["content"]
        events = [entry.get("event") if isinstance(entry, dict) else entry for entry in content]
        assert "new-labels event ui-log via dag: 5 rows (recorded)" in events, events
        assert not any("secret_key" in str(event) for event in events), events

        scoring = _banner_url(up, "Scoring")
        assert any("credit_default, v1 = credit_default@champion" in line for line in up.lines), up.output
        _serves(scoring, row, 1, timeout=0)
        promote(2)  # the loop's own move; the service started by `up` follows it
        _serves(scoring, row, 2, timeout=20)

    _check_up_and_down(up, ports, timeout=400, check=check)
    assert (state / "logs").is_dir()


@pytest.mark.parametrize("flags", [[], ["--celery"]], ids=["embedded", "celery"])
def test_up_refuses_a_taken_port(tmp_path, flags):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = subprocess.run([str(BIN / "driftline"), "up", *flags, "--airflow-port", str(taken)], check=False,
                                cwd=ROOT, env=_env(tmp_path / "state"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    command = " ".join(["driftline up", *flags])
    assert f"{command}: port {taken} (Airflow) is in use" in result.stderr, result.stderr


@pytest.mark.production
def test_up_celery_serves_both_uis_and_ctrl_c_stops_them(tmp_path, monkeypatch):
    from driftline import production
    from driftline.stack import free_port, serve_health

    pg, redis = production.pg_url(), production.redis_url()
    require_service("PostgreSQL and Redis", production.service_problem(pg, redis),
                    "driftline up --celery needs both (127.0.0.1:5432 trust auth user postgres; 127.0.0.1:6379).")
    prefix = f"driftline_up_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_{part}" for part in ("airflow", "mlflow", "store")]
    ports = (free_port(), free_port(), free_port())
    up = Up(["--celery", "--workers", "1", "--airflow-port", str(ports[0]), "--mlflow-port", str(ports[1]),
             "--serve-port", str(ports[2])],
            _env(tmp_path / "state", DRIFTLINE_PG_DB_PREFIX=prefix))
    auth = tmp_path / "state" / "production" / "mlflow_auth"

    def check(airflow: str, mlflow: str) -> None:
        # MLflow's basic-auth app: nothing without credentials, everything with the generated ones.
        search = f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(search) == 401
        password = (auth / "admin_password").read_text()
        assert os.stat(auth / "admin_password").st_mode & 0o777 == 0o600
        basic = base64.b64encode(f"admin:{password}".encode()).decode()
        assert _status(search, {"Authorization": f"Basic {basic}"}) == 200
        assert any(f"password in {auth / 'admin_password'}" in line for line in up.lines), up.output
        env_file = tmp_path / "state" / "production" / "production.env"
        assert os.stat(env_file).st_mode & 0o777 == 0o600
        # The scoring service: up with no champion (503), then following one registered and promoted
        # through this stack's MLflow server (logged in) and PostgreSQL store.
        scoring = _banner_url(up, "Scoring")
        health = serve_health(scoring)
        assert health is not None and (health["status"], health["version"]) == ("no_model", None), health
        _, row = _champion(tmp_path / "client", monkeypatch, {
            "MLFLOW_TRACKING_URI": mlflow, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password,
            "DRIFTLINE_STORE_URL": production.database_url(pg, f"{prefix}_store")})
        _serves(scoring, row, 1, timeout=30)

    try:
        _check_up_and_down(up, ports, timeout=600, check=check)
        processes = next(line for line in up.lines if line.strip().startswith("Processes"))
        assert "scheduler" in processes and "worker" in processes, processes
    finally:
        production.drop_databases(pg, names)
