"""Pretrained tags and loading through timm's own machinery, offline against a laid-out Hub cache."""
import json

import numpy as np
import pytest
import timm
import torch
from generate_default_cfgs_helper import default_tag_of
from safetensors.torch import save_file
from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg, is_model_pretrained

import timm_lm
from timm_lm import pretrained as lm_pretrained
from timm_lm.pretrained import lm_coefficient_keys


def _safetensors(state_dict):
    return lambda path: save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))


def _assert_timm_weights_and_zero_k(model, reference):
    ref_sd = reference.state_dict()
    sd = model.state_dict()
    for key, value in ref_sd.items():
        assert torch.equal(sd[key], value), key
    keys = lm_coefficient_keys(model)
    assert keys and all(torch.count_nonzero(sd[k]) == 0 for k in keys)


# ---------------------------------------------------------------- the tags


@pytest.mark.parametrize('lm_name, timm_name', [
    ('lm_resnext50', 'resnext50_32x4d'), ('lm_resnet50', 'resnet50'), ('lm_resnetv2_50', 'resnetv2_50'),
    ('lm_seresnext26d_32x4d', 'seresnext26d_32x4d'),
])
def test_default_tag_is_the_warm_start_from_timms_default_weights(lm_name, timm_name):
    cfg = get_pretrained_cfg(lm_name)
    timm_cfg = get_pretrained_cfg(timm_name)
    assert cfg.tag == f'warmstart_{timm_cfg.tag}'
    assert cfg.hf_hub_id == timm_cfg.hf_hub_id and cfg.hf_hub_id.startswith('timm/')
    assert 'k_n = 0' in cfg.notes[0]
    assert is_model_pretrained(lm_name)
    assert cfg.paper_ids == 'arXiv:1710.10121'


def test_every_timm_tag_with_weights_has_a_warm_start_and_nothing_else_claims_weights():
    for lm_name in timm.list_models('lm_*', exclude_filters='*_cifar'):
        base = lm_name[3:] if lm_name != 'lm_resnext50' else 'resnext50_32x4d'
        timm_tags = {n.split('.', 1)[1] for n, c in get_arch_pretrained_cfgs(base).items() if c.has_weights}
        lm_cfgs = get_arch_pretrained_cfgs(lm_name)
        warm = {n.split('.', 1)[1] for n, c in lm_cfgs.items() if c.has_weights}
        assert warm == {f'warmstart_{t}' for t in timm_tags}, lm_name
        if timm_tags:
            assert get_pretrained_cfg(lm_name).has_weights, lm_name  # the default resolves to weights
    pretrained = timm.list_pretrained('lm_*')
    assert pretrained and all(n.split('.', 1)[1].startswith('warmstart_') for n in pretrained)


def test_lm_trained_tags_are_registered_without_weights_until_published():
    cfgs = get_arch_pretrained_cfgs('lm_resnet56_cifar')
    assert set(cfgs) == {'lm_resnet56_cifar.lm_cifar10', 'lm_resnet56_cifar.lm_cifar100'}
    assert not any(c.has_weights for c in cfgs.values())
    assert cfgs['lm_resnet56_cifar.lm_cifar100'].num_classes == 100
    assert 'hf-hub:timm-lm/lm_resnet56_cifar.lm_cifar100' in cfgs['lm_resnet56_cifar.lm_cifar100'].notes[0]
    assert not is_model_pretrained('lm_resnet56_cifar')
    with pytest.raises(RuntimeError, match='[Nn]o pretrained weights'):
        timm.create_model('lm_resnet56_cifar', pretrained=True)
    assert 'lm_in1k' in get_arch_pretrained_cfgs('lm_resnext50')['lm_resnext50.lm_in1k'].tag


def test_publishing_a_tag_is_one_entry_and_makes_it_the_default(monkeypatch):
    monkeypatch.setitem(lm_pretrained.PUBLISHED, 'lm_resnet56_cifar.lm_cifar100', {})
    cfgs = lm_pretrained.lm_trained_cfgs('lm_resnet56_cifar', {'num_classes': 10})
    assert cfgs['lm_resnet56_cifar.lm_cifar100*']['hf_hub_id'] == 'timm-lm/lm_resnet56_cifar.lm_cifar100'
    assert default_tag_of(cfgs) == 'lm_cifar100'
    # the same holds next to warm-start tags: a published LM-trained tag outranks them
    monkeypatch.setitem(lm_pretrained.PUBLISHED, 'lm_resnet50.lm_in1k', {})
    from timm_lm.models._factory import lm_pretrained_cfgs
    assert default_tag_of(lm_pretrained_cfgs('lm_resnet50', 'resnet50')) == 'lm_in1k'


# ---------------------------------------------------------------- loading, offline


@pytest.fixture(scope='module')
def resnext50_weights():
    torch.manual_seed(1)
    return timm.create_model('resnext50_32x4d').eval()


def test_lm_resnext50_pretrained_is_the_timm_resnext_exactly(hf_cache, resnext50_weights):
    hf_cache('timm/resnext50_32x4d.a1h_in1k', {'model.safetensors': _safetensors(resnext50_weights.state_dict())})
    model = timm.create_model('lm_resnext50', pretrained=True).eval()
    _assert_timm_weights_and_zero_k(model, resnext50_weights)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), resnext50_weights(x), rtol=1e-5, atol=1e-5)


@pytest.fixture
def resnet18_in_cache(hf_cache):
    torch.manual_seed(2)
    reference = timm.create_model('resnet18').eval()
    hf_cache('timm/resnet18.a1_in1k', {'model.safetensors': _safetensors(reference.state_dict())})
    return reference


