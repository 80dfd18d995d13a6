"""Driftline's Airflow plugin.

- A navigation entry, *Browse > MLflow models*, that opens the MLflow model registry in a new tab.
- On every task instance, buttons to what the task produced: its MLflow run, the registered model
  version, the Evidently drift report. Tasks publish those URLs as XComs (``driftline_link_<kind>``);
  Airflow's own ``XComOperatorLink`` reads them on the api-server, so a task that produced nothing of
  a kind shows no link of it.

The MLflow URL comes from DRIFTLINE_MLFLOW_UI_URL (``driftline up`` sets it; default
http://127.0.0.1:5000).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from airflow.serialization.definitions.operatorlink import XComOperatorLink

from ml.links import LINK_NAMES, xcom_key
from ml.settings import get_settings


class DriftlinePlugin(AirflowPlugin):
    name = "driftline"
    external_views = [  # noqa: RUF012 (AirflowPlugin declares these as class attributes)
        {
            # Airflow 3.3's UI renders a top-level external nav entry (nav_top_level, or a lone entry
            # of an unknown category) as a <button href=...>, which neither a click nor Enter follows.
            # An entry of a built-in menu's category is rendered as a real <a href target=_blank>.
            "name": "MLflow models",
            "href": f"{get_settings().mlflow_ui_url}/#/models",
            "destination": "nav",
            "category": "browse",
        }
    ]
    global_operator_extra_links = [  # noqa: RUF012
        XComOperatorLink(name=name, xcom_key=xcom_key(kind)) for kind, name in LINK_NAMES.items()
    ]
