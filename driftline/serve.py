"""``driftline serve MODEL``: an HTTP scoring service on ``models:/<model>@champion`` (FastAPI on uvicorn).

The logic (validation, the hot swap, the store writer) is in ml/serving.py; this is the HTTP edge and
the process. Each uvicorn worker process builds its own app from the environment (``create_app``
as a factory), so ``--workers N`` gives N processes that each follow the alias and write on their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

log = logging.getLogger("driftline.serve")

# The factory reads its arguments from here, since uvicorn's worker processes import it by name.
ENV_MODEL = "DRIFTLINE_SERVE_MODEL"
ENV_POLL = "DRIFTLINE_SERVE_POLL_SECONDS"
ENV_FLUSH = "DRIFTLINE_SERVE_FLUSH_SECONDS"
# Webhooks (documented in README "Serving"): the shared secret MLflow signs deliveries with (no secret,
# no webhook: polling only), the URL MLflow should call, and how old a delivery may be.
ENV_WEBHOOK_SECRET = "DRIFTLINE_SERVE_WEBHOOK_SECRET"
ENV_WEBHOOK_URL = "DRIFTLINE_SERVE_WEBHOOK_URL"
ENV_WEBHOOK_TOLERANCE = "DRIFTLINE_SERVE_WEBHOOK_TOLERANCE_SECONDS"
ENV_WEBHOOK_ID = "DRIFTLINE_SERVE_WEBHOOK_ID"  # set by run() for its workers: the registered webhook
WEBHOOK_PATH = "/webhooks/mlflow"
INLINE_ROWS = 20  # requests up to this many rows are validated on the event loop, bigger ones in a thread


def create_app(
    model: str | None = None, *, poll_seconds: float | None = None, flush_seconds: float | None = None
) -> FastAPI:
    from ml import tracking
    from ml.config import load_config
    from ml.registry import Registry
    from ml.serving import (
        AliasFollower,
        Canary,
        ChallengerFollower,
        FastPipeline,
        ModelHolder,
        NotReady,
        PredictionWriter,
        RequestError,
        ScoringService,
        ShadowScorer,
        WebhookRejected,
        verify_webhook,
        webhook_concerns,
    )
    from ml.settings import get_settings
    from ml.store import Store

    _log_to_stderr()
    model = model or os.environ[ENV_MODEL]
    poll_seconds = poll_seconds if poll_seconds is not None else float(os.environ.get(ENV_POLL, "2"))
    flush_seconds = flush_seconds if flush_seconds is not None else float(os.environ.get(ENV_FLUSH, "0.2"))
    settings = get_settings()
    config = load_config(settings.models_dir / f"{model}.yaml")
    store_url = config.data.store_url or settings.store_url
    holder = ModelHolder()
    writer = PredictionWriter(store_url, config.name, settings.home / "serving" / "spool",
                              flush_seconds=flush_seconds)
    service = ScoringService(config, holder, writer)
    # serving.shadow: the challenger, while there is one, scores every answered row; stored, not returned.
    # serving.canary_fraction: it answers a stable share of rows, the champion's answer stored beside.
    # One challenger (one holder, one follower) serves both.
    canary_on = config.serving.canary_fraction > 0
    challenger = ModelHolder() if config.serving.shadow or canary_on else None
    shadow = ShadowScorer(config, challenger, writer) if config.serving.shadow else None
    service.shadow = shadow
    canary = Canary(config.name, config.serving.canary_fraction, challenger) if canary_on else None
    service.canary = canary
    state: dict[str, Any] = {}
    webhook_secret = os.environ.get(ENV_WEBHOOK_SECRET) or None
    webhook_tolerance = float(os.environ.get(ENV_WEBHOOK_TOLERANCE, "300"))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        def registry() -> Registry:  # built at the first poll, and again at the next if the store is down
            return Registry(config.name, Store(store_url), tracking.client(settings))

        def fast_path(model: Any) -> FastPipeline | None:  # built once per loaded version, champion or canary
            return FastPipeline.compile(model, config)

        follower = AliasFollower(registry, holder, name=config.name, poll_seconds=poll_seconds, prepare=fast_path)
        state["follower"] = follower
        writer.start()
        service.start()
        await run_in_threadpool(follower.check_once)  # serve at once if a blessed champion exists
        follower.start()
        if challenger is not None:
            # A canary answers users: only a challenger waiting for the shadow gate, with the fast path
            # where its pipeline allows (its answers are on the request path, as the champion's are).
            state["shadow_follower"] = ChallengerFollower(
                registry, challenger, name=config.name, poll_seconds=poll_seconds,
                gate="shadow" if canary_on else None,
                prepare=fast_path if canary_on else None)
            if shadow is not None:
                shadow.start()
            await run_in_threadpool(state["shadow_follower"].check_once)
            state["shadow_follower"].start()
        log.info("serving %s on %s (store %s, poll every %g s)", config.name,
                 f"v{holder.current.version}" if holder.current else "nothing yet", _safe_url(store_url),
                 poll_seconds)
        try:
            yield
        finally:
            # uvicorn has stopped taking requests and let the running ones finish: flush what they queued.
            follower.stop()
            await run_in_threadpool(service.stop)
            if "shadow_follower" in state:
                state["shadow_follower"].stop()
            if shadow is not None:  # its rows go to the writer: stopped before the writer flushes
                await run_in_threadpool(shadow.stop)
            await run_in_threadpool(writer.close)
            log.info("stopped: %s", json.dumps(writer.describe()))

    app = FastAPI(title=f"Driftline scoring: {config.name}", lifespan=lifespan)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        received_at = datetime.now(UTC)
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return JSONResponse({"detail": [{"loc": ["body"], "msg": f"not valid JSON: {exc}",
                                             "type": "json_invalid"}]}, status_code=422)
        try:
            # A small body is validated (and, with the NumPy fast path, scored) here: tens of
            # microseconds, less than the hand-offs to other threads would cost. A large one is
            # validated off the event loop (1000 rows take a while) and scored on the scorer thread.
            rows = payload.get("rows") if isinstance(payload, dict) else None
            if isinstance(rows, list) and len(rows) <= INLINE_ROWS:
                answer = service.answer_now(payload, received_at)
                if answer is None:
                    answer = await asyncio.wrap_future(service.submit(payload, received_at))
            else:
                future = await run_in_threadpool(service.submit, payload, received_at)
                answer = await asyncio.wrap_future(future)
        except RequestError as exc:
            return JSONResponse({"detail": exc.errors}, status_code=422)
        except NotReady as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        return JSONResponse(answer)

    @app.post(WEBHOOK_PATH)
    async def mlflow_webhook(request: Request) -> JSONResponse:
        """MLflow's registry webhook: a signed "something moved" that makes the follower check now.
        It carries no trust: the follower re-reads the alias and runs the same lineage check as a poll."""
        if webhook_secret is None:
            return JSONResponse({"detail": f"webhooks are off: {ENV_WEBHOOK_SECRET} is not set"}, status_code=404)
        body = await request.body()
        try:
            verify_webhook(webhook_secret, request.headers, body, tolerance_seconds=webhook_tolerance)
        except WebhookRejected as exc:
            log.warning("webhook refused (401): %s", exc)
            return JSONResponse({"detail": f"bad signature: {exc}"}, status_code=401)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"detail": "signed, but not JSON"}, status_code=422)
        follower = state.get("follower")
        if follower is None or not webhook_concerns(payload, config.name):
            return JSONResponse({"status": "ignored"})
        follower.wake()
        if state.get("shadow_follower") is not None:
            state["shadow_follower"].wake()
        return JSONResponse({"status": "checking"}, status_code=202)

    @app.get("/health")
    async def health() -> JSONResponse:
        served = holder.current
        body = {"status": "ok" if served else "no_model", "model": config.name,
                "version": served.version if served else None, "writer": writer.describe()}
        return JSONResponse(body, status_code=200 if served else 503)

    @app.get("/model")
    async def model_info() -> JSONResponse:
        served = holder.current
        follower = state.get("follower")
        body = served.describe() if served else {"model": config.name, "version": None}
        body["features"] = [{"name": f.name, "kind": f.kind} for f in config.features]
        body["task"] = config.task
        body["follower"] = follower.describe() if follower else None
        challenger_follower = state["shadow_follower"].describe() if "shadow_follower" in state else None
        body["shadow"] = None if shadow is None else {**shadow.describe(), "follower": challenger_follower}
        body["canary"] = None if canary is None else {**canary.describe(), "follower": challenger_follower}
        body["webhook"] = {"registered": os.environ.get(ENV_WEBHOOK_ID) or None, "secret_set": webhook_secret is not None}
        return JSONResponse(body, status_code=200 if served else 503)

    return app


def _log_to_stderr() -> None:
    """uvicorn configures only its own loggers, and its worker processes are spawned fresh."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def run(model: str, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, poll_seconds: float = 2.0,
        flush_seconds: float = 0.2, log_level: str = "info", webhook_poll_seconds: float = 30.0,
        webhook_url: str | None = None) -> int:
    import uvicorn

    from ml.config import load_config
    from ml.settings import get_settings

    _log_to_stderr()
    load_config(get_settings().models_dir / f"{model}.yaml")  # a bad name or file fails here, once
    # Registered once here, not per worker: MLflow calls one URL, and the worker that answers it
    # checks at once; the others follow at their next poll.
    webhook_id = register_webhook(model, webhook_url or os.environ.get(ENV_WEBHOOK_URL)
                                  or f"http://{_callable_host(host)}:{port}{WEBHOOK_PATH}")
    if webhook_id is not None:
        # Polling stays on as the fallback (a delivery lost, MLflow restarted without its encryption
        # key, a worker the webhook did not reach), but need not be frequent.
        poll_seconds = max(poll_seconds, webhook_poll_seconds)
        os.environ[ENV_WEBHOOK_ID] = webhook_id
    os.environ[ENV_MODEL] = model
    os.environ[ENV_POLL] = str(poll_seconds)
    os.environ[ENV_FLUSH] = str(flush_seconds)
    # uvicorn handles SIGTERM / SIGINT: it stops accepting, lets running requests finish (up to the
    # graceful timeout), then runs the lifespan's shutdown, which flushes the writer.
    if webhook_id is None:
        uvicorn.run("driftline.serve:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, timeout_graceful_shutdown=30)
        return 0
    # After a graceful stop uvicorn re-raises the signal to the handler that was there before it:
    # make that one unwind to here, so the webhook is deleted, then die of the signal as before.
    import signal

    stopped: list[int] = []

    def _unwind(sig: int, _frame: Any) -> None:
        stopped.append(sig)
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, _unwind) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run("driftline.serve:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, timeout_graceful_shutdown=30)
    except SystemExit:
        if not stopped:
            raise
    finally:
        unregister_webhook(webhook_id)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in stopped[:1]:
        signal.raise_signal(sig)
    return 0


def _callable_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def register_webhook(model: str, url: str) -> str | None:
    """The webhook's id, or None (polling only) when no secret is set or the tracking server cannot
    call us; says which in the log. Only a tracking *server* fires webhooks (a local database does
    not: nothing runs to send them), and MLflow's own rules apply (SQL-backed store; https and public
    addresses only unless its server sets ``MLFLOW_WEBHOOK_ALLOWED_SCHEMES`` /
    ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS``)."""
    from ml import tracking
    from ml.serving import ensure_webhook
    from ml.settings import get_settings

    secret = os.environ.get(ENV_WEBHOOK_SECRET)
    if not secret:
        log.info("webhooks off (%s not set): following %s@champion by polling", ENV_WEBHOOK_SECRET, model)
        return None
    settings = get_settings()
    if not settings.registry_uri.startswith(("http://", "https://")):
        log.warning("webhooks off: the registry is %s, not a tracking server (only a server sends webhooks); "
                    "polling", _safe_url(settings.registry_uri) if "://" in settings.registry_uri else "local")
        return None
    try:
        webhook_id = ensure_webhook(tracking.client(settings), model, url, secret)
    except Exception as exc:  # noqa: BLE001 (any refusal: polling still follows the alias)
        log.warning("webhooks off: MLflow refused to register %s (%s: %s); polling", url, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
        return None
    log.info("MLflow webhook %s registered: alias moves post to %s", webhook_id, url)
    return webhook_id


def unregister_webhook(webhook_id: str) -> None:
    """At a clean stop: MLflow would otherwise keep calling (and retrying) a URL nobody answers."""
    from ml import tracking

    try:
        tracking.client().delete_webhook(webhook_id)
    except Exception as exc:  # noqa: BLE001 (best effort: the next start re-uses it by name)
        log.warning("could not delete MLflow webhook %s: %s", webhook_id, exc)
