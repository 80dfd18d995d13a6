"""Links into the MLflow UI (routes of MLflow 3.17's web app), so every task can say where what it
produced can be seen: its MLflow run, the registered model version, the Evidently drift report."""

from __future__ import annotations

from urllib.parse import quote

# What the Airflow plugin shows on a task instance, by the key a task publishes the URL under.
LINK_NAMES = {
    "mlflow_run": "MLflow run",
    "model_version": "MLflow model version",
    "drift_report": "Evidently drift report",
}


def xcom_key(kind: str) -> str:
    return f"driftline_link_{kind}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def artifact_url(base: str, experiment_id: str, run_id: str, path: str) -> str:
    return f"{run_url(base, experiment_id, run_id)}/artifactPath/{quote(path)}"


def model_version_url(base: str, model: str, version: int) -> str:
    return f"{base}/#/models/{quote(model)}/versions/{version}"
