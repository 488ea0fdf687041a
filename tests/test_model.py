import pytest
import torch

from model_export.config import ConfigError, ExperimentConfig, ModelConfig
from model_export.model import SSLIC, pad_to_multiple

from .conftest import tiny_model_config


@pytest.mark.parametrize("height,width", [(1, 1), (37, 53), (64, 64), (65, 130), (101, 33)])
def test_reconstruction_keeps_odd_sizes(height, width):
    model = SSLIC(tiny_model_config()).eval()
    x = torch.rand(1, 3, height, width)
    x_hat, bpp = model.reconstruct(x, level=2)
    assert x_hat.shape == x.shape
    assert bpp > 0
    assert torch.all((x_hat >= 0) & (x_hat <= 1))


@pytest.mark.parametrize("attention", ["none", "encoder", "decoder", "both"])
def test_latent_shapes_follow_the_pyramid(attention):
    model = SSLIC(tiny_model_config(attention=attention)).eval()
    x = pad_to_multiple(torch.rand(2, 3, 37, 53), model.padding_multiple)
    assert x.shape[-2] % model.padding_multiple == 0 and x.shape[-1] % model.padding_multiple == 0
    out = model(x)
    strides = model.level_strides()
    assert strides == sorted(strides, reverse=True)  # level 1 is the coarsest
    for level, (y, x_hat, lik) in enumerate(zip(out["y"], out["x_hat"], out["likelihoods"]), start=1):
        assert y.shape == (2, 8, x.shape[-2] // strides[level - 1], x.shape[-1] // strides[level - 1])
        assert lik.shape == y.shape
        assert x_hat.shape == x.shape


def test_default_model_has_four_levels_from_h8_to_h64():
    model = SSLIC(ModelConfig())
    assert model.levels == 4
    assert model.level_strides() == [64, 32, 16, 8]
    assert model.padding_multiple == 64


def test_encoder_attention_is_placed_by_config():
    assert SSLIC(tiny_model_config(attention="none")).encoder.attention is None
    assert SSLIC(tiny_model_config(attention="encoder")).decoder.trunk.attention is None
    both = SSLIC(tiny_model_config(attention="both"))
    assert both.encoder.attention is not None and both.decoder.trunk.attention is not None


def test_decoder_paths_share_parameters():
    decoder = SSLIC(tiny_model_config(latent_channels=[8, 8, 8, 8])).decoder
    for level in range(2, 5):
        finer = {id(p) for p in decoder.path_parameters(level)}
        coarser = decoder.path_parameters(level - 1)
        own_entry = {id(p) for p in decoder.entry[level - 2].parameters()}
        own_up = {id(p) for p in decoder.up[decoder.levels - level].parameters()}
        shared = [p for p in coarser if id(p) not in own_entry | own_up]
        assert shared and all(id(p) in finer for p in shared)  # level i reuses level i-1's shared weights
        assert {id(p) for p in decoder.refine[level - 1].parameters()} <= finer  # plus its own block
        assert not {id(p) for p in decoder.refine[level - 1].parameters()} & {id(p) for p in coarser}


def test_each_decoder_path_runs_on_its_own():
    model = SSLIC(tiny_model_config()).eval()
    x = torch.rand(1, 3, 64, 64)
    latents = model.encoder(x)
    for level in range(1, model.levels + 1):
        path = model.decoder.path(level)
        torch.testing.assert_close(path(latents[level - 1]), model.decoder(latents[level - 1], level))


def test_frozen_backbone_gets_no_gradient_but_baseline_stem_does():
    model = SSLIC(tiny_model_config())
    out = model(torch.rand(2, 3, 64, 64))
    sum(o.mean() for o in out["x_hat"]).backward()
    assert all(p.grad is None for p in model.encoder.backbone.parameters())
    assert model.encoder.pyramid.down[0][0].weight.grad is not None
    baseline = SSLIC(tiny_model_config(backbone="learned"))
    out = baseline(torch.rand(2, 3, 64, 64))
    sum(o.mean() for o in out["x_hat"]).backward()
    assert all(p.grad is not None for p in baseline.encoder.backbone.parameters())


def test_config_rejects_bad_weights_and_placements():
    base = {"model": {"latent_channels": [8, 8]}}
    with pytest.raises(ConfigError, match="alpha must increase"):
        ExperimentConfig.from_dict({**base, "loss": {"alpha": [2, 1], "beta": [0, 0], "gamma": [1, 0.5]}})
    with pytest.raises(ConfigError, match="gamma must decrease"):
        ExperimentConfig.from_dict({**base, "loss": {"alpha": [1, 2], "beta": [0, 0], "gamma": [0.5, 1]}})
    with pytest.raises(ConfigError, match="beta must increase"):
        ExperimentConfig.from_dict({**base, "loss": {"alpha": [1, 2], "beta": [2, 1], "gamma": [1, 0.5]}})
    with pytest.raises(ConfigError, match="one per level"):
        ExperimentConfig.from_dict({**base, "loss": {"alpha": [1, 2, 3], "beta": [0, 0], "gamma": [1, 0.5]}})
    with pytest.raises(ConfigError, match="attention"):
        ExperimentConfig.from_dict({"model": {"attention": "everywhere"}})
    with pytest.raises(ConfigError, match="unknown keys"):
        ExperimentConfig.from_dict({"train": {"learning_rate": 1}})


def test_pixel_shortcut_appends_the_exact_pixels():
    model = SSLIC(tiny_model_config(pixel_shortcut=True)).eval()
    x = torch.rand(1, 3, 32, 64)
    features = model.encoder.features(x)
    assert features.shape == (1, 256 + 48, 8, 16)
    torch.testing.assert_close(features[:, 256:], torch.nn.functional.pixel_unshuffle(x - 0.5, 4))
    plain = SSLIC(tiny_model_config(pixel_shortcut=False)).eval()
    assert plain.encoder.features(x).shape == (1, 256, 8, 16)


def test_rounded_decoder_input_is_what_inference_decodes_with_a_straight_through_gradient():
    torch.manual_seed(0)
    model = SSLIC(tiny_model_config()).train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x, decoder_input="round")
    noisy = model(x, decoder_input="noise")
    for level, (y, x_hat) in enumerate(zip(out["y"], out["x_hat"]), start=1):
        medians = model.entropy[level - 1].medians()
        expected = model.decoder(torch.round(y - medians) + medians, level)
        assert torch.allclose(x_hat, expected, atol=1e-6)
        assert not torch.allclose(noisy["x_hat"][level - 1], expected, atol=1e-4)
    out["x_hat"][-1].square().mean().backward()
    pyramid_grads = [p.grad for p in model.encoder.pyramid.parameters() if p.grad is not None]
    assert pyramid_grads and any(g.abs().sum() > 0 for g in pyramid_grads)


