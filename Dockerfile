# One image for every Driftline service: Airflow components and the MLflow server.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 DRIFTLINE_ROOT=/opt/driftline AIRFLOW_HOME=/opt/airflow
WORKDIR /opt/driftline
COPY pyproject.toml README.md ./
COPY ml ml
COPY driftline driftline
RUN pip install -e . && mkdir -p /opt/airflow /data
COPY airflow.cfg ./
COPY dags dags
COPY plugins plugins
COPY models models
ENV AIRFLOW_CONFIG=/opt/driftline/airflow.cfg PYTHONPATH=/opt/driftline
