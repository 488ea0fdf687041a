"""Loading an exported artifact folder (``docs/artifacts.md``): manifest, hashes, ONNX sessions, tables."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .entropy_coder import LevelTables, TableCoder, load_tables
from .errors import ModelLoadError, RefinementUnavailable

__all__ = ["LoadedModel", "Tiling", "load_model", "resolve_providers", "default_model_dir", "file_sha256", "model_id_for"]

SUPPORTED_FORMAT = ("sslic-model", 1)


def default_model_dir() -> Path:
    """``$SSLIC_MODEL_DIR``, else the model installed with the package, else ``models/default`` of the checkout."""
    configured = os.environ.get("SSLIC_MODEL_DIR")
    if configured:
        return Path(configured)
    try:
        from importlib.resources import files

        packaged = Path(str(files("sslic_models") / "default"))
        if (packaged / "manifest.json").is_file():
            return packaged
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "models" / "default"


def resolve_providers(requested: list[str] | None = None) -> list[str]:
    """ONNX Runtime providers to use: ``requested`` filtered to those available (CPU always last), or
    CUDA first when ``onnxruntime-gpu`` sees a GPU, else CPU."""
    available = ort.get_available_providers()
    if requested:
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise ModelLoadError(f"providers {unknown} are not available (available: {available})")
        chosen = list(requested)
    else:
        chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_id_for(hashes: dict[str, str]) -> str:
    """The model id: first 32 hex digits of sha256 over ``name:sha256`` lines sorted by file name."""
    return hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(hashes.items())).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Tiling:
    """Large images run through the graphs as overlapping tiles: a ``core``×``core`` region of the output
    plus ``margin`` pixels of context on every side, which is wider than the receptive field of the encoder
    and of every decoder path (measured: about 250 and 210 pixels), so the stitched result equals the
    untiled one while memory stays that of one tile."""

    core: int = 1024
    margin: int = 320

    @property
    def threshold_pixels(self) -> int:
        side = self.core + 2 * self.margin
        return side * side

    def tiles(self, height: int, width: int, multiple: int):
        """((y0, y1, x0, x1) core, (y0, y1, x0, x1) input) per tile; all multiples of ``multiple``."""
        if self.core % multiple or self.margin % multiple:
            raise ValueError(f"tile core and margin must be multiples of {multiple}")
        for y0 in range(0, height, self.core):
            y1 = min(y0 + self.core, height)
            for x0 in range(0, width, self.core):
                x1 = min(x0 + self.core, width)
                yield (y0, y1, x0, x1), (
                    max(0, y0 - self.margin),
                    min(height, y1 + self.margin),
                    max(0, x0 - self.margin),
                    min(width, x1 + self.margin),
                )


@dataclass
class LoadedModel:
    """Everything the codec needs from one artifact folder."""

    directory: Path
    manifest: dict
    encoder: ort.InferenceSession
    decoders: dict[int, ort.InferenceSession]
    tables: list[LevelTables]
    coders: list[TableCoder]
    providers: list[str]
    tiling: Tiling = Tiling()
    session_options: ort.SessionOptions | None = None
    input_offsets: list[np.ndarray] | None = None  # per level (C, K): the decoder graphs' input offsets
    _gradients: dict[int, ort.InferenceSession] = field(default_factory=dict, repr=False)
    _gradients_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def levels(self) -> int:
        return int(self.manifest["levels"])

    @property
    def padding_multiple(self) -> int:
        return int(self.manifest["padding_multiple"])

    @property
    def strides(self) -> list[int]:
        return [int(s) for s in self.manifest["strides"]]

    @property
    def latent_channels(self) -> list[int]:
        return [int(c) for c in self.manifest["latent_channels"]]

    @property
    def fitted_rdoq_lambda(self) -> tuple[float, ...] | None:
        """The RDO rounding λ per level the entropy tables were fitted for (``tables_fitted_on.rdoq_lambda``; checked
        on load), which the codec rounds with unless told otherwise; ``None`` for tables fitted without one."""
        fitted = self.manifest.get("tables_fitted_on")
        if not isinstance(fitted, dict) or fitted.get("rdoq_lambda") is None:
            return None
        return tuple(float(v) for v in fitted["rdoq_lambda"])

    def has_input_offsets(self, level: int) -> bool:
        """Whether ``level``'s decoder adds non-zero input offsets to the symbols it reads."""
        return self.input_offsets is not None and bool(np.any(self.input_offsets[level - 1]))

    @property
    def refinement(self) -> dict | None:
        """The manifest's ``refinement`` section (decoder-gradient graphs, rate-distortion weights), if any."""
        return self.manifest.get("refinement")

    def _gradient_session(self, level: int) -> ort.InferenceSession:
        """Level ``level``'s decoder-gradient graph, loaded on first use (most requests never refine)."""
        if self.refinement is None:
            raise RefinementUnavailable(f"the model {self.model_id} has no decoder-gradient graphs")
        with self._gradients_lock:
            if level not in self._gradients:
                path = self.directory / self.refinement["decoder_gradients"][str(level)]
                try:
                    self._gradients[level] = ort.InferenceSession(
                        str(path), self.session_options, providers=self.providers
                    )
                except Exception as error:  # onnxruntime raises its own exception types
                    raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {error}") from error
            return self._gradients[level]

    def decoder_gradient(self, level: int, latent: np.ndarray, target: np.ndarray, weight: np.ndarray
                         ) -> tuple[float, np.ndarray]:
        """Σ weight · (clamp(x̂, 0, 1) − target)² of ŷ = ``latent`` (1, C, h, w) decoded at ``level``, and its
        gradient in ŷ; ``target`` (1, 3, H, W) and ``weight`` (1, 1, H, W) are the padded image and its pixel
        weights. Large images run as tiles whose cores partition the image: the sums of the tiles' errors and
        gradients are exact, since each tile's margin covers the decoder's receptive field."""
        session = self._gradient_session(level)
        stride = self.strides[level - 1]
        height, width = target.shape[2:]
        if height * width <= self.tiling.threshold_pixels:
            error, gradient = session.run(None, {"latent": latent, "target": target, "weight": weight})
            return float(error[0]), gradient
        total = 0.0
        gradient = np.zeros_like(latent)
        for (y0, y1, x0, x1), (iy0, iy1, ix0, ix1) in self.tiling.tiles(height, width, self.padding_multiple):
            core = np.zeros((1, 1, iy1 - iy0, ix1 - ix0), np.float32)
            core[:, :, y0 - iy0 : y1 - iy0, x0 - ix0 : x1 - ix0] = weight[:, :, y0:y1, x0:x1]
            rows, cols = slice(iy0 // stride, iy1 // stride), slice(ix0 // stride, ix1 // stride)
            error, part = session.run(None, {
                "latent": np.ascontiguousarray(latent[:, :, rows, cols]),
                "target": np.ascontiguousarray(target[:, :, iy0:iy1, ix0:ix1]),
                "weight": core,
            })
            total += float(error[0])
            gradient[:, :, rows, cols] += part
        return total, gradient

    def latent_shape(self, level: int, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of level ``level``'s latent for an image of ``height`` × ``width`` pixels."""
        multiple = self.padding_multiple
        padded_h = -(-height // multiple) * multiple
        padded_w = -(-width // multiple) * multiple
        stride = self.strides[level - 1]
        return self.latent_channels[level - 1], padded_h // stride, padded_w // stride

    def encode_latents(self, images: np.ndarray) -> list[np.ndarray]:
        """Padded images (B, 3, H, W) float32 in [0, 1] → latents of every level (level 1 first).

        Images larger than the tiling threshold run as overlapping tiles (bounded memory, same latents)."""
        height, width = images.shape[2:]
        if height * width <= self.tiling.threshold_pixels:
            return self.encoder.run(None, {"image": images})
        per_image = [self._encode_tiled(images[i : i + 1]) for i in range(images.shape[0])]
        return [np.concatenate([latents[level] for latents in per_image]) for level in range(self.levels)]

    def decode_latent(self, level: int, latent: np.ndarray) -> np.ndarray:
        """ŷ (B, C, h, w) float32 → x̂ (B, 3, H, W) float32, unclamped (tiled for large images)."""
        stride = self.strides[level - 1]
        if latent.shape[2] * latent.shape[3] * stride * stride <= self.tiling.threshold_pixels:
            return self.decoders[level].run(None, {"latent": latent})[0]
        return np.concatenate([self._decode_tiled(level, latent[i : i + 1]) for i in range(latent.shape[0])])

    def _encode_tiled(self, image: np.ndarray) -> list[np.ndarray]:
        height, width = image.shape[2:]
        outputs: list[np.ndarray | None] = [None] * self.levels
        for (y0, y1, x0, x1), (iy0, iy1, ix0, ix1) in self.tiling.tiles(height, width, self.padding_multiple):
            latents = self.encoder.run(None, {"image": np.ascontiguousarray(image[:, :, iy0:iy1, ix0:ix1])})
            for index, (latent, stride) in enumerate(zip(latents, self.strides)):
                if outputs[index] is None:
                    outputs[index] = np.empty((1, latent.shape[1], height // stride, width // stride), np.float32)
                core = latent[:, :, (y0 - iy0) // stride : (y1 - iy0) // stride, (x0 - ix0) // stride : (x1 - ix0) // stride]
                outputs[index][:, :, y0 // stride : y1 // stride, x0 // stride : x1 // stride] = core
        return outputs  # type: ignore[return-value]

    def _decode_tiled(self, level: int, latent: np.ndarray) -> np.ndarray:
        stride = self.strides[level - 1]
        height, width = latent.shape[2] * stride, latent.shape[3] * stride
        output = np.empty((1, 3, height, width), np.float32)
        for (y0, y1, x0, x1), (iy0, iy1, ix0, ix1) in self.tiling.tiles(height, width, self.padding_multiple):
            part = np.ascontiguousarray(latent[:, :, iy0 // stride : iy1 // stride, ix0 // stride : ix1 // stride])
            image = self.decoders[level].run(None, {"latent": part})[0]
            output[:, :, y0:y1, x0:x1] = image[:, :, y0 - iy0 : y1 - iy0, x0 - ix0 : x1 - ix0]
        return output


def load_model(
    directory: str | Path,
    providers: list[str] | None = None,
    intra_op_threads: int = 0,
    inter_op_threads: int = 1,
    verify_hashes: bool = True,
    tile_size: int = Tiling.core,
) -> LoadedModel:
    """Load and check an artifact folder; raises :class:`ModelLoadError` with the reason."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ModelLoadError(f"no manifest.json in {directory}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {manifest_path}: {error}") from error
    if (manifest.get("format"), manifest.get("format_version")) != SUPPORTED_FORMAT:
        raise ModelLoadError(
            f"{manifest_path}: format {manifest.get('format')} v{manifest.get('format_version')}, "
            f"this runtime reads {SUPPORTED_FORMAT[0]} v{SUPPORTED_FORMAT[1]}"
        )
    files: dict[str, str] = manifest.get("files", {})
    _verify_files(directory, files, verify_hashes)
    if model_id_for(files) != manifest.get("model_id"):
        raise ModelLoadError(f"{directory}: the model id does not match the file hashes")
    _check_refinement(directory, manifest, verify_hashes)
    _check_fitted_rdoq(directory, manifest)
    input_offsets = _load_input_offsets(directory, manifest)

    chosen = resolve_providers(providers)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(intra_op_threads)
    options.inter_op_num_threads = int(inter_op_threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    levels = int(manifest["levels"])
    try:
        encoder = ort.InferenceSession(str(directory / manifest["encoder"]), options, providers=chosen)
        decoders = {
            level: ort.InferenceSession(str(directory / manifest["decoders"][str(level)]), options, providers=chosen)
            for level in range(1, levels + 1)
        }
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"{directory}: ONNX Runtime cannot load the graphs: {error}") from error
    tables = load_tables(directory / manifest["entropy_tables"], levels, [int(c) for c in manifest["latent_channels"]])
    coders = [TableCoder(table) for table in tables]
    multiple = int(manifest["padding_multiple"])
    if tile_size < multiple or tile_size % multiple:
        raise ModelLoadError(f"tile size must be a positive multiple of {multiple}, got {tile_size}")
    tiling = Tiling(core=tile_size, margin=-(-Tiling.margin // multiple) * multiple)
    return LoadedModel(directory, manifest, encoder, decoders, tables, coders, encoder.get_providers(), tiling, options,
                       input_offsets)


def _load_input_offsets(directory: Path, manifest: dict) -> list[np.ndarray] | None:
    """The optional ``input_offsets`` file (artifacts.md): per level a finite (C, K) float32 array whose values are
    all below ½ in magnitude, so that a decoder input moved by them still rounds to the same symbols."""
    name = manifest.get("input_offsets")
    if name is None:
        return None
    if not isinstance(name, str) or name not in manifest.get("files", {}):
        raise ModelLoadError(f"{directory}: the manifest's input_offsets must name a file listed (hashed) in files")
    try:
        archive = np.load(directory / name, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ModelLoadError(f"cannot read input offsets {directory / name}: {error}") from error
    channels = [int(c) for c in manifest["latent_channels"]]
    if sorted(arrays) != sorted(f"level{level}" for level in range(1, len(channels) + 1)):
        raise ModelLoadError(f"{directory / name}: expected arrays level1 … level{len(channels)}, got {sorted(arrays)}")
    offsets = []
    for level, count in enumerate(channels, start=1):
        array = arrays[f"level{level}"]
        if (array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != count or array.shape[1] < 1
                or not np.all(np.isfinite(array)) or np.abs(array).max() >= 0.5):
            raise ModelLoadError(f"{directory / name}: level {level}'s offsets must be finite float32 ({count}, K) "
                                 "with every value below ½ in magnitude")
        offsets.append(array)
    return offsets


def _check_fitted_rdoq(directory: Path, manifest: dict) -> None:
    """``tables_fitted_on.rdoq_lambda``, where present: one λ in [0, 100] per level."""
    fitted = manifest.get("tables_fitted_on")
    values = fitted.get("rdoq_lambda") if isinstance(fitted, dict) else None
    if values is None:
        return
    if (not isinstance(values, list) or len(values) != int(manifest["levels"])
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 100.0 for v in values)):
        raise ModelLoadError(f"{directory}: the manifest's tables_fitted_on.rdoq_lambda must be one λ in [0, 100] "
                             f"per level, got {values!r}")


def _check_refinement(directory: Path, manifest: dict, verify_hashes: bool) -> None:
    """The optional ``refinement`` section: a gradient graph per level and rate-distortion weights, its files
    present and matching their hashes (they are outside the model id: they cannot change what a stream decodes
    to)."""
    refinement = manifest.get("refinement")
    if refinement is None:
        return
    levels = int(manifest["levels"])
    graphs, weights, files = (refinement.get(key) for key in ("decoder_gradients", "mse_per_bpp", "files"))
    if (not isinstance(graphs, dict) or sorted(graphs) != sorted(str(level) for level in range(1, levels + 1))
            or not isinstance(weights, list) or len(weights) != levels or not isinstance(files, dict)
            or any(not isinstance(w, (int, float)) or not w > 0 for w in weights)):
        raise ModelLoadError(f"{directory}: the manifest's refinement section is malformed")
    unlisted = [name for name in graphs.values() if name not in files]
    if unlisted:
        raise ModelLoadError(f"{directory}: the refinement section lists no hash for {', '.join(unlisted)}")
    _verify_files(directory, files, verify_hashes)


def _verify_files(directory: Path, files: dict[str, str], verify_hashes: bool) -> None:
    """Every file of ``files`` (name → sha256) is present and, with ``verify_hashes``, has that hash."""
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise ModelLoadError(f"{directory}: missing {name}")
        if verify_hashes and file_sha256(path) != expected:
            raise ModelLoadError(f"{directory}: {name} does not match its sha256 in the manifest")
