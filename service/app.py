"""The FastAPI application: ``create_app(settings)``; the model loads in the lifespan, before the first request.

Errors are JSON ``{"error": code, "detail": message}`` with a precise status (see ``STATUS_BY_ERROR``);
every response carries ``X-Request-ID`` (the client's, if it is a valid one, else a generated one).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .batching import NotReady, QueueFull, QueueTimeout
from .codec import Codec, rdoq_lambdas
from .errors import (
    BitstreamError,
    ImageError,
    InvalidParameter,
    LevelNotInStream,
    ModelLoadError,
    RefinementTimeout,
    SslicError,
    UnknownModel,
    UnsupportedImageType,
)
from .metrics import Metrics
from .pipeline import CodecService, TargetUnreachable
from .routes import codec as codec_routes
from .routes import ops as ops_routes
from .routes.body import BodyTooLarge
from .settings import Settings

__all__ = ["create_app", "STATUS_BY_ERROR"]

log = logging.getLogger("sslic.service")

# most specific first
STATUS_BY_ERROR: list[tuple[type[SslicError], int]] = [
    (BodyTooLarge, 413),
    (UnsupportedImageType, 415),
    (UnknownModel, 409),
    (QueueFull, 429),
    (QueueTimeout, 503),
    (RefinementTimeout, 503),
    (NotReady, 503),
    (ModelLoadError, 503),
    (ImageError, 422),
    (BitstreamError, 422),
    (TargetUnreachable, 422),
    (LevelNotInStream, 400),
    (InvalidParameter, 400),
    (SslicError, 400),
]
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
RETRY_AFTER_S = 1


def _status_for(error: SslicError) -> int:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 400


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def create_app(settings: Settings | None = None, codec: Codec | None = None) -> FastAPI:
    """The app; ``codec`` lets a caller (tests, benchmarks) share an already loaded model."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = codec
        if loaded is None:
            loaded = await run_in_threadpool(
                Codec.from_dir,
                settings.model_dir,
                settings.providers or None,
                settings.threads,
                settings.max_pixels,
                settings.tile_size,
                settings.rdoq_lambda,
                settings.refine_steps,
            )
        elif (loaded.max_pixels, loaded.rdoq_per_level, loaded.refine_steps) != (
            settings.max_pixels, rdoq_lambdas(settings.rdoq_lambda, loaded.levels, loaded.model.fitted_rdoq_lambda),
            settings.refine_steps
        ):
            loaded = Codec(loaded.model, settings.max_pixels, settings.rdoq_lambda, settings.refine_steps)
        service = CodecService(loaded, settings, metrics)
        metrics.model_info.info(
            {
                "model_id": loaded.model_id,
                "name": str(loaded.model.manifest.get("name", "")),
                "levels": str(loaded.levels),
                "providers": ",".join(loaded.model.providers),
                "version": __version__,
            }
        )
        app.state.service = service
        log.info("model %s loaded (%s)", loaded.model_id, ", ".join(loaded.model.providers))
        try:
            yield
        finally:
            app.state.service = None
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="sslic",
        version=__version__,
        description="Learned variable-rate image compression (self-supervised features + attention).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    app.include_router(codec_routes.router)
    app.include_router(ops_routes.router)

    @app.exception_handler(SslicError)
    async def sslic_error(request: Request, error: SslicError) -> JSONResponse:
        status = _status_for(error)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
        if status in (413, 429, 503):
            metrics.rejected.labels(error.code).inc()
        return _error(status, error.code, error.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in error.errors()
        )
        return _error(400, "invalid_parameter", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(error.status_code, codes.get(error.status_code, "http_error"), str(error.detail), error.headers)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        request_id = request.headers.get("x-request-id")
        if request_id is not None and not REQUEST_ID.fullmatch(request_id):
            response = _error(400, "invalid_request_id", "X-Request-ID must be 1-128 characters of [A-Za-z0-9._:-]")
            request_id = uuid.uuid4().hex
        else:
            request_id = request_id or uuid.uuid4().hex
            if request.url.path in ("/compress", "/decompress", "/extract") and app.state.service is None:
                response = _error(503, "not_ready", "the model is not loaded", {"Retry-After": str(RETRY_AFTER_S)})
                metrics.rejected.labels("not_ready").inc()
            else:
                try:
                    response = await call_next(request)
                except Exception:  # a bug, not the client's fault: logged with the request id
                    log.exception("request %s failed", request_id)
                    response = _error(500, "internal_error", f"internal error (request id {request_id})")
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        declared = request.headers.get("content-length", "")
        if declared.isdigit():
            metrics.bytes_in.labels(endpoint).inc(int(declared))
        sent = response.headers.get("content-length", "")
        if sent.isdigit():
            metrics.bytes_out.labels(endpoint).inc(int(sent))
        response.headers["X-Request-ID"] = request_id
        return response

    return app
