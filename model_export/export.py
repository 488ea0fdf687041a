"""Export a codec checkpoint as the artifact folder the torch-free service reads.

``python -m model_export.export CHECKPOINT OUT_DIR`` writes:

- ``encoder.onnx``: image (B, 3, H, W) in [0, 1], H and W multiples of the padding multiple → the latents
  ``y1`` … ``yL`` (level 1 first), before rounding;
- ``decoder_level{i}.onnx``: ŷ_i (B, C_i, H/s_i, W/s_i) → x̂ (B, 3, H, W), not clamped; level i's whole
  decoder path, so the shared weights are part of every level's graph;
- ``weights.bin``: every initializer of those graphs, stored once (ONNX external data): the decoder paths
  point at the same bytes for the parameters they share, as in the paper's shared decoder. Tensors that are
  exactly representable in fp16 (all of them for a checkpoint trained and exported with ``--half``) are
  stored as fp16 and cast back to fp32 inside the graph, which halves the folder without changing a value;
- ``entropy_tables.npz``: the frozen integer CDF tables (``model_export.freeze``), with ``--fit-tables DIR``
  refitted to the symbols the encoder produces on the images of DIR (the training images, never evaluation
  ones), and then given a channel context (``--context-buckets``, default 16 tables per channel;
  ``service.channel_context``) fitted to the same symbols, with a checkerboard's second pass at every level but
  the coarsest (``--spatial-buckets``, default 8 spatial buckets) and a diagonal pass at every level but the two
  coarsest (``--diagonal-buckets``, default 8 buckets), and last refitted to the symbols the runtime's
  RDO rounding codes with them (``--fit-rdoq``, default the service's λ, 0.1 at every level but the finest);
- ``input_offsets.npz``, only for a model whose decoder has input offsets (``decoder.InputOffsets``): each
  level's offsets δ (C_i, K) as ``level{i}``, float32. The decoder graphs hold them already; the service reads
  this copy to decode a level the encoder rounded plainly as the decoder was trained (bitstream.md, flags);
- ``manifest.json``: format version, model id (hash of the files), levels, channels, strides, padding
  multiple, table precision, sha256 of every file, the training summary and validation metrics.

Formats: ``docs/artifacts.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from service.channel_context import ChannelContext
from service.codec import rdoq_lambdas
from service.entropy_coder import DEFAULT_RDOQ_LAMBDA
from service.errors import InvalidParameter
from service.model import file_sha256, model_id_for

from .checkpoint import load_codec_checkpoint
from .config import LossConfig
from .decoder import use_subpixel_upsampling
from .decoder_gradient import DecoderGradient
from .data import ImageSet
from .freeze import (DEFAULT_CONTEXT_BUCKETS, DEFAULT_DIAGONAL_BUCKETS, DEFAULT_PRECISION, DEFAULT_PRIOR_WEIGHT,
                     DEFAULT_SPATIAL_BUCKETS, SIGN_PREDICTIONS, FrozenTables, context_bits, count_bits,
                     fit_context_tables, fit_tables, freeze_bottleneck, runtime_coder, save_tables, symbol_counts)
from .model import SSLIC, pad_to_multiple

__all__ = ["export_model", "spatial_buckets_per_level", "diagonal_buckets_per_level", "ARTIFACT_FORMAT",
           "ARTIFACT_VERSION", "OPSET"]

ARTIFACT_FORMAT = "sslic-model"
ARTIFACT_VERSION = 1
OPSET = 18
WEIGHTS_FILE = "weights.bin"
INPUT_OFFSETS_FILE = "input_offsets.npz"
# refits of the tables to the RDO-rounded symbols (each round rounds again under the previous round's tables)
DEFAULT_RDO_ROUNDS = 2
_MIN_EXTERNAL_ELEMENTS = 64


class _EncoderGraph(nn.Module):
    """image → (y1, …, yL)."""

    def __init__(self, model: SSLIC):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.encoder(image))


class _DecoderGraph(nn.Module):
    """ŷ of one level → x̂ (unclamped)."""

    def __init__(self, model: SSLIC, level: int):
        super().__init__()
        self.path = model.decoder.path(level)

    def forward(self, latent: Tensor) -> Tensor:
        return self.path(latent)


def _set_export_mode(model: SSLIC) -> None:
    """Eval mode, and the explicit matmul attention (ONNX Runtime runs it faster than exported SDPA)."""
    model.eval()
    for module in model.modules():
        if hasattr(module, "use_sdpa"):
            module.use_sdpa = False


def _to_onnx(module: nn.Module, example: Tensor | tuple[Tensor, ...], input_name: str | list[str],
             output_names: list[str], fold_constants: bool = True) -> onnx.ModelProto:
    examples = example if isinstance(example, tuple) else (example,)
    input_names = [input_name] if isinstance(input_name, str) else input_name
    dynamic: dict[str, dict[int, str]] = {}
    for name in input_names:
        dynamic[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
    if len(input_names) == 1:
        dynamic[input_names[0]] = {0: "batch", 2: "height", 3: "width"}
    for name in output_names:
        dynamic[name] = {0: "batch"} if name == "squared_error" else {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            examples,
            buffer,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=fold_constants,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _gradient_name(level: int) -> str:
    return f"decoder_gradient_level{level}.onnx"


def _gradient_graphs(deployed: SSLIC, latents: list[Tensor], example: Tensor) -> dict[str, onnx.ModelProto]:
    """Per level, (ŷ, target, weight) → (Σ weight·(x̂ − target)², its gradient in ŷ), for latent refinement.
    Not constant-folded: the flipped kernels of the adjoint stay operations on the decoder's own initializers, so
    ``weights.bin`` holds those once and ONNX Runtime folds them when it loads the graph."""
    weight = torch.ones_like(example[:, :1])
    return {
        _gradient_name(level): _to_onnx(
            DecoderGradient(deployed.decoder, level), (latents[level - 1], example, weight),
            ["latent", "target", "weight"], ["squared_error", "latent_gradient"], fold_constants=False,
        )
        for level in range(1, deployed.levels + 1)
    }


def _mse_per_bpp(summary: dict, levels: int) -> list[float]:
    """Each level's training trade-off αᵢ/γᵢ (MSE on [0, 1] images per bit per pixel), from the training
    config in ``summary`` (the config defaults without one): the refinement's rate-distortion weights."""
    loss = summary.get("config", {}).get("loss") or dataclasses.asdict(LossConfig())
    alpha, gamma = loss["alpha"], loss["gamma"]
    if len(alpha) != levels or len(gamma) != levels:
        raise ValueError(f"the training loss has {len(alpha)} weights for a {levels}-level model")
    return [float(a) / float(g) for a, g in zip(alpha, gamma)]


