"""No door left open, checked without a live stack: each state folder gets its own secrets (Airflow's
admin password, JWT secret, [api] secret_key, fernet key; MLflow's admin password and Flask key),
made once, kept 0600 and the same for every process of that folder; the stacks bind to loopback and
`driftline up --celery` puts MLflow behind its basic-auth app with the tasks logged in; compose takes
every secret from .env, publishes nothing but the Airflow UI and that on loopback; a run made in this
process (dag.test) writes the task log file the UI reads. The live halves are in test_up.py and
test_production.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

BIN = Path(sys.executable).parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "DRIFTLINE_"))}
    return {**env, "DRIFTLINE_HOME": str(home), **extra}


@pytest.fixture
def no_secret_env(monkeypatch):
    """Secrets set in the environment win over the state folder's: these tests look at the files."""
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY",
                "DRIFTLINE_AIRFLOW_USER", "DRIFTLINE_AIRFLOW_PASSWORD", "AIRFLOW_HOME"):
        monkeypatch.delenv(key, raising=False)


# ---- secrets per state folder -----------------------------------------------------------------------


def test_airflow_secrets_are_made_once_per_state_folder_0600_and_differ_between_folders(tmp_path, no_secret_env):
    from cryptography.fernet import Fernet

    from driftline import env

    one, other = tmp_path / "one" / "airflow", tmp_path / "other" / "airflow"
    first = env.airflow_secrets(one)
    assert set(first) == {"AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"}
    assert env.airflow_secrets(one) == first  # stable: every process of the folder shares them
    Fernet(first["AIRFLOW__CORE__FERNET_KEY"].encode())  # a usable key, or this raises
    for name in ("jwt_secret", "api_secret_key", "fernet_key"):
        assert _mode(one / name) == 0o600, name
    second = env.airflow_secrets(other)
    assert all(first[key] != second[key] for key in first)
    assert len(set(first.values())) == 3


def test_a_secret_file_left_open_is_closed_and_an_empty_one_is_refused(tmp_path):
    from driftline import env

    path = tmp_path / "fernet_key"
    path.write_text("kept\n")
    path.chmod(0o644)
    assert env.stored_secret(path, lambda: "new") == "kept"
    assert _mode(path) == 0o600
    path.write_text("")
    with pytest.raises(RuntimeError, match=r"fernet_key is empty: delete it"):
        env.stored_secret(path, lambda: "new")


def test_admin_password_is_generated_once_0600_and_the_old_seeded_one_replaced(tmp_path, no_secret_env):
    from driftline import env

    home = tmp_path / "airflow"
    home.mkdir()
    passwords = home / "simple_auth_manager_passwords.json.generated"
    # What older Driftline versions left in every state folder: admin / admin, world-readable.
    passwords.write_text(json.dumps({"admin": "admin", "viewer": "kept"}))
    passwords.chmod(0o644)
    password, made = env.airflow_admin_password(home)
    assert made and password != "admin" and len(password) >= 20
    assert _mode(passwords) == 0o600
    assert json.loads(passwords.read_text()) == {"admin": password, "viewer": "kept"}
    assert env.airflow_admin_password(home) == (password, False)  # not made (nor shown) again
    assert env.airflow_admin_password(tmp_path / "elsewhere")[0] != password


def test_clients_log_in_with_the_state_folders_password(tmp_path, monkeypatch, no_secret_env):
    from driftline import env

    monkeypatch.setenv("DRIFTLINE_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"no Airflow login: .*simple_auth_manager_passwords.json.generated "
                                           r"does not exist"):
        env.airflow_login()
    password, _ = env.airflow_admin_password(tmp_path / "airflow")
    assert env.airflow_login() == ("admin", password)
    monkeypatch.setenv("DRIFTLINE_AIRFLOW_PASSWORD", "from-env")
    assert env.airflow_login() == ("admin", "from-env")


def test_in_process_runs_get_the_stack_secrets_and_airflow_binds_loopback(tmp_path):
    """`env.apply()` is what the demo, `driftline run` and `driftline up` start from: Airflow itself
    (its config, as a component reads it) sees the state folder's secrets and a loopback bind."""
    home = tmp_path / "state"
    code = ("import json; from driftline import env; env.apply(); from airflow.configuration import conf; "
            "print(json.dumps({'host': conf.get('api', 'host'), 'secret_key': conf.get('api', 'secret_key'), "
            "'jwt': conf.get('api_auth', 'jwt_secret'), 'fernet': conf.get('core', 'fernet_key')}))")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(home), capture_output=True,
                           text=True, timeout=120, check=False) for _ in range(2)]
    for out in runs:
        assert out.returncode == 0, out.stderr[-3000:]
    seen = [json.loads(out.stdout.strip().splitlines()[-1]) for out in runs]
    assert seen[0] == seen[1]  # a second process of the same folder: the same secrets
    airflow = home / "airflow"
    assert seen[0] == {"host": "127.0.0.1", "secret_key": (airflow / "api_secret_key").read_text(),
                       "jwt": (airflow / "jwt_secret").read_text(), "fernet": (airflow / "fernet_key").read_text()}
    assert _mode(home) == 0o700 and _mode(airflow) == 0o700  # a new state folder is its owner's only


