"""``k_stable=True`` keeps |k| < 1 in floating point, at any k_raw, in every float dtype.

``k = b tanh(k_raw)`` with ``b = STABLE_BOUND = 1 - 2^-8``: ``tanh`` alone rounds to exactly +-1 once
|k_raw| passes ~9 (float32) or ~3 (bfloat16), and k = -1 is not zero-stable. ``b`` is representable in
bfloat16, float16 and float32 and rounding is monotone, so ``|k| <= b`` survives every cast. The tests
drive k_raw to extreme values (+-1e4, +-inf) and read k where it is made (the coefficient module), where
it is used (the output of each coefficient module during a model's forward, in the dtype of the
activations: ``model.to(dtype)`` and autocast), in the analysis, and across checkpoint conversion.
"""
import math

import pytest
import timm
import torch

import timm_lm
from timm_lm.lm import STABLE_BOUND, LMCoefficient, LMOptions, StableLMCoefficient

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
EXTREMES = [-math.inf, -1e4, -20.0, 20.0, 1e4, math.inf]


def test_the_bound_is_representable_below_one_in_every_dtype():
    assert STABLE_BOUND == 1 - 2 ** -8 < 1
    for dtype in DTYPES:
        assert torch.tensor(STABLE_BOUND, dtype=dtype).item() == STABLE_BOUND, dtype
        assert torch.tensor(STABLE_BOUND, dtype=dtype) < 1


def test_plain_tanh_reaches_one_which_is_why_the_bound_exists():
    """The premise: without the factor b, k would be exactly +-1 (k = -1 is not zero-stable)."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert torch.tanh(torch.tensor([-1e4, 1e4], dtype=dtype)).abs().eq(1).all(), dtype


def _set_k_raw(coef: StableLMCoefficient, values):
    with torch.no_grad():
        coef.k_raw.copy_(torch.tensor(values, dtype=torch.float64).to(coef.k_raw.dtype).view_as(coef.k_raw))


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_coefficient_bound_at_extreme_k_raw(dtype):
    """Per-channel and per-block coefficients stored in ``dtype``: the module's k (in its own dtype and
    in every activation dtype it is asked for) and the reported value stay within b, and reach it."""
    coef = StableLMCoefficient(len(EXTREMES), per_channel=True, dtype=dtype)
    _set_k_raw(coef, EXTREMES)
    assert coef.k_raw.isinf().sum() == 2 and coef.k_raw.dtype == dtype
    for like_dtype in DTYPES:
        k = coef(torch.zeros(1, len(EXTREMES), 2, 2, dtype=like_dtype))
        assert k.dtype == like_dtype
        assert (k.abs() <= STABLE_BOUND).all() and (k.abs() < 1).all(), (like_dtype, k.flatten())
        assert k.abs().max() == STABLE_BOUND  # the bound is reached, not undercut: it is the actual bound
        assert torch.equal(k.flatten().sign(), torch.tensor(EXTREMES).sign().to(like_dtype))
    reported = coef.value()
    assert reported.dtype == torch.float32 and (reported.abs() <= STABLE_BOUND).all()
    for value in EXTREMES:
        scalar = StableLMCoefficient(4, dtype=dtype)
        _set_k_raw(scalar, value)
        k = scalar(torch.zeros(2, 4, dtype=dtype))
        assert k.shape == () and abs(k.item()) == STABLE_BOUND, (value, k)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gradient_at_extreme_k_raw_is_finite(dtype):
    coef = StableLMCoefficient(len(EXTREMES), per_channel=True, channel_dim=-1, dtype=dtype)
    _set_k_raw(coef, EXTREMES)
    coef(torch.zeros(3, len(EXTREMES), dtype=dtype)).sum().backward()
    assert torch.isfinite(coef.k_raw.grad).all()


def _ks_used(model, run):
    """Every k the mix receives during ``run()``: the outputs of the model's coefficient modules."""
    seen = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
               for m in model.modules() if isinstance(m, LMCoefficient)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _extreme_stable_model(name='lm_resnet20_cifar', per_channel=False, **kwargs):
    model = timm.create_model(name, k_stable=True, k_per_channel=per_channel, num_classes=3, **kwargs).eval()
    coefs = [m for m in model.modules() if isinstance(m, StableLMCoefficient)]
    assert coefs
    for i, coef in enumerate(coefs):  # every block at an extreme, both signs
        _set_k_raw(coef, [EXTREMES[(i + j) % len(EXTREMES)] for j in range(coef.k_raw.numel())])
    return model, len(coefs)


