"""``driftline up --celery``: the production stack as processes on loopback, no Docker.

PostgreSQL holds three databases (Airflow metadata, MLflow backend store, Driftline's data store);
Redis is the Celery broker and carries new-labels messages; an ``mlflow server`` serves the registry
and the artifacts over HTTP; Airflow runs one process per component: ``api-server``, ``scheduler``,
``dag-processor``, ``triggerer`` and N ``celery worker`` processes (CeleryExecutor, results in
PostgreSQL), and a ``driftline serve`` per model on the same store and registry. Tasks reach MLflow
over HTTP only. Every process is its own process group, its output in
``$DRIFTLINE_HOME/production/logs/<name>.log``; :meth:`ProductionStack.stop` ends them all, also the
task processes a worker started.

PostgreSQL and Redis are not started here: they are services (on this machine kind they run already;
elsewhere, a package or a container). The databases are created if missing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from driftline import env
from driftline.stack import (
    DEFAULT_SERVE_PORT,
    MLFLOW_SERVER_ENV,
    Scoring,
    free_port,
    login_lines,
    port_free,
    serve,
    stop,
    wait_http,
)

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/0"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH = ("metadatabase", "scheduler", "triggerer", "dag_processor")


def pg_url() -> str:
    return os.environ.get("DRIFTLINE_PG_URL") or PG_URL


def redis_url() -> str:
    return os.environ.get("DRIFTLINE_REDIS_URL") or REDIS_URL


def database_url(base: str, name: str) -> str:
    """``base`` (any database, or none) with the database ``name``."""
    from sqlalchemy.engine import make_url

    return make_url(base).set(database=name).render_as_string(hide_password=False)


def _admin_engine(base: str):
    import sqlalchemy as sa

    return sa.create_engine(database_url(base, "postgres"), isolation_level="AUTOCOMMIT",
                            connect_args={"connect_timeout": 5})


def ensure_databases(base: str, names: list[str]) -> list[str]:
    """Create the databases that do not exist yet; returns the ones created."""
    import sqlalchemy as sa

    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use letters, digits and _ (DRIFTLINE_PG_DB_PREFIX)")
    created = []
    engine = _admin_engine(base)
    try:
        with engine.connect() as conn:
            for name in names:
                if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                    created.append(name)
    finally:
        engine.dispose()
    return created


def drop_databases(base: str, names: list[str]) -> None:
    import sqlalchemy as sa

    engine = _admin_engine(base)
    try:
        with engine.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def service_problem(base_pg: str, redis: str) -> str | None:
    """None if PostgreSQL and Redis answer, else what is missing and how to start it."""
    import redis as redis_client
    import sqlalchemy as sa

    try:
        engine = _admin_engine(base_pg)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 (any driver or network error means "not there")
        return (f"PostgreSQL at {base_pg} is not reachable ({type(exc).__name__}); start it (e.g. "
                "pg_ctlcluster <version> main start) or set DRIFTLINE_PG_URL")
    try:
        client = redis_client.Redis.from_url(redis, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis_client.RedisError as exc:
        return (f"Redis at {redis} is not reachable ({type(exc).__name__}); start it (e.g. redis-server "
                "--daemonize yes --bind 127.0.0.1) or set DRIFTLINE_REDIS_URL")
    return None


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (task processes leave the worker's process group on purpose)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return [pid] + [child.pid for child in proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class ProductionStack:
    """The production stack's processes. Same interface as :class:`driftline.stack.Stack` (start,
    wait_ready, alive, stop, airflow_url, mlflow_url, logs), plus workers that can be added or killed."""

    def __init__(self, airflow_port: int = 8080, mlflow_port: int = 5000, *, workers: int = 2,
                 concurrency: int = 2, pg: str | None = None, redis: str | None = None,
                 db_prefix: str | None = None, queue: str | None = None,
                 extra_env: dict[str, str] | None = None, serve_port: int | None = DEFAULT_SERVE_PORT) -> None:
        if workers < 1:
            raise ValueError(f"workers: need at least 1 Celery worker, got {workers}")
        self.airflow_port, self.mlflow_port = airflow_port, mlflow_port
        self.airflow_url = f"http://127.0.0.1:{airflow_port}"
        self.mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        self.n_workers, self.concurrency = workers, concurrency
        self.pg, self.redis = pg or pg_url(), redis or redis_url()
        prefix = db_prefix or os.environ.get("DRIFTLINE_PG_DB_PREFIX") or "driftline"
        self.databases = {part: f"{prefix}_{part}" for part in ("airflow", "mlflow", "store")}
        # Its own Celery queue: stacks sharing one Redis never take each other's tasks.
        self.queue = queue or prefix
        self.extra_env = dict(extra_env or {})
        self.scoring = Scoring(serve_port)
        self.procs: list[subprocess.Popen] = []
        self.named: dict[str, subprocess.Popen] = {}
        self.logs: Path | None = None
        self.env: dict[str, str] = {}
        self.mlflow_auth_dir: Path | None = None
        self.mlflow_server_env: dict[str, str] = {}  # basic-auth config, admin password: MLflow's only
        self.new_password: str | None = None  # set when this start generated the Airflow admin's password

    # ---- configuration ----------------------------------------------------------------------------

    def urls(self) -> dict[str, str]:
        airflow_db = database_url(self.pg, self.databases["airflow"])
        return {
            "airflow_db": airflow_db,
            "mlflow_db": database_url(self.pg, self.databases["mlflow"]),
            "store": database_url(self.pg, self.databases["store"]),
            # Celery's database result backend takes the SQLAlchemy URL behind "db+".
            "result_backend": "db+" + airflow_db,
        }

    def check_ports(self) -> str | None:
        for port, what in ((self.airflow_port, "Airflow"), (self.mlflow_port, "MLflow")):
            if not port_free(port):
                return f"port {port} ({what}) is in use"
        return self.scoring.check_ports()

    def _environment(self, home: Path) -> dict[str, str]:
        from ml.settings import get_settings

        urls = self.urls()
        wanted = {
            "DRIFTLINE_STORE_URL": urls["store"],
            "MLFLOW_TRACKING_URI": self.mlflow_url,  # tasks talk to MLflow over HTTP only
            "MLFLOW_REGISTRY_URI": self.mlflow_url,
            "DRIFTLINE_MLFLOW_UI_URL": os.environ.get("DRIFTLINE_MLFLOW_UI_URL", self.mlflow_url),
            "DRIFTLINE_REDIS_URL": self.redis,
            "AIRFLOW_HOME": str(home / "airflow"),
        }
        saved = {key: os.environ.get(key) for key in wanted}
        os.environ.update(wanted)  # driftline_env() reads them (and derives the Redis connection)
        try:
            base = env.driftline_env()
            settings = get_settings()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        airflow_home = Path(base["AIRFLOW_HOME"])
        self.mlflow_auth_dir = home / "mlflow_auth"
        self.mlflow_server_env = env.mlflow_auth(self.mlflow_auth_dir)
        return {
            **base, **wanted,
            "DRIFTLINE_HOME": str(settings.home),
            # JWT secret, [api] secret_key, fernet key: one of each per state folder, 0600.
            **env.airflow_secrets(airflow_home),
            # Tasks and the CLI log in to MLflow's basic-auth app (MLflow's client reads these).
            **env.mlflow_client_env(self.mlflow_auth_dir),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": urls["airflow_db"],
            "AIRFLOW__CELERY__BROKER_URL": self.redis,
            "AIRFLOW__CELERY__RESULT_BACKEND": urls["result_backend"],
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.airflow_port),
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "DRIFTLINE_AIRFLOW_URL": self.airflow_url,  # driftline trigger / publish-labels --via rest
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            # Every component may run a log server; each gets a free port so none collides.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            # MLflow's usage telemetry: no network for it here, and its thread's environment writes
            # raced with a task's request ("failed with exception '_MLFLOW_TELEMETRY_SESSION_ID'").
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            **MLFLOW_SERVER_ENV,
            **self.extra_env,
        }

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        from ml.settings import get_settings
        from ml.store import Store

        problem = service_problem(self.pg, self.redis)
        if problem:
            raise RuntimeError(problem)
        home = get_settings().home / "production"
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        artifacts = home / "mlartifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        ensure_databases(self.pg, list(self.databases.values()))
        self.env = self._environment(home)
        Store(self.env["DRIFTLINE_STORE_URL"])  # the store's tables, once, before tasks race to make them
        airflow_home = Path(self.env["AIRFLOW_HOME"])
        airflow_home.mkdir(parents=True, exist_ok=True)
        password, made = env.airflow_admin_password(airflow_home)
        self.new_password = password if made else None
        self._write_env_file(home / "production.env")
        migrate = subprocess.run([env.airflow_bin(), "db", "migrate"], env={**os.environ, **self.env},
                                 capture_output=True, text=True, check=False)
        (self.logs / "db-migrate.log").write_text(migrate.stdout + migrate.stderr)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed; see {self.logs / 'db-migrate.log'}:\n"
                               f"{migrate.stderr[-2000:]}")
        urls = self.urls()
        self._spawn("mlflow", mlflow_command(self.mlflow_port, urls["mlflow_db"], artifacts), self.mlflow_server_env)
        for component in COMPONENTS:
            self._spawn(component, [env.airflow_bin(), component])
        for index in range(1, self.n_workers + 1):
            self.start_worker(f"worker{index}")
        # Same store and registry as the tasks (MLflow over HTTP, logged in): a promotion on a worker
        # reaches live traffic within a poll.
        self.scoring.start(self._spawn)

    def _spawn(self, name: str, command: list[str], extra: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        proc = subprocess.Popen(command, env={**os.environ, **self.env, **(extra or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.named[name] = proc
        return proc

    def start_worker(self, name: str) -> subprocess.Popen:
        """One more Celery worker (a new name each time: Celery node names must be unique)."""
        if name in self.named and self.named[name].poll() is None:
            raise ValueError(f"worker {name!r} is already running")
        # `airflow celery worker`, with the task code imported before Celery forks (driftline/worker.py).
        command = [sys.executable, "-m", "driftline.worker", "celery", "worker", "--queues", self.queue, "--concurrency",
                   str(self.concurrency), "--celery-hostname", f"{name}@%h", "--without-gossip", "--without-mingle"]
        return self._spawn(name, command, {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})

    @property
    def workers(self) -> dict[str, subprocess.Popen]:
        return {name: proc for name, proc in self.named.items() if name.startswith("worker")}

    def worker_of(self, pid: int) -> str | None:
        """Which worker's process tree runs ``pid`` (a task process), if any."""
        for name, proc in self.workers.items():
            if proc.poll() is None and pid in process_tree(proc.pid):
                return name
        return None

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker and every process it started, as when its machine dies. Returns the pids."""
        pids = process_tree(self.named[name].pid)
        kill_tree(pids)
        self.named[name].wait(timeout=30)
        return pids

    def worker_ready(self, name: str) -> bool:
        log = self.logs / f"{name}.log"
        return log.exists() and re.search(rf"{re.escape(name)}@\S+ ready", log.read_text(errors="replace")) is not None

    def health(self) -> dict[str, str]:
        with urllib.request.urlopen(f"{self.airflow_url}/api/v2/monitor/health", timeout=5) as response:
            data = json.load(response)
        return {part: (data.get(part) or {}).get("status", "unknown") for part in HEALTH}

    def wait_ready(self, timeout: float = 420) -> bool:
        """MLflow answers, every Airflow component reports healthy, every worker is ready, every
        scoring service answers."""
        deadline = time.monotonic() + timeout
        if not wait_http(f"{self.mlflow_url}/health", timeout, self.procs):
            return False
        if not wait_http(f"{self.airflow_url}/api/v2/monitor/health", max(1.0, deadline - time.monotonic()), self.procs):
            return False
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                healthy = all(state == "healthy" for state in self.health().values())
            except OSError:
                healthy = False
            if (healthy and all(self.worker_ready(name) for name in self.workers)
                    and set(self.scoring.up()) == set(self.scoring.models)):
                return True
            time.sleep(2)
        return False

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.named.values())

    def stop(self) -> None:
        """SIGTERM every process group (Celery workers finish a warm shutdown), then SIGKILL what is
        left, including task processes that run in their own process groups."""
        tree = [pid for proc in self.procs if proc.poll() is None for pid in process_tree(proc.pid)]
        stop(self.procs)
        kill_tree(tree)

    def client_env(self) -> dict[str, str]:
        """What a client of this stack (a test, a benchmark, a shell) needs to log in to both servers."""
        user, password = env.stored_login(Path(self.env["AIRFLOW_HOME"]))
        return {"DRIFTLINE_AIRFLOW_URL": self.airflow_url, "DRIFTLINE_AIRFLOW_USER": user,
                "DRIFTLINE_AIRFLOW_PASSWORD": password,
                **{k: self.env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}}

    def _write_env_file(self, path: Path) -> None:
        """The stack's environment for running ``airflow`` / ``driftline`` by hand: ``set -a; . <file>``."""
        keep = {k: v for k, v in self.env.items() if k.startswith(("AIRFLOW", "DRIFTLINE_", "MLFLOW_"))}
        env.write_private(path, "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(keep.items())))


def mlflow_command(port: int, backend: str, artifacts: Path) -> list[str]:
    from driftline.stack import mlflow_server_command
    from ml.settings import get_settings

    return mlflow_server_command(get_settings(), port, backend_store_uri=backend, artifacts=artifacts, basic_auth=True)


def up(airflow_port: int = 8080, mlflow_port: int = 5000, workers: int = 2,
       serve_port: int | None = DEFAULT_SERVE_PORT) -> int:
    """Start the production stack and keep it up until Ctrl-C / SIGTERM."""
    stack = ProductionStack(airflow_port, mlflow_port, workers=workers, serve_port=serve_port)
    return serve(
        stack, command="driftline up --celery", ready_timeout=600,
        preflight=lambda: service_problem(stack.pg, stack.redis),
        starting=f"Starting the production stack: PostgreSQL databases {', '.join(stack.databases.values())}, "
                 f"MLflow server, Airflow with {workers} Celery worker(s), a scoring service per model ...",
        banner=lambda: [f"  Airflow UI : {stack.airflow_url}",
                        *login_lines(Path(stack.env["AIRFLOW_HOME"]), stack.new_password),
                        (f"  MLflow UI  : {stack.mlflow_url}   (login {env.MLFLOW_ADMIN}, password in "
                         f"{stack.mlflow_auth_dir / 'admin_password'})"),
                        *stack.scoring.banner(),
                        f"  Processes  : mlflow, {', '.join(COMPONENTS)}, {', '.join(stack.workers)}"
                        + "".join(f", serve-{model}" for model in stack.scoring.procs),
                        f"  Logs       : {stack.logs}",
                        f"  Env        : set -a; . {stack.logs.parent / 'production.env'}; set +a   (by hand)"],
        not_ready=lambda: f"see the logs in {stack.logs}",
        died=lambda: f"{', '.join(n for n, p in stack.named.items() if p.poll() is not None)} exited; "
                     f"stopping the rest (see {stack.logs})",
    )
