"""docker-compose.yaml cannot be started here (no Docker engine on these machines), so check everything
that can be checked without one: the file parses; the services the README names exist; every env var
it sets is spelled as the code (or Airflow, MLflow, the postgres image) reads it; the URLs point at the
right services, ports and databases; every command and healthcheck parses with the installed Airflow,
MLflow and Celery; host ports do not collide; every long-running service has a healthcheck; depends_on
conditions can be met; images and builds agree; volumes are declared and used; .env.example defines
every variable the file uses and no secret is committed. The image's entrypoint and airflow-init's
script run here for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
# The override that publishes MLflow's port (docker compose -f docker-compose.yaml -f <this>).
MLFLOW_PORT_TEXT = (ROOT / "deploy" / "compose.mlflow-port.yaml").read_text()
MLFLOW_PORT = yaml.safe_load(MLFLOW_PORT_TEXT)
SERVICES: dict[str, dict] = COMPOSE["services"]
AIRFLOW = [name for name in SERVICES if name.startswith("airflow-")]
LONG_RUNNING = [name for name, s in SERVICES.items() if s.get("restart") != "no"]
CODE_DIRS = ("ml", "driftline", "dags", "plugins", "deploy")
CODE = "\n".join(p.read_text() for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))
ENV_EXAMPLE = dict(
    line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)
PLACEHOLDER = "change-me"

# ---- compose's own variable substitution, on parsed values -----------------------------------------

_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value, env: dict[str, str]):
    """What compose makes of the file with ``env`` as .env: $$ -> $, ${V}, ${V:-default}, ${V:?error}."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        current = env.get(name, "")
        if op and op.endswith("?") and not current:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and not current:
            return arg
        return current

    return _VAR.sub(one, value)


RESOLVED = interpolate(COMPOSE, ENV_EXAMPLE)


def env_of(service: str) -> dict[str, str]:
    return {key: str(value) for key, value in (RESOLVED["services"][service].get("environment") or {}).items()}


def command_of(service: str) -> list[str]:
    command = RESOLVED["services"][service]["command"]
    return command if isinstance(command, list) else command.split()


def healthcheck_of(service: str) -> str:
    test = RESOLVED["services"][service]["healthcheck"]["test"]
    return test[1] if test[0] == "CMD-SHELL" else " ".join(test[1:])


def names_read_by_the_code() -> set[str]:
    pattern = r"""(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']"""
    return set(re.findall(pattern, CODE))


# ---- services -------------------------------------------------------------------------------------


def test_the_compose_file_is_the_celery_stack():
    assert set(SERVICES) == {
        "postgres", "redis", "mlflow", "airflow-init", "airflow-apiserver", "airflow-scheduler",
        "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "serve",
    }
    env = env_of("airflow-worker")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert command_of("airflow-worker") == ["airflow", "celery", "worker"]
    for name in AIRFLOW:  # one environment for every Airflow component
        assert {k: v for k, v in env_of(name).items() if k != "AIRFLOW_ADMIN_PASSWORD"} == env, name


def readme_compose_section() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^### docker-compose\n(.*?)(?=^#{2,3} )", readme, re.DOTALL | re.MULTILINE)
    assert match, "README.md has no '### docker-compose' subsection"
    production = readme.index("\n## Production")
    assert production < match.start() < readme.index("\n## ", production + 1), "it belongs under ## Production"
    return match.group(1)


def test_every_service_the_readme_names_exists():
    section = readme_compose_section()
    named = set(re.findall(r"^\| `([a-z0-9-]+)`", section, re.MULTILINE))
    assert named == set(SERVICES), (named ^ set(SERVICES))
    assert "--scale airflow-worker=" in section
    assert "not started" in section and "no Docker engine" in section


# ---- env vars -------------------------------------------------------------------------------------


def test_every_env_var_is_spelled_as_its_reader_reads_it():
    """Driftline's own variables must be read by the code; AIRFLOW__SECTION__KEY must be an option of
    the installed Airflow (providers included); MLFLOW_* one MLflow or the code reads; the rest belong
    to the postgres image."""
    import mlflow.environment_variables as mlflow_env
    from airflow.configuration import conf

    read = names_read_by_the_code()
    airflow_options = conf.configuration_description
    mlflow_names = {v.name for v in vars(mlflow_env).values() if isinstance(getattr(v, "name", None), str)}
    postgres_image = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
    for service, spec in SERVICES.items():
        for name in spec.get("environment") or {}:
            if name.startswith("AIRFLOW__"):
                section, key = name.removeprefix("AIRFLOW__").lower().split("__", 1)
                assert key in airflow_options.get(section, {}).get("options", {}), f"{service}: no Airflow option {name}"
            elif name.startswith("MLFLOW_"):
                assert name in read | mlflow_names, f"{service}: {name} is read by neither the code nor MLflow"
            elif service == "postgres":
                assert name in postgres_image, f"postgres: {name}"
            else:
                assert name in read, f"{service}: {name} is set but never read by {', '.join(CODE_DIRS)}"


