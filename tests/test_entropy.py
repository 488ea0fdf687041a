import torch

from model_export.entropy import EntropyBottleneck, quantize


def _trained_bottleneck(channels=4, steps=300):
    """A bottleneck fitted to Laplacian-ish data with different scales per channel."""
    torch.manual_seed(0)
    eb = EntropyBottleneck(channels)
    opt = torch.optim.Adam([p for n, p in eb.named_parameters() if n != "quantiles"], lr=1e-2)
    aux = torch.optim.Adam([eb.quantiles], lr=1e-1)
    scales = torch.tensor([0.5, 2.0, 5.0, 12.0])[:channels].reshape(1, -1, 1, 1)
    for _ in range(steps):
        y = torch.distributions.Laplace(0.0, 1.0).sample((8, channels, 8, 8)) * scales + 1.5
        _, likelihoods = eb(y)
        loss = -torch.log2(likelihoods).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        aux_loss = eb.loss()
        aux.zero_grad()
        aux_loss.backward()
        aux.step()
    return eb


def test_likelihoods_integrate_to_one_per_channel():
    eb = _trained_bottleneck()
    support = torch.arange(-400, 401, dtype=torch.float32).repeat(eb.channels, 1)
    total = eb.pmf(support).sum(dim=1)
    torch.testing.assert_close(total, torch.ones(eb.channels), atol=2e-3, rtol=0)


def test_untrained_density_also_integrates_to_one():
    eb = EntropyBottleneck(3)
    support = torch.arange(-300, 301, dtype=torch.float32).repeat(3, 1)
    torch.testing.assert_close(eb.pmf(support).sum(dim=1), torch.ones(3), atol=2e-3, rtol=0)


def test_training_adds_noise_and_eval_rounds_around_medians():
    eb = _trained_bottleneck(steps=50)
    y = torch.randn(2, 4, 5, 5) * 3
    eb.train()
    noisy, _ = eb(y)
    assert torch.all((noisy - y).abs() <= 0.5)
    assert not torch.allclose(noisy, torch.round(noisy))
    eb.eval()
    rounded, likelihoods = eb(y)
    medians = eb.medians()
    torch.testing.assert_close(rounded - medians, torch.round(rounded - medians))
    assert torch.all(likelihoods > 0) and torch.all(likelihoods <= 1)


def test_quantiles_track_the_data():
    eb = _trained_bottleneck(steps=400)
    medians = eb.quantiles[:, 0, 1]
    assert torch.all((medians - 1.5).abs() < 1.0), medians
    lower, upper = eb.quantiles[:, 0, 0], eb.quantiles[:, 0, 2]
    spread = upper - lower
    assert torch.all(lower < medians) and torch.all(medians < upper)
    assert spread[0] < spread[-1], spread  # the widest channel gets wider tails than the narrowest


def test_bits_reflect_the_distribution():
    eb = _trained_bottleneck()
    eb.eval()
    narrow = torch.zeros(1, 4, 16, 16) + 1.5
    _, likelihoods = eb(narrow)
    bits = -torch.log2(likelihoods).mean(dim=(0, 2, 3))
    assert torch.all(bits[1:] > bits[:-1]), bits  # the mode of a wider density costs more bits


def test_quantize_modes():
    y = torch.tensor([0.4, 1.6, -2.5])
    offsets = torch.tensor(0.25)
    assert quantize(y, "round").tolist() == [0.0, 2.0, -2.0]
    assert quantize(y, "symbols", offsets).tolist() == [0.0, 1.0, -3.0]
    torch.testing.assert_close(quantize(y, "round", offsets), torch.tensor([0.25, 1.25, -2.75]))
