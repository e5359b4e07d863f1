"""Pretrained tags of the LM models: warm starts from timm's ResNets, and LM-trained Hub weights.

Two kinds of tag, and the tag name says which:

* ``warmstart_<timm tag>``: the weights of timm's matching model (its own ``hf_hub_id``, e.g.
  ``timm/resnext50_32x4d.a1h_in1k``) loaded with every k_n = 0. The LM model then computes that
  ResNet exactly (its published accuracy) and is the starting point for LM fine-tuning, the
  reference code's "train as ResNet, then switch on the LM mix".
* ``lm_<dataset>``: weights trained as an LM model and published by this project under
  ``HUB_ORG``. A tag is registered with a weight source only once its weights are listed in
  ``PUBLISHED``; it then becomes the model's default tag.

Everything loads through timm's own pretrained machinery (``pretrained=True``, ``hf-hub:``,
``pretrained_cfg_overlay``, ``num_classes`` / ``in_chans`` adaptation): this module only describes
weights and fills in the coefficients that a plain ResNet checkpoint does not have.
"""
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn

from .lm import LMCoefficient

__all__ = [
    'HUB_ORG', 'PAPER_ID', 'PUBLISHED', 'WARM_START_PREFIX', 'warm_start_tag', 'lm_trained_hub_id',
    'lm_coefficient_keys', 'warm_start_filter', 'zero_lm_coefficients',
]

PAPER_ID = 'arXiv:1710.10121'
HUB_ORG = 'timm-lm'  # the Hugging Face organisation that LM-trained weights are published under
WARM_START_PREFIX = 'warmstart_'

# LM-trained weights that exist on the Hub, as 'model.tag' -> cfg fields that differ from the model's
# defaults (e.g. num_classes). Publishing a checkpoint and adding its line here is the one change that
# makes it the model's default tag. Example: 'lm_resnet56_cifar.lm_cifar10': dict(num_classes=10).
PUBLISHED: Dict[str, Dict[str, Any]] = {}


def warm_start_tag(timm_tag: str) -> str:
    """The LM tag for timm's weights with tag ``timm_tag`` and every k_n = 0."""
    return f'{WARM_START_PREFIX}{timm_tag}'


def lm_trained_hub_id(model_name_with_tag: str) -> str:
    return f'{HUB_ORG}/{model_name_with_tag}'


def lm_coefficient_keys(model: nn.Module) -> Tuple[str, ...]:
    """State-dict keys of every LM coefficient of a model."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, LMCoefficient):
            keys.extend(f'{name}.{p}' for p, _ in module.named_parameters(recurse=False))
    return tuple(keys)


def warm_start_filter(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm pretrained filter: a plain ResNet state dict gets k_n = 0 for every LM block.

    Only a state dict without any LM coefficient is completed; one that has some but not all is left
    as it is, so that timm's strict loading reports it instead of zeros being invented.
    """
    keys = lm_coefficient_keys(model)
    if keys and not any(k in state_dict for k in keys):
        own = model.state_dict()
        state_dict = dict(state_dict)
        for key in keys:
            state_dict[key] = torch.zeros_like(own[key], device='cpu')  # k = 0 (tanh(0) = 0 if stable)
    return state_dict


@torch.no_grad()
def zero_lm_coefficients(model: nn.Module) -> None:
    """Set every k_n of a model to 0: it then computes its plain ResNet exactly."""
    for module in model.modules():
        if isinstance(module, LMCoefficient):
            for p in module.parameters(recurse=False):
                p.zero_()


# LM-trained tags of the paper's settings. Each is registered without a weight source (so timm never
# lists weights that do not exist) until its 'model.tag' is in PUBLISHED.
_CIFAR_TAGS = {'lm_cifar10': dict(num_classes=10), 'lm_cifar100': dict(num_classes=100)}
_IN1K_TAGS = {'lm_in1k': dict(num_classes=1000)}
LM_TRAINED_TAGS: Dict[str, Dict[str, Dict[str, Any]]] = {
    **{f'lm_resnet{d}_cifar': _CIFAR_TAGS for d in (20, 32, 44, 56, 110, 164)},
    'lm_resnext29_8x64d_cifar': _CIFAR_TAGS,
    'lm_resnext29_16x64d_cifar': _CIFAR_TAGS,
    **{n: _IN1K_TAGS for n in (
        'lm_resnet50', 'lm_resnet101', 'lm_resnet152', 'lm_resnext50', 'lm_resnext50_32x4d',
        'lm_resnetv2_50', 'lm_resnetv2_101')},
}


def lm_trained_cfgs(model_name: str, base_fields: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Pretrained cfgs ('model.tag' -> fields) of a model's LM-trained tags.

    A published tag gets its Hub id and a '*' (timm's mark for the default tag); an unpublished one
    keeps the model's data config and says where its weights will be published.
    """
    base_fields = {k: v for k, v in base_fields.items() if k not in _SOURCE_FIELDS}
    cfgs = {}
    for tag, overrides in LM_TRAINED_TAGS.get(model_name, {}).items():
        name = f'{model_name}.{tag}'
        fields = dict(base_fields, **overrides, **PUBLISHED.get(name, {}))
        if name in PUBLISHED:
            cfgs[name + '*'] = dict(fields, hf_hub_id=lm_trained_hub_id(name), notes=('LM-trained weights',))
        else:
            cfgs[name] = dict(fields, notes=(f'LM-trained weights, not published yet (hf-hub:{lm_trained_hub_id(name)})',))
    return cfgs


_SOURCE_FIELDS = ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source', 'custom_load', 'notes',
                  'architecture', 'tag')
