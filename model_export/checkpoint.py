"""Codec checkpoints: weights, the experiment config and a training summary in one torch file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .backbone import CheckpointFormatError
from .config import ExperimentConfig
from .model import SSLIC

__all__ = ["save_codec_checkpoint", "load_codec_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "sslic-codec-checkpoint"
CHECKPOINT_VERSION = 1


def save_codec_checkpoint(
    path: str | Path, model: SSLIC, config: ExperimentConfig, summary: dict[str, Any], half: bool = False
) -> Path:
    """Write weights (fp16 when ``half``), config and summary; the summary is also written as JSON beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        state[key] = value.half() if half and value.is_floating_point() else value
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "state_dict": state,
        "summary": summary,
    }
    torch.save(payload, path)
    path.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return path


def load_codec_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[SSLIC, ExperimentConfig, dict]:
    """Rebuild the model in eval mode from a checkpoint written by ``save_codec_checkpoint``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointFormatError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(f"{path} is not an sslic codec checkpoint (format {CHECKPOINT_FORMAT!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointFormatError(f"{path}: unsupported checkpoint version {payload.get('version')}")
    config = ExperimentConfig.from_dict(payload["config"])
    model = SSLIC(config.model, load_backbone_weights=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    model.load_state_dict(state)
    model.eval()
    return model, config, payload.get("summary", {})