def test_decoder_input_must_be_noise_or_round():
    model = SSLIC(tiny_model_config()).train()
    with pytest.raises(ValueError, match="decoder_input"):
        model(torch.rand(1, 3, 64, 64), decoder_input="soft")
    with pytest.raises(ConfigError, match="decoder_input"):
        ExperimentConfig.from_dict({"train": {"decoder_input": "soft"}})


@pytest.mark.parametrize("height,width", [(1, 1), (5, 7), (8, 12)])
def test_subpixel_upsampling_computes_the_transposed_convolution(height, width):
    from model_export.decoder import SubPixelUpsample, _upsample

    torch.manual_seed(height)
    transposed = _upsample(6, 5)
    x = torch.randn(2, 6, height, width)
    with torch.no_grad():
        torch.testing.assert_close(SubPixelUpsample(transposed)(x), transposed(x), rtol=1e-5, atol=1e-5)


def test_a_decoder_with_subpixel_upsampling_decodes_as_before():
    import copy

    from model_export.decoder import use_subpixel_upsampling

    model = SSLIC(tiny_model_config(attention="decoder")).eval()
    deployed = copy.deepcopy(model.decoder)
    assert use_subpixel_upsampling(deployed) == (model.levels - 1) + 3
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in deployed.modules())
    with torch.no_grad():
        for level in range(1, model.levels + 1):
            y = torch.round(3 * torch.randn(1, model.config.latent_channels[level - 1], 3, 5))
            torch.testing.assert_close(deployed(y, level), model.decoder(y, level), rtol=1e-4, atol=1e-5)


def test_subpixel_upsampling_refuses_other_transposed_convolutions():
    from model_export.decoder import SubPixelUpsample

    with pytest.raises(ValueError, match="5x5 stride-2"):
        SubPixelUpsample(torch.nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1))
