"""Driftline's command line and the Airflow-side runners (demo, local stack)."""
