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


def create_app(
    model: str | None = None, *, poll_seconds: float | None = None, flush_seconds: float | None = None
) -> FastAPI:
    from ml import tracking
    from ml.config import load_config
    from ml.registry import Registry
    from ml.serving import (
        AliasFollower,
        ModelHolder,
        NotReady,
        PredictionWriter,
        RequestError,
        ScoringService,
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
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        def registry() -> Registry:  # built at the first poll, and again at the next if the store is down
            return Registry(config.name, Store(store_url), tracking.client(settings))

        follower = AliasFollower(registry, holder, name=config.name, poll_seconds=poll_seconds)
        state["follower"] = follower
        writer.start()
        service.start()
        await run_in_threadpool(follower.check_once)  # serve at once if a blessed champion exists
        follower.start()
        log.info("serving %s on %s (store %s, poll every %g s)", config.name,
                 f"v{holder.current.version}" if holder.current else "nothing yet", _safe_url(store_url),
                 poll_seconds)
        try:
            yield
        finally:
            # uvicorn has stopped taking requests and let the running ones finish: flush what they queued.
            follower.stop()
            await run_in_threadpool(service.stop)
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
            # Validation off the event loop (a 1000-row body takes a while); scoring on the scorer thread.
            future = await run_in_threadpool(service.submit, payload, received_at)
            answer = await asyncio.wrap_future(future)
        except RequestError as exc:
            return JSONResponse({"detail": exc.errors}, status_code=422)
        except NotReady as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        return JSONResponse(answer)

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
        flush_seconds: float = 0.2, log_level: str = "info") -> int:
    import uvicorn

    from ml.config import load_config
    from ml.settings import get_settings

    load_config(get_settings().models_dir / f"{model}.yaml")  # a bad name or file fails here, once
    os.environ[ENV_MODEL] = model
    os.environ[ENV_POLL] = str(poll_seconds)
    os.environ[ENV_FLUSH] = str(flush_seconds)
    # uvicorn handles SIGTERM / SIGINT: it stops accepting, lets running requests finish (up to the
    # graceful timeout), then runs the lifespan's shutdown, which flushes the writer.
    uvicorn.run("driftline.serve:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, timeout_graceful_shutdown=30)
    return 0
