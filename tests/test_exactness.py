"""k_n = 0 everywhere is exactly timm's model: same keys (plus the coefficients), same logits."""
import pytest
import timm
import torch

from timm_lm.pretrained import lm_coefficient_keys

# post- and pre-activation ResNets (basic and bottleneck blocks) with timm's stem, attention (SE, ECA), norm
# (GroupNorm), pooling (blur, anti-aliased) and ResNet-RS variants; the other families: tests/test_families.py
TIMM_NAMES = [
    'resnet18', 'resnet50', 'resnext50_32x4d', 'resnet50d', 'seresnext26d_32x4d', 'resnetv2_50',
    'resnetv2_18d', 'ecaresnet26t', 'resnetblur18', 'resnet50_gn', 'resnetrs50', 'resnetaa34d', 'resnetv2_50d_gn',
]


@pytest.mark.parametrize('timm_name', TIMM_NAMES)
@torch.no_grad()
def test_zero_k_is_timms_model(timm_name):
    reference = timm.create_model(timm_name).eval()
    model = timm.create_model(f'lm_{timm_name}', k_init=(-0.1, 0.0)).eval()

    lm_keys = set(lm_coefficient_keys(model))
    assert lm_keys and all('.lm.' in k for k in lm_keys)
    assert set(model.state_dict()) == set(reference.state_dict()) | lm_keys  # timm's keys, plus the k_n only

    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and set(missing) == lm_keys
    for key in lm_keys:
        model.get_parameter(key).zero_()

    x = torch.randn(2, 3, 96, 96)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_nonzero_k_changes_the_function():
    reference = timm.create_model('resnet18').eval()
    model = timm.create_model('lm_resnet18', k_init=(-0.5, -0.4)).eval()
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and set(missing) == set(lm_coefficient_keys(model))  # the same weights: only k differs
    x = torch.randn(2, 3, 64, 64)
    assert (model(x) - reference(x)).abs().max() > 1e-3
    for key in missing:  # and k is what made the difference
        model.get_parameter(key).zero_()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_lm_options_ride_on_any_timm_kwarg():
    model = timm.create_model(
        'lm_resnet50d', num_classes=7, in_chans=1, global_pool='max', output_stride=16, drop_rate=0.1,
        act_layer='silu', zero_init_last=False, k_per_channel=True)
    assert model.num_classes == 7 and model.conv1[0].in_channels == 1
    assert model.layer4[1].lm.k.shape == (2048,)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)
    assert model.forward_features(torch.randn(1, 1, 64, 64)).shape[-1] == 4  # output stride 16
