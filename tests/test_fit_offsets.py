"""The decoder's input offsets: what they add to each symbol, their export, and their fit on real symbols."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.checkpoint import load_codec_checkpoint, save_codec_checkpoint
from model_export.config import ExperimentConfig, LossConfig
from model_export.decoder import MAX_INPUT_OFFSET, InputOffsets
from model_export.export import export_model
from model_export.fit_offsets import LevelImage, fit_offsets, main, with_input_offsets
from model_export.model import SSLIC, pad_to_multiple
from service.codec import Codec
from service.model import load_model
from tests.conftest import offset_model, tiny_model_config


def test_input_offsets_shift_each_symbol_by_its_channel_and_magnitude():
    offsets = InputOffsets(2, classes=3)
    medians = torch.tensor([0.25, -1.5])
    symbols = torch.tensor([[[0.0, 1.0, -1.0, 2.0, -5.0]], [[0.0, 1.0, -2.0, 3.0, 0.0]]])[None]
    y_hat = symbols + medians.view(1, 2, 1, 1)
    with torch.no_grad():
        offsets.medians.copy_(medians)
        torch.testing.assert_close(offsets(y_hat), y_hat)  # zero offsets: the identity
        offsets.offsets.copy_(torch.tensor([[0.01, 0.1, 0.2], [0.02, 0.3, 0.4]]))
        shifted = offsets(y_hat)
    expected = torch.tensor([[[0.01, 0.1, -0.1, 0.2, -0.2]], [[0.02, 0.3, -0.4, 0.4, 0.02]]])[None]
    torch.testing.assert_close(shifted - y_hat, expected)


def _tiny_config() -> ExperimentConfig:
    return ExperimentConfig(model=tiny_model_config(), loss=LossConfig(alpha=[1.0, 2.0, 3.0], beta=[0.0] * 3,
                                                                       gamma=[1.0, 0.9, 0.8]))


def test_offsets_are_part_of_each_exported_decoder(tmp_path):
    model = offset_model()
    export_model(model, tmp_path, summary={"name": "tiny"}, refinement=False)
    runtime = load_model(tmp_path, intra_op_threads=1)
    torch.manual_seed(1)
    for level in range(1, model.levels + 1):
        medians = model.entropy[level - 1].medians().reshape(1, -1, 1, 1)
        y_hat = torch.round(torch.randn(1, 8, 4, 6) * 2) + medians
        with torch.no_grad():
            expected = model.decoder(y_hat, level).numpy()
            without = SSLIC(tiny_model_config(), load_backbone_weights=False)
            without.load_state_dict({k: v for k, v in model.state_dict().items() if "input_offsets" not in k})
            plain = without.eval().decoder(y_hat, level).numpy()
        got = runtime.decode_latent(level, y_hat.numpy())
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        assert np.abs(got - plain).max() > 1e-3  # the offsets change what the graph decodes


def test_with_input_offsets_keeps_every_weight_and_copies_the_medians():
    torch.manual_seed(0)
    model = SSLIC(tiny_model_config(), load_backbone_weights=False).eval()
    config = _tiny_config()
    fitted, fitted_config = with_input_offsets(model, config)
    assert fitted_config.model.decoder_input_offsets and not config.model.decoder_input_offsets
    state = fitted.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state[key], value)
    for level, offsets in enumerate(fitted.decoder.input_offsets):
        torch.testing.assert_close(offsets.medians, model.entropy[level].medians().reshape(-1))
        assert not offsets.offsets.any()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny model (without offsets), its checkpoint and its export."""
    torch.manual_seed(0)
    model = SSLIC(tiny_model_config(), load_backbone_weights=False).eval()
    config = _tiny_config()
    folder = tmp_path_factory.mktemp("tiny_offsets")
    checkpoint = save_codec_checkpoint(folder / "tiny.pt", model, config, {"name": "tiny", "step": 0})
    export_model(model, folder / "model", summary={"name": "tiny"}, refinement=False)
    return checkpoint, folder / "model"


def test_fitted_offsets_decode_the_runtime_symbols_with_less_error(tiny_checkpoint, small_image_dir):
    checkpoint, model_dir = tiny_checkpoint
    model, config, _ = load_codec_checkpoint(checkpoint)
    model, _ = with_input_offsets(model, config)
    codec = Codec.from_dir(model_dir, threads=1)
    images = [LevelImage(codec, path) for path in sorted(Path(small_image_dir).glob("*.png"))]
    report = fit_offsets(model, images[:4], images, epochs=3, lr=0.05, log=lambda _: None)
    for level in report.values():  # these images are mostly the fitting images: the error must fall
        assert level["val_psnr_after"] > level["val_psnr_before"]
    assert any(abs(v) > 1e-3 for level in report.values() for v in level["mean_offset_per_class"])


