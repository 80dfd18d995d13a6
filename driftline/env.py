"""The environment every Driftline process shares: Airflow home and config under the state folder,
the project's DAGs and plugins, and the MLflow/store URLs. Set before Airflow is imported."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from ml.settings import PROJECT_ROOT, get_settings


def driftline_env() -> dict[str, str]:
    """The variables to export; values already set in the environment win (production overrides)."""
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


def jwt_secret(airflow_home: Path) -> str:
    """One secret for every Airflow component of this state folder, made once and kept there:
    components that generate their own reject each other's task tokens ("Invalid auth token")."""
    path = airflow_home / "jwt_secret"
    if not path.exists():
        airflow_home.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def apply() -> dict[str, str]:
    env = driftline_env()
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    env["AIRFLOW__API_AUTH__JWT_SECRET"] = os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET") or jwt_secret(
        Path(env["AIRFLOW_HOME"])
    )
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
