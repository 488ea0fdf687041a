"""ONNX export: parity with PyTorch, dynamic shapes, shared weights stored once, manifest hashes, and the
shipped model against its checkpoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from model_export.checkpoint import load_codec_checkpoint
from model_export.export import diagonal_buckets_per_level, export_model, level_order, spatial_buckets_per_level
from model_export.freeze import freeze_bottleneck, runtime_coder
from model_export.model import SSLIC, pad_to_multiple
from service.codec import Codec, pad_image
from service.errors import InvalidParameter, ModelLoadError
from service.model import load_model
from tests.conftest import tiny_model_config

REPO = Path(__file__).resolve().parents[1]
VAL = REPO.parent / "shared" / "data" / "val"


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    torch.manual_seed(0)
    model = SSLIC(tiny_model_config(attention="both"), load_backbone_weights=False).eval()
    for module in model.modules():  # make the attention branches matter
        if hasattr(module, "gamma"):
            module.gamma.data.fill_(0.5)
    out = tmp_path_factory.mktemp("tiny_export")
    manifest = export_model(model, out, summary={"name": "tiny"})
    return model, out, manifest


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    path = sorted(VAL.glob("*.png"))[seed]
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))[:height, :width]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("size", [(64, 96), (128, 64)])
def test_onnx_matches_pytorch_at_several_sizes(tiny_export, size):
    model, out, _ = tiny_export
    runtime = load_model(out, intra_op_threads=1)
    x = pad_to_multiple(_image(*size), model.padding_multiple)
    latents = runtime.encode_latents(x.numpy())
    with torch.no_grad():
        expected = model.encoder(x)
        for level, (got, want) in enumerate(zip(latents, expected), start=1):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
            y_hat = torch.round(want)
            np.testing.assert_allclose(
                runtime.decode_latent(level, y_hat.numpy()), model.decoder(y_hat, level).numpy(), atol=1e-4, rtol=1e-4
            )


def test_batch_dimension_is_dynamic(tiny_export):
    model, out, _ = tiny_export
    runtime = load_model(out, intra_op_threads=1)
    x = torch.cat([_image(64, 64, 0), _image(64, 64, 1)])
    latents = runtime.encode_latents(x.numpy())
    assert latents[0].shape[0] == 2
    assert runtime.decode_latent(1, np.round(latents[0])).shape == (2, 3, 64, 64)


def test_manifest_and_shared_weights(tiny_export):
    model, out, manifest = tiny_export
    assert manifest["levels"] == 3 and manifest["strides"] == model.level_strides()
    assert manifest["padding_multiple"] == model.padding_multiple
    assert set(manifest["files"]) == {
        "encoder.onnx", "decoder_level1.onnx", "decoder_level2.onnx", "decoder_level3.onnx",
        "weights.bin", "entropy_tables.npz",
    }
    assert len(manifest["model_id"]) == 32
    parameters = sum(p.numel() for p in model.parameters())
    # every parameter once (fp16 or fp32), although the three decoder graphs all use the trunk
    assert (out / "weights.bin").stat().st_size < 4 * parameters * 1.1
    for name in ("encoder.onnx", "decoder_level1.onnx"):
        proto = onnx.load(str(out / name), load_external_data=False)
        assert proto.opset_import[0].version >= 17
        onnx.checker.check_model(str(out / name))


def test_decoders_are_exported_without_transposed_convolutions(tiny_export):
    _, out, manifest = tiny_export
    for name in manifest["decoders"].values():
        ops = {node.op_type for node in onnx.load(str(out / name), load_external_data=False).graph.node}
        assert "ConvTranspose" not in ops and "DepthToSpace" in ops


def test_tables_fitted_to_images_code_those_images_in_fewer_bits(tiny_export, tmp_path, small_image_dir):
    model, _, manifest = tiny_export
    assert manifest["tables_fitted_on"] is None
    fitted = export_model(model, tmp_path, summary={"name": "tiny"}, fit_dir=small_image_dir)
    report = fitted["tables_fitted_on"]
    assert report["images"] == 6 and report["dir"] == str(small_image_dir) and len(report["sha256"]) == 64
    assert all(f < b for f, b in zip(report["bits_per_symbol_fitted"], report["bits_per_symbol_frozen"]))
    assert all(c < f for c, f in zip(report["bits_per_symbol_context"], report["bits_per_symbol_fitted"]))
    assert manifest["entropy_coding"] == {"method": "factorized"}
    assert fitted["entropy_coding"] == {"method": "channel-context", "activity": "learned", "buckets": 16,
                                        "clip": 255, "window": 3, "spatial_buckets": [0, 8, 8],
                                        "diagonal_buckets": [0, 0, 8], "signs": ["learned"] * 3}
    assert int(np.load(tmp_path / "entropy_tables.npz")["format_version"][0]) == 7
    assert report["spatial_buckets"] == [0, 8, 8] and report["diagonal_buckets"] == [0, 0, 8]
    assert fitted["model_id"] != manifest["model_id"]
    codec = Codec.from_dir(tmp_path, threads=1)
    image = (_image(64, 96).numpy()[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    container = codec.compress(Image.fromarray(image), "all")
    assert np.asarray(codec.decompress(container, 3)).shape == image.shape
    with pytest.raises(FileNotFoundError):
        export_model(model, tmp_path / "none", fit_dir=tmp_path / "no-such-folder")
    channel_only = export_model(model, tmp_path / "channel", fit_dir=small_image_dir, spatial_buckets=0)
    assert channel_only["entropy_coding"] == {"method": "channel-context", "activity": "learned", "buckets": 16,
                                              "clip": 255, "window": 3, "signs": ["learned"] * 3}
    without = channel_only["tables_fitted_on"]["bits_per_symbol_context"]
    with_spatial = report["bits_per_symbol_context"]
    # level 1 keeps one pass; the others get the checkerboard (its gain is tested on busy symbols in test_freeze)
    assert with_spatial[0] == without[0] and all(s != c for s, c in zip(with_spatial[1:], without[1:]))
    two_passes = export_model(model, tmp_path / "two", fit_dir=small_image_dir, diagonal_buckets=0)
    assert "diagonal_buckets" not in two_passes["entropy_coding"]
    assert int(np.load(tmp_path / "two" / "entropy_tables.npz")["format_version"][0]) == 6
    two_pass_bits = two_passes["tables_fitted_on"]["bits_per_symbol_context"]
    assert two_pass_bits[:2] == report["bits_per_symbol_context"][:2]  # levels 1 and 2 keep their passes
    assert two_pass_bits[2] != report["bits_per_symbol_context"][2]
    neighbours = export_model(model, tmp_path / "flip", fit_dir=small_image_dir, signs="neighbours")
    assert neighbours["entropy_coding"]["signs"] == ["none", "neighbours", "neighbours"]  # the checkerboard's
    no_signs = export_model(model, tmp_path / "no-signs", fit_dir=small_image_dir, signs="none", diagonal_buckets=0)
    assert "signs" not in no_signs["entropy_coding"]
    assert int(np.load(tmp_path / "no-signs" / "entropy_tables.npz")["format_version"][0]) == 4
    counting = export_model(model, tmp_path / "counting", fit_dir=small_image_dir, learned_activity=False,
                            signs="none", diagonal_buckets=0)
    assert counting["entropy_coding"]["activity"] == "counting"
    assert int(np.load(tmp_path / "counting" / "entropy_tables.npz")["format_version"][0]) == 3
    assert counting["tables_fitted_on"]["bits_per_symbol_fitted"] == report["bits_per_symbol_fitted"]
    one_table = export_model(model, tmp_path / "one", fit_dir=small_image_dir, context_buckets=0)
    assert one_table["entropy_coding"] == {"method": "factorized"}
    assert one_table["tables_fitted_on"]["bits_per_symbol_fitted"] == report["bits_per_symbol_fitted"]


def test_tables_are_refitted_to_the_symbols_rdo_rounding_codes(tiny_export, tmp_path, small_image_dir):
    model = copy.deepcopy(tiny_export[0])
    with torch.no_grad():  # the untrained latents are almost all 0: spread them so rounding has choices to make
        for conv in model.encoder.pyramid.to_latent:
            conv.weight.mul_(20)
            conv.bias.mul_(20)
    plain = export_model(model, tmp_path / "plain", fit_dir=small_image_dir, rdoq_lambda=0)["tables_fitted_on"]
    rdo = export_model(model, tmp_path / "rdo", fit_dir=small_image_dir)["tables_fitted_on"]
    assert plain["rdoq_lambda"] == [0.0, 0.0, 0.0] and rdo["rdoq_lambda"] == [0.1, 0.1, 0.0]
    assert rdo["rdo_rounds"] == 2 and plain["bits_per_symbol_coded"] == plain["bits_per_symbol_context"]
    assert rdo["bits_per_symbol_context"] == plain["bits_per_symbol_context"]
    assert all(r < p for r, p in zip(rdo["bits_per_symbol_coded"][:2], plain["bits_per_symbol_coded"][:2]))
    assert rdo["bits_per_symbol_coded"][2] == plain["bits_per_symbol_coded"][2]
    plain_tables, rdo_tables = (np.load(tmp_path / name / "entropy_tables.npz") for name in ("plain", "rdo"))
    np.testing.assert_array_equal(rdo_tables["level3_context_cdf"], plain_tables["level3_context_cdf"])
    assert not np.array_equal(rdo_tables["level1_context_cdf"], plain_tables["level1_context_cdf"])
    # by default the service rounds with the λ the tables were fitted for
    assert Codec.from_dir(tmp_path / "rdo", threads=1).rdoq_per_level == (0.1, 0.1, 0.0)
    export_model(model, tmp_path / "rdo2", fit_dir=small_image_dir, rdoq_lambda=[0.2, 0.2, 0])
    assert Codec.from_dir(tmp_path / "rdo2", threads=1).rdoq_per_level == (0.2, 0.2, 0.0)
    assert Codec.from_dir(tmp_path / "plain", threads=1).rdoq_per_level == (0.0, 0.0, 0.0)
    assert Codec.from_dir(tiny_export[1], threads=1).rdoq_per_level == (0.1, 0.1, 0.0)  # tables not fitted
    # rounding with the same λ, only the tables differ: the refitted ones code the fitting images in fewer bytes
    images = [Image.open(path).convert("RGB") for path in sorted(small_image_dir.glob("*.png"))]
    sizes = {name: sum(len(Codec.from_dir(tmp_path / name, threads=1, rdoq_lambda=[0.1, 0.1, 0.0]).compress(
        image, [1, 2])) for image in images) for name in ("plain", "rdo")}
    assert sizes["rdo"] < sizes["plain"]
    # the level order report: neighbouring levels' stream sizes on the fitting images, as the runtime codes them
    order = rdo["level_order"]
    codec = Codec.from_dir(tmp_path / "rdo", threads=1)
    streams = [codec.parse(codec.compress(image, "all")).levels for image in images]
    ratios = np.array([[len(s[i + 1].payload) / len(s[i].payload) for i in range(2)] for s in streams])
    np.testing.assert_allclose(order["min_size_ratio"], ratios.min(axis=0), rtol=0.02)
    assert order["images_out_of_order"] == [f"img{i}.png" for i, r in enumerate(ratios) if (r <= 1).any()]
    manifest_path = tmp_path / "rdo" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for bad in ([0.2, 0.2], [0.2, -1, 0], [0.2, True, 0], "0.2"):
        manifest["tables_fitted_on"]["rdoq_lambda"] = bad
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(ModelLoadError, match="rdoq_lambda must be one λ"):
            load_model(tmp_path / "rdo")
    with pytest.raises(InvalidParameter, match="between 0 and 100"):
        export_model(model, tmp_path / "bad", fit_dir=small_image_dir, rdoq_lambda=-1)
    assert not (tmp_path / "bad").exists()


def test_level_order_names_the_images_where_a_level_is_not_larger_than_the_one_below(tiny_export):
    tables = [freeze_bottleneck(bottleneck) for bottleneck in tiny_export[0].entropy]
    sides = [[8, 16, 32], [8, 4, 32], [8, 16, 8]]  # per image, each level's side: more positions, more bytes
    symbols = [[np.ones((t.channels, image[level], image[level]), dtype=np.int32) for image in sides]
               for level, t in enumerate(tables)]
    order = level_order(["rising", "level 2 too small", "level 3 too small"], tables, symbols)
    assert order["images_out_of_order"] == ["level 2 too small", "level 3 too small"]
    sizes = [[len(runtime_coder(t).encode(s)) for s in row] for t, row in zip(tables, symbols)]
    assert order["min_size_ratio"] == [round(min(b / a for a, b in zip(sizes[i], sizes[i + 1])), 4) for i in (0, 1)]
    assert order["min_size_ratio"][0] < 1 < sizes[1][0] / sizes[0][0]


def test_diagonal_buckets_per_level():
    assert diagonal_buckets_per_level(None, [0, 8, 8, 8]) == [0, 0, 8, 8]
    assert diagonal_buckets_per_level(None, [0, 0, 0, 8]) == [0, 0, 0, 8]  # only where the checkerboard is
    assert diagonal_buckets_per_level(None, [0]) == [0]
    assert diagonal_buckets_per_level(4, [0, 8, 8]) == [0, 4, 4]
    assert diagonal_buckets_per_level([0, 0, 3], [0, 8, 8]) == [0, 0, 3]
    for bad in ([0, 8], [0, 1, 0], [4, 0, 0]):
        with pytest.raises(ValueError, match="diagonal buckets"):
            diagonal_buckets_per_level(bad, [0, 8, 8])


def test_spatial_buckets_per_level():
    assert spatial_buckets_per_level(None, 4) == [0, 8, 8, 8]
    assert spatial_buckets_per_level(4, 3) == [4, 4, 4]
    assert spatial_buckets_per_level([0, 2, 0], 3) == [0, 2, 0]
    for bad in ([8, 8], 1, [0, 300, 8]):
        with pytest.raises(ValueError, match="spatial buckets"):
            spatial_buckets_per_level(bad, 3)


def test_export_is_reproducible(tiny_export, tmp_path):
    model, _, manifest = tiny_export
    again = export_model(model, tmp_path, summary={"name": "tiny"})
    assert again["model_id"] == manifest["model_id"]


def test_tampered_artifacts_are_refused(tiny_export, tmp_path):
    _, out, _ = tiny_export
    for path in out.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    tables = tmp_path / "entropy_tables.npz"
    data = bytearray(tables.read_bytes())
    data[-10] ^= 0xFF
    tables.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "missing")


def test_shipped_model_matches_its_checkpoint():
    """models/default is the export of checkpoints/sslic_default.pt: latents and images agree."""
    manifest = json.loads((REPO / "models" / "default" / "manifest.json").read_text())
    model, _config, summary = load_codec_checkpoint(REPO / "checkpoints" / "sslic_default.pt")
    model.eval()
    assert manifest["training"]["step"] == summary["step"]
    codec = Codec.from_dir(REPO / "models" / "default", threads=2)
    x = _image(512, 768)
    padded = torch.from_numpy(pad_image((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), 64))[None]
    latents = codec.model.encode_latents(padded.numpy())
    with torch.no_grad():
        expected = model.encoder(padded)
    mismatched = total = 0
    for level, (got, want) in enumerate(zip(latents, expected), start=1):
        np.testing.assert_allclose(got, want.numpy(), atol=2e-3, rtol=0)
        medians = model.entropy[level - 1].medians().numpy()
        mismatched += int((np.rint(got - medians) != torch.round(want - torch.from_numpy(medians)).numpy()).sum())
        total += got.size
    assert mismatched / total < 1e-4
    with torch.no_grad():
        y_hat = torch.round(expected[-1] - model.entropy[-1].medians()) + model.entropy[-1].medians()
        np.testing.assert_allclose(
            codec.model.decode_latent(4, y_hat.numpy()), model.decoder(y_hat, 4).numpy(), atol=1e-3, rtol=0
        )


def test_refinement_graphs_match_pytorch_and_stay_outside_the_model_id(tmp_path):
    """The decoder-gradient graphs: one per level, listed with their hashes and the training trade-offs, computed
    like ``DecoderGradient``, on the decoders' own weights (``weights.bin`` does not grow), and not part of the
    model id (adding them cannot change what a stream decodes to)."""
    import copy

    from model_export.decoder import use_subpixel_upsampling
    from model_export.decoder_gradient import DecoderGradient

    torch.manual_seed(0)
    model = SSLIC(tiny_model_config(), load_backbone_weights=False).eval()
    summary = {"name": "tiny", "config": {"loss": {"alpha": [100.0, 300.0, 900.0], "gamma": [1.0, 0.9, 0.8]}}}
    with_graphs = export_model(model, tmp_path / "with", summary=summary)
    without = export_model(model, tmp_path / "without", summary=summary, refinement=False)
    assert "refinement" not in without
    refinement = with_graphs["refinement"]
    assert refinement["mse_per_bpp"] == pytest.approx([100.0, 300.0 / 0.9, 900.0 / 0.8])
    assert sorted(refinement["files"]) == [f"decoder_gradient_level{level}.onnx" for level in (1, 2, 3)]
    assert with_graphs["model_id"] == without["model_id"] and with_graphs["files"] == without["files"]
    assert (tmp_path / "with" / "weights.bin").read_bytes() == (tmp_path / "without" / "weights.bin").read_bytes()

    runtime = load_model(tmp_path / "with", intra_op_threads=1)
    deployed = copy.deepcopy(model)
    use_subpixel_upsampling(deployed.decoder)
    target = pad_to_multiple(_image(70, 100), model.padding_multiple)
    weight = torch.zeros_like(target[:, :1])
    weight[:, :, :70, :100] = 1.0
    for level in (1, 2, 3):
        stride = model.level_strides()[level - 1]
        latent = torch.randn(1, 8, target.shape[2] // stride, target.shape[3] // stride) * 2
        error, gradient = runtime.decoder_gradient(level, latent.numpy(), target.numpy(), weight.numpy())
        with torch.no_grad():
            expected_error, expected_gradient = DecoderGradient(deployed.decoder, level)(latent, target, weight)
        assert error == pytest.approx(float(expected_error[0]), rel=1e-4)
        np.testing.assert_allclose(gradient, expected_gradient.numpy(), rtol=1e-3,
                                   atol=1e-4 * float(expected_gradient.abs().max()))
    assert load_model(tmp_path / "without", intra_op_threads=1).refinement is None
    graph = tmp_path / "with" / "decoder_gradient_level2.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ModelLoadError, match="decoder_gradient_level2.onnx does not match"):
        load_model(tmp_path / "with", intra_op_threads=1)
    graph.unlink()
    with pytest.raises(ModelLoadError, match="missing decoder_gradient_level2.onnx"):
        load_model(tmp_path / "with", intra_op_threads=1)
    from service.errors import RefinementUnavailable

    plain = Codec(load_model(tmp_path / "without", intra_op_threads=1))
    picture = Image.fromarray((_image(40, 40)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    with pytest.raises(RefinementUnavailable, match="without decoder-gradient graphs"):
        plain.compress(picture, 1, refine_steps=2)
