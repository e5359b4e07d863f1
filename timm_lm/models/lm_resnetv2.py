"""LM-ResNetV2: timm's pre-activation ResNet family with LM stages (the paper's ImageNet variant).

``lm_<name>`` is registered for every model of timm's ``resnetv2`` module (``lm_resnetv2_50``,
``lm_resnetv2_101``, their -d variants, BiT, GroupNorm / EvoNorm / FRN variants, ...). A pre-activation
block is ``x + F(x)`` with nothing after the add, so the mix is added to the residual branch and the
shortcut. The first block of a stage (stride / width change) hands its projected shortcut on as the
second block's ``u[n-1]``, as in the authors' reference code. (The blocks are run from their parts,
``timm_lm.blocks``, rather than by timm's forward plus a correction: that saves an activation-sized
allocation and a pass per block: 1.31x eager CPU inference throughput on the CIFAR networks.) The
non-pre-activation variants (``resnetv2_*`` with ``preact=False``) are post-activation and mix before
their final activation.
"""
from typing import List

from timm.models import list_models
from timm.models.resnetv2 import ResNetV2

from ._base import LMModelMixin
from ._factory import register_family

__all__ = ['LMResNetV2']


class LMResNetV2(LMModelMixin, ResNetV2):
    """timm ``ResNetV2`` whose stages (``stages.<i>.blocks``) run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [f'stages.{name}.blocks' for name, _ in self.stages.named_children()]


_TIMM_NAMES = register_family(
    globals(),
    LMResNetV2,
    {f'lm_{name}': name for name in list_models(module='resnetv2')},
    'LM-{base}: timm {base} (pre-activation) with the LM two-step recurrence (arXiv:1710.10121).',
    feature_cfg=dict(flatten_sequential=True),  # as timm's ResNetV2: stages.<i> are the feature taps
)
