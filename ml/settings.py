"""Where Driftline keeps its state, and how each URL is overridden.

Everything local lives under one folder, ``DRIFTLINE_HOME`` (default ``.driftline/`` in the
checkout). Each URL has its own env var so the same code runs on PostgreSQL and a tracking server.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Packages whose classes a model YAML may name as `estimator.class`: the config refuses any other
# before importing it, so a YAML file cannot make the DAG parser import arbitrary code.
# DRIFTLINE_ESTIMATOR_MODULES adds more (comma-separated, e.g. "xgboost,mycompany.models"). Read by
# estimator_modules() at each parse, not in Settings: a bad value then fails each model's config
# (named in its error), not every command that reads the settings.
DEFAULT_ESTIMATOR_MODULES: tuple[str, ...] = ("sklearn",)
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def estimator_modules() -> tuple[str, ...]:
    """Module prefixes ``estimator.class`` may come from: the default plus DRIFTLINE_ESTIMATOR_MODULES.

    Each entry allows that module and everything under it ("sklearn" allows "sklearn.linear_model",
    not "sklearnx"); a trailing dot is accepted ("sklearn." = "sklearn").
    """
    raw = os.environ.get("DRIFTLINE_ESTIMATOR_MODULES", "")
    extra = []
    for entry in (part.strip().rstrip(".") for part in raw.split(",")):
        if not entry:
            continue
        if not _MODULE_NAME.fullmatch(entry):
            raise ValueError(
                f"DRIFTLINE_ESTIMATOR_MODULES: {entry!r} is not a module name (e.g. 'xgboost', 'mypkg.models')"
            )
        extra.append(entry)
    return tuple(dict.fromkeys((*DEFAULT_ESTIMATOR_MODULES, *extra)))


@dataclass(frozen=True)
class Settings:
    home: Path
    store_url: str
    tracking_uri: str
    registry_uri: str
    artifact_root: Path
    models_dir: Path
    reports_dir: Path
    # Where people open the MLflow UI (links from Airflow point here).
    mlflow_ui_url: str

    airflow_home: Path
    # Rows the scoring step reads and scores at a time (bounded memory; DRIFTLINE_SCORE_CHUNK_ROWS).
    score_chunk_rows: int = 50_000


def get_settings() -> Settings:
    """Read the settings from the environment now (tests change it between cases)."""
    home = Path(os.environ.get("DRIFTLINE_HOME", PROJECT_ROOT / ".driftline")).resolve()
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    return Settings(
        home=home,
        store_url=os.environ.get("DRIFTLINE_STORE_URL") or f"sqlite:///{home / 'store.db'}",
        tracking_uri=tracking_uri,
        registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri,
        artifact_root=Path(os.environ.get("DRIFTLINE_ARTIFACT_ROOT", home / "mlartifacts")).resolve(),
        models_dir=Path(os.environ.get("DRIFTLINE_MODELS_DIR", PROJECT_ROOT / "models")).resolve(),
        reports_dir=home / "reports",
        airflow_home=Path(os.environ.get("AIRFLOW_HOME") or home / "airflow").resolve(),
        score_chunk_rows=_positive_int("DRIFTLINE_SCORE_CHUNK_ROWS", 50_000),
        mlflow_ui_url=(
            os.environ.get("DRIFTLINE_MLFLOW_UI_URL")
            or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")
        ).rstrip("/"),
    )


def _positive_int(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{variable}: expected a whole number >= 1, got {text!r}")
    return value
