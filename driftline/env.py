"""The environment every Driftline process shares: Airflow home and config under the state folder,
the project's DAGs and plugins, and the MLflow/store URLs. Set before Airflow is imported.

Secrets live in the state folder, made once per folder, each in its own file readable by its owner
only (0600): the Airflow admin's password, the JWT secret, the api-server's ``[api] secret_key``,
the fernet key, and (``driftline up --celery``) the MLflow server's admin password and Flask key."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ml.settings import PROJECT_ROOT, get_settings

AIRFLOW_ADMIN = "admin"  # airflow.cfg: simple_auth_manager_users = admin:admin (user admin, role admin)
MLFLOW_ADMIN = "admin"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
# What older Driftline versions seeded for every state folder; never kept as a password.
LEGACY_PASSWORD = "admin"


def driftline_env() -> dict[str, str]:
    """The variables to export; values already set in the environment win (production overrides).
    No secrets: ``driftline env`` prints these."""
    settings = get_settings()
    wanted = {
        "DRIFTLINE_ROOT": str(PROJECT_ROOT),
        "DRIFTLINE_HOME": str(settings.home),
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW_CONFIG": str(PROJECT_ROOT / "airflow.cfg"),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "DRIFTLINE_STORE_URL": settings.store_url,
        # Tasks and the CLI import `ml` from the checkout even without an editable install.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        # Airflow and MLflow both nag about deprecations we handle on purpose.
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning"),
    }
    from driftline.channels import connection_env

    # DRIFTLINE_REDIS_URL -> the Airflow connection the new-labels watchers use (triggerer, DAG parse).
    wanted |= connection_env()
    return {key: os.environ.get(key) or value for key, value in wanted.items() if key != "PYTHONPATH"} | {
        "PYTHONPATH": wanted["PYTHONPATH"]
    }


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only; the mode is set before any byte is
    written, so the secret is never world-readable, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask; this is not
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def stored_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in ``path``; made with ``make()`` the first time. Two processes starting at
    once keep the same one: the first file to be linked in place wins."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        write_private(tmp, make())
        try:
            os.link(tmp, path)  # fails if another process made it first: keep theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # made by hand or by an older Driftline: close it
    value = path.read_text().strip()
    if not value:
        raise RuntimeError(f"{path} is empty: delete it to have a new secret made")
    return value


def jwt_secret(airflow_home: Path) -> str:
    """One secret for every Airflow component of this state folder, made once and kept there:
    components that generate their own reject each other's task tokens ("Invalid auth token")."""
    return stored_secret(airflow_home / "jwt_secret", lambda: secrets.token_urlsafe(48))


def api_secret_key(airflow_home: Path) -> str:
    """``[api] secret_key``: the api-server signs its requests to the log servers with it. Each
    process makes its own random one when it is unset, so a log server never accepted the
    api-server's token (the task log page said "make sure ... the same 'secret_key'")."""
    return stored_secret(airflow_home / "api_secret_key", lambda: secrets.token_urlsafe(48))


def fernet_key(airflow_home: Path) -> str:
    """``[core] fernet_key``: Airflow encrypts connections and variables in its DB with it. Losing
    it makes them unreadable, so it is made once and never replaced here."""
    from cryptography.fernet import Fernet

    return stored_secret(airflow_home / "fernet_key", lambda: Fernet.generate_key().decode())


def airflow_passwords_file(airflow_home: Path) -> Path:
    return airflow_home / PASSWORDS_FILE


def airflow_admin_password(airflow_home: Path) -> tuple[str, bool]:
    """The Airflow admin's password and whether it was made just now. SimpleAuthManager keeps a
    password already in its file, so it is generated here, once per state folder, and the file
    closed to others (0600). Other users in the file are kept; the old seeded ``admin`` is replaced."""
    path = airflow_passwords_file(airflow_home)
    users = json.loads(path.read_text() or "{}") if path.exists() else {}
    password = users.get(AIRFLOW_ADMIN)
    made = not password or password == LEGACY_PASSWORD
    if made:
        users[AIRFLOW_ADMIN] = password = secrets.token_urlsafe(18)
    if made or path.stat().st_mode & 0o077:
        write_private(path, json.dumps(users) + "\n")
    return password, made


