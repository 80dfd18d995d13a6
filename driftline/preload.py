"""Import, once, what every Driftline task needs, in the long-lived process that forks task processes.

Airflow runs each task in a process forked from an executor worker; that process then imports the
DAG file and whatever the task touches. Without this, every task pays ``ml.loop`` and its libraries
(pandas, scikit-learn, MLflow) again: seconds per task, most of a run's time on a small machine
(see docs/benchmarks.md, P2). Imported in the parent, they are inherited copy-on-write.

Wired in two places, both configuration:
- LocalExecutor: ``[scheduler] mp_start_method = forkserver`` with ``mp_forkserver_preload =
  driftline.preload`` in airflow.cfg: the executor's workers come from a fork server that imported this.
- Celery workers: ``driftline.celery_config`` imports this when a worker starts (Celery's
  ``worker_init`` signal), before its pool forks.
"""

from __future__ import annotations

import evidently.metrics  # noqa: F401  (the drift check; ~300 MB, shared copy-on-write)
import mlflow.sklearn  # noqa: F401  (ml.loop imports MLflow only when a task first calls it)
import mlflow.store.model_registry.rest_store  # noqa: F401  (tasks reach the MLflow server over HTTP)
import mlflow.store.tracking.rest_store  # noqa: F401
from mlflow import MlflowClient  # noqa: F401
from mlflow.models import infer_signature  # noqa: F401

import ml.drift
import ml.evaluation
import ml.loop  # noqa: F401  (pandas, scikit-learn, MLflow client, the store, the registry)