@pytest.mark.parametrize('per_channel', [False, True], ids=['per-block', 'per-channel'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_model_cast_to_dtype_mixes_with_k_inside_the_bound(dtype, per_channel):
    model, n = _extreme_stable_model(per_channel=per_channel)
    model.to(dtype)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        ks = _ks_used(model, lambda: model(x))
    assert len(ks) == n
    for k in ks:
        assert k.dtype == dtype and (k.abs() <= STABLE_BOUND).all() and (k.abs() < 1).all()
    assert max(k.abs().max().item() for k in ks) == STABLE_BOUND


@pytest.mark.parametrize('name, kwargs, state_dtype', [
    ('lm_resnet20_cifar', {}, 'low'),  # the state is a conv output: low precision
    ('lm_test_vit', dict(img_size=32), torch.float32),  # tokens (+ float32 position embedding), channels-last k
])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
def test_autocast_mixes_with_k_inside_the_bound(name, kwargs, state_dtype, dtype):
    """Under CPU autocast the model stays float32 and k is cast to the dtype of the state it mixes."""
    model, n = _extreme_stable_model(name, per_channel=True, **kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast('cpu', dtype=dtype), torch.no_grad():
        ks = _ks_used(model, lambda: model(x))
    assert len(ks) == n
    assert {k.dtype for k in ks} == {dtype if state_dtype == 'low' else state_dtype}
    for k in ks:
        assert (k.abs() <= STABLE_BOUND).all() and (k.abs() < 1).all(), k.dtype


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_analysis_reports_zero_stable_at_extreme_k_raw(dtype):
    model, n = _extreme_stable_model(per_channel=True)
    model.to(dtype)
    rows = timm_lm.lm_coefficients(model)
    assert len(rows) == n and all(r.zero_stable for r in rows)
    table = timm_lm.format_coefficients(rows).splitlines()[2:]
    assert len(table) == n and all(line.rstrip().endswith('yes') for line in table)
    assert timm_lm.summarize_coefficients(rows).endswith(f'0 of {n} blocks not zero-stable')


def test_analysis_flags_k_minus_one_of_the_free_parametrisation():
    """The flag the tests above rely on can say NO: k = -1 (what tanh alone gives) is not zero-stable."""
    model = timm.create_model('lm_resnet20_cifar', num_classes=3)
    coef = timm_lm.stage.lm_stages(model).__next__()[1][1].lm
    with torch.no_grad():
        coef.k.fill_(-1.0)
    rows = timm_lm.lm_coefficients(model)
    assert [r.zero_stable for r in rows].count(False) == 1
    assert timm_lm.format_coefficients(rows).splitlines()[2].rstrip().endswith('NO')


def _ks(model):
    return torch.cat([r.k.flatten() for r in timm_lm.lm_coefficients(model)])


@pytest.mark.parametrize('per_channel', [False, True], ids=['per-block', 'per-channel'])
def test_checkpoints_convert_at_the_bound(per_channel):
    """Stable (extreme k_raw) -> free gives k = +-b exactly; free with |k| = b -> stable loads (finite k_raw)
    and computes the same k; the round trip keeps every k."""
    stable, _ = _extreme_stable_model(per_channel=per_channel)
    free = timm.create_model('lm_resnet20_cifar', k_per_channel=per_channel, num_classes=3).eval()
    free.load_state_dict(stable.state_dict())
    ks = _ks(free)
    assert (ks.abs() == STABLE_BOUND).all()
    torch.testing.assert_close(ks, _ks(stable), rtol=0, atol=0)
    back = timm.create_model('lm_resnet20_cifar', k_stable=True, k_per_channel=per_channel, num_classes=3).eval()
    back.load_state_dict(free.state_dict())
    k_raw = torch.cat([m.k_raw.flatten() for m in back.modules() if isinstance(m, StableLMCoefficient)])
    assert torch.isfinite(k_raw).all()
    torch.testing.assert_close(_ks(back), ks, rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), stable(x))


def test_k_beyond_the_bound_cannot_load_into_a_stable_model():
    free = timm.create_model('lm_resnet20_cifar')
    state = free.state_dict()
    state['stages.0.blocks.1.lm.k'] = torch.tensor(STABLE_BOUND + 2 ** -20)
    stable = timm.create_model('lm_resnet20_cifar', k_stable=True)
    with pytest.raises(RuntimeError, match='stages.0.blocks.1.lm.k: k_n outside'):
        stable.load_state_dict(state)


@pytest.mark.parametrize('k_init', [STABLE_BOUND, -STABLE_BOUND, 0.999, (-0.5, 1.0 - 1e-9)])
def test_k_init_at_or_beyond_the_bound_is_refused_with_k_stable(k_init):
    with pytest.raises(ValueError, match=r'k_init=.* with k_stable=True: k_stable keeps \|k\| <= 0.99609375'):
        LMOptions.create(k_init=k_init, k_stable=True)
    LMOptions.create(k_init=k_init)  # no error: the free parametrisation takes it, the refusal is k_stable's


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize('k_init', [STABLE_BOUND - 1e-9, -(STABLE_BOUND - 1e-9), 0.995])
def test_k_init_just_inside_the_bound_gives_a_finite_k_raw(k_init, dtype):
    """Accepted values that round to b in the parameter's dtype still give a finite k_raw (k = +-b)."""
    model = timm.create_model('lm_resnet20_cifar', k_stable=True, k_init=k_init, dtype=dtype)
    coefs = [m for m in model.modules() if isinstance(m, StableLMCoefficient)]
    assert coefs
    for coef in coefs:
        assert torch.isfinite(coef.k_raw).all() and coef.k_raw.dtype == dtype
        k = coef.value()
        assert (k.abs() <= STABLE_BOUND).all()
        assert abs(k.item() - k_init) <= 2 ** -7  # within one bfloat16 step of what was asked
