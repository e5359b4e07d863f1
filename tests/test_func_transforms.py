"""PyTorch's function transforms on the LM mix and on every LM model family (shared/DESIGN.md 1c).

``lm_mix`` has two implementations: in plain eager autograd a custom ``autograd.Function``
(``_LMMixBackward``: in-place forward, hand-written backward), everywhere else the out-of-place
formula that the transforms differentiate themselves. These tests check that each transform gives
what ordinary autograd gives, on the mix alone (float64, exact checks) and through one model per
family and block kind.
"""
import pytest
import torch

from timm_lm.lm import lm_mix

# ---- the mix alone, float64 ---------------------------------------------------------------------------------

MIX_CASES = [  # (k shape, channels_last)
    pytest.param((), False, id='scalar-k'),
    pytest.param((), True, id='scalar-k-channels_last'),
    pytest.param((8, 1, 1), False, id='per-channel-k'),
    pytest.param((8, 1, 1), True, id='per-channel-k-channels_last'),
]


def _mix_inputs(k_shape, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    f, u, p = (torch.randn(2, 8, 5, 5, dtype=torch.float64, generator=g).to(memory_format=fmt).requires_grad_()
               for _ in range(3))
    k = torch.randn(k_shape, dtype=torch.float64, generator=g).requires_grad_()
    return f, u, p, k


@pytest.mark.parametrize('k_shape, channels_last', MIX_CASES)
def test_custom_backward_runs_under_batched_grads(k_shape, channels_last):
    """``is_grads_batched=True`` and ``torch.func.vmap`` around ``autograd.grad`` run the hand-written
    backward on batched gradients (vmap refuses layout queries on them): each row equals one plain vjp."""
    f, u, p, k = _mix_inputs(k_shape, channels_last)
    out = lm_mix(f * 1, u, p, k)
    assert type(out.grad_fn).__name__.startswith('_LMMixBackward')  # the custom path is the one under test
    v = torch.randn(3, *out.shape, dtype=torch.float64)
    rows = [torch.autograd.grad(out, (f, u, p, k), vi, retain_graph=True) for vi in v]
    expected = [torch.stack(r) for r in zip(*rows)]
    legacy = torch.autograd.grad(out, (f, u, p, k), v, retain_graph=True, is_grads_batched=True)
    functorch = torch.func.vmap(lambda vi: torch.autograd.grad(out, (f, u, p, k), vi, retain_graph=True))(v)
    for got in (legacy, functorch):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('k_shape, channels_last', MIX_CASES)
def test_vectorized_jacobian_of_the_mix(k_shape, channels_last):
    """``torch.autograd.functional.jacobian(vectorize=True)`` (legacy vmap over the custom backward)
    equals the row-by-row jacobian."""
    f, u, p, k = _mix_inputs(k_shape, channels_last)
    fn = lambda u, p, k: lm_mix(f.detach() * 1, u, p, k)  # noqa: E731
    rows = torch.autograd.functional.jacobian(fn, (u, p, k))
    vectorized = torch.autograd.functional.jacobian(fn, (u, p, k), vectorize=True)
    for a, b in zip(vectorized, rows):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('per_channel', [False, True], ids=['scalar-k', 'per-channel-k'])
@pytest.mark.parametrize('path', ['eager', 'torch.func'])
def test_dk_is_accurate_for_a_small_step(path, per_channel):
    """u[n-1] - u[n] tiny beside u[n] (ConvNeXt's layer scale starts at 1e-6): dk = <grad, u[n-1] - u[n]> must
    come from the difference, which is exact in float32 there; <grad, u[n-1]> - <grad, u[n]> cancels to noise
    (relative error ~1 here). Both implementations of the mix, against float64."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(4, 16, 8, 8, generator=g)
    u_prev = u + 1e-6 * torch.randn(u.shape, generator=g)
    f, w = torch.randn(2, *u.shape, generator=g).unbind(0)
    k = torch.full((16, 1, 1) if per_channel else (), 0.1)

    def dk(f, u, u_prev, k):
        if path == 'eager':
            k = k.clone().requires_grad_()
            out = lm_mix(f.clone().requires_grad_() * 1, u, u_prev, k, f_includes_u=True)
            assert type(out.grad_fn).__name__.startswith('_LMMixBackward')
            return torch.autograd.grad(out, k, w.to(out.dtype))[0]
        return torch.func.grad(lambda k: (lm_mix(f, u, u_prev, k, f_includes_u=True) * w.to(f.dtype)).sum())(k)

    expected = dk(f.double(), u.double(), u_prev.double(), k.double())
    got = dk(f, u, u_prev, k)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=0)
