"""``driftline up`` (what ``make up`` runs) and ``driftline up --celery`` as a user runs them: the
command starts its stack, prints the UIs' addresses once they answer, and Ctrl-C stops every
process it started (exit 0, ports free again)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
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
        """Whatever is left of the group (only on failure: a clean stop leaves nothing)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "DRIFTLINE_"))}
    return {**env, "DRIFTLINE_HOME": str(home), **extra}


def _banner_url(up: Up, label: str) -> str:
    line = next(line for line in up.lines if line.strip().startswith(label))
    return line.split(":", 1)[1].split()[0]


def _check_up_and_down(up: Up, ports: tuple[int, int], timeout: float) -> None:
    from driftline.stack import port_free

    try:
        up.wait_ready(timeout)
        airflow, mlflow = _banner_url(up, "Airflow UI"), _banner_url(up, "MLflow UI")
        assert airflow == f"http://127.0.0.1:{ports[0]}" and mlflow == f"http://127.0.0.1:{ports[1]}"
        assert _get(f"{airflow}/api/v2/monitor/health") == 200
        assert _get(f"{mlflow}/health") == 200
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


@pytest.mark.integration  # boots airflow standalone and an MLflow server
def test_up_serves_both_uis_and_ctrl_c_stops_them(tmp_path):
    from driftline.stack import free_port

    ports = (free_port(), free_port())
    up = Up(["--airflow-port", str(ports[0]), "--mlflow-port", str(ports[1])], _env(tmp_path / "state"))
    _check_up_and_down(up, ports, timeout=400)
    assert (tmp_path / "state" / "logs").is_dir()


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
def test_up_celery_serves_both_uis_and_ctrl_c_stops_them(tmp_path):
    from driftline import production
    from driftline.stack import free_port

    pg, redis = production.pg_url(), production.redis_url()
    require_service("PostgreSQL and Redis", production.service_problem(pg, redis),
                    "driftline up --celery needs both (127.0.0.1:5432 trust auth user postgres; 127.0.0.1:6379).")
    prefix = f"driftline_up_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_{part}" for part in ("airflow", "mlflow", "store")]
    ports = (free_port(), free_port())
    up = Up(["--celery", "--workers", "1", "--airflow-port", str(ports[0]), "--mlflow-port", str(ports[1])],
            _env(tmp_path / "state", DRIFTLINE_PG_DB_PREFIX=prefix))
    try:
        _check_up_and_down(up, ports, timeout=600)
        processes = next(line for line in up.lines if line.strip().startswith("Processes"))
        assert "scheduler" in processes and "worker" in processes, processes
    finally:
        production.drop_databases(pg, names)
