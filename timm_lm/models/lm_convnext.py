"""LM-ConvNeXt: timm's ConvNeXt V1 and V2 with LM stages.

``lm_<name>`` is registered for every model of timm's ``convnext`` module. A ConvNeXt block is
``x + F(x)`` (depthwise conv, norm, MLP, layer scale) with nothing after the add, so the two-step
blocks run timm's own forward plus ``k_n (u[n-1] - u[n])``. Each stage's downsample (norm + strided
conv) is a separate module before its blocks: the first block of a stage is a plain step and hands its
input, the downsample output, on as the second block's ``u[n-1]``. With ``output_stride`` < 32 the
first block of a dilated stage has a projecting shortcut; it is then not a residual step of the
stage's state and the recurrence starts one block later.
"""
from typing import List

from timm.models import convnext, list_models

from ._base import LMModelMixin
from ._factory import register_family

__all__ = ['LMConvNeXt']


class LMConvNeXt(LMModelMixin, convnext.ConvNeXt):
    """timm ``ConvNeXt`` whose stages' blocks (``stages.<i>.blocks``) run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [f'stages.{name}.blocks' for name, _ in self.stages.named_children()]


_TIMM_NAMES = register_family(
    globals(),
    LMConvNeXt,
    {f'lm_{name}': name for name in list_models(module='convnext')},
    'LM-{base}: timm {base} with the LM two-step recurrence in every stage (arXiv:1710.10121).',
    feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),  # as timm's ConvNeXt
)