def test_compose_sets_what_the_code_would_otherwise_default_to_local_files():
    """Unset, these fall back to SQLite files and a local MLflow store inside one container."""
    read = names_read_by_the_code()
    needed = {"DRIFTLINE_HOME", "DRIFTLINE_STORE_URL", "MLFLOW_TRACKING_URI", "DRIFTLINE_MLFLOW_UI_URL",
              "DRIFTLINE_REDIS_URL"}
    assert needed <= read
    for name in AIRFLOW:
        assert needed <= set(env_of(name)), (name, needed - set(env_of(name)))


def _databases() -> set[str]:
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    return set(re.findall(r"CREATE DATABASE (\w+)", init)) | {env_of("postgres")["POSTGRES_DB"]}


def test_urls_point_at_the_right_services_ports_and_databases():
    from driftline.channels import redis_connection

    env = env_of("airflow-scheduler")
    postgres = env_of("postgres")
    databases = _databases()

    def pg(url: str, database: str) -> None:
        parts = urlsplit(url)
        assert parts.scheme == "postgresql+psycopg2", url  # plain postgresql:// wants psycopg 3 with SQLAlchemy 2.1
        assert (parts.hostname, parts.port, parts.path.lstrip("/")) == ("postgres", 5432, database), url
        assert (parts.username, parts.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
        assert database in databases

    pg(env["DRIFTLINE_STORE_URL"], "driftline")
    pg(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], "airflow")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+")
    pg(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"), "airflow")
    mlflow_args = dict(a.removeprefix("--").split("=", 1) for a in command_of("mlflow") if "=" in a)
    pg(mlflow_args["backend-store-uri"], "mlflow")

    assert urlsplit(env["MLFLOW_TRACKING_URI"])[:2] == ("http", f"mlflow:{mlflow_args['port']}")
    allowed = mlflow_args["allowed-hosts"].split(",")
    assert f"mlflow:{mlflow_args['port']}" in allowed  # else the server answers tasks with 403
    assert urlsplit(env["DRIFTLINE_MLFLOW_UI_URL"]).netloc in allowed  # the browser's Host header

    for url in (env["DRIFTLINE_REDIS_URL"], env["AIRFLOW__CELERY__BROKER_URL"]):
        assert (urlsplit(url).hostname, urlsplit(url).port) == ("redis", 6379), url
    assert env["DRIFTLINE_REDIS_URL"] == "redis://redis:6379/0"
    assert json.loads(redis_connection(env["DRIFTLINE_REDIS_URL"]))["host"] == "redis"

    api_port = _airflow_cfg_port()
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://airflow-apiserver:{api_port}/execution/"


def _airflow_cfg_port() -> int:
    import configparser

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "airflow.cfg")
    return cfg.getint("api", "port")


def test_airflow_and_mlflow_get_separate_databases():
    env = env_of("airflow-scheduler")
    urls = [env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], env["DRIFTLINE_STORE_URL"],
            next(a for a in command_of("mlflow") if a.startswith("--backend-store-uri="))]
    names = [url.rsplit("/", 1)[1] for url in urls]
    assert sorted(names) == ["airflow", "driftline", "mlflow"]  # each keeps its own alembic_version


# ---- commands, ports, healthchecks, dependencies ---------------------------------------------------


