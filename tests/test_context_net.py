"""The learned context model's probe: it reads only what a decoder already has, codes escapes, and learns."""

import json

import numpy as np
import pytest
import torch

from bench import context_net_cost
from model_export.context_net import (
    ContextNet, class_of, code_length, features, main, runtime_symbols, table_code_length, train_context_net,
)
from service.codec import Codec

from .conftest import REPO

MODEL_DIR = REPO / "models" / "default"


def _logits(net: ContextNet, symbols: np.ndarray, channel: int) -> torch.Tensor:
    height, width = symbols.shape[1:]
    rows, cols = np.divmod(np.arange(height * width), width)
    earlier, own = features(symbols, rows, cols, np.full(rows.shape, channel), net.clip)
    with torch.no_grad():
        return net(torch.from_numpy(earlier), torch.from_numpy(own), torch.full(rows.shape, channel))


@pytest.mark.parametrize("channel", [0, 2, 4])
def test_a_symbol_depends_only_on_what_the_decoder_has_decoded(channel):
    rng = np.random.default_rng(channel)
    symbols = rng.integers(-12, 13, size=(5, 7, 6))
    net = ContextNet(5, hidden=16, radius=4, clip=3)
    before = _logits(net, symbols, channel)
    anchors = ((np.arange(7)[:, None] + np.arange(6)[None, :]) % 2 == 0).reshape(-1)
    unknown = symbols.copy()
    unknown[channel + 1 :] = rng.integers(-12, 13, size=unknown[channel + 1 :].shape)
    own = unknown[channel].reshape(-1)
    own[~anchors] = rng.integers(-12, 13, size=int((~anchors).sum()))  # not decoded before any non-anchor
    np.testing.assert_array_equal(_logits(net, unknown, channel).numpy(), before.numpy())
    own[anchors] += 1  # decoded before the non-anchors, after the anchors
    changed = _logits(net, unknown, channel)
    np.testing.assert_array_equal(changed[anchors].numpy(), before[anchors].numpy())
    assert not torch.equal(changed[~anchors], before[~anchors])
    if channel:
        earlier = unknown.copy()
        earlier[channel - 1] += 1
        assert not torch.equal(_logits(net, earlier, channel), _logits(net, unknown, channel))


def test_symbols_beyond_the_radius_are_escapes_that_cost_their_payload():
    np.testing.assert_array_equal(class_of(np.array([-4, 0, 4, 5, -9]), radius=4), [0, 4, 8, 9, 9])
    net = ContextNet(2, hidden=8, radius=4)
    small = np.zeros((2, 4, 4), dtype=np.int32)
    large = small.copy()
    large[1, 2, 3] = 40
    larger = small.copy()
    larger[1, 2, 3] = 70_000
    assert code_length(net, small) < code_length(net, large) < code_length(net, larger) < np.inf


def _dependent_channels(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Three channels of integers whose common scale changes by region, as busy and flat parts of an image."""
    images = []
    for _ in range(count):
        scale = np.kron(rng.choice([0.1, 0.7, 2.5], size=(4, 4)), np.ones((4, 4)))
        images.append(np.rint(rng.laplace(0.0, scale, size=(3, 16, 16))).astype(np.int32))
    return images


def _factorized_bits(images: list[np.ndarray]) -> float:
    """Code length with each channel's own histogram of these very images (an optimistic factorized model)."""
    bits = 0.0
    for c in range(images[0].shape[0]):
        values = np.concatenate([image[c].ravel() for image in images])
        _, counts = np.unique(values, return_counts=True)
        bits -= float((counts * np.log2(counts / counts.sum())).sum())
    return bits


def test_training_learns_what_earlier_channels_say_about_later_ones():
    rng = np.random.default_rng(0)
    train, held_out = _dependent_channels(rng, 24), _dependent_channels(rng, 4)
    net = train_context_net(train, epochs=4, samples_per_image=1000, hidden=32, learning_rate=3e-3, batch=128)
    learned = sum(code_length(net, image) for image in held_out)
    # a model of each channel on its own cannot beat histograms fitted to the very images it codes
    assert learned < 0.95 * _factorized_bits(held_out)


def test_training_refuses_empty_input():
    with pytest.raises(ValueError):
        train_context_net([], epochs=1)


def test_the_command_measures_the_shipped_model_on_real_symbols(tmp_path, small_image_dir):
    out = tmp_path / "context_net.json"
    main(["--model-dir", str(MODEL_DIR), "--train-dir", str(small_image_dir), "--val-dir", str(small_image_dir),
          "--levels", "4", "--epochs", "1", "--samples-per-image", "200", "--hidden", "8", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["model_id"] == json.loads((MODEL_DIR / "manifest.json").read_text())["model_id"]
    (level,) = report["levels"]
    assert level["level"] == 4 and level["val_kbit_tables"] > 0 and level["val_kbit_net"] > 0
    ratio = level["val_kbit_net"] / level["val_kbit_tables"]  # both rounded to 0.1 kbit
    assert level["change_percent"] == pytest.approx(100 * (ratio - 1), rel=1e-2)


def test_the_symbols_measured_are_those_the_runtime_codes(small_image_dir):
    codec = Codec.from_dir(MODEL_DIR)
    symbols = runtime_symbols(codec, small_image_dir, [2, 4])
    name = sorted(symbols[4])[0]
    image = codec.load_image((small_image_dir / name).read_bytes())
    expected = codec.symbols(image, [2, 4])
    np.testing.assert_array_equal(symbols[2][name], expected[2])
    np.testing.assert_array_equal(symbols[4][name], expected[4])
    coder, context = codec.model.coders[3], codec.model.coders[3].tables.context
    bits = coder.bit_costs(context.table_ids_of(expected[4]), expected[4], context.flips_of(expected[4])).sum()
    assert table_code_length(coder, expected[4]) == pytest.approx(bits)
    assert abs(len(coder.encode(expected[4])) * 8 - bits) < 0.01 * bits + 64  # what the coder writes


@pytest.mark.parametrize("tables", [0, 16])
def test_the_cost_benchmark_evaluates_the_integer_network_exactly(tables):
    result = context_net_cost.run(4, 8, 10, hidden=16, radius=7, check=True, tables=tables)
    assert result["exact"] and result["symbols"] == 320
    assert ("range_decode_ms" in result) == (tables == 0)


def test_the_cost_benchmark_refuses_sizes_beyond_float32_exact_integers():
    with pytest.raises(ValueError, match="exact"):
        context_net_cost.run(4, 8, 10, hidden=256, radius=7, check=True)