def test_the_fit_keeps_every_offset_below_half(tiny_checkpoint, small_image_dir):
    """A large learning rate would take offsets past ½; the projection keeps them at ``MAX_INPUT_OFFSET``, so the
    runtime can still cancel them for a plainly rounded level."""
    checkpoint, model_dir = tiny_checkpoint
    model, config, _ = load_codec_checkpoint(checkpoint)
    model, _ = with_input_offsets(model, config)
    codec = Codec.from_dir(model_dir, threads=1)
    images = [LevelImage(codec, path) for path in sorted(Path(small_image_dir).glob("*.png"))[:3]]
    fit_offsets(model, images, [], epochs=2, lr=2.0, levels=[1], log=lambda _: None)
    fitted = model.decoder.input_offsets[0].offsets.detach()
    assert fitted.abs().max() == pytest.approx(MAX_INPUT_OFFSET) and MAX_INPUT_OFFSET < 0.5


def test_the_command_writes_a_checkpoint_that_exports_its_offsets(tiny_checkpoint, small_image_dir, tmp_path):
    checkpoint, model_dir = tiny_checkpoint
    out = tmp_path / "fitted.pt"
    report = main([str(checkpoint), str(model_dir), "--out", str(out), "--data-dir", str(small_image_dir),
                   "--val-dir", "", "--every", "2", "--epochs", "1", "--threads", "1"])
    assert Codec.from_dir(model_dir, threads=1).rdoq_per_level == (0.1, 0.1, 0.0)
    assert report["images"] == 3 and set(report["levels"]) == {"1", "2"}  # the RDO-rounded levels
    fitted, config, summary = load_codec_checkpoint(out)
    assert config.model.decoder_input_offsets and summary["input_offsets"]["epochs"] == 1
    first, second, finest = (offsets.offsets for offsets in fitted.decoder.input_offsets)
    assert first.abs().max() > 0 and second.abs().max() > 0 and not finest.any()
    exported = export_model(fitted, tmp_path / "model", summary={"name": "tiny"}, refinement=False)
    original = Codec.from_dir(model_dir, threads=1).model_id
    assert exported["model_id"] != original  # the offsets are part of the decoders, so of the model id
    x = pad_to_multiple(torch.rand(1, 3, 64, 64), fitted.padding_multiple)
    assert load_model(tmp_path / "model", intra_op_threads=1).encode_latents(x.numpy())[0].shape[1] == 8


def test_a_model_folder_of_another_checkpoint_is_refused(tiny_checkpoint, small_image_dir, tmp_path):
    checkpoint, _ = tiny_checkpoint
    torch.manual_seed(5)
    other = SSLIC(tiny_model_config(), load_backbone_weights=False).eval()
    with torch.no_grad():
        for bottleneck in other.entropy:
            for parameter in bottleneck.parameters():
                parameter.add_(0.5)
    export_model(other, tmp_path / "other", summary={"name": "other"}, refinement=False)
    with pytest.raises(SystemExit, match="medians differ"):
        main([str(checkpoint), str(tmp_path / "other"), "--out", str(tmp_path / "x.pt"),
              "--data-dir", str(small_image_dir), "--val-dir", ""])


def test_the_refinement_graphs_decode_with_the_offsets(tmp_path):
    """Latent refinement optimises what the decoder with offsets decodes: the exported gradient graph's error is
    the torch decoder's, and its gradient autograd's (the offsets shift ŷ by a constant between rounding steps)."""
    import copy

    from model_export.decoder import use_subpixel_upsampling

    model = offset_model()
    summary = {"name": "tiny", "config": {"loss": {"alpha": [100.0, 300.0, 900.0], "gamma": [1.0, 0.9, 0.8]}}}
    export_model(model, tmp_path, summary=summary)
    runtime = load_model(tmp_path, intra_op_threads=1)
    deployed = copy.deepcopy(model)
    use_subpixel_upsampling(deployed.decoder)
    torch.manual_seed(2)
    target = torch.rand(1, 3, 64, 64)
    weight = torch.ones(1, 1, 64, 64)
    for level in (1, 2, 3):
        stride = model.level_strides()[level - 1]
        medians = model.entropy[level - 1].medians().reshape(1, -1, 1, 1)
        latent = (torch.round(torch.randn(1, 8, 64 // stride, 64 // stride) * 2) + medians + 0.2).requires_grad_(True)
        decoded = deployed.decoder(latent, level)
        expected = (weight * (decoded.clamp(0, 1) - target) ** 2).sum()
        expected.backward()
        expected = float(expected.detach())
        error, gradient = runtime.decoder_gradient(level, latent.detach().numpy(), target.numpy(), weight.numpy())
        assert error == pytest.approx(expected, rel=1e-4)
        np.testing.assert_allclose(gradient, latent.grad.numpy(), rtol=1e-3, atol=1e-4 * float(latent.grad.abs().max()))