def test_every_command_parses_with_the_installed_airflow_mlflow_and_celery(tmp_path):
    """The services' commands and healthchecks, parsed (not run) by the CLIs they call."""
    from mlflow.cli import server

    mlflow = command_of("mlflow")
    assert mlflow[:2] == ["mlflow", "server"]
    server.make_context("server", mlflow[2:])  # raises on an unknown option or a bad value

    airflow_lines = [command_of(name) for name in AIRFLOW if name != "airflow-init"]
    airflow_lines.append(["airflow", "db", "migrate"])
    assert "airflow db migrate && python deploy/init.py" in command_of("airflow-init")
    celery_app = None
    for name in AIRFLOW:
        check = RESOLVED["services"][name].get("healthcheck")
        if check is None:
            continue
        line = healthcheck_of(name).replace('"${HOSTNAME}"', "host")
        if line.startswith("airflow "):
            airflow_lines.append(line.split())
        elif line.startswith("celery "):
            celery_app = line.split()[line.split().index("--app") + 1]
    assert celery_app is not None
    script = (
        "import importlib, json, sys\n"
        "from airflow.cli.cli_parser import get_parser\n"
        "bad = []\n"
        "for line in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        get_parser().parse_args(line[1:])\n"
        "    except SystemExit:\n"
        "        bad.append(line)\n"
        "module, attr = sys.argv[2].rsplit('.', 1)\n"
        "assert type(getattr(importlib.import_module(module), attr)).__name__ == 'Celery', sys.argv[2]\n"
        "print(json.dumps(bad))\n"
    )
    env = {**os.environ, **env_of("airflow-worker"), "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script, json.dumps(airflow_lines), celery_app], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], out.stderr[-3000:]


def _host_ports(services: dict) -> list[tuple[str, str, str, str]]:
    """(service, host address, host port, container port) of each published port."""
    found = []
    for name, spec in services.items():
        for mapping in spec.get("ports", []):
            bind, host, container = str(mapping).split(":")
            found.append((name, bind, host, container))
    return found


def test_host_ports_do_not_collide_and_reach_the_listening_port():
    # docker-compose.yaml publishes the Airflow UI only; the override adds MLflow's.
    ports = _host_ports(RESOLVED["services"]) + _host_ports(interpolate(MLFLOW_PORT, ENV_EXAMPLE)["services"])
    hosts = [host for _, _, host, _ in ports]
    assert len(hosts) == len(set(hosts)), ports
    serve = command_of("serve")
    listening = {"airflow-apiserver": str(_airflow_cfg_port()),
                 "mlflow": next(a.split("=")[1] for a in command_of("mlflow") if a.startswith("--port=")),
                 "serve": serve[serve.index("--port") + 1]}
    assert {(name, container) for name, _, _, container in ports} == set(listening.items())
    # Overridable from .env, defaulting to the usual ports, on this machine's loopback only.
    assert [(n, b, h) for n, b, h, _ in ports] == [("airflow-apiserver", "127.0.0.1", "8080"),
                                                   ("serve", "127.0.0.1", "8000"),
                                                   ("mlflow", "127.0.0.1", "5000")]


def test_the_worker_can_be_scaled():
    worker = SERVICES["airflow-worker"]
    assert not {"container_name", "hostname", "ports"} & set(worker), "these would collide between replicas"


def test_every_long_running_service_has_the_right_healthcheck():
    assert set(LONG_RUNNING) == set(SERVICES) - {"airflow-init"}
    for name in LONG_RUNNING:
        assert RESOLVED["services"][name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/api/v2/monitor/health" in healthcheck_of("airflow-apiserver")
    assert f"localhost:{_airflow_cfg_port()}/" in healthcheck_of("airflow-apiserver")
    assert "localhost:5000/health" in healthcheck_of("mlflow")
    serve = command_of("serve")
    assert f"serve_health('http://localhost:{serve[serve.index('--port') + 1]}')" in healthcheck_of("serve")
    for name, job in (("airflow-scheduler", "SchedulerJob"), ("airflow-dag-processor", "DagProcessorJob"),
                      ("airflow-triggerer", "TriggererJob")):
        assert healthcheck_of(name) == f'airflow jobs check --job-type {job} --hostname "${{HOSTNAME}}"'
    assert re.fullmatch(r'celery --app \S+ inspect ping -d "celery@\$\{HOSTNAME\}"', healthcheck_of("airflow-worker"))
    assert healthcheck_of("postgres") == "pg_isready -U driftline"
    assert healthcheck_of("redis") == "redis-cli ping"
    assert "healthcheck" not in SERVICES["airflow-init"]


def test_depends_on_conditions_can_be_met_and_start_in_order():
    started: list[str] = []
    pending = dict(SERVICES)
    while pending:
        ready = [n for n, s in pending.items() if set(s.get("depends_on") or {}) <= set(started)]
        assert ready, f"depends_on cycle among {sorted(pending)}"
        for name in sorted(ready):
            started.append(name)
            del pending[name]
    for name, spec in SERVICES.items():
        for target, rule in (spec.get("depends_on") or {}).items():
            assert target in SERVICES, (name, target)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], (name, target)
            else:
                assert rule["condition"] == "service_completed_successfully", (name, rule)
                assert SERVICES[target].get("restart") == "no", f"{target} must be a one-shot"
    for name in AIRFLOW:
        if name != "airflow-init":
            assert SERVICES[name]["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
            assert {"postgres", "redis", "mlflow"} <= set(SERVICES[name]["depends_on"])
    assert SERVICES["airflow-worker"]["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}


def test_the_scoring_service_runs_driftline_serve_on_a_model_that_exists(tmp_path):
    """Its command parses with Driftline's own CLI (run up to the point it would start uvicorn), the
    model is one of models/, it listens on every interface inside its container (the port mapping
    decides the exposure), and it reaches the same store and logged-in registry as the tasks."""
    command = command_of("serve")
    assert command[:2] == ["driftline", "serve"]
    script = (
        "import json, sys\n"
        "import driftline.serve\n"
        "driftline.serve.run = lambda model, **kw: print(json.dumps({'model': model, **kw})) or 0\n"
        "from driftline.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *command[1:]], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ, "DRIFTLINE_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert (ROOT / "models" / f"{parsed['model']}.yaml").is_file(), parsed
    assert (parsed["host"], str(parsed["port"])) == ("0.0.0.0", command[command.index("--port") + 1])
    env, tasks = env_of("serve"), env_of("airflow-worker")
    for name in ("DRIFTLINE_STORE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[name] == tasks[name], name
    # Least privilege: none of Airflow's secrets.
    assert not [name for name in env if name.startswith("AIRFLOW")]
    mounts = dict(m.split(":")[:2] for m in SERVICES["serve"]["volumes"])
    assert mounts["serve-data"] == env["DRIFTLINE_HOME"]  # the spool survives a restart
    assert {"postgres", "mlflow"} <= set(SERVICES["serve"]["depends_on"])


# ---- images, builds, volumes -----------------------------------------------------------------------

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_images_and_builds_are_consistent():
    built = {name: (s["build"], s["image"]) for name, s in SERVICES.items() if "build" in s}
    assert set(built) == {"mlflow", "serve", *AIRFLOW}
    assert {json.dumps(b, sort_keys=True) for b in built.values()} == {
        json.dumps(({"context": ".", "dockerfile": "Dockerfile"}, "driftline:local"), sort_keys=True)
    }
    for name, spec in SERVICES.items():
        if "build" not in spec:
            _, _, tag = spec["image"].partition(":")
            assert tag and tag != "latest" and re.match(r"\d", tag), f"{name}: pin {spec['image']}"
    # The image installs pyproject.toml's dependencies, which must hold what the stack runs.
    assert "tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']" in DOCKERFILE
    assert "pip install --no-deps -e ." in DOCKERFILE
    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for package in ("apache-airflow==", "apache-airflow-providers-celery", "apache-airflow-providers-redis",
                    "mlflow[auth]==", "psycopg2-binary"):
        assert package in deps, f"pyproject.toml lacks {package}"
    assert 'ENTRYPOINT ["driftline-entrypoint"]' in DOCKERFILE
    assert "deploy/entrypoint.sh /usr/local/bin/driftline-entrypoint" in DOCKERFILE


def test_project_folders_are_built_in_and_mounted_where_the_code_looks():
    workdir = re.search(r"^WORKDIR (\S+)", DOCKERFILE, re.MULTILINE).group(1)
    env_lines = re.findall(r"^ENV (.*)$", DOCKERFILE.replace("\\\n", " "), re.MULTILINE)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(env_lines)))
    assert env["DRIFTLINE_ROOT"] == workdir  # airflow.cfg: dags_folder = ${DRIFTLINE_ROOT}/dags
    assert env["AIRFLOW_CONFIG"] == f"{workdir}/airflow.cfg"
    mounts = {m.split(":")[0]: m.split(":")[1] for m in SERVICES["airflow-scheduler"]["volumes"]}
    for folder in ("dags", "plugins", "ml", "models", "driftline"):
        assert re.search(rf"^COPY {folder} {folder}$", DOCKERFILE, re.MULTILINE), f"the image lacks {folder}/"
        assert mounts[f"./{folder}"] == f"{workdir}/{folder}"
    assert mounts["airflow-home"] == env["AIRFLOW_HOME"]
    assert mounts["driftline-data"] == env["DRIFTLINE_HOME"] == env_of("airflow-scheduler")["DRIFTLINE_HOME"]


def test_named_volumes_are_declared_and_bind_mounts_exist():
    used = set()
    for name, spec in SERVICES.items():
        for mount in spec.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                used.add(source)
    assert used == set(COMPOSE["volumes"])


# ---- .env.example and secrets ----------------------------------------------------------------------


def test_env_example_lists_every_variable_the_compose_file_uses():
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", COMPOSE_TEXT + MLFLOW_PORT_TEXT))
    required = set(re.findall(r"(?<!\$)\$\{(\w+):\?", COMPOSE_TEXT))
    assert required >= {"POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "AIRFLOW_ADMIN_PASSWORD",
                        "AIRFLOW_API_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET_KEY"}
    assert set(ENV_EXAMPLE) == used, (set(ENV_EXAMPLE) ^ used)
    interpolate(COMPOSE, ENV_EXAMPLE)  # nothing required is missing
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD: set it in .env"):
        interpolate(COMPOSE, {k: v for k, v in ENV_EXAMPLE.items() if k != "POSTGRES_PASSWORD"})


def test_no_secret_is_committed():
    secret = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$")
    for name, spec in SERVICES.items():
        for key, value in (spec.get("environment") or {}).items():
            if secret.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{name}: {key} must come from .env"
    # Every password inside a URL is a reference too.
    for userinfo in re.findall(r"://([^@/\s]+)@", COMPOSE_TEXT):
        assert re.fullmatch(r"\w+:\$\{\w+(:\?[^}]*)?\}", userinfo), userinfo
    for key, value in ENV_EXAMPLE.items():
        if secret.search(key):
            assert value == PLACEHOLDER, f".env.example: {key} must be the {PLACEHOLDER} placeholder"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", ".env"], capture_output=True, text=True,
                             check=False).stdout
    assert tracked == ""


# ---- the image's entrypoint and airflow-init, run here ---------------------------------------------


def _venv_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]), **extra}


