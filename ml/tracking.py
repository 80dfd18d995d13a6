"""The MLflow edge: where the tracking store is, which experiment a model logs to, and the
tracker adapter (:class:`MlflowTracker`) the loop's steps log through."""

from __future__ import annotations

import logging
import os
import subprocess
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from ml import links, modelio
from ml.ports import LoggedModel
from ml.settings import PROJECT_ROOT, Settings, get_settings


def client(settings: Settings | None = None):
    """An ``MlflowClient`` on the configured tracking and registry stores (also sets the
    process-wide URIs, which ``mlflow.start_run`` and ``log_model`` use)."""
    import mlflow
    from mlflow import MlflowClient

    settings = settings or get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    # MLflow's setters also export MLFLOW_*_URI; undo that so the environment stays what the user
    # set and get_settings() keeps following DRIFTLINE_HOME within one process.
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def experiment_name(model: str) -> str:
    return f"driftline/{model}"


def ensure_experiment(model: str, settings: Settings | None = None) -> str:
    """The model's experiment id; created with artifacts under the state folder when the tracking
    store is a local database (a tracking server picks its own artifact root)."""
    settings = settings or get_settings()
    mlflow_client = client(settings)
    name = experiment_name(model)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not settings.tracking_uri.startswith(("http://", "https://")):
        location = (settings.artifact_root / model).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location, tags={"driftline.model": model})
    except Exception:
        # Two tasks may race to create it; the loser reads the winner's.
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The checkout's commit, recorded with every candidate ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


