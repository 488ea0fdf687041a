"""GET /healthz, /readyz, /v1/model, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..refine import MAX_REFINE_STEPS

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="The model is loaded and the queue is not saturated")
async def readyz(request: Request) -> JSONResponse:
    service = getattr(request.app.state, "service", None)
    if service is None:
        return JSONResponse({"error": "not_ready", "detail": "the model is not loaded"}, status_code=503)
    if service.batcher.saturated:
        return JSONResponse(
            {"error": "not_ready", "detail": f"queue full ({service.batcher.depth} waiting)"}, status_code=503
        )
    return JSONResponse({"status": "ready", "model_id": service.codec.model_id, "queue_depth": service.batcher.depth})


@router.get("/v1/model", summary="The loaded model: id, levels with typical bpp, limits, providers")
async def model_info(request: Request) -> dict:
    service = request.app.state.service
    settings = request.app.state.settings
    manifest = service.codec.model.manifest
    val = manifest.get("val") or {}
    typical = manifest.get("kodak") or {}
    levels = []
    for level in range(1, service.codec.levels + 1):
        entry = {
            "level": level,
            "latent_channels": manifest["latent_channels"][level - 1],
            "stride": manifest["strides"][level - 1],
            "rdoq_lambda": service.codec.rdoq_per_level[level - 1],
        }
        if val.get("bpp"):
            entry["val_bpp_estimate"] = round(val["bpp"][level - 1], 4)
            entry["val_psnr"] = round(val["psnr"][level - 1], 2)
        if typical.get("bpp"):
            entry["kodak_bpp"] = round(typical["bpp"][level - 1], 4)
            entry["kodak_psnr"] = round(typical["psnr"][level - 1], 2)
        levels.append(entry)
    return {
        "model_id": service.codec.model_id,
        "name": manifest.get("name"),
        "levels": levels,
        "padding_multiple": manifest["padding_multiple"],
        "entropy_coding": manifest.get("entropy_coding", {"method": "factorized"}),
        "providers": service.codec.model.providers,
        "refinement": {
            "available": service.codec.model.refinement is not None,
            "default_steps": service.codec.refine_steps,
            "max_steps": MAX_REFINE_STEPS,
        },
        "limits": {
            "max_pixels": settings.max_pixels,
            "max_body_bytes": settings.max_body_bytes,
            "max_batch": settings.max_batch,
            "max_queue_delay_ms": settings.max_queue_delay_ms,
            "queue_size": settings.queue_size,
            "request_timeout_s": settings.request_timeout_s,
        },
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
