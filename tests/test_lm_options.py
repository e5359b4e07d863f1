"""The LM options and the coefficient parametrisations."""
import pytest
import timm
import torch

import timm_lm

from timm_lm.lm import STABLE_BOUND, LMCoefficient, LMOptions, StableLMCoefficient


@pytest.mark.parametrize('k_init, match', [
    ((0.2, -0.1), 'reversed'),
    ((-1.0, 0.0), r'outside \(-1, 1\)'),
    ((0.0, 1.5), r'outside \(-1, 1\)'),
    ('abc', 'not a range'),
    ((0.1,), 'not a range'),
])
def test_bad_k_init_names_the_option_and_range(k_init, match):
    with pytest.raises(ValueError, match=match) as err:
        timm.create_model('lm_resnet20_cifar', k_init=k_init)
    assert 'k_init=' in str(err.value)


def test_bad_flag_type():
    with pytest.raises(ValueError, match="k_stable='yes' is not a bool"):
        LMOptions.create(k_stable='yes')


@pytest.mark.parametrize('name', ['lm_resnet18', 'lm_resnetv2_50', 'lm_resnet20_cifar'])
def test_unknown_option_is_a_value_error_that_lists_lm_options(name):
    with pytest.raises(ValueError, match='k_intt') as err:
        timm.create_model(name, k_intt=(-0.1, 0.0))
    assert 'k_init' in str(err.value)


def test_constant_k_init():
    model = timm.create_model('lm_resnet20_cifar', k_init=-0.05)
    ks = [r.k for r in timm_lm.lm_coefficients(model)]
    assert all(torch.equal(k, torch.tensor(-0.05)) for k in ks)


def test_k_init_range_is_respected():
    model = timm.create_model('lm_resnet110_cifar', k_init=(-0.3, -0.2))
    ks = torch.stack([r.k for r in timm_lm.lm_coefficients(model)])
    assert ks.min() >= -0.3 and ks.max() <= -0.2
    assert ks.std() > 0  # sampled, not constant


def test_default_init_is_the_papers_uniform_range():
    model = timm.create_model('lm_resnet110_cifar')
    ks = torch.stack([r.k for r in timm_lm.lm_coefficients(model)])
    assert ks.min() >= -0.1 and ks.max() <= 0.0


def test_per_channel_shape_is_one_dimensional():
    coef = LMCoefficient(8, (-0.1, 0.0), per_channel=True)
    assert coef.k.shape == (8,)
    assert coef(torch.zeros(2, 8, 4, 4)).shape == (8, 1, 1)
    assert LMCoefficient(8).k.shape == ()


def test_stable_parametrisation_keeps_k_inside_unit_interval():
    coef = StableLMCoefficient(4, (-0.1, 0.0), per_channel=True)
    k0 = coef.value()
    assert k0.min() >= -0.1 - 1e-6 and k0.max() <= 1e-6  # init honours k_init after tanh
    with torch.no_grad():
        coef.k_raw.copy_(torch.tensor([-50.0, -3.0, 3.0, 50.0]))
    k = coef.value()
    assert (k.abs() < 1).all()  # at +-50 tanh alone is exactly +-1: the bound must still hold there
    assert k.abs().max() == STABLE_BOUND
    assert [n for n, _ in coef.named_parameters()] == ['k_raw']


@pytest.mark.parametrize('source_stable', [False, True])
def test_checkpoints_convert_between_free_and_stable_parametrisations(source_stable):
    source = timm.create_model('lm_resnet20_cifar', k_stable=source_stable, k_init=(-0.6, 0.6)).eval()
    target = timm.create_model('lm_resnet20_cifar', k_stable=not source_stable).eval()
    target.load_state_dict(source.state_dict())  # strict: k <-> k_raw is converted, not missing/unexpected
    ks = lambda m: torch.stack([r.k for r in timm_lm.lm_coefficients(m)])
    torch.testing.assert_close(ks(target), ks(source))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-5)


def test_k_outside_unit_interval_cannot_load_into_stable_model():
    free = timm.create_model('lm_resnet20_cifar')
    state = free.state_dict()
    state['stages.0.blocks.1.lm.k'] = torch.tensor(1.5)
    stable = timm.create_model('lm_resnet20_cifar', k_stable=True)
    with pytest.raises(RuntimeError, match=r'outside \[-0.99609375, 0.99609375\] cannot be loaded into a k_stable=True model'):
        stable.load_state_dict(state)


def test_model_args_lists_only_non_defaults():
    assert LMOptions.create().model_args() == {}
    assert LMOptions.create(k_stable=True, k_init=0.0).model_args() == {'k_stable': True, 'k_init': (0.0, 0.0)}
