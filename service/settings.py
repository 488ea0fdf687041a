"""Service settings, all from environment variables with the ``SSLIC_`` prefix (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .codec import DEFAULT_MAX_PIXELS
from .entropy_coder import DEFAULT_RDOQ_LAMBDA
from .imageio import DEFAULT_PNG_LEVEL
from .refine import MAX_REFINE_STEPS

__all__ = ["Settings"]


class Settings(BaseSettings):
    """``SSLIC_MODEL_DIR``, ``SSLIC_PROVIDERS`` (comma list), ``SSLIC_THREADS``, ``SSLIC_MAX_BATCH``, …"""

    model_config = SettingsConfigDict(env_prefix="SSLIC_", protected_namespaces=(), extra="ignore")

    model_dir: Path | None = Field(None, description="artifact folder; default: the shipped model")
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="ONNX Runtime providers, comma separated; empty: CUDA if present, else CPU"
    )
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: one per core)")
    max_batch: int = Field(4, ge=1, le=64, description="largest batch the encoder or a decoder runs")
    max_queue_delay_ms: float = Field(
        0.0, ge=0, le=10_000, description="how long the oldest request may wait for a batch to fill (0: never waits)"
    )
    queue_size: int = Field(64, ge=1, description="requests waiting for the model at most; more get 429")
    request_timeout_s: float = Field(30.0, gt=0, description="a request still waiting for the model then gets 503")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="larger images get 422 (checked before decoding)")
    tile_size: int = Field(
        1024, ge=64, description="images above (tile + 640)² pixels run as overlapping tiles of this core size"
    )
    rdoq_lambda: Annotated[list[float] | None, NoDecode] = Field(
        None,
        description=f"rate-distortion optimised rounding when compressing: the squared latent error one bit is worth, "
        f"one number for every level or a comma list with one per level (0: plain rounding); default: the λ the "
        f"model's tables were fitted for (its manifest), else {DEFAULT_RDOQ_LAMBDA} for every level but the finest, "
        f"which keeps plain rounding",
    )
    refine_steps: int = Field(
        0, ge=0, le=MAX_REFINE_STEPS,
        description="latent refinement steps per level when a compress request gives none (0: none): each step "
        "runs the level's decoder and its gradient, so it is slow; smaller files at the same quality",
    )
    cpu_workers: int = Field(
        0, ge=0, le=256,
        description="request steps that run Python on the CPU (image decoding, RDO rounding, range coding, output "
        "encoding) run in at most this many threads at once (0: one per CPU available to the process); more "
        "threads only fight over the interpreter lock",
    )
    png_level: int = Field(
        DEFAULT_PNG_LEVEL, ge=0, le=9, description="zlib level of PNG responses (0 fastest and largest, 9 smallest)"
    )
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "info"

    @field_validator("rdoq_lambda", mode="before")
    @classmethod
    def _split_rdoq(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()] or None
        if isinstance(value, (int, float)):
            return [value]
        return value

    @field_validator("rdoq_lambda")
    @classmethod
    def _check_rdoq(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(0.0 <= v <= 100.0 for v in value):
            raise ValueError("every RDO rounding λ must be between 0 and 100")
        return value

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