class MlflowTracker:
    """The :class:`ml.ports.Tracker` on MLflow: drift-check and candidate runs with their params,
    metrics, config, drift report and model; the evaluation's table and plot; links into MLflow's UI."""

    def __init__(self, config: Any, settings: Settings, mlflow_client: Any) -> None:
        self.config = config
        self.settings = settings
        self.client = mlflow_client

    def _experiment(self) -> str:
        return ensure_experiment(self.config.name, self.settings)

    def log_check(self, run_id: str, as_of: datetime, drift: Any, performance: dict[str, Any]) -> dict[str, str]:
        import mlflow

        experiment = self._experiment()
        with mlflow.start_run(experiment_id=experiment, run_name=f"drift check {as_of:%Y-%m-%d %H:%M}") as active:
            mlflow.set_tags({"driftline.kind": "drift_check", "driftline.dag_run_id": run_id,
                             "driftline.as_of": as_of.isoformat(), "driftline.summary": drift.summary()[:4900]})
            metrics = {"drift_share": drift.drift_share, "drifted_features": len(drift.drifted_features)}
            metrics.update({f"drift_score.{f.name}": f.score for f in drift.features})
            if performance["live"] is not None:
                metrics[f"live_{performance['metric']}"] = performance["live"]
            if performance.get("estimated") is not None:  # label-free (CBPE), see ml/estimation.py
                metrics[f"estimated_{performance['metric']}"] = performance["estimated"]
                metrics["calibration_rows"] = performance["calibration_rows"]
            elif performance.get("estimate_note"):
                mlflow.set_tag("driftline.estimate_note", str(performance["estimate_note"])[:4900])
            mlflow.log_metrics(metrics)
            mlflow.log_dict(drift.to_dict(), "drift/drift.json")
            if drift.report_path:
                mlflow.log_artifact(drift.report_path, "drift")
            check_run = active.info.run_id
        base = self.settings.mlflow_ui_url
        found = {"mlflow_run": links.run_url(base, experiment, check_run)}
        if drift.report_path:
            found["drift_report"] = links.artifact_url(base, experiment, check_run, "drift/drift.html")
        return found

    def log_candidate(self, *, run_id: str, model: Any, train: Any, strategy: str, decision: dict[str, Any],
                      check: dict[str, Any], window: Any, as_of: datetime) -> LoggedModel:
        import mlflow
        import mlflow.sklearn
        from mlflow.models import infer_signature

        from ml.config import format_duration
        from ml.evaluation import compute_metric
        from ml.training import predict

        config = self.config
        experiment = self._experiment()
        X = train[config.feature_names]
        pred, score = predict(config, model, train)
        train_metric = compute_metric(config.promotion.metric, train["label"], pred, score,
                                      pos_label=config.positive_label)
        refit_of = decision.get("refit_of")  # a refit of a blessed candidate (promotion.refit)
        name = f"refit of v{refit_of}" if refit_of is not None else f"candidate {decision['kind']}"
        with mlflow.start_run(experiment_id=experiment, run_name=f"{name} {as_of:%Y-%m-%d %H:%M}") as active:
            if refit_of is not None:
                mlflow.set_tags({"driftline.refit_of": str(refit_of)})
            mlflow.set_tags({
                "driftline.kind": "candidate", "driftline.dag_run_id": run_id, "driftline.trigger": decision["kind"],
                "driftline.reasons": "; ".join(decision["reasons"])[:4900], "driftline.git_commit": git_commit(),
                "driftline.strategy": strategy, "mlflow.note.content": decision.get("summary", ""),
            })
            mlflow.log_params({**{f"estimator.{k}": v for k, v in config.estimator.params.items()},
                               "estimator.class": config.estimator.class_path, "strategy": strategy,
                               "window.training": format_duration(config.windows.training),
                               "window.holdout": format_duration(config.windows.holdout),
                               "data.rows": window.rows, "data.start": window.start, "data.end": window.end,
                               "data.hash": window.content_hash})
            mlflow.log_metrics({f"train_{config.promotion.metric}": train_metric, "train_rows": window.rows})
            mlflow.log_dict(config.snapshot(), "config/model_config.json")
            if check.get("report_path") and Path(check["report_path"]).exists():
                mlflow.log_artifact(check["report_path"], "drift")
            if check.get("drift"):  # a refit runs no drift check of its own
                mlflow.log_dict(check["drift"], "drift/drift.json")
            # skops with the types Driftline trusts (ml/modelio.py); cloudpickle only for a model with
            # a type outside them, said in a tag. Keep MLflow's pickle notice out of task logs.
            trusted = modelio.trusted_types(model)
            fmt = modelio.SKOPS if trusted is not None else modelio.CLOUDPICKLE
            mlflow.set_tags({"driftline.serialization": fmt if trusted is not None else
                             f"{fmt} (types skops is not trusted with: {', '.join(modelio.untrusted_in(model))[:400]})"})
            logging.getLogger("mlflow.sklearn").setLevel(logging.ERROR)
            info = mlflow.sklearn.log_model(
                model, name="model", signature=infer_signature(X, pred), input_example=X.head(5),
                serialization_format=fmt, skops_trusted_types=trusted, pip_requirements=_pip_requirements(fmt),
            )
            return LoggedModel(experiment, active.info.run_id, info.model_uri, info.model_id)

    def log_evaluation(self, logged_run_id: str, evaluation: Any, history: list[tuple[datetime, float]]) -> None:
        import matplotlib.pyplot as plt

        from ml.plots import evaluation_figure

        metric = self.config.promotion.metric
        metrics = {f"holdout_{metric}": evaluation.challenger, "holdout_rows": evaluation.n_rows}
        if evaluation.champion is not None:
            metrics.update({f"champion_holdout_{metric}": evaluation.champion, "improvement": evaluation.improvement,
                            "improvement_ci_low": evaluation.ci_low, "improvement_ci_high": evaluation.ci_high})
        for key, value in metrics.items():
            if value is not None:
                self.client.log_metric(logged_run_id, key, float(value))
        self.client.log_text(logged_run_id, evaluation.table_markdown(), "evaluation/comparison.md")
        figure = evaluation_figure(evaluation.to_dict(), history, metric)
        try:
            self.client.log_figure(logged_run_id, figure, "evaluation/comparison.png")
        finally:
            plt.close(figure)
        self.client.set_tag(logged_run_id, "driftline.verdict_suggested", evaluation.verdict)

    def experiment_of(self, logged_run_id: str) -> str:
        return self.client.get_run(logged_run_id).info.experiment_id

    def candidate_links(self, experiment_id: str, logged_run_id: str, version: int) -> dict[str, str]:
        base = self.settings.mlflow_ui_url
        return {
            "mlflow_run": links.run_url(base, experiment_id, logged_run_id),
            "model_version": links.model_version_url(base, self.config.name, version),
            "drift_report": links.artifact_url(base, experiment_id, logged_run_id, "drift/drift.html"),
        }

    def version_links(self, version: int) -> dict[str, str]:
        return {"model_version": links.model_version_url(self.settings.mlflow_ui_url, self.config.name, version)}


def _pip_requirements(serialization: str) -> list[str]:
    # Given explicitly: MLflow's inference imports the model in a subprocess, seconds per candidate.
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "pandas", "numpy", serialization)]
