"""Process setup shared by the training entry points: a fast allocator, thread count and device choice."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

__all__ = ["describe_device", "ensure_fast_malloc", "native_bf16", "select_device", "set_threads"]

_JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")
_GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736"
_MARKER = "SSLIC_MALLOC_CONFIGURED"
# Freed pages go back to the OS after a minute, not never: with decay disabled (-1, the setting of the CPU notes)
# the resident set grew by about 1 GB a minute after the first whole-image validation, until the kernel killed
# the run at 24 GB; a 60 s decay keeps it at 1.2-1.4 GB (docs/training.md).
_JEMALLOC_CONF = "dirty_decay_ms:60000,muzzy_decay_ms:60000"


def ensure_fast_malloc(module: str) -> None:
    """Re-execute ``python -m module`` once with jemalloc (or glibc tunables) so big training buffers are
    reused instead of being page-faulted on every step (1.5–2× faster on our VMs)."""
    if os.environ.get(_MARKER) or os.environ.get("SSLIC_NO_REEXEC"):
        return
    env = dict(os.environ)
    env[_MARKER] = "1"
    jemalloc = next((p for p in _JEMALLOC_PATHS if Path(p).exists()), None)
    if jemalloc:
        env["LD_PRELOAD"] = ":".join(filter(None, [env.get("LD_PRELOAD"), jemalloc]))
        env.setdefault("MALLOC_CONF", _JEMALLOC_CONF)
    else:
        env.setdefault("GLIBC_TUNABLES", _GLIBC_TUNABLES)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def select_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA when there is one; a CUDA device comes tuned for training (:func:`_tune_cuda`)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda requested but CUDA is not available")
        _tune_cuda()
    return device


def _tune_cuda() -> None:
    """Fixed crop sizes: let cuDNN pick the fastest convolution algorithms; TF32 for fp32 matmuls."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def describe_device(device: torch.device) -> str:
    """"cpu", or "cuda (<GPU name>)"."""
    if device.type != "cuda":
        return str(device)
    return f"cuda ({torch.cuda.get_device_name(device)})"


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs on hardware bf16 kernels here: any CUDA device, or a CPU whose oneDNN has bf16
    instructions (AVX512-BF16, AMX or Arm's BF16). Elsewhere oneDNN emulates bf16 and a training step gets
    slower, not faster: 18× slower for the decoder's forward pass on an AVX2-only EPYC (docs/training.md)."""
    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
