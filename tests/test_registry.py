"""Names: every family registered, listed by module, and never shadowing timm's own models."""
import pytest
import timm
import torch

import timm_lm
from timm_lm.stage import LMStage

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


def test_one_lm_model_per_timm_resnet_and_resnetv2_model():
    for timm_module, lm_module in (('resnet', 'lm_resnet'), ('resnetv2', 'lm_resnetv2')):
        expected = {f'lm_{n}' for n in timm.list_models(module=timm_module)}
        listed = set(timm.list_models(module=lm_module))
        assert expected <= listed, expected - listed
    assert set(timm.list_models(module='lm_cifar')) == set(CIFAR_PARAMS)


def test_lm_models_do_not_mix_into_timms_listings():
    assert not [n for n in timm.list_models(module='resnet') if n.startswith('lm_')]
    assert not [n for n in timm.list_models() if n.startswith('lm_')
                and not timm.models.is_model_in_modules(n, ['lm_resnet', 'lm_resnetv2', 'lm_cifar'])]


def test_every_registered_lm_model_builds():
    """All generated models convert (on the meta device: no memory, a few seconds)."""
    for name in timm.list_models('lm_*'):
        with torch.device('meta'):
            model = timm.create_model(name)
        stages = [m for m in model.modules() if isinstance(m, LMStage)]
        assert stages, name
        # a stage of n blocks has n - 1 two-step blocks (resnet10t/14t: one block per stage, so none)
        assert len(timm_lm.lm_coefficients(model)) == sum(len(s) - 1 for s in stages), name


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