def _exact_in_fp16(array: np.ndarray) -> bool:
    if array.dtype != np.float32:
        return False
    half = array.astype(np.float16)
    return bool(np.all(np.isfinite(half)) and np.array_equal(half.astype(np.float32), array))


def _store_fp16(graph: onnx.GraphProto) -> None:
    """Replace exactly-fp16 float initializers by an fp16 initializer + Cast to float32 of the same name."""
    casts = []
    for initializer in graph.initializer:
        array = numpy_helper.to_array(initializer)
        if array.size < _MIN_EXTERNAL_ELEMENTS or not _exact_in_fp16(array):
            continue
        name = initializer.name
        half_name = f"{name}__fp16"
        initializer.CopyFrom(numpy_helper.from_array(array.astype(np.float16), half_name))
        casts.append(onnx.helper.make_node("Cast", [half_name], [name], to=onnx.TensorProto.FLOAT, name=f"cast_{name}"))
    for node in reversed(casts):
        graph.node.insert(0, node)


class _SharedWeights:
    """Collects initializer bytes once per distinct content; graphs refer to them as external data."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.offsets: dict[str, tuple[int, int]] = {}

    def externalize(self, graph: onnx.GraphProto) -> None:
        for initializer in graph.initializer:
            raw = numpy_helper.to_array(initializer)
            if raw.size < _MIN_EXTERNAL_ELEMENTS:
                continue
            data = np.ascontiguousarray(raw).tobytes()
            key = f"{initializer.data_type}:{hashlib.sha256(data).hexdigest()}"
            if key not in self.offsets:
                while len(self.buffer) % 64:
                    self.buffer.append(0)
                self.offsets[key] = (len(self.buffer), len(data))
                self.buffer.extend(data)
            offset, length = self.offsets[key]
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
                initializer.ClearField(field)
            initializer.data_location = onnx.TensorProto.EXTERNAL
            del initializer.external_data[:]
            for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
                entry = initializer.external_data.add()
                entry.key, entry.value = k, v


@torch.no_grad()
def _fit_to_images(model: SSLIC, tables: list[FrozenTables], fit_dir: str | Path,
                   prior_weight: float, context_buckets: int, spatial_buckets: list[int],
                   rdoq_lambda: list[float], rdo_rounds: int = DEFAULT_RDO_ROUNDS,
                   learned_activity: bool = True, signs: str = "learned",
                   diagonal_buckets: list[int] | None = None) -> tuple[list[FrozenTables], dict]:
    """Refit every level's tables to the symbols of the images in ``fit_dir`` (each image whole, padded as the
    runtime pads it, rounded against the frozen medians), then fit a channel context with ``context_buckets``
    tables per channel (0: none), the learned activity or the counting rule (``learned_activity``), and
    ``spatial_buckets[i]`` checkerboard buckets at level i + 1 (0: none), ``diagonal_buckets[i]`` buckets of its
    diagonal pass (0 or ``None``: none), and the sign prediction ``signs``
    (``model_export.freeze.SIGN_PREDICTIONS``; "neighbours" only at levels with the checkerboard).
    Where ``rdoq_lambda[i]`` > 0 the tables are then refitted ``rdo_rounds`` times to the symbols the runtime's
    RDO rounding with that λ picks under the current tables, which are the symbols it will code. Returns the
    tables and a report for the manifest."""
    images = ImageSet.from_dir(fit_dir)
    diagonal_buckets = diagonal_buckets or [0] * len(tables)
    counts = [np.zeros((t.channels, int(t.lengths.max())), dtype=np.int64) for t in tables]
    symbols: list[list[np.ndarray]] = [[] for _ in tables]
    residuals: list[list[np.ndarray]] = [[] for _ in tables]
    for image in images.images:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        for level, latent in enumerate(model.encoder(pad_to_multiple(x, model.padding_multiple))):
            residual = latent[0].numpy() - tables[level].medians[:, None, None]
            level_symbols = np.rint(residual).astype(np.int32)
            counts[level] += symbol_counts(tables[level], level_symbols)
            symbols[level].append(level_symbols)
            if rdoq_lambda[level] > 0:
                residuals[level].append(residual.astype(np.float32))

    def fit(level: int, level_symbols: list[np.ndarray], level_counts: np.ndarray) -> FrozenTables:
        fitted = fit_tables(tables[level], level_counts, prior_weight)
        if not context_buckets:
            return fitted
        return fit_context_tables(fitted, level_symbols, buckets=context_buckets,
                                  spatial_buckets=spatial_buckets[level], learned=learned_activity,
                                  signs="none" if signs == "neighbours" and not spatial_buckets[level] else signs,
                                  diagonal_buckets=diagonal_buckets[level])

    fitted = [fit(level, level_symbols, counts[level]) for level, level_symbols in enumerate(symbols)]
    plain_fit = list(fitted)
    coded = list(symbols)
    for level, lam in enumerate(rdoq_lambda):
        for _ in range(rdo_rounds if lam > 0 else 0):
            coder = runtime_coder(fitted[level])
            coded[level] = [coder.rdo_symbols(r, lam) for r in residuals[level]]
            fitted[level] = fit(level, coded[level], sum(symbol_counts(tables[level], s) for s in coded[level]))
    final_coders = [runtime_coder(t) for t in fitted]
    final_symbols = [
        [final_coders[level].rdo_symbols(r, lam) for r in residuals[level]] if lam > 0 else symbols[level]
        for level, lam in enumerate(rdoq_lambda)
    ]
    report = {
        "dir": str(fit_dir),
        "images": len(images.names),
        "sha256": images.sha256,
        "prior_weight": prior_weight,
        "symbols": [int(k.sum()) for k in counts],
        "bits_per_symbol_frozen": [count_bits(t, k) / k.sum() for t, k in zip(tables, counts)],
        "bits_per_symbol_fitted": [count_bits(t, k) / k.sum() for t, k in zip(plain_fit, counts)],
        "context_buckets": context_buckets,
        "spatial_buckets": spatial_buckets if context_buckets else None,
        "diagonal_buckets": diagonal_buckets if context_buckets else None,
        "bits_per_symbol_context": [
            sum(context_bits(t, s) for s in level_symbols) / k.sum()
            for t, level_symbols, k in zip(plain_fit, symbols, counts)
        ] if context_buckets else None,
        "rdoq_lambda": list(rdoq_lambda),
        "rdo_rounds": rdo_rounds,
        "bits_per_symbol_coded": [
            sum(context_bits(t, s) for s in level_symbols) / k.sum()
            for t, level_symbols, k in zip(fitted, coded, counts)
        ],
        "level_order": level_order(images.names, fitted, final_symbols),
    }
    return fitted, report


def level_order(names: list[str], tables: list[FrozenTables], symbols: list[list[np.ndarray]]) -> dict:
    """Whether each level's stream is larger than the level below's on every image (``symbols[level][image]``,
    the symbols the runtime codes), as range-coded by the runtime: the smallest ratio of the stream sizes of each
    pair of neighbouring levels, and the images where a level is not larger than the one below."""
    coders = [runtime_coder(t) for t in tables]
    sizes = np.array([[len(coder.encode(s)) for s in level_symbols] for coder, level_symbols in zip(coders, symbols)])
    ratios = sizes[1:] / np.maximum(sizes[:-1], 1)
    return {
        "min_size_ratio": [round(float(r), 4) for r in ratios.min(axis=1)],
        "images_out_of_order": [names[i] for i in np.flatnonzero((ratios <= 1.0).any(axis=0))],
    }


def _entropy_coding(tables: list[FrozenTables]) -> dict:
    """The manifest's description of how symbols are coded (docs/artifacts.md)."""
    context = tables[0].context
    if context is None:
        return {"method": "factorized"}
    coding = {"method": "channel-context", "activity": "learned" if context.learned else "counting",
              "buckets": context.buckets, "clip": context.clip, "window": context.window}
    spatial = [t.context.spatial_buckets for t in tables]
    if any(spatial):
        coding["spatial_buckets"] = spatial
    diagonal = [t.context.diagonal_buckets for t in tables]
    if any(diagonal):
        coding["diagonal_buckets"] = diagonal
    if any(t.context.sign_flip for t in tables):
        coding["signs"] = [_sign_prediction(t.context) for t in tables]
    return coding


