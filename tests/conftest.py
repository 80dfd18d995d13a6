"""Shared fixtures. Each test gets its own state folder (store, MLflow store, reports). Airflow's
home is fixed for the whole session because Airflow reads its config once, at import."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
from helpers import require_service

ROOT = Path(__file__).resolve().parent.parent
SESSION_HOME = Path(tempfile.mkdtemp(prefix="driftline-tests-"))
# Before anything imports Airflow: one metadata DB for the session, the project's airflow.cfg.
os.environ["AIRFLOW_HOME"] = str(SESSION_HOME / "airflow")
os.environ["AIRFLOW_CONFIG"] = str(ROOT / "airflow.cfg")
os.environ["DRIFTLINE_ROOT"] = str(ROOT)
os.environ.setdefault("DRIFTLINE_TASK_RETRIES", "0")
for _var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DRIFTLINE_STORE_URL", "DRIFTLINE_MODELS_DIR"):
    os.environ.pop(_var, None)

PG_URL = os.environ.get("DRIFTLINE_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh DRIFTLINE_HOME: SQLite store and MLflow store inside it."""
    monkeypatch.setenv("DRIFTLINE_HOME", str(tmp_path))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DRIFTLINE_STORE_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def config():
    from ml.config import load_config

    return load_config(ROOT / "models" / "credit_default.yaml")


def _pg_available() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 (any driver or network error means "not here")
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@pytest.fixture
def pg_url():
    """A throw-away PostgreSQL database, dropped afterwards."""
    require_service(
        "PostgreSQL", _pg_available(),
        "Start one on 127.0.0.1:5432 (trust auth, user postgres) or set DRIFTLINE_TEST_PG_URL.",
    )
    import sqlalchemy as sa

    name = f"driftline_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from ml import store

        engine = store._engines.pop(url, None)
        if engine is not None:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
