"""Running Driftline's DAGs for real without a scheduler: ``dag.test()`` in this process, against
the configured metadata DB. The demo, the CLI's ``run`` command and the integration tests use it."""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
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
    task_tries: dict[str, int] = field(default_factory=dict)  # attempts each task made

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
    _synced_bundles.clear()


# Bundles this process wrote to the metadata DB since its DAGs were last parsed (reload_dags()).
_synced_bundles: set[tuple[str, str | None]] = set()


def _bundle_synced_once(run: Callable[..., DagRunResult]) -> Callable[..., DagRunResult]:
    """``dag.test()`` re-parses its whole DAG bundle and writes every DAG to the metadata DB on each
    call (so sibling DAGs exist), ~0.4 s on a busy 2-core machine, 26 times per demo. The files do
    not change between the runs of one parse here: write once, skip the rest (until reload_dags())."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> DagRunResult:
        import airflow.dag_processing.dagbag as dagbag_module

        original = getattr(dagbag_module, "sync_bag_to_db", None)
        if original is None:  # another Airflow than 3.3's: leave dag.test() as it is
            return run(*args, **kwargs)

        def sync_once(bag, bundle_name, bundle_version=None, *rest, **options):
            key = (bundle_name, bundle_version)
            if key not in _synced_bundles:
                original(bag, bundle_name, bundle_version, *rest, **options)
                _synced_bundles.add(key)

        dagbag_module.sync_bag_to_db = sync_once  # dag.test() imports it by name at each call
        try:
            return run(*args, **kwargs)
        finally:
            dagbag_module.sync_bag_to_db = original

    return wrapper


def get_dag(dag_id: str):
    bag, _ = _dagbag()
    if dag_id not in bag.dags:
        raise KeyError(f"no DAG '{dag_id}'; known: {sorted(bag.dags)}")
    return bag.dags[dag_id]


@_bundle_synced_once
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
    tries = {ti.task_id: int(ti.try_number or 0) for ti in dag_run.get_task_instances()}
    state = dag_run.state.value if hasattr(dag_run.state, "value") else str(dag_run.state)
    return DagRunResult(dag_id=dag_id, run_id=dag_run.run_id, state=str(state), task_states=states,
                        task_tries=tries)


def consume_queued_asset_events(dag_id: str, run_id: str) -> int:
    """Do for a run started here what the scheduler does for an asset-triggered one: link the asset
    events queued for ``dag_id`` to run ``run_id`` and clear the DAG's queue. ``dag.test()`` writes
    the producer's events and queues the consumer like a real run does, but starts no consumer run;
    without this the next scheduler on this DB (``make up``) would start one for an event this run
    already answered. Returns how many events were linked."""
    from airflow.models.asset import AssetDagRunQueue, AssetEvent
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete, select

    with create_session() as session:
        queued = session.scalars(select(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id)).all()
        if not queued:
            return 0
        dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if dag_run is None:
            raise KeyError(f"no run {run_id!r} of DAG {dag_id!r} in the Airflow DB to link its asset events to")
        events = session.scalars(
            select(AssetEvent)
            .where(AssetEvent.asset_id.in_([q.asset_id for q in queued]),
                   AssetEvent.timestamp <= max(q.created_at for q in queued),
                   ~AssetEvent.created_dagruns.any(DagRun.dag_id == dag_id))
            .order_by(AssetEvent.timestamp, AssetEvent.id)
        ).all()
        dag_run.consumed_asset_events.extend(events)
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id,
                                                       AssetDagRunQueue.asset_id.in_([q.asset_id for q in queued])))
        return len(events)