def _sign_prediction(context: ChannelContext) -> str:
    """A level's sign prediction as the manifest names it: "learned", "neighbours" (format 5's) or "none"."""
    if context.sign_mixing is not None:
        return "learned"
    return "neighbours" if context.sign_pass2 is not None else "none"


def spatial_buckets_per_level(value: int | list[int] | None, levels: int) -> list[int]:
    """Checkerboard buckets per level: ``None`` gives ``DEFAULT_SPATIAL_BUCKETS`` to every level but the coarsest
    (whose few symbols per image fit S times more tables badly: +0.1 to +0.5 % bits on val), one number gives
    it to every level, a list gives one per level; 0 turns the checkerboard off."""
    return _buckets_per_level(value, levels, first=1, default=DEFAULT_SPATIAL_BUCKETS, name="spatial buckets")


def diagonal_buckets_per_level(value: int | list[int] | None, spatial: list[int]) -> list[int]:
    """Diagonal-pass buckets per level (levels with the checkerboard ``spatial`` only): ``None`` gives
    ``DEFAULT_DIAGONAL_BUCKETS`` to every checkerboard level but the two coarsest (level 2 codes 0.2 % more bits
    on val with it), one number gives it to every checkerboard level, a list gives one per level; 0: none."""
    values = _buckets_per_level(value, len(spatial), first=2, default=DEFAULT_DIAGONAL_BUCKETS,
                                name="diagonal buckets")
    if isinstance(value, list) and any(v and not s for v, s in zip(values, spatial)):
        raise ValueError(f"diagonal buckets {values} at a level without the checkerboard ({spatial})")
    return [v if s else 0 for v, s in zip(values, spatial)]


