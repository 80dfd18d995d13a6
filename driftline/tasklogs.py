"""Task log files for DAG runs made in this process (``dag.test()``: ``make demo``, ``driftline run``,
the integration tests).

``dag.test()`` runs each task in process and prints its log lines; it writes no log file. The
api-server shows a finished task's log from ``[logging] base_log_folder`` and, finding none, asks the
log server of the machine the task ran on, which has none either (and, before each state folder had
one ``[api] secret_key``, refused the api-server's token: the "!!!! Please make sure that all your
Airflow components ... have the same 'secret_key'" page). :func:`written` makes each task try of such
a run write its log where a worker would, as JSON lines like a worker's, so the UI shows it.

What lands in the file: Driftline's own lines (logger ``driftline``, INFO and up, also when the
console is kept quiet) and whatever Airflow logs at the console's level, exceptions with their
traceback. The console output is unchanged.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

_lock = threading.Lock()
_sink: TextIO | None = None  # the running task try's log file, while one runs


def _error_detail(exc_info: Any) -> list[dict[str, Any]] | None:
    """The exception as Airflow's JSON task logs carry it (``error_detail``), which the UI renders."""
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or exc_info[0] is None:
        return None
    import structlog

    return structlog.tracebacks.ExceptionDictTransformer(show_locals=False)(exc_info)


def _write(entry: dict[str, Any]) -> None:
    with _lock:
        if _sink is not None:
            _sink.write(json.dumps(entry, default=str) + "\n")
            _sink.flush()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _structlog_tee(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor (Airflow's own task lines): copies each event into the task's file."""
    if _sink is not None:
        entry = {k: v for k, v in event_dict.items() if not k.startswith("_")}
        detail = _error_detail(entry.pop("exc_info", None))
        _write({"timestamp": str(entry.pop("timestamp", None) or _now()), "level": entry.pop("level", method_name),
                "event": str(entry.pop("event", "")), **entry, **({"error_detail": detail} if detail else {})})
    return event_dict


class _FileHandler(logging.Handler):
    """Standard-library records (Driftline's ``driftline`` logger, libraries) into the task's file."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            detail = _error_detail(record.exc_info) if record.exc_info else None
            _write({"timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
                    "level": record.levelname.lower(), "event": record.getMessage(), "logger": record.name,
                    **({"error_detail": detail} if detail else {})})
        except Exception:  # noqa: BLE001 (a log line must never fail the task)
            self.handleError(record)


def log_path(ti: Any) -> Path:
    """Where the api-server looks for this task try's log: Airflow renders the name from the run's
    own log template, as for a worker's file."""
    from airflow.configuration import conf
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.log.file_task_handler import FileTaskHandler
    from airflow.utils.session import create_session

    base = conf.get("logging", "base_log_folder")
    with create_session() as session:
        db_ti = session.get(TaskInstance, ti.id)
        if db_ti is None:
            raise KeyError(f"task instance {ti.id} ({ti.dag_id}.{ti.task_id}) is not in the metadata DB")
        name = FileTaskHandler(base)._render_filename(db_ti, ti.try_number, session=session)
    return Path(base, name)


@contextmanager
def written() -> Iterator[None]:
    """While inside, every task ``dag.test()`` runs in this process writes its log file."""
    import structlog
    from airflow.sdk.execution_time import supervisor

    original = supervisor.run_task_in_process
    handler = _FileHandler(logging.INFO)
    driftline_logger = logging.getLogger("driftline")

    def run_task_in_process(ti, task, *args, **kwargs):
        global _sink
        # Airflow may have configured structlog again since the last task: tee its events once more.
        processors = structlog.get_config()["processors"]
        if _structlog_tee not in processors:
            processors.insert(max(len(processors) - 1, 0), _structlog_tee)  # before the console renderer
        try:
            path = log_path(ti)
            path.parent.mkdir(parents=True, exist_ok=True)
        except Exception as exc:  # noqa: BLE001 (no log file is no reason to fail the task itself)
            logging.getLogger("driftline").warning("no log file for %s.%s: %s", ti.dag_id, ti.task_id, exc)
            return original(ti, task, *args, **kwargs)
        level = driftline_logger.level
        # INFO reaches the file even when the console shows warnings only (its handler filters).
        driftline_logger.setLevel(logging.INFO)
        logging.getLogger().addHandler(handler)
        with open(path, "a", encoding="utf-8") as sink:
            _sink = sink
            try:
                return original(ti, task, *args, **kwargs)
            finally:
                with _lock:
                    _sink = None
                logging.getLogger().removeHandler(handler)
                driftline_logger.setLevel(level)

    supervisor.run_task_in_process = run_task_in_process
    try:
        yield
    finally:
        supervisor.run_task_in_process = original
