"""LM-ResNetV2: timm's pre-activation ResNet family with LM stages (the paper's ImageNet variant).

``lm_<name>`` is registered for every model of timm's ``resnetv2`` module (``lm_resnetv2_50``,
``lm_resnetv2_101``, their -d variants, BiT, GroupNorm / EvoNorm / FRN variants, ...). In a
pre-activation block there is no activation after the sum, so the LM mix is added as it is.
"""
from functools import partial
from typing import List

import torch
from timm.models import build_model_with_cfg, list_models
from timm.models.resnetv2 import ResNetV2

from ..pretrained import warm_start_filter, zero_lm_coefficients
from ._base import LMModelMixin, build_lm_from_timm
from ._factory import register_family

__all__ = ['LMResNetV2']


class LMResNetV2(LMModelMixin, ResNetV2):
    """timm ``ResNetV2`` whose stages (``stages.<i>.blocks``) run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [f'stages.{name}.blocks' for name, _ in self.stages.named_children()]

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, prefix: str = 'resnet/') -> None:
        """Load timm's original (BiT .npz) weights: a warm start, so every k_n is set to 0."""
        super().load_pretrained(checkpoint_path, prefix)
        zero_lm_coefficients(self)


def _create_lm_resnetv2(variant: str, pretrained: bool = False, **kwargs) -> LMResNetV2:
    return build_model_with_cfg(
        partial(build_lm_from_timm, LMResNetV2, _TIMM_NAMES[variant], variant),
        variant,
        pretrained,
        pretrained_filter_fn=warm_start_filter,
        feature_cfg=dict(flatten_sequential=True),  # as timm's ResNetV2: stages.<i> are the feature taps
        **kwargs,
    )


_TIMM_NAMES = register_family(
    globals(),
    {f'lm_{name}': name for name in list_models(module='resnetv2')},
    _create_lm_resnetv2,
    'LM-{base}: timm {base} (pre-activation) with the LM two-step recurrence (arXiv:1710.10121).',
)
