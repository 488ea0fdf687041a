import pytest
import torch

from model_export.attention import SelfAttention


def _explicit(module: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """SAGAN over each window, written out with loops (the reference)."""
    b, c, h, w = x.shape
    q, k, v = module.query(x), module.key(x), module.value(x)
    if module.pool > 1:
        k = torch.nn.functional.max_pool2d(k, module.pool)
        v = torch.nn.functional.max_pool2d(v, module.pool)
    out = torch.zeros_like(x)
    win = module.window or h
    win_w = module.window or w
    kp, kpw = win // module.pool, win_w // module.pool
    for n in range(b):
        for ty in range(h // win):
            for tx in range(w // win_w):
                qs = q[n, :, ty * win : (ty + 1) * win, tx * win_w : (tx + 1) * win_w].reshape(q.shape[1], -1)
                ks = k[n, :, ty * kp : (ty + 1) * kp, tx * kpw : (tx + 1) * kpw].reshape(k.shape[1], -1)
                vs = v[n, :, ty * kp : (ty + 1) * kp, tx * kpw : (tx + 1) * kpw].reshape(c, -1)
                attn = torch.softmax(qs.t() @ ks, dim=-1)
                tile = (vs @ attn.t()).reshape(c, win, win_w)
                out[n, :, ty * win : (ty + 1) * win, tx * win_w : (tx + 1) * win_w] = tile
    return x + module.gamma * out


@pytest.mark.parametrize("window,pool", [(4, 2), (8, 1), (0, 2), (0, 1)])
def test_sdpa_and_matmul_paths_match_the_reference(window, pool):
    module = SelfAttention(16, window=window, pool=pool)
    with torch.no_grad():
        module.gamma.fill_(0.7)
    x = torch.randn(2, 16, 8, 16)
    expected = _explicit(module, x)
    module.use_sdpa = True
    torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-5)
    module.use_sdpa = False
    torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-5)


def test_gamma_starts_at_zero_so_attention_starts_as_identity():
    module = SelfAttention(32)
    x = torch.randn(1, 32, 16, 16)
    assert module.gamma.item() == 0.0
    torch.testing.assert_close(module(x), x)


def test_query_key_width_is_an_eighth_of_the_channels():
    module = SelfAttention(256)
    assert module.query.out_channels == 32 and module.key.out_channels == 32
    assert module.value.out_channels == 256


def test_windowed_attention_is_local():
    """Changing one window's input leaves the other windows' outputs unchanged (memory grows linearly)."""
    module = SelfAttention(8, window=4, pool=2)
    with torch.no_grad():
        module.gamma.fill_(1.0)
    x = torch.randn(1, 8, 8, 8)
    y = x.clone()
    y[:, :, :4, :4] += 5.0
    diff = (module(x) - module(y)).abs().sum(dim=1)[0]
    assert diff[:4, :4].sum() > 0
    assert diff[4:, :].sum() == 0 and diff[:, 4:].sum() == 0


def test_pool_must_divide_window():
    with pytest.raises(ValueError):
        SelfAttention(8, window=6, pool=4)
