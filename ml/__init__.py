"""Driftline's domain core: config, store, validation, drift, triggers, training, evaluation,
registry, scoring. Plain Python: nothing here imports Airflow."""
