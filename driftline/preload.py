"""Import, once, what every Driftline task needs, in the long-lived process that forks task processes.

Airflow runs each task in a process forked from an executor worker; that process then imports the
DAG file and whatever the task touches. Without this, every task pays ``ml.loop`` and its libraries
(pandas, scikit-learn, MLflow) again: seconds per task, most of a run's time on a small machine
(see docs/benchmarks.md, P2). Imported in the parent, they are inherited copy-on-write.

Wired in two places, both configuration:
- LocalExecutor: ``[scheduler] mp_start_method = forkserver`` with ``mp_forkserver_preload =
  driftline.preload`` in airflow.cfg: the executor's workers come from a fork server that imported this.
- Celery workers: ``python -m driftline.worker celery worker`` (:mod:`driftline.worker`) imports
  this before Celery forks its pool.
"""

from __future__ import annotations

# Importing is the point. ml.loop imports MLflow only when a task first calls
# it, so MLflow's client, its REST stores (tasks reach the server over HTTP) and its sklearn flavour
# are named here too.
import evidently.metrics  # noqa: F401  (the drift check; ~300 MB, shared copy-on-write)
import mlflow.models
import mlflow.sklearn
import mlflow.store.model_registry.rest_store
import mlflow.store.tracking.rest_store
import mlflow.tracking  # noqa: F401

import ml.drift
import ml.evaluation
import ml.loop
import ml.tracking  # noqa: F401  (the MLflow tracker the steps log through)
