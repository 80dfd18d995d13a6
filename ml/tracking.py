"""The MLflow edge: where the tracking store is and which experiment a model logs to."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache

from ml.settings import PROJECT_ROOT, Settings, get_settings


def client(settings: Settings | None = None):
    """An ``MlflowClient`` on the configured tracking and registry stores (also sets the
    process-wide URIs, which ``mlflow.start_run`` and ``log_model`` use)."""
    import mlflow
    from mlflow import MlflowClient

    settings = settings or get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    # MLflow's setters also export MLFLOW_*_URI; undo that so the environment stays what the user
    # set and get_settings() keeps following DRIFTLINE_HOME within one process.
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def experiment_name(model: str) -> str:
    return f"driftline/{model}"


def ensure_experiment(model: str, settings: Settings | None = None) -> str:
    """The model's experiment id; created with artifacts under the state folder when the tracking
    store is a local database (a tracking server picks its own artifact root)."""
    settings = settings or get_settings()
    mlflow_client = client(settings)
    name = experiment_name(model)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not settings.tracking_uri.startswith(("http://", "https://")):
        location = (settings.artifact_root / model).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location, tags={"driftline.model": model})
    except Exception:
        # Two tasks may race to create it; the loser reads the winner's.
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The checkout's commit, recorded with every candidate ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