def airflow_login(user: str | None = None) -> tuple[str, str]:
    """User and password for Airflow's REST API: ``user`` or DRIFTLINE_AIRFLOW_USER (default admin),
    with DRIFTLINE_AIRFLOW_PASSWORD, else the user's password kept in this state folder's
    AIRFLOW_HOME (``driftline up`` generated the admin's)."""
    user = user or os.environ.get("DRIFTLINE_AIRFLOW_USER") or AIRFLOW_ADMIN
    password = os.environ.get("DRIFTLINE_AIRFLOW_PASSWORD")
    return (user, password) if password else stored_login(get_settings().airflow_home, user)


def stored_login(airflow_home: Path, user: str = AIRFLOW_ADMIN) -> tuple[str, str]:
    """``user`` and the password SimpleAuthManager keeps for it under ``airflow_home``."""
    path = airflow_passwords_file(airflow_home)
    try:
        users = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeError(f"no Airflow login: {path} does not exist (start the stack with `driftline up` "
                           "first, or set DRIFTLINE_AIRFLOW_PASSWORD)") from None
    if user not in users:
        raise RuntimeError(f"no password for Airflow user {user!r} in {path} (set DRIFTLINE_AIRFLOW_PASSWORD)")
    return user, users[user]


def airflow_secrets(airflow_home: Path) -> dict[str, str]:
    """The secrets every Airflow process of this state folder shares, as AIRFLOW__* variables; a
    value already in the environment wins (compose, a secrets manager)."""
    made = {
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        "AIRFLOW__API__SECRET_KEY": api_secret_key,
        "AIRFLOW__CORE__FERNET_KEY": fernet_key,
    }
    return {key: os.environ.get(key) or make(airflow_home) for key, make in made.items()}


def mlflow_auth(folder: Path, database_uri: str | None = None) -> dict[str, str]:
    """What ``mlflow server --app-name basic-auth`` needs, kept in ``folder`` (0600 each): its config
    file (users in ``database_uri``, default a SQLite file there; people READ by default), the admin
    password (used only when the user store is new) and the Flask secret key. Returns the server's
    variables; the clients' are :func:`mlflow_client_env`."""
    password = stored_secret(folder / "admin_password", lambda: secrets.token_urlsafe(24))
    flask_key = stored_secret(folder / "flask_secret_key", lambda: secrets.token_urlsafe(48))
    ini = folder / "basic_auth.ini"
    write_private(ini, "[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = {database_uri or 'sqlite:///' + str(folder / 'basic_auth.db')}\n"
                       f"admin_username = {MLFLOW_ADMIN}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_key}


def mlflow_client_env(folder: Path) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME / _PASSWORD for the tasks and the CLI (MLflow's client reads them)."""
    return {"MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": stored_secret(folder / "admin_password", lambda: secrets.token_urlsafe(24))}


def apply() -> dict[str, str]:
    env = driftline_env()
    airflow_home = Path(env["AIRFLOW_HOME"])
    for folder in (Path(env["DRIFTLINE_HOME"]), airflow_home):
        if not folder.exists():  # a new state folder is its owner's only (one made by hand is left as is)
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
    # The same secrets as `driftline up` gives its components: dag.test() runs (demo, `driftline
    # run`) write connections, variables and task-log tokens the UI must read.
    env |= airflow_secrets(airflow_home)
    os.environ.update(env)
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    return env


def airflow_bin() -> str:
    """The `airflow` next to this interpreter (the venv's), so no activation is needed."""
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else "airflow"


def migrate_airflow_db(quiet: bool = True) -> None:
    """``airflow db migrate`` on the configured metadata DB (idempotent; fast when up to date)."""
    env = {**os.environ, **apply()}
    out = subprocess.run(
        [airflow_bin(), "db", "migrate"], env=env, capture_output=quiet, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{(out.stdout or '')[-2000:]}\n{(out.stderr or '')[-4000:]}")