def _buckets_per_level(value: int | list[int] | None, levels: int, first: int, default: int, name: str
                       ) -> list[int]:
    """Buckets per level: ``None`` gives ``default`` from level index ``first`` on and 0 below, one number gives
    it to every level, a list gives one per level; each 0 or 2..256."""
    if value is None:
        values = [default if level >= first else 0 for level in range(levels)]
    elif isinstance(value, int):
        values = [value] * levels
    else:
        values = list(value)
    if len(values) != levels:
        raise ValueError(f"{name}: need one number or {levels}, got {len(values)}")
    if any(v != 0 and not 2 <= v <= 256 for v in values):
        raise ValueError(f"{name} must be 0 or 2..256, got {values}")
    return values


def export_model(
    model: SSLIC,
    out_dir: str | Path,
    summary: dict | None = None,
    precision: int = DEFAULT_PRECISION,
    example_size: int | None = None,
    fit_dir: str | Path | None = None,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    context_buckets: int = DEFAULT_CONTEXT_BUCKETS,
    spatial_buckets: int | list[int] | None = None,
    refinement: bool = True,
    rdoq_lambda: float | list[float] | None = None,
    learned_activity: bool = True,
    signs: str = "learned",
    diagonal_buckets: int | list[int] | None = None,
) -> dict:
    """Write the artifact folder for ``model`` and return its manifest; with ``fit_dir`` the entropy tables
    are refitted to the symbols of those images (:func:`model_export.freeze.fit_tables`) and given a channel
    context of ``context_buckets`` tables per channel, chosen by the learned activity (``learned_activity``) or
    the counting rule, ``spatial_buckets`` checkerboard buckets and ``diagonal_buckets`` diagonal-pass buckets per
    level (:func:`diagonal_buckets_per_level`), with the sign prediction ``signs``
    ("learned": symbols coded negated where the earlier channels and anchor neighbours predict a negative sign;
    "neighbours": format 5's flip of the second pass by its anchor neighbours; "none")
    (:func:`spatial_buckets_per_level`, :func:`model_export.freeze.fit_context_tables`), then refitted to the
    symbols the runtime's RDO rounding picks with ``rdoq_lambda`` (one λ or one per level; ``None``: the
    service's default rounding; 0 fits plain rounding), which the manifest records and the service then rounds
    with by default. ``refinement`` adds
    the decoder-gradient graphs the encoder's latent refinement runs (outside the model id: they cannot change
    what a stream decodes to)."""
    levels = model.levels
    spatial = spatial_buckets_per_level(spatial_buckets, levels)
    diagonal = diagonal_buckets_per_level(diagonal_buckets, spatial)
    fit_lambdas = list(rdoq_lambdas(rdoq_lambda, levels))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _set_export_mode(model)
    multiple = model.padding_multiple
    size = example_size or 2 * multiple
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    latent_names = [f"y{i}" for i in range(1, levels + 1)]

    with torch.no_grad():
        latents = model.encoder(example)
    graphs: dict[str, onnx.ModelProto] = {"encoder.onnx": _to_onnx(_EncoderGraph(model), example, "image", latent_names)}
    deployed = copy.deepcopy(model)
    use_subpixel_upsampling(deployed.decoder)
    for level in range(1, levels + 1):
        graphs[f"decoder_level{level}.onnx"] = _to_onnx(
            _DecoderGraph(deployed, level), latents[level - 1], "latent", ["image"]
        )

    refinement = refinement and deployed.decoder.trunk.attention is None  # no adjoint for decoder attention
    gradient_graphs = _gradient_graphs(deployed, latents, example) if refinement else {}

    weights = _SharedWeights()
    for proto in [*graphs.values(), *gradient_graphs.values()]:
        _store_fp16(proto.graph)
        weights.externalize(proto.graph)
        proto.producer_name = "sslic.model_export"
    (out / WEIGHTS_FILE).write_bytes(bytes(weights.buffer))
    for name, proto in [*graphs.items(), *gradient_graphs.items()]:
        (out / name).write_bytes(proto.SerializeToString())
        onnx.checker.check_model(str(out / name), full_check=True)

    tables: list[FrozenTables] = [freeze_bottleneck(eb, precision) for eb in model.entropy]
    fit_report = None
    if fit_dir is not None:
        tables, fit_report = _fit_to_images(model, tables, fit_dir, prior_weight, context_buckets, spatial,
                                            fit_lambdas, learned_activity=learned_activity, signs=signs,
                                            diagonal_buckets=diagonal)
    save_tables(out / "entropy_tables.npz", tables)
    offsets = model.decoder.input_offsets
    if offsets is not None:
        with open(out / INPUT_OFFSETS_FILE, "wb") as handle:
            np.savez(handle, **{f"level{level}": o.offsets.detach().float().numpy()
                                for level, o in enumerate(offsets, start=1)})

    files = sorted([*graphs, WEIGHTS_FILE, "entropy_tables.npz", *([INPUT_OFFSETS_FILE] if offsets else [])])
    hashes = {name: file_sha256(out / name) for name in files}
    model_id = model_id_for(hashes)
    strides = model.level_strides()
    summary = summary or {}
    manifest = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "model_id": model_id,
        "name": summary.get("name", "sslic"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "levels": levels,
        "latent_channels": [int(c) for c in model.config.latent_channels],
        "strides": strides,
        "padding_multiple": multiple,
        "padding_mode": "replicate, bottom and right",
        "input": {"name": "image", "layout": "NCHW", "range": [0.0, 1.0], "dtype": "float32"},
        "latent_names": latent_names,
        "decoders": {str(level): f"decoder_level{level}.onnx" for level in range(1, levels + 1)},
        "encoder": "encoder.onnx",
        "weights": WEIGHTS_FILE,
        "entropy_tables": "entropy_tables.npz",
        "table_precision": precision,
        "tables_fitted_on": fit_report,
        "entropy_coding": _entropy_coding(tables),
        "onnx_opset": OPSET,
        "files": hashes,
        "model": dataclasses.asdict(model.config),
        "training": {k: v for k, v in summary.items() if k not in ("val_history",)},
        "val": summary.get("val"),
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__},
    }
    if offsets is not None:
        manifest["input_offsets"] = INPUT_OFFSETS_FILE
    if gradient_graphs:
        manifest["refinement"] = {
            "decoder_gradients": {str(level): _gradient_name(level) for level in range(1, levels + 1)},
            "mse_per_bpp": _mse_per_bpp(summary, levels),
            "files": {name: file_sha256(out / name) for name in sorted(gradient_graphs)},
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _numbers(kind: type) -> Callable[[str], list]:
    """argparse type: one number or a comma-separated list of them, each read with ``kind``."""
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",")]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"not a number or a comma-separated list of numbers: {text!r}") from error
    return parse


