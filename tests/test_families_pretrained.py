"""Warm starts of every family: the default tag is timm's default weights with k = 0, loaded through timm's
own machinery (its filters, strictness, input / class adaptation), offline against a laid-out Hub cache.
"""
import pytest
import timm
import torch
from family_cases import image, liven, safetensors_writer
from family_cases import single_thread  # noqa: F401  (autouse fixture)
from timm.models import get_pretrained_cfg

from timm_lm.pretrained import lm_coefficient_keys

# one model per family; kwargs where timm's pretrained filter must adapt the weights to the model
WARM_STARTS = [
    ('convnextv2_atto', {}),
    ('vit_tiny_patch16_224', dict(img_size=64)),  # timm resamples the position embedding (14 x 14 -> 4 x 4)
    ('deit_tiny_distilled_patch16_224', dict(img_size=64)),  # DeiT's filter (layer scale, two prefix tokens)
    ('vit_tiny_r_s16_p8_224', dict(img_size=64)),  # hybrid: ResNet stem + ViT
    ('swin_tiny_patch4_window7_224', dict(img_size=64, window_size=2)),  # resampled relative position tables
    ('efficientnet_b0', {}),
    ('mobilenetv4_conv_small', {}),
    ('regnetx_002', {}),
]


@pytest.fixture
def timm_weights_in_cache(hf_cache):
    """Put a timm model's (default config) weights into the offline cache under timm's own Hub id."""
    def put(name):
        torch.manual_seed(0)
        source = liven(timm.create_model(name)).eval()
        hf_cache(get_pretrained_cfg(name).hf_hub_id, {'model.safetensors': safetensors_writer(source.state_dict())})
        return source
    return put


def _assert_timms_weights_and_zero_k(model, reference, skip=()):
    sd = model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith(skip):
            assert torch.equal(sd[key], value), key
    keys = lm_coefficient_keys(model)
    assert keys and all(torch.count_nonzero(sd[k]) == 0 for k in keys)


@pytest.mark.parametrize('name, kwargs', WARM_STARTS, ids=[n for n, _ in WARM_STARTS])
def test_default_tag_warm_starts_from_timms_default_weights(timm_weights_in_cache, name, kwargs):
    cfg, timm_cfg = get_pretrained_cfg(f'lm_{name}'), get_pretrained_cfg(name)
    assert cfg.tag == f'warmstart_{timm_cfg.tag}'
    assert cfg.hf_hub_id == timm_cfg.hf_hub_id and cfg.hf_hub_id.startswith('timm/')
    assert 'k_n = 0' in cfg.notes[0]

    source = timm_weights_in_cache(name)
    reference = timm.create_model(name, pretrained=True, **kwargs).eval()  # timm, from the same cache
    model = timm.create_model(f'lm_{name}', pretrained=True, **kwargs).eval()
    assert model.pretrained_cfg['tag'] == cfg.tag
    _assert_timms_weights_and_zero_k(model, reference)
    if kwargs:  # timm's filter had to adapt the weights: the LM model got exactly what timm's got
        assert any(v.shape != reference.state_dict()[k].shape for k, v in source.state_dict().items()
                   if k in reference.state_dict())
    x = image(size=kwargs.get('img_size', 64))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_warm_start_num_classes_and_in_chans_adaptation(timm_weights_in_cache):
    source = timm_weights_in_cache('convnextv2_atto')
    model = timm.create_model('lm_convnextv2_atto', pretrained=True, num_classes=10, in_chans=1)
    reference = timm.create_model('convnextv2_atto', pretrained=True, num_classes=10, in_chans=1)
    assert model.get_classifier().out_features == 10
    assert not torch.equal(model.get_classifier().weight, source.get_classifier().weight[:10])  # a new head
    torch.testing.assert_close(model.stem[0].weight, source.stem[0].weight.sum(dim=1, keepdim=True))  # timm's rule
    _assert_timms_weights_and_zero_k(model, reference, skip=('head.fc.',))


def test_warm_start_features_only_is_timms_features(timm_weights_in_cache):
    """features_only with pretrained weights (timm's EfficientNet loads them into its feature class)."""
    timm_weights_in_cache('efficientnet_b0')
    features = timm.create_model('lm_efficientnet_b0', pretrained=True, features_only=True, out_indices=(1, 3)).eval()
    reference = timm.create_model('efficientnet_b0', pretrained=True, features_only=True, out_indices=(1, 3)).eval()
    assert features.feature_info.channels() == reference.feature_info.channels()
    x = image()
    with torch.no_grad():
        for got, expected in zip(features(x), reference(x)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
