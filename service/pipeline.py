"""The request pipeline of the HTTP service: CPU-bound steps in worker threads, model runs through the
dynamic batcher, per-stage timings into the metrics. Nothing here runs CPU work on the event loop."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio.to_thread
import numpy as np
from anyio import CapacityLimiter

from .batching import DynamicBatcher, QueueTimeout
from .bitstream import Container, extract_level
from .codec import Codec, pad_image, parse_levels, to_uint8
from .errors import InvalidParameter, SslicError
from .imageio import InputImage, encode_image, to_pil
from .metrics import Metrics
from .refine import Refinement
from .settings import Settings

__all__ = ["CodecService", "CompressResult", "TargetUnreachable", "MEDIA_TYPES", "cpu_count"]

MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg", "jpg": "image/jpeg"}


class TargetUnreachable(SslicError):
    """No level of the model meets the requested target_bpp / target_psnr for this image."""

    code = "target_unreachable"


@dataclass(frozen=True)
class CompressResult:
    data: bytes
    levels: list[int]
    width: int
    height: int
    psnr: float | None = None

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.width * self.height)


class _Timer:
    def __init__(self, metrics: Metrics, stage: str):
        self.histogram = metrics.stage.labels(stage)

    def __enter__(self) -> "_Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.histogram.observe(time.perf_counter() - self.start)


_T = TypeVar("_T")
LevelSymbols = Callable[[int], Awaitable[np.ndarray]]  # a level (1-based) → its integer symbols, on demand


def cpu_count(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (``cpu.max`` of cgroup v2,
    ``cpu/cpu.cfs_quota_us`` of v1; a container's ``--cpus`` or a Kubernetes CPU limit), rounded up."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    return max(1, min(count, math.ceil(quota))) if quota else count


def _cgroup_quota(cgroup: Path) -> float | None:
    """CPUs the cgroup quota allows (quota / period), or ``None`` without a quota or a readable cgroup."""
    try:
        fields = (cgroup / "cpu.max").read_text().split()
    except OSError:
        try:
            fields = [(cgroup / "cpu" / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
        except OSError:
            return None
    try:
        quota, period = float(fields[0]), float(fields[1])
    except (ValueError, IndexError):
        return None  # "max": no quota
    return quota / period if quota > 0 and period > 0 else None


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


class CodecService:
    """The codec behind the HTTP API: one batcher for the encoder and every decoder level."""

    def __init__(self, codec: Codec, settings: Settings, metrics: Metrics):
        self.codec = codec
        self.settings = settings
        self.metrics = metrics
        self.cpu_limiter = CapacityLimiter(settings.cpu_workers or cpu_count())
        self.batcher = DynamicBatcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_delay_s=settings.max_queue_delay_ms / 1000.0,
            queue_size=settings.queue_size,
            observe_batch=lambda key, size: metrics.batch_size.labels(key[0]).observe(size),
        )

    def close(self) -> None:
        self.batcher.close()

    async def _on_cpu(self, function: Callable[..., _T], *args) -> _T:
        """Run a CPU-bound step in a worker thread, at most ``cpu_workers`` of them at once."""
        return await anyio.to_thread.run_sync(functools.partial(function, *args), limiter=self.cpu_limiter)

    # -- model runs (worker thread) -----------------------------------------------------------------------
    def _run_batch(self, key: Hashable, payloads: Sequence[np.ndarray]) -> list:
        graph = key[0]
        batch = np.stack(payloads)
        if graph == "encoder":
            with _Timer(self.metrics, "encoder"):
                latents = self.codec.model.encode_latents(batch)
            return [[latent[i] for latent in latents] for i in range(len(payloads))]
        level = key[1]
        with _Timer(self.metrics, "decoder"):
            images = self.codec.model.decode_latent(level, batch)
        return [images[i] for i in range(len(payloads))]

    async def _model(self, key: tuple, payload: np.ndarray, deadline: float):
        scale = self.codec.model.strides[key[1] - 1] ** 2 if key[0] == "decoder" else 1
        if payload.shape[-2] * payload.shape[-1] * scale > self.codec.model.tiling.threshold_pixels:
            key = (*key, object())  # large images run tiled and alone: never stacked into a batch
        future = self.batcher.submit(key, payload)
        self.metrics.queue_depth.set(self.batcher.depth)
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(remaining, 0.001))
        except asyncio.TimeoutError as error:
            future.cancel()
            raise QueueTimeout(
                f"the request did not get through the model within {self.settings.request_timeout_s:g} s"
            ) from error
        finally:
            self.metrics.queue_depth.set(self.batcher.depth)

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s

    # -- compress -----------------------------------------------------------------------------------------
    async def compress(
        self,
        body: bytes,
        level: str | None = None,
        target_bpp: float | None = None,
        target_psnr: float | None = None,
        rdoq: tuple[float, ...] | None = None,
        refine: int | None = None,
    ) -> CompressResult:
        """``rdoq``: the RDO rounding λ per level for this request (default: the service's); ``refine``: latent
        refinement steps per level (default: the service's, ``SSLIC_REFINE_STEPS``)."""
        deadline = self._deadline()
        per_level = rdoq if rdoq is not None else self.codec.rdoq_per_level
        steps = Refinement(refine if refine is not None else self.codec.refine_steps).steps
        if sum(x is not None for x in (level, target_bpp, target_psnr)) > 1:
            raise InvalidParameter("give at most one of level, target_bpp and target_psnr")
        if target_bpp is not None and not target_bpp > 0:
            raise InvalidParameter("target_bpp must be a positive number")
        if target_psnr is not None and not 0 < target_psnr < 200:
            raise InvalidParameter("target_psnr must be in (0, 200) dB")
        levels = parse_levels(level, self.codec.levels)
        plain = self.codec.plain_levels(per_level)

        with _Timer(self.metrics, "decode_input"):
            image = await self._on_cpu(self.codec.load_image, body)
        padded = await self._on_cpu(pad_image, image.rgb, self.codec.model.padding_multiple)
        latents = await self._model(("encoder", padded.shape[1], padded.shape[2]), padded, deadline)

        async def level_symbols(lv: int) -> np.ndarray:
            """One level's symbols: refined first when the request asks for it, then (RDO) rounded."""
            latent = latents[lv - 1]
            if steps:
                with _Timer(self.metrics, "refinement"):
                    latent = await self._on_cpu(self.codec.refine, lv, padded, image, latent, steps, deadline)
            with _Timer(self.metrics, "range_coding"):
                return await self._on_cpu(self.codec.quantize, lv, latent, per_level[lv - 1])

        if target_bpp is not None:
            result = await self._fit_bpp(image, level_symbols, target_bpp, plain)
        elif target_psnr is not None:
            result = await self._fit_psnr(image, level_symbols, target_psnr, deadline, plain)
        else:
            symbols = {lv: await level_symbols(lv) for lv in levels}
            with _Timer(self.metrics, "range_coding"):
                data = await self._on_cpu(self.codec.container_from_symbols, image, symbols, plain)
            result = CompressResult(data, levels, image.width, image.height)
        if len(result.levels) == 1:
            self.metrics.bpp.labels(str(result.levels[0])).observe(result.bpp)
        return result

    async def _fit_bpp(self, image: InputImage, level_symbols: LevelSymbols, target: float, plain: list[int]
                       ) -> CompressResult:
        """The finest level whose container fits ``target`` bpp, trying the finest first: levels below the one
        chosen are never computed (with refinement, that saves seconds per level)."""
        pixels = image.width * image.height
        smallest = float("inf")
        for lv in range(self.codec.levels, 0, -1):
            symbols = await level_symbols(lv)
            with _Timer(self.metrics, "range_coding"):
                data = await self._on_cpu(self.codec.container_from_symbols, image, {lv: symbols}, plain)
            bpp = len(data) * 8 / pixels
            if bpp <= target:
                return CompressResult(data, [lv], image.width, image.height)
            smallest = bpp
        raise TargetUnreachable(f"no level fits {target:g} bpp; the smallest (level 1) takes {smallest:.4f} bpp")

    async def _fit_psnr(
        self, image: InputImage, level_symbols: LevelSymbols, target: float, deadline: float, plain: list[int]
    ) -> CompressResult:
        """The coarsest level whose decoded pixels reach ``target`` dB, trying the coarsest first: levels above
        the one chosen are never computed."""
        best = float("-inf")
        for lv in range(1, self.codec.levels + 1):
            symbols = await level_symbols(lv)
            decoded = await self._decode_pixels(lv, symbols, image.height, image.width, deadline, lv in plain)
            quality = _psnr(decoded, image.rgb)
            best = max(best, quality)
            if quality >= target:
                with _Timer(self.metrics, "range_coding"):
                    data = await self._on_cpu(self.codec.container_from_symbols, image, {lv: symbols}, plain)
                return CompressResult(data, [lv], image.width, image.height, quality)
        raise TargetUnreachable(f"no level reaches {target:g} dB on this image; the finest gives {best:.2f} dB")

    async def _decode_pixels(self, level: int, symbols: np.ndarray, height: int, width: int, deadline: float,
                             plain: bool):
        latent = await self._on_cpu(self.codec.dequantize, level, symbols, plain)
        x_hat = await self._model(("decoder", level, latent.shape[1], latent.shape[2]), latent, deadline)
        return await self._on_cpu(to_uint8, x_hat, height, width)

    # -- decompress / extract -----------------------------------------------------------------------------
    async def decompress(self, body: bytes, level: int | None, fmt: str) -> tuple[bytes, str, Container, int]:
        deadline = self._deadline()
        key = fmt.lower()
        if key not in MEDIA_TYPES:
            raise InvalidParameter(f"format must be png, webp or jpeg, got {fmt!r}")

        def parse_and_decode():
            container = self.codec.parse(body)
            decoded_level, symbols = self.codec.decode_symbols(container, level)
            return container, decoded_level, symbols, self.codec.alpha_plane(container)

        with _Timer(self.metrics, "range_coding"):
            container, decoded_level, symbols, alpha = await self._on_cpu(parse_and_decode)
        if key in ("jpeg", "jpg") and container.mode in ("RGBA", "LA"):
            raise InvalidParameter("JPEG cannot hold the image's alpha channel; ask for png or webp")
        rgb = await self._decode_pixels(decoded_level, symbols, container.height, container.width, deadline,
                                        container.plainly_rounded(decoded_level))
        with _Timer(self.metrics, "encode_output"):
            data = await self._on_cpu(
                lambda: encode_image(to_pil(rgb, alpha, container.mode), key, png_level=self.settings.png_level)
            )
        return data, MEDIA_TYPES[key], container, decoded_level

    async def extract(self, body: bytes, level: int | None) -> bytes:
        return await self._on_cpu(extract_level, body, level)
