"""``python -m driftline.worker celery worker ...``: ``airflow celery worker`` with Driftline's task code
imported first.

Each task runs in a process forked from the worker: it parses the DAG file and runs one step. The DAG
file's imports (pandas, scikit-learn, MLflow, Evidently) cost seconds per task, many more on a busy
machine. Imported once here, before Celery forks its pool, every task process inherits them (copy on
write): a run of the 15-task continuous-training DAG went from 277 s to 146 s on a busy 2-core machine.
"""

from __future__ import annotations

import sys


def main() -> None:
    from airflow.__main__ import main as airflow_main

    import driftline.preload  # noqa: F401  (the one list of what tasks import)

    sys.argv = ["airflow", *sys.argv[1:]]
    airflow_main()


if __name__ == "__main__":
    main()
