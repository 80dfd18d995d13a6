"""Running Driftline's DAGs for real without a scheduler: ``dag.test()`` in this process, against
the configured metadata DB. The demo, the CLI's ``run`` command and the integration tests use it."""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from driftline import env


@dataclass(frozen=True)
class DagRunResult:
    dag_id: str
    run_id: str
    state: str
    task_states: dict[str, str]

    @property
    def key(self) -> str:
        """The id Driftline records in the store, registry tags and audit log."""
        return f"{self.dag_id}/{self.run_id}"

    @property
    def ok(self) -> bool:
        return self.state == "success"

    def branch_taken(self, candidates: list[str]) -> list[str]:
        return [t for t in candidates if self.task_states.get(t) == "success"]


def prepare(migrate: bool = True) -> None:
    """Export the environment and bring the Airflow metadata DB up to date."""
    env.apply()
    if migrate:
        env.migrate_airflow_db()


@lru_cache(maxsize=1)
def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    from ml.settings import PROJECT_ROOT

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    defaults = {
        dag_id: {key: copy.deepcopy(dag.params.get_param(key).value) for key in dag.params}
        for dag_id, dag in bag.dags.items()
    }
    return bag, defaults


def reload_dags() -> None:
    _dagbag.cache_clear()


def get_dag(dag_id: str):
    bag, _ = _dagbag()
    if dag_id not in bag.dags:
        raise KeyError(f"no DAG '{dag_id}'; known: {sorted(bag.dags)}")
    return bag.dags[dag_id]


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, *, quiet: bool = True) -> DagRunResult:
    """One real DAG run, tasks executed in this process. Returns the run's final state."""
    dag = get_dag(dag_id)
    # Airflow's process_params resolves run conf into the DAG's own Param objects, so in one
    # process a run inherits the previous run's conf. Pin every param: defaults, then this conf.
    conf = {**copy.deepcopy(_dagbag()[1][dag_id]), **(conf or {})}
    if quiet:
        for name in ("airflow", "airflow.task", "airflow.models", "airflow.sdk", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        # dag.test() warns "No tasks to run" each second while a branch's skipped tasks wait for
        # their trigger rules: normal in every branching run, noise between the demo's lines.
        logging.getLogger("airflow.sdk.definitions.dag").setLevel(logging.ERROR)
        # dag.test() serves the Execution API in process through Starlette's TestClient, which warns
        # about its own httpx use on first import; nothing a Driftline user can act on.
        warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient` is deprecated")
    from driftline import tasklogs

    with tasklogs.written():  # dag.test() writes no task log files: the UI would show none for this run
        dag_run = dag.test(run_conf=conf, logical_date=datetime.now(UTC))
    states = {ti.task_id: str(ti.state.value if hasattr(ti.state, "value") else ti.state)
              for ti in dag_run.get_task_instances()}
    state = dag_run.state.value if hasattr(dag_run.state, "value") else str(dag_run.state)
    return DagRunResult(dag_id=dag_id, run_id=dag_run.run_id, state=str(state), task_states=states)