def test_entrypoint_runs_the_command_with_driftline_env():
    from driftline.channels import redis_connection

    tricky = "a $HOME 'b' \"c\""
    printer = "import json, os, sys; print(json.dumps([os.environ.get('AIRFLOW_CONN_DRIFTLINE_REDIS'), sys.argv[1:]]))"
    out = subprocess.run(
        [str(ROOT / "deploy" / "entrypoint.sh"), "python", "-c", printer, tricky],
        env=_venv_env(DRIFTLINE_REDIS_URL="redis://redis:6379/0"), capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [redis_connection("redis://redis:6379/0"), [tricky]]

    none = subprocess.run([str(ROOT / "deploy" / "entrypoint.sh")], capture_output=True, text=True, check=False)
    assert (none.returncode, none.stderr.strip()) == (2, "usage: driftline-entrypoint COMMAND [ARG...]")


def _init(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {"AIRFLOW_HOME": str(tmp_path / "airflow"), "DRIFTLINE_HOME": str(tmp_path),
            "DRIFTLINE_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "init.py")], cwd=ROOT,
                          env=_venv_env(**{**base, **env}), capture_output=True, text=True, timeout=120, check=False)


def test_airflow_init_refuses_placeholders(tmp_path):
    out = _init(tmp_path, AIRFLOW_ADMIN_PASSWORD=PLACEHOLDER,
                AIRFLOW__CORE__FERNET_KEY=PLACEHOLDER, DRIFTLINE_STORE_URL=f"postgresql+psycopg2://u:{PLACEHOLDER}@x/db")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "airflow-init: AIRFLOW_ADMIN_PASSWORD, AIRFLOW__CORE__FERNET_KEY, DRIFTLINE_STORE_URL still hold the "
        "'change-me' placeholder: set real values in .env (see .env.example)"
    )
    assert not (tmp_path / "airflow").exists()
    assert _init(tmp_path, AIRFLOW_ADMIN_PASSWORD="").returncode == 1


def test_airflow_init_sets_the_admin_password_and_the_store_tables(tmp_path):
    import sqlalchemy as sa

    passwords = tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated"
    passwords.parent.mkdir()
    passwords.write_text(json.dumps({"admin": "generated", "viewer": "kept"}))

    out = _init(tmp_path, AIRFLOW_ADMIN_PASSWORD="s3cret$pw")

    assert out.returncode == 0, out.stderr
    assert json.loads(passwords.read_text()) == {"admin": "s3cret$pw", "viewer": "kept"}
    assert passwords.stat().st_mode & 0o777 == 0o600
    tables = sa.inspect(sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")).get_table_names()
    assert {"dl_observations", "dl_labels", "dl_events", "dl_audit_log"} <= set(tables)