def test_embedded_stack_binds_loopback_and_prints_the_password_only_when_made(tmp_path):
    from driftline import stack
    from ml.settings import get_settings

    command = stack.mlflow_server_command(get_settings(), 5000)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--app-name" not in command  # the embedded MLflow stays open, on loopback only
    first = "\n".join(stack.login_lines(tmp_path, "s3cret-generated"))
    later = "\n".join(stack.login_lines(tmp_path, None))
    assert "s3cret-generated" in first and "not shown again" in first
    assert later == f"  Login      : admin, password in {tmp_path / 'simple_auth_manager_passwords.json.generated'}"


# ---- driftline up --celery: the environment its processes get ---------------------------------------


def test_celery_stack_puts_mlflow_behind_basic_auth_and_logs_its_clients_in(tmp_path, monkeypatch, no_secret_env):
    from mlflow.cli import server
    from mlflow.server.auth.config import read_auth_config

    from driftline import production

    monkeypatch.setenv("DRIFTLINE_HOME", str(tmp_path))
    live = production.ProductionStack(18080, 15000)
    environment = live._environment(tmp_path / "production")
    auth = tmp_path / "production" / "mlflow_auth"
    password = (auth / "admin_password").read_text()
    assert environment["MLFLOW_TRACKING_USERNAME"] == "admin" and environment["MLFLOW_TRACKING_PASSWORD"] == password
    assert environment["AIRFLOW__API__HOST"] == "127.0.0.1"
    airflow = tmp_path / "production" / "airflow"
    assert environment["AIRFLOW__CORE__FERNET_KEY"] == (airflow / "fernet_key").read_text()
    assert environment["AIRFLOW__API__SECRET_KEY"] == (airflow / "api_secret_key").read_text()
    # The server's own variables go to the MLflow process only, not to every task.
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in environment
    assert live.mlflow_server_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == password
    for name in ("admin_password", "flask_secret_key", "basic_auth.ini"):
        assert _mode(auth / name) == 0o600, name
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", live.mlflow_server_env["MLFLOW_AUTH_CONFIG_PATH"])
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", password)
    config = read_auth_config()
    assert (config.admin_username, config.admin_password, config.default_permission) == ("admin", password, "READ")
    assert config.database_uri == f"sqlite:///{auth / 'basic_auth.db'}"
    command = production.mlflow_command(15000, "postgresql+psycopg2://u@h/db", tmp_path / "artifacts")
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    server.make_context("server", command[2:])  # parses with the installed MLflow
    # Made once: a second stack on this folder gets the same credentials.
    again = production.ProductionStack(18080, 15000)._environment(tmp_path / "production")
    assert again["MLFLOW_TRACKING_PASSWORD"] == password


# ---- docker compose ---------------------------------------------------------------------------------


def _compose(text: str, env: dict[str, str]) -> dict:
    from test_deploy import interpolate

    return interpolate(yaml.safe_load(text), env)


def test_compose_mlflow_has_basic_auth_no_host_port_and_workers_log_in(monkeypatch):
    from mlflow.server.auth.config import read_auth_config
    from test_deploy import ENV_EXAMPLE, RESOLVED, command_of, env_of

    mlflow = RESOLVED["services"]["mlflow"]
    assert "--app-name=basic-auth" in command_of("mlflow")
    assert "ports" not in mlflow, "MLflow is published only with deploy/compose.mlflow-port.yaml"
    raw = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]
    assert raw["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD:?set it in .env}"
    for name in ("airflow-apiserver", "airflow-worker", "airflow-scheduler"):
        worker = env_of(name)
        assert worker["MLFLOW_TRACKING_USERNAME"] == "admin"
        assert worker["MLFLOW_TRACKING_PASSWORD"] == ENV_EXAMPLE["MLFLOW_ADMIN_PASSWORD"]
        assert worker["AIRFLOW__API__SECRET_KEY"] == ENV_EXAMPLE["AIRFLOW_API_SECRET_KEY"]
        assert worker["AIRFLOW__CORE__FERNET_KEY"] == ENV_EXAMPLE["AIRFLOW_FERNET_KEY"]
    # The users' database lives on its own volume, where the ini says.
    ini = env_of("mlflow")["MLFLOW_AUTH_CONFIG_PATH"]
    assert ini == "/opt/driftline/deploy/mlflow-basic-auth.ini"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ROOT / "deploy" / "mlflow-basic-auth.ini"))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = read_auth_config()
    assert config.admin_password is None  # the password comes from .env, never from the file in git
    assert (config.admin_username, config.default_permission) == ("admin", "READ")
    mounts = dict(m.split(":")[:2] for m in mlflow["volumes"])
    assert config.database_uri == f"sqlite:///{mounts['mlflow-auth']}/basic_auth.db"


