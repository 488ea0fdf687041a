"""Encoder-side latent refinement: a few gradient steps on the latents through the decoder, before rounding.

The encoder network predicts each level's latents in one pass, trained for all images at once; for one given
image, latents closer to its rate-distortion optimum exist, and the decoder can find them (the "amortisation
gap" of Cremer et al. 2018; Campos et al. 2019, Yang et al. 2020 for learned codecs). For one level, with
r = y − median, refinement minimises

    D + R / λ,   D = MSE(clamp(decoder(ŷ), 0, 1), x) on [0, 1] pixels,   R = bits per pixel of ŷ

over r by Adam, with ŷ a soft rounding of r that hardens step by step (the annealed rounding of Yang et al.'s
"stochastic Gumbel annealing", without the noise): ŷ = ⌊r⌋ + σ((r − ⌊r⌋ − ½) / τ) + median, τ from ½ to 1/20.
D's gradient comes from the level's decoder-gradient graph (``decoder_gradient_level{i}.onnx``, exported with
the model; the service needs no autodiff), R is counted with the very tables and context the coder uses: the
expected bits of ŷ between ⌊r⌋ and ⌊r⌋ + 1, under the tables the current rounded symbols select. λ is the
level's training trade-off αᵢ/γᵢ (manifest ``refinement.mse_per_bpp``). The refined r then goes through the
usual (RDO) rounding and coding: the stream format, the decoder and the tables are unchanged, and a refined
stream decodes everywhere. Measured: docs/architecture.md and docs/benchmarks.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import InvalidParameter, RefinementTimeout, RefinementUnavailable
from .model import LoadedModel

__all__ = ["Refinement", "refine_latent", "MAX_REFINE_STEPS"]

MAX_REFINE_STEPS = 200


@dataclass(frozen=True)
class Refinement:
    """Steps of refinement per level (0: none) and the optimiser's settings (chosen on val crops)."""

    steps: int = 0
    learning_rate: float = 0.05
    start_temperature: float = 0.5
    end_temperature: float = 0.05

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or not 0 <= self.steps <= MAX_REFINE_STEPS:
            raise InvalidParameter(f"refinement steps must be an integer 0..{MAX_REFINE_STEPS}, got {self.steps!r}")

    def temperature(self, step: int) -> float:
        return max(self.start_temperature * (1.0 - step / self.steps), self.end_temperature)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def refine_latent(model: LoadedModel, level: int, image: np.ndarray, height: int, width: int,
                  latent: np.ndarray, refinement: Refinement, deadline: float | None = None) -> np.ndarray:
    """The encoder's latent (C, h, w) of ``level`` refined for the padded ``image`` (1, 3, H, W) in [0, 1], whose
    top-left ``height`` × ``width`` pixels are the real ones; returns a latent of the same shape (float32).
    Raises :class:`RefinementTimeout` when ``deadline`` (``time.monotonic()``) passes before the last step."""
    if refinement.steps == 0:
        return latent
    info = model.refinement
    if info is None:
        raise RefinementUnavailable(f"the model {model.model_id} was exported without decoder-gradient graphs")
    coder = model.coders[level - 1]
    context = coder.tables.context
    medians = model.tables[level - 1].medians[:, None, None].astype(np.float64)
    weight = np.zeros((1, 1, *image.shape[2:]), np.float32)
    weight[:, :, :height, :width] = 1.0
    mse_scale = 1.0 / (3.0 * height * width)  # ∂D/∂ŷ from ∂(Σ weight·error²)/∂ŷ
    rate_scale = 1.0 / (float(info["mse_per_bpp"][level - 1]) * height * width)
    residual = latent.astype(np.float64) - medians
    first = np.zeros_like(residual)
    second = np.zeros_like(residual)
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8
    for step in range(refinement.steps):
        if deadline is not None and time.monotonic() > deadline:
            raise RefinementTimeout(f"latent refinement of level {level} stopped after {step} of "
                                    f"{refinement.steps} steps: the request's time is up")
        temperature = refinement.temperature(step)
        floor = np.floor(residual)
        ceil_share = _sigmoid((residual - floor - 0.5) / temperature)
        soft = (floor + ceil_share + medians).astype(np.float32)[None]
        _, distortion_gradient = model.decoder_gradient(level, soft, image, weight)
        rounded = np.rint(residual).astype(np.int64)
        table_ids = context.table_ids_of(rounded) if context is not None else np.zeros_like(rounded)
        floor_symbols = floor.astype(np.int64)
        flips = context.flips_of(rounded) if context is not None else None
        bits_up = (coder.bit_costs(table_ids, floor_symbols + 1, flips)
                   - coder.bit_costs(table_ids, floor_symbols, flips))
        slope = ceil_share * (1.0 - ceil_share) / temperature
        gradient = (mse_scale * distortion_gradient[0].astype(np.float64) + rate_scale * bits_up) * slope
        first = beta1 * first + (1.0 - beta1) * gradient
        second = beta2 * second + (1.0 - beta2) * gradient * gradient
        corrected_first = first / (1.0 - beta1 ** (step + 1))
        corrected_second = second / (1.0 - beta2 ** (step + 1))
        residual = residual - refinement.learning_rate * corrected_first / (np.sqrt(corrected_second) + epsilon)
    return (residual + medians).astype(np.float32)
