"""Names: every family registered from timm's registry, listed by module, never shadowing timm's own models."""
import inspect

import pytest
import timm
import torch
from family_cases import build_structure

import timm_lm
from timm_lm.models import FAMILIES
from timm_lm.models._base import timm_class_of
from timm_lm.models._exclusions import EXCLUDED
from timm_lm.models._survey import exclusion_reason
from timm_lm.stage import lm_stages, two_step_positions

PAPER_NAMES = [
    'lm_resnet18', 'lm_resnet34', 'lm_resnet50', 'lm_resnet101', 'lm_resnet152', 'lm_resnext50',
    'lm_resnext50_32x4d', 'lm_resnext101_32x4d', 'lm_resnext101_32x8d', 'lm_resnext101_64x4d',
    'lm_resnetv2_50', 'lm_resnetv2_101', 'lm_resnetv2_50d', 'lm_resnetv2_101d',
]
CIFAR_PARAMS = {  # standard counts (He et al. 2016, Xie et al. 2017) + one scalar per LM block
    'lm_resnet20_cifar': (0.27e6, 6), 'lm_resnet32_cifar': (0.46e6, 12), 'lm_resnet44_cifar': (0.66e6, 18),
    'lm_resnet56_cifar': (0.85e6, 24), 'lm_resnet110_cifar': (1.7e6, 51), 'lm_resnet164_cifar': (1.7e6, 51),
    'lm_resnext29_8x64d_cifar': (34.4e6, 6), 'lm_resnext29_16x64d_cifar': (68.1e6, 6),
}


def test_paper_and_cifar_names_are_registered():
    names = set(timm.list_models('lm_*'))
    assert set(PAPER_NAMES) <= names
    assert set(CIFAR_PARAMS) <= names


LM_MODULES = sorted(f'lm_{module}' for module in FAMILIES) + ['lm_cifar']


@pytest.mark.parametrize('module', sorted(FAMILIES))
def test_every_timm_model_has_an_lm_model_or_a_recorded_reason(module):
    """The registry is generated: every model of the timm module is there as lm_<name>, with one k_n per
    two-step block, unless _exclusions.py records (truthfully, for the installed timm) why not."""
    registered = set(timm.list_models(module=f'lm_{module}'))
    for name in timm.list_models(module=module):
        if name in EXCLUDED:
            assert f'lm_{name}' not in registered, name
            assert EXCLUDED[name] == f'{module}: {exclusion_reason(name, FAMILIES[module])}', name
            continue
        assert f'lm_{name}' in registered, name
        model = build_structure(f'lm_{name}', **_no_init(FAMILIES[module]))
        stages = [stage for _, stage in lm_stages(model)]
        expected = sum(sum(two_step_positions(stage)) for stage in stages)
        assert len(timm_lm.lm_coefficients(model)) == expected > 0, name


def _no_init(lm_classes):
    """ViTs can skip their weight init, the slow part of building on the meta device (structure is the same)."""
    accepts = all('weight_init' in inspect.signature(timm_class_of(c).__init__).parameters for c in lm_classes)
    return dict(weight_init='skip') if accepts else {}


def test_exclusions_name_only_models_of_the_installed_timm_families():
    known = {n for module in FAMILIES for n in timm.list_models(module=module)}
    assert set(EXCLUDED) <= known
    assert {'resnet10t', 'resnet14t', 'mobilenetv1_100', 'lcnet_100'} <= set(EXCLUDED)  # nothing to mix in them


def test_lm_models_do_not_mix_into_timms_listings():
    for module in FAMILIES:
        assert not [n for n in timm.list_models(module=module) if n.startswith('lm_')]
    assert not [n for n in timm.list_models() if n.startswith('lm_')
                and not timm.models.is_model_in_modules(n, LM_MODULES)]
    assert set(timm.list_models(module='lm_cifar')) == set(CIFAR_PARAMS)


@pytest.mark.parametrize('name', sorted(CIFAR_PARAMS))
def test_cifar_parameter_counts(name):
    expected, num_k = CIFAR_PARAMS[name]
    with torch.device('meta'):
        model = timm.create_model(name)
        plain = timm.create_model(name, lm=False)
    n_lm = sum(p.numel() for p in model.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_lm - n_plain == num_k == len(timm_lm.lm_coefficients(model))
    assert abs(n_plain - expected) / expected < 0.02


def test_cifar_layout():
    model = timm.create_model('lm_resnet56_cifar')
    assert [len(s.blocks) for s in model.stages] == [9, 9, 9]
    assert model.stem.conv.kernel_size == (3, 3) and model.stem.conv.stride == (1, 1)
    assert [f['reduction'] for f in model.feature_info] == [1, 1, 2, 4]
    assert [f['num_chs'] for f in model.feature_info] == [16, 16, 32, 64]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.stages[2].blocks[0].conv1.stride == (2, 2)


def test_coefficient_report_covers_every_block():
    model = timm.create_model('lm_resnet50', k_per_channel=True)
    rows = timm_lm.lm_coefficients(model)
    assert [(r.stage, r.block) for r in rows] == [(s, b) for s, n in enumerate((3, 4, 6, 3)) for b in range(1, n)]
    assert rows[0].stage_path == 'layer1' and rows[0].name == 'layer1.1'
    assert rows[-1].k.shape == (2048,)
    torch.testing.assert_close(rows[2].k, model.layer2[1].lm.k.detach())
    table = timm_lm.format_coefficients(model)
    assert 'layer4.2' in table and len(table.splitlines()) == len(rows) + 2  # header, rule, rows


def test_coefficient_report_refuses_a_plain_timm_model():
    with pytest.raises(ValueError, match='no LM stages'):
        timm_lm.lm_coefficients(timm.create_model('resnet18'))
