"""LM-ResNet / LM-ResNeXt: timm's post-activation ResNet family with LM stages.

``lm_<name>`` is registered for every model of timm's ``resnet`` module (ResNet-18 ... 200, ResNeXt,
the -c/-d/-s/-t stems, SE/ECA attention, wide, ResNet-RS, blur/anti-aliased, GroupNorm, ...), plus the
paper's short name ``lm_resnext50`` for ``lm_resnext50_32x4d``. Each is built by timm's own entrypoint
and then given LM stages, so it accepts every kwarg timm's model accepts, plus the LM options
``lm``, ``k_init``, ``k_per_channel``, ``k_stable`` (see ``timm_lm.lm.LMOptions``).

Blocks (``BasicBlock``, ``Bottleneck``) are post-activation, so the mix goes before their final
activation. The first block of a stage hands its shortcut output (the projected input) on as the
second block's ``u[n-1]``, as in the authors' reference code: it is the state on the stage's grid.
Models whose stages have one block each (``resnet10t``, ``resnet14t``) are not registered.
"""
from typing import List

from timm.models import list_models
from timm.models.resnet import ResNet

from ._base import LMModelMixin
from ._factory import register_family

__all__ = ['LMResNet']


class LMResNet(LMModelMixin, ResNet):
    """timm ``ResNet`` whose four stages (``layer1`` ... ``layer4``) run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [info['module'] for info in self.feature_info if info['module'].startswith('layer')]


_TIMM_NAMES = register_family(
    globals(),
    LMResNet,
    {f'lm_{name}': name for name in list_models(module='resnet')}
    | {'lm_resnext50': 'resnext50_32x4d'},  # the paper's name for ResNeXt-50 (32x4d)
    'LM-{base}: timm {base} with the LM two-step recurrence in every stage (arXiv:1710.10121).',
)
