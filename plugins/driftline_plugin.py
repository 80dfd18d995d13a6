"""Driftline's Airflow plugin: a navigation entry that opens the MLflow UI (model registry).

The MLflow URL comes from DRIFTLINE_MLFLOW_UI_URL (``driftline up`` sets it; default
http://127.0.0.1:5000). Links from task instances to their MLflow runs and versions build on this.
"""

from __future__ import annotations

import os

from airflow.plugins_manager import AirflowPlugin

MLFLOW_UI_URL = os.environ.get("DRIFTLINE_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")


class DriftlinePlugin(AirflowPlugin):
    name = "driftline"
    external_views = [  # noqa: RUF012 (AirflowPlugin declares these as class attributes)
        {
            "name": "MLflow models",
            "href": f"{MLFLOW_UI_URL}/#/models",
            "destination": "nav",
            "nav_top_level": True,
            "category": "Driftline",
        }
    ]