def test_explicit_warm_start_tag_num_classes_and_in_chans(resnet18_in_cache):
    ref = resnet18_in_cache
    model = timm.create_model('lm_resnet18.warmstart_a1_in1k', pretrained=True, num_classes=10, in_chans=1)
    assert model.fc.out_features == 10  # classifier re-initialised, not loaded
    assert not torch.equal(model.fc.weight, ref.fc.weight[:10])
    torch.testing.assert_close(model.conv1.weight, ref.conv1.weight.sum(dim=1, keepdim=True))  # timm's stem adaptation
    torch.testing.assert_close(model.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    keys = lm_coefficient_keys(model)
    assert keys and all(torch.count_nonzero(model.get_parameter(k)) == 0 for k in keys)


def test_features_only_with_pretrained_weights(resnet18_in_cache):
    feats = timm.create_model('lm_resnet18', pretrained=True, features_only=True, out_indices=(2, 4)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = resnet18_in_cache.forward_intermediates(x, indices=(2, 4), intermediates_only=True)
        got_all = feats(x)
        assert len(got_all) == len(expected) == 2
        for got, want in zip(got_all, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pretrained_cfg_overlay_loads_an_lm_trained_repo_with_its_k(hf_cache):
    trained = timm.create_model('lm_resnet20_cifar', k_init=(-0.5, 0.5)).eval()
    hf_cache('someone/lm-resnet20-trained', {'model.safetensors': _safetensors(trained.state_dict())})
    model = timm.create_model(
        'lm_resnet20_cifar', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id='someone/lm-resnet20-trained'))
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert any(torch.count_nonzero(model.get_parameter(k)) for k in lm_coefficient_keys(model))


def test_hf_hub_name_loads_a_published_lm_repo(hf_cache, tmp_path):
    trained = timm.create_model('lm_resnet20_cifar', k_per_channel=True, num_classes=7, k_init=(-0.3, 0.3)).eval()
    folder = tmp_path / 'export'
    timm.models.save_for_hf(trained, folder, model_args=dict(k_per_channel=True, num_classes=7), safe_serialization=True)
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'lm_resnet20_cifar'
    hf_cache('timm-lm/lm_resnet20_cifar.test', {
        name: (lambda path, src=folder / name: path.write_bytes(src.read_bytes()))
        for name in ('config.json', 'model.safetensors')})
    model = timm.create_model('hf-hub:timm-lm/lm_resnet20_cifar.test', pretrained=True).eval()
    assert model.stages[0].blocks[1].lm.k.shape == (16,) and model.num_classes == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)


def test_partial_lm_state_dict_is_not_completed_with_zeros():
    model = timm.create_model('lm_resnet20_cifar')
    sd = model.state_dict()
    first = lm_coefficient_keys(model)[0]
    sd.pop(first)
    assert first not in lm_pretrained.warm_start_filter(sd, model)
    with pytest.raises(RuntimeError, match='Missing key'):
        timm.create_model('lm_resnet20_cifar', pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd))


def test_stable_parametrisation_warm_starts_at_k_zero(resnet18_in_cache):
    model = timm.create_model('lm_resnet18', pretrained=True, k_stable=True)
    rows = timm_lm.lm_coefficients(model)
    assert rows and all(float(r.k) == 0.0 for r in rows)


def test_bit_npz_weights_warm_start_with_k_zero(tmp_path):
    """timm loads BiT's original .npz through model.load_pretrained; the LM model then zeroes its k_n."""
    torch.manual_seed(3)
    reference = timm.create_model('resnetv2_50x1_bit').eval()
    t = lambda w: (w.permute(2, 3, 1, 0) if w.ndim == 4 else w).numpy()  # OIHW -> HWIO as in the .npz
    arrays = {'resnet/root_block/standardized_conv2d/kernel': t(reference.stem.conv.weight.detach()),
              'resnet/group_norm/gamma': t(reference.norm.weight.detach()),
              'resnet/group_norm/beta': t(reference.norm.bias.detach()),
              'resnet/head/conv2d/kernel': t(reference.head.fc.weight.detach()),
              'resnet/head/conv2d/bias': t(reference.head.fc.bias.detach())}
    for i, stage in enumerate(reference.stages):
        for j, block in enumerate(stage.blocks):
            prefix = f'resnet/block{i + 1}/unit{j + 1:02d}/'
            for part, n in (('a', 1), ('b', 2), ('c', 3)):
                arrays[f'{prefix}{part}/standardized_conv2d/kernel'] = t(getattr(block, f'conv{n}').weight.detach())
                arrays[f'{prefix}{part}/group_norm/gamma'] = t(getattr(block, f'norm{n}').weight.detach())
                arrays[f'{prefix}{part}/group_norm/beta'] = t(getattr(block, f'norm{n}').bias.detach())
            if block.downsample is not None:
                arrays[f'{prefix}a/proj/standardized_conv2d/kernel'] = t(block.downsample.conv.weight.detach())
    np.savez(tmp_path / 'bit.npz', **arrays)
    model = timm.create_model('lm_resnetv2_50x1_bit', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'bit.npz'), custom_load=True)).eval()
    _assert_timm_weights_and_zero_k(model, reference)


def test_unavailable_warm_start_names_the_timm_weights_it_tried():
    """Offline with an empty cache: one error, at once (HF_HUB_OFFLINE: no retries), that says which timm
    weights the tag stands for and what to do; an OSError, as huggingface_hub's own."""
    from timm_lm.models._factory import PretrainedWeightsUnavailable
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        timm.create_model('lm_resnet152', pretrained=True)
    message = str(err.value)
    assert isinstance(err.value, OSError) and '\n' not in message
    assert "tag warmstart_a1h_in1k: timm's weights hf-hub:timm/resnet152.a1h_in1k with every k_n = 0" in message
    assert 'HF_HUB_CACHE' in message and "pretrained_cfg_overlay=dict(file='PATH')" in message
