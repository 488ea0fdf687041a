"""Reading request bodies with the size limit enforced while streaming (raw or multipart field ``file``)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile

from ..errors import InvalidParameter, SslicError

__all__ = ["Upload", "BodyTooLarge", "read_upload"]


class BodyTooLarge(SslicError):
    code = "body_too_large"


@dataclass(frozen=True)
class Upload:
    data: bytes
    content_type: str


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as error:
            raise InvalidParameter("Content-Length is not an integer") from error
        if size > limit:
            raise BodyTooLarge(f"body of {size} bytes is above the limit of {limit}")
    chunks = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(f"body is above the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request) -> Upload:
    """The body, or the multipart field ``file``; its content type (lower case, no parameters)."""
    limit = request.app.state.settings.max_body_bytes
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_limited(request, limit)
    if content_type == "multipart/form-data":
        request._body = body  # starlette parses the form from the body already read
        try:
            form = await request.form(max_files=1, max_fields=10, max_part_size=limit)
        except Exception as error:  # python-multipart and starlette raise several types for malformed bodies
            raise InvalidParameter(f"malformed multipart body: {error}") from error
        field = form.get("file")
        if not isinstance(field, UploadFile):
            raise InvalidParameter("multipart body needs a file field named 'file'")
        data = await field.read()
        part_type = (field.content_type or "application/octet-stream").split(";")[0].strip().lower()
        await form.close()
        return Upload(data, part_type)
    if not body:
        raise InvalidParameter("empty request body")
    return Upload(body, content_type)
