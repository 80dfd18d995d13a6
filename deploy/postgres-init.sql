-- Airflow and MLflow each keep an alembic_version table: give each its own database.
CREATE DATABASE airflow OWNER driftline;
CREATE DATABASE mlflow OWNER driftline;
