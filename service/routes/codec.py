"""POST /compress, /decompress, /extract."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from ..codec import rdoq_lambdas
from ..errors import InvalidParameter, UnsupportedImageType
from ..pipeline import CodecService
from ..refine import MAX_REFINE_STEPS, Refinement
from .body import read_upload

router = APIRouter(tags=["codec"])

CONTAINER_TYPE = "application/octet-stream"


def get_service(request: Request) -> CodecService:
    return request.app.state.service


def _level(value: str | None, levels: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError as error:
        raise InvalidParameter(f"level must be an integer 1..{levels}, got {value!r}") from error
    if not 1 <= number <= levels:
        raise InvalidParameter(f"level {number} is outside 1..{levels}")
    return number


def _rdoq(value: str | None, levels: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = [float(part) for part in value.split(",")]
    except ValueError as error:
        raise InvalidParameter(f"rdoq must be a number or a comma list of numbers, got {value!r}") from error
    return rdoq_lambdas(numbers, levels)


def _refine(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        steps = int(value)
    except ValueError as error:
        raise InvalidParameter(f"refine must be an integer 0..{MAX_REFINE_STEPS}, got {value!r}") from error
    return Refinement(steps).steps


@router.post(
    "/compress",
    response_class=Response,
    responses={200: {"content": {CONTAINER_TYPE: {}}, "description": "an sslic container (docs/bitstream.md)"}},
    summary="Compress an image (raw body image/* or application/octet-stream, or multipart field `file`)",
)
async def compress(
    request: Request,
    service: Annotated[CodecService, Depends(get_service)],
    level: Annotated[str | None, Query(description="1..L, a comma list such as 1,3, or all; default: finest")] = None,
    target_bpp: Annotated[float | None, Query(description="finest level whose container fits this many bpp")] = None,
    target_psnr: Annotated[float | None, Query(description="coarsest level reaching this PSNR (dB) on this image")] = None,
    rdoq: Annotated[str | None, Query(
        description="RDO rounding λ: one number for every level or a comma list, one per level; 0 is plain rounding; "
                    "default: the service's (SSLIC_RDOQ_LAMBDA)")] = None,
    refine: Annotated[str | None, Query(
        description=f"latent refinement steps per level, 0..{MAX_REFINE_STEPS}: slower, smaller files at the same "
                    "quality (docs/service.md); default: the service's (SSLIC_REFINE_STEPS)")] = None,
) -> Response:
    upload = await read_upload(request)
    if not (upload.content_type.startswith("image/") or upload.content_type in ("application/octet-stream", "")):
        raise UnsupportedImageType(
            f"Content-Type {upload.content_type!r}: send image/*, application/octet-stream or multipart field 'file'"
        )
    result = await service.compress(
        upload.data, level, target_bpp, target_psnr, _rdoq(rdoq, service.codec.levels), _refine(refine)
    )
    headers = {
        "X-SSLIC-Levels": ",".join(str(lv) for lv in result.levels),
        "X-SSLIC-Bytes": str(len(result.data)),
        "X-SSLIC-BPP": f"{result.bpp:.6f}",
        "X-SSLIC-Width": str(result.width),
        "X-SSLIC-Height": str(result.height),
        "X-SSLIC-Model-Id": service.codec.model_id,
    }
    if result.psnr is not None:
        headers["X-SSLIC-PSNR"] = f"{result.psnr:.4f}"
    return Response(result.data, media_type=CONTAINER_TYPE, headers=headers)


@router.post(
    "/decompress",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}}}},
    summary="Decode a container to an image (PNG by default, alpha restored)",
)
async def decompress(
    request: Request,
    service: Annotated[CodecService, Depends(get_service)],
    level: Annotated[str | None, Query(description="level to decode; default: the finest present")] = None,
    format: Annotated[str, Query(description="png (default), webp (lossless) or jpeg")] = "png",
) -> Response:
    upload = await read_upload(request)
    data, media_type, container, decoded_level = await service.decompress(
        upload.data, _level(level, service.codec.levels), format
    )
    headers = {
        "X-SSLIC-Level": str(decoded_level),
        "X-SSLIC-Width": str(container.width),
        "X-SSLIC-Height": str(container.height),
        "X-SSLIC-Model-Id": container.model_id,
    }
    return Response(data, media_type=media_type, headers=headers)


@router.post(
    "/extract",
    response_class=Response,
    responses={200: {"content": {CONTAINER_TYPE: {}}}},
    summary="Copy one level of a multi-level container into a single-level one (no model run)",
)
async def extract(
    request: Request,
    service: Annotated[CodecService, Depends(get_service)],
    level: Annotated[str | None, Query(description="level to keep; default: the finest present")] = None,
) -> Response:
    upload = await read_upload(request)
    data = await service.extract(upload.data, _level(level, 255))
    return Response(data, media_type=CONTAINER_TYPE, headers={"X-SSLIC-Bytes": str(len(data))})
