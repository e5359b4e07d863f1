"""LM-ResNet / LM-ResNeXt: timm's post-activation ResNet family with LM stages.

``lm_<name>`` is registered for every model of timm's ``resnet`` module (ResNet-18 ... 200, ResNeXt,
the -c/-d/-s/-t stems, SE/ECA attention, wide, ResNet-RS, blur/anti-aliased, GroupNorm, ...), plus the
paper's short name ``lm_resnext50`` for ``lm_resnext50_32x4d``. Each is built by timm's own entrypoint
and then given LM stages, so it accepts every kwarg timm's model accepts, plus the LM options
``lm``, ``k_init``, ``k_per_channel``, ``k_stable`` (see ``timm_lm.lm.LMOptions``).
"""
from functools import partial
from typing import List

from timm.models import build_model_with_cfg, list_models
from timm.models.resnet import ResNet

from ..pretrained import warm_start_filter
from ._base import LMModelMixin, build_lm_from_timm
from ._factory import register_family

__all__ = ['LMResNet']


class LMResNet(LMModelMixin, ResNet):
    """timm ``ResNet`` whose four stages (``layer1`` ... ``layer4``) run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [info['module'] for info in self.feature_info if info['module'].startswith('layer')]


def _create_lm_resnet(variant: str, pretrained: bool = False, **kwargs) -> LMResNet:
    return build_model_with_cfg(
        partial(build_lm_from_timm, LMResNet, _TIMM_NAMES[variant], variant),
        variant,
        pretrained,
        pretrained_filter_fn=warm_start_filter,
        **kwargs,
    )


_TIMM_NAMES = register_family(
    globals(),
    {f'lm_{name}': name for name in list_models(module='resnet')}
    | {'lm_resnext50': 'resnext50_32x4d'},  # the paper's name for ResNeXt-50 (32x4d)
    _create_lm_resnet,
    'LM-{base}: timm {base} with the LM two-step recurrence in every stage (arXiv:1710.10121).',
)