def test_compose_publishes_airflow_and_optionally_mlflow_on_loopback_only():
    from test_deploy import ENV_EXAMPLE, RESOLVED, env_of

    assert RESOLVED["services"]["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
    # Inside its container the api-server listens on every interface: the mapping decides the exposure.
    assert env_of("airflow-apiserver")["AIRFLOW__API__HOST"] == "0.0.0.0"
    override = _compose((ROOT / "deploy" / "compose.mlflow-port.yaml").read_text(), ENV_EXAMPLE)
    assert override == {"services": {"mlflow": {"ports": ["127.0.0.1:5000:5000"]}}}
    opened = _compose((ROOT / "docker-compose.yaml").read_text(), {**ENV_EXAMPLE, "AIRFLOW_HOST_BIND": "0.0.0.0"})
    assert opened["services"]["airflow-apiserver"]["ports"] == ["0.0.0.0:8080:8080"]  # only when asked


def test_make_env_writes_every_secret_generated_0600_and_never_overwrites(tmp_path):
    from cryptography.fernet import Fernet
    from test_deploy import COMPOSE, PLACEHOLDER, interpolate

    out = tmp_path / ".env"
    run = [sys.executable, str(ROOT / "deploy" / "make-env.py"), "--out", str(out)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert _mode(out) == 0o600
    values = dict(line.split("=", 1) for line in out.read_text().splitlines() if line and not line.startswith("#"))
    assert PLACEHOLDER not in values.values()
    Fernet(values["AIRFLOW_FERNET_KEY"].encode())
    secrets_ = [v for k, v in values.items() if k.endswith(("PASSWORD", "SECRET", "SECRET_KEY"))]
    assert len(secrets_) == 6 and len(set(secrets_)) == 6 and all(len(v) >= 32 for v in secrets_)
    interpolate(COMPOSE, values)  # every required variable is set
    before = out.read_text()
    again = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    assert out.read_text() == before


def test_trigger_rest_script_reads_the_generated_password_not_admin(tmp_path):
    """deploy/trigger-rest.sh without AIRFLOW_PASSWORD: the password from $AIRFLOW_HOME's file goes
    to /auth/token. A one-shot local HTTP server plays the api-server and records the login."""
    import http.server
    import threading

    airflow_home = tmp_path / "airflow"
    airflow_home.mkdir()
    (airflow_home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": "g3n-pw"}))
    seen: list[dict] = []

    class Token(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Token)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    env = _clean_env(tmp_path, AIRFLOW_HOME=str(airflow_home), AIRFLOW_URL=f"http://127.0.0.1:{httpd.server_port}")
    out = subprocess.run(["bash", str(ROOT / "deploy" / "trigger-rest.sh"), "some_dag"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    httpd.server_close()
    assert out.returncode != 0  # the fake api-server refused; the login it saw is the point
    assert seen == [{"username": "admin", "password": "g3n-pw"}]
    missing = subprocess.run(["bash", str(ROOT / "deploy" / "trigger-rest.sh"), "some_dag"],
                             env=_clean_env(tmp_path), capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "no password for admin" in missing.stderr


# ---- task logs of runs made in this process ---------------------------------------------------------


@pytest.mark.integration  # one real dag.test() run (~20 s)
def test_an_in_process_run_writes_the_task_log_file_the_ui_reads(tmp_path):
    home = tmp_path / "state"
    out = subprocess.run([str(BIN / "driftline"), "run", "credit_default_new_labels", "--conf",
                          json.dumps({"rows": 5, "key": "log-check"})], cwd=ROOT, env=_clean_env(home),
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run_id = json.loads(out.stdout[out.stdout.index("{"):])["run_id"].split("/", 1)[1]
    path = (home / "airflow" / "logs" / "dag_id=credit_default_new_labels" / f"run_id={run_id}"
            / "task_id=announce" / "attempt=1.log")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # The task's own line, INFO, though the CLI keeps its console at warnings.
    assert any(e["event"] == "new-labels event log-check via dag: 5 rows (recorded)" and e["level"] == "info"
               and e["logger"] == "driftline" and e["timestamp"] for e in lines), lines
