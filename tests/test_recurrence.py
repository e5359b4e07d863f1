"""The stage computes the LM two-step recurrence, checked against timm's own block forward."""
import pytest
import timm
import torch
import torch.nn as nn
from family_cases import timm_copy
from timm.layers import DropPath

from timm_lm.blocks import LMBlockMixin


def _reference_stage(stage: nn.Module, x: torch.Tensor, preact: bool) -> torch.Tensor:
    """u[n+1] = post(f(u[n]) + (1 - k) u[n] + k u[n-1]), written out with timm's blocks."""
    refs = [timm_copy(b) for b in stage]
    first, first_act = refs[0]
    # the first block is a plain residual step and hands on its shortcut output (the projected input)
    u_prev = x if first.downsample is None else first.downsample(first.norm1(x) if preact else x)
    u = first_act(first(x))
    for block, (ref, act) in zip(list(stage)[1:], refs[1:]):
        k = block.lm(u)
        u, u_prev = act(ref(u) + k * (u_prev - u)), u  # ref(u) = f(u) + u
    return u


@pytest.mark.parametrize('name, stage_path, preact, per_channel', [
    ('lm_resnet20_cifar', 'stages.1.blocks', True, False),   # pre-activation, 3 blocks, projection
    ('lm_resnet20_cifar', 'stages.0.blocks', True, True),    # identity shortcut, per-channel k
    ('lm_resnet34', 'layer1', False, False),                 # post-activation, 3 blocks
    ('lm_resnet34', 'layer2', False, True),                  # post-activation, projection, 4 blocks
])
@torch.no_grad()
def test_stage_matches_hand_computed_two_step_rule(name, stage_path, preact, per_channel):
    model = timm.create_model(name, k_per_channel=per_channel).eval()
    stage = model.get_submodule(stage_path)
    for i, block in enumerate(stage):  # large, distinct coefficients, so that any mistake in the rule shows
        if block.lm is not None:
            k = block.lm.k
            k.copy_(torch.linspace(-0.6, 0.7, k.numel()).reshape(k.shape) * (-1) ** i)
    x = torch.randn(2, stage[0].conv1.in_channels, 16, 16)
    torch.testing.assert_close(stage(x), _reference_stage(stage, x, preact), rtol=1e-5, atol=1e-5)


def test_first_block_of_each_stage_has_no_coefficient():
    model = timm.create_model('lm_resnet50')
    for stage_name in ('layer1', 'layer2', 'layer3', 'layer4'):
        stage = getattr(model, stage_name)
        assert stage[0].lm is None
        assert all(b.lm is not None for b in list(stage)[1:])


def test_lm_false_has_no_coefficients_and_is_the_plain_resnet():
    plain = timm.create_model('lm_resnet20_cifar', lm=False).eval()
    assert not [n for n, _ in plain.named_parameters() if '.lm.' in n]
    lm_zero = timm.create_model('lm_resnet20_cifar', k_init=0.0).eval()
    lm_zero.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), lm_zero(x), rtol=0, atol=0)


def test_stochastic_depth_drops_the_branch_only():
    model = timm.create_model('lm_resnet20_cifar', k_init=0.3).train()
    block = model.stages[0].blocks[1]
    block.drop_path = DropPath(1.0)  # always drop f
    x, x_prev = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    out, handed_on = block.lm_step(x, x_prev)
    torch.testing.assert_close(out, 0.7 * x + 0.3 * x_prev)  # the LM mix survives: (1-k) u + k u_prev
    assert handed_on is x


def test_drop_path_rate_follows_timms_linear_rule():
    model = timm.create_model('lm_resnet20_cifar', drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks if isinstance(b.drop_path, DropPath)]
    expected = torch.linspace(0, 0.2, 9)[1:].tolist()  # the first block has rate 0 (no DropPath)
    assert rates == pytest.approx(expected)


def test_block_called_alone_refuses():
    model = timm.create_model('lm_resnet18')
    with pytest.raises(RuntimeError, match='run it through its LM stage'):
        model.layer1[1](torch.randn(1, 64, 8, 8))
    # the first block of a stage is a plain step and still works on its own
    assert model.layer1[0](torch.randn(1, 64, 8, 8)).shape == (1, 64, 8, 8)


def test_unsupported_block_is_a_value_error():
    from timm_lm.blocks import make_lm_block
    with pytest.raises(ValueError, match='block=torch.nn.modules.conv.Conv2d is not supported'):
        make_lm_block(nn.Conv2d(3, 3, 3))
    assert isinstance(make_lm_block(timm.models.resnet.BasicBlock(8, 8)), LMBlockMixin)