def _spatial_buckets(text: str) -> int | list[int]:
    values = _numbers(int)(text)
    return values[0] if len(values) == 1 else values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="codec checkpoint (model_export.checkpoint format)")
    parser.add_argument("out_dir", help="artifact folder to write")
    parser.add_argument("--precision", type=int, default=DEFAULT_PRECISION, help="CDF table precision in bits")
    parser.add_argument("--fit-tables", metavar="DIR", default=None,
                        help="refit the entropy tables to the symbols of these images (the training images)")
    parser.add_argument("--prior-weight", type=float, default=DEFAULT_PRIOR_WEIGHT,
                        help="share of the learned density kept in refitted tables")
    parser.add_argument("--context-buckets", type=int, default=DEFAULT_CONTEXT_BUCKETS,
                        help="with --fit-tables: tables per channel chosen by the channel context (0: one table)")
    parser.add_argument("--spatial-buckets", type=_spatial_buckets, default=None, metavar="S[,S…]",
                        help="with --context-buckets: checkerboard buckets, one number for every level or one per "
                             f"level, 0 for none (default {DEFAULT_SPATIAL_BUCKETS} at every level but the coarsest)")
    parser.add_argument("--diagonal-buckets", type=_spatial_buckets, default=None, metavar="S[,S…]",
                        help="with --spatial-buckets: buckets of the diagonal pass (tables format 7), one number for "
                             "every checkerboard level or one per level, 0 for none (default "
                             f"{DEFAULT_DIAGONAL_BUCKETS} at every level but the two coarsest)")
    parser.add_argument("--fit-rdoq", type=_numbers(float), default=None, metavar="λ[,λ…]",
                        help="with --fit-tables: refit the tables to the symbols the runtime's RDO rounding picks "
                             "with this λ, one for every level or one per level; the service rounds with it by "
                             f"default (default {DEFAULT_RDOQ_LAMBDA} at every level but the finest, the service's "
                             "own default; 0: plain rounding)")
    parser.add_argument("--counting-context", action="store_true",
                        help="with --context-buckets: the counting rule's activity (tables format 2/3) instead of "
                             "the learned one (format 4)")
    parser.add_argument("--signs", choices=SIGN_PREDICTIONS, default="learned",
                        help="with --context-buckets: code symbols negated where their predicted sign is negative, "
                             "predicted from the earlier channels and the anchor neighbours (learned, tables format "
                             "6), from the anchor neighbours at the checkerboard's second pass only (neighbours), or "
                             "not (none)")
    parser.add_argument("--no-refinement", action="store_true",
                        help="leave out the decoder-gradient graphs of the encoder's latent refinement")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model, _config, summary = load_codec_checkpoint(args.checkpoint)
    try:
        manifest = export_model(model, args.out_dir, summary=summary, precision=args.precision,
                                fit_dir=args.fit_tables, prior_weight=args.prior_weight,
                                context_buckets=args.context_buckets, spatial_buckets=args.spatial_buckets,
                                refinement=not args.no_refinement, rdoq_lambda=args.fit_rdoq,
                                learned_activity=not args.counting_context, signs=args.signs,
                                diagonal_buckets=args.diagonal_buckets)
    except (FileNotFoundError, ValueError, InvalidParameter) as exc:
        raise SystemExit(f"export: {exc}") from exc
    names = [*manifest["files"], *manifest.get("refinement", {}).get("files", {})]
    size = sum((Path(args.out_dir) / name).stat().st_size for name in names)
    print(f"wrote {args.out_dir}: model id {manifest['model_id']}, {manifest['levels']} levels, {size / 1e6:.1f} MB")
    order = (manifest.get("tables_fitted_on") or {}).get("level_order")
    if order:
        print(f"level stream size ratios, smallest over the fitting images: {order['min_size_ratio']}")
        if order["images_out_of_order"]:
            print(f"warning: a level is not larger than the one below on {len(order['images_out_of_order'])} "
                  f"fitting images: {', '.join(order['images_out_of_order'][:10])}", file=sys.stderr)


if __name__ == "__main__":
    main()
