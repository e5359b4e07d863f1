"""The LM mix: its hand-written backward, and that it keeps no activation beyond what a ResNet keeps."""
import pytest
import timm
import torch

import timm_lm
from timm_lm.lm import lm_mix


@pytest.mark.parametrize('k_shape, channels_last', [((), False), ((), True), ((8, 1, 1), False)])
def test_custom_backward_gradcheck(k_shape, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    f, s, p = (torch.randn(2, 8, 5, 5, dtype=torch.float64).to(memory_format=fmt).requires_grad_() for _ in range(3))
    k = torch.randn(k_shape, dtype=torch.float64, requires_grad=True)
    # f * 1: the mix works in place on the branch output, which is never a leaf in a model
    assert type(lm_mix(f * 1, s, p, k).grad_fn).__name__ == '_LMMixBackwardBackward'  # the backward under test
    assert torch.autograd.gradcheck(lambda f, s, p, k: lm_mix(f * 1, s, p, k), (f, s, p, k))


def test_mix_value_and_in_place():
    f, s, p = torch.randn(3, 2, 4, 3, 3).unbind(0)
    k = torch.tensor(0.3)
    expected = f + 0.7 * s + 0.3 * p
    out = lm_mix(f, s, p, k)
    assert out.data_ptr() == f.data_ptr()  # no new activation-sized tensor
    torch.testing.assert_close(out, expected)


def test_zero_k_is_exactly_the_residual_add():
    f, s, p = torch.randn(3, 2, 4, 3, 3).unbind(0)
    expected = f + s
    assert torch.equal(lm_mix(f.clone(), s, p, torch.tensor(0.0)), expected)


def _saved_bytes(model, x):
    """Bytes of the distinct storages autograd keeps for backward during one forward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(storages.values())


@pytest.mark.parametrize('name, x', [('lm_resnet20_cifar', (8, 3, 32, 32)), ('lm_resnet18', (2, 3, 64, 64)),
                                     ('lm_resnet50', (2, 3, 64, 64))])
def test_training_keeps_one_extra_activation_per_stage_at_most(name, x):
    """The mix keeps nothing for backward that the blocks do not keep already, except the projected
    shortcut of a stage's first block: it is the next block's u[n-1], needed for that block's dk."""
    x = torch.randn(*x)
    lm = timm.create_model(name).train()
    plain = timm.create_model(name, lm=False).train()
    with torch.no_grad():
        stage_outputs = lm.eval().forward_intermediates(x, intermediates_only=True)[1:]
    lm.train()
    stages = [m for m in lm.modules() if isinstance(m, timm_lm.stage.LMStage)]
    projected = sum(out.numel() * out.element_size() for stage, out in zip(stages, stage_outputs)
                    if stage[0].downsample is not None and len(stage) > 1)
    scalars = 64 * len(timm_lm.lm_coefficients(lm))  # k and 1 - k of each block
    extra = _saved_bytes(lm, x) - _saved_bytes(plain, x)
    assert 0 <= extra <= projected + scalars


def test_backward_matches_autograd_of_the_formula():
    model = timm.create_model('lm_resnet20_cifar', k_init=(-0.5, 0.5)).train()
    x = torch.randn(4, 3, 32, 32)
    model(x).square().mean().backward()
    custom = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    import timm_lm.blocks as blocks
    original = blocks.lm_mix

    def formula(f, u, u_prev, k, f_includes_u=False):  # autograd's own backward of the formula
        return f + ((0 if f_includes_u else 1) - k) * u + k * u_prev

    blocks.lm_mix = formula
    try:
        model(x).square().mean().backward()
    finally:
        blocks.lm_mix = original
    for n, p in model.named_parameters():
        torch.testing.assert_close(custom[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
