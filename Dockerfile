# One image for every Driftline service: the Airflow components (api-server, scheduler, dag-processor,
# triggerer, Celery workers), airflow-init and the MLflow server. It installs pyproject.toml's pins,
# the Celery executor and the Redis providers included. Built by `docker compose build`.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    DRIFTLINE_ROOT=/opt/driftline DRIFTLINE_HOME=/data PYTHONPATH=/opt/driftline \
    AIRFLOW_HOME=/opt/airflow AIRFLOW_CONFIG=/opt/driftline/airflow.cfg
WORKDIR /opt/driftline

# Dependencies first, read from pyproject.toml alone: editing the code does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY ml ml
COPY driftline driftline
RUN pip install --no-deps -e .
COPY airflow.cfg ./
COPY dags dags
COPY plugins plugins
COPY models models
COPY deploy deploy
RUN install -m 0755 deploy/entrypoint.sh /usr/local/bin/driftline-entrypoint \
    && useradd --uid 50000 --gid 0 --home-dir /opt/airflow --no-create-home driftline \
    && mkdir -p /opt/airflow /data /mlartifacts /mlflow-auth \
    && chown -R 50000:0 /opt/airflow /data /mlartifacts /mlflow-auth \
    && chmod 0700 /mlflow-auth

# Named volumes mounted on these folders start with this ownership.
USER 50000
ENTRYPOINT ["driftline-entrypoint"]
CMD ["airflow", "version"]
