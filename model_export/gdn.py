"""Generalized divisive normalization (Ballé et al. 2016) with a non-negative reparametrisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LowerBound", "NonNegativeParametrizer", "GDN", "IGDN"]


class _LowerBoundFunction(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when it pushes x back above the bound."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad_output < 0)
        return pass_through.type(grad_output.dtype) * grad_output, None


def _drop_constants(state_dict: dict, prefix: str, names: tuple[str, ...]) -> None:
    """Checkpoints written before these constants became non-persistent buffers still hold them, and fp16
    exports hold them rounded to zero (2⁻³⁶ and 1e-9 underflow in fp16): the constructor's values win."""
    for name in names:
        state_dict.pop(prefix + name, None)


class LowerBound(nn.Module):
    """Lower-bounds its input; differentiable in the direction that leaves the bound. The bound is a constant of
    the architecture, not state: it is not saved in checkpoints."""

    bound: Tensor

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        _drop_constants(state_dict, prefix, ("bound",))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.onnx.is_in_onnx_export() or not x.requires_grad:
            return torch.max(x, self.bound)
        return _LowerBoundFunction.apply(x, self.bound)


class NonNegativeParametrizer(nn.Module):
    """Stores v = sqrt(max(x, p²) + p²) and returns max(v, sqrt(p²+min))² − p² ≥ minimum."""

    pedestal: Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2**-18):
        super().__init__()
        pedestal = reparam_offset**2
        self.register_buffer("pedestal", torch.tensor([pedestal]), persistent=False)
        self.lower_bound = LowerBound((minimum + pedestal) ** 0.5)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        _drop_constants(state_dict, prefix, ("pedestal",))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init(self, x: Tensor) -> Tensor:
        return torch.sqrt(torch.clamp(x + self.pedestal, min=self.pedestal))

    def forward(self, x: Tensor) -> Tensor:
        return self.lower_bound(x) ** 2 - self.pedestal


class GDN(nn.Module):
    """y_i = x_i / sqrt(β_i + Σ_j γ_ij x_j²); with ``inverse=True`` it multiplies (IGDN)."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.gamma_reparam = NonNegativeParametrizer()
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(channels)))
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(channels)))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(channels, channels, 1, 1)
        norm = torch.sqrt(F.conv2d(x * x, gamma, beta))
        return x * norm if self.inverse else x / norm


class IGDN(GDN):
    """Inverse GDN, used in the synthesis transform."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(channels, inverse=True, **kwargs)
