"""Plainly rounded levels of a model with input offsets: the container marks them and the runtime decodes them
without the offsets, as the decoder was trained; the offsets file is checked on load."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from model_export.export import INPUT_OFFSETS_FILE, export_model
from model_export.model import SSLIC
from service.bitstream import unpack
from service.codec import Codec
from service.errors import ModelLoadError
from service.model import load_model
from tests.conftest import offset_model, tiny_model_config


@pytest.fixture(scope="module")
def offset_model_dir(tmp_path_factory):
    model = offset_model()
    with torch.no_grad():
        model.decoder.input_offsets[2].offsets.zero_()  # the finest level: plain rounding, offsets left at 0
    folder = tmp_path_factory.mktemp("plain") / "model"
    export_model(model, folder, summary={"name": "tiny"}, refinement=False)
    return model, folder


def _png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, 80)[None, :, None] * np.ones((72, 1, 3))
    pixels = np.clip(gradient + rng.normal(0, 20, (72, 80, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_export_writes_the_offsets_and_hashes_them(offset_model_dir):
    model, folder = offset_model_dir
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["input_offsets"] == INPUT_OFFSETS_FILE and INPUT_OFFSETS_FILE in manifest["files"]
    runtime = load_model(folder, intra_op_threads=1)
    for level, offsets in enumerate(model.decoder.input_offsets, start=1):
        np.testing.assert_array_equal(runtime.input_offsets[level - 1], offsets.offsets.detach().numpy())
    assert [runtime.has_input_offsets(level) for level in (1, 2, 3)] == [True, True, False]


def test_a_plain_input_decodes_what_the_decoder_without_offsets_decodes(offset_model_dir):
    model, folder = offset_model_dir
    codec = Codec.from_dir(folder, threads=1)
    without = SSLIC(tiny_model_config(), load_backbone_weights=False)
    without.load_state_dict({k: v for k, v in model.state_dict().items() if "input_offsets" not in k})
    without.eval()
    rng = np.random.default_rng(3)
    for level in (1, 2):
        symbols = np.rint(rng.normal(0, 2.5, (8, 4, 6))).astype(np.int32)  # magnitudes 0 … 8: every class
        latent = codec.dequantize(level, symbols, plain=True)
        np.testing.assert_array_equal(np.rint(latent - codec.model.tables[level - 1].medians[:, None, None]), symbols)
        with torch.no_grad():
            expected = without.decoder(torch.from_numpy(codec.dequantize(level, symbols))[None], level).numpy()
            with_offsets = model.decoder(torch.from_numpy(codec.dequantize(level, symbols))[None], level).numpy()
        got = codec.model.decode_latent(level, latent[None])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        assert np.abs(got - with_offsets).max() > 1e-3


def test_plainly_rounded_levels_are_marked_and_decoded_without_offsets(offset_model_dir):
    _, folder = offset_model_dir
    default = Codec.from_dir(folder, threads=1)
    plain = Codec.from_dir(folder, threads=1, rdoq_lambda=0)
    assert default.rdoq_per_level == (0.1, 0.1, 0.0) and default.plain_levels() == []
    assert plain.plain_levels() == [1, 2]  # level 3 is plainly rounded by default: its offsets (0) fit that
    image = _png()
    assert unpack(default.compress(image, "all")).flags == 0
    data = plain.compress(image, "all")
    container = unpack(data)
    assert container.flags == 0b011
    assert [container.plainly_rounded(level) for level in (1, 2, 3)] == [True, True, False]
    loaded = plain.load_image(image)
    for level in (1, 2, 3):
        _, symbols = plain.decode_symbols(container, level)
        marked = np.asarray(default.decompress(data, level))  # any codec of the model reads the mark
        np.testing.assert_array_equal(marked, plain.reconstruct(level, symbols, loaded.height, loaded.width,
                                                                plain=level < 3))
        if level < 3:
            assert not np.array_equal(marked, plain.reconstruct(level, symbols, loaded.height, loaded.width))
        single = plain.extract(data, level)
        np.testing.assert_array_equal(np.asarray(default.decompress(single)), marked)


def test_a_model_without_offsets_never_marks_a_level(tmp_path):
    torch.manual_seed(0)
    export_model(SSLIC(tiny_model_config(), load_backbone_weights=False).eval(), tmp_path, summary={"name": "tiny"},
                 refinement=False)
    codec = Codec.from_dir(tmp_path, threads=1, rdoq_lambda=0)
    assert codec.model.input_offsets is None and codec.plain_levels() == []
    assert unpack(codec.compress(_png(), "all")).flags == 0


def _rewrite_offsets(folder, arrays: dict) -> None:
    with open(folder / INPUT_OFFSETS_FILE, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize("defect", ["half", "nan", "shape", "dtype", "missing_level", "not_npz"])
def test_bad_offsets_files_are_refused_on_load(offset_model_dir, tmp_path, defect):
    _, folder = offset_model_dir
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    arrays = dict(np.load(folder / INPUT_OFFSETS_FILE))
    if defect == "half":
        arrays["level1"][0, 1] = 0.5  # would move the decoder's rounding to another symbol
    elif defect == "nan":
        arrays["level2"][3, 0] = np.nan
    elif defect == "shape":
        arrays["level1"] = arrays["level1"][:4]
    elif defect == "dtype":
        arrays["level1"] = arrays["level1"].astype(np.float64)
    elif defect == "missing_level":
        del arrays["level3"]
    if defect == "not_npz":
        with open(copy / INPUT_OFFSETS_FILE, "wb") as handle:
            np.save(handle, arrays["level1"], allow_pickle=False)
    else:
        _rewrite_offsets(copy, arrays)
    with pytest.raises(ModelLoadError):
        load_model(copy, verify_hashes=False)
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(copy)


def test_an_offsets_file_outside_the_hashed_files_is_refused(offset_model_dir, tmp_path):
    _, folder = offset_model_dir
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["input_offsets"] = "other.npz"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="input_offsets"):
        load_model(copy)
