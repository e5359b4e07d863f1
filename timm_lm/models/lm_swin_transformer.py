"""LM-Swin: timm's Swin Transformer (V1) with LM stages.

``lm_<name>`` is registered for every model of timm's ``swin_transformer`` module. A Swin block
(window or shifted-window attention, then MLP, each pre-norm with a residual add) is one LM step on
the (B, H, W, C) map: timm's own forward plus ``k_n (u[n-1] - u[n])``. Each stage's patch merging
(downsample) is a separate module before its blocks: the first block of a stage is a plain step and
hands its input, the merged map, on as the second block's ``u[n-1]``. Per-channel coefficients
broadcast over the last (channel) dimension.
"""
from typing import Any, Dict, List

from timm.models import list_models, swin_transformer

from ._base import LMModelMixin
from ._factory import register_family

__all__ = ['LMSwinTransformer']


class LMSwinTransformer(LMModelMixin, swin_transformer.SwinTransformer):
    """timm ``SwinTransformer`` whose stages' blocks (``layers.<i>.blocks``) run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [f'layers.{name}.blocks' for name, _ in self.layers.named_children()]


def _feature_cfg(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """As timm's ``_create_swin_transformer``: every stage (``layers.<i>``) is a tap, as many as ``depths`` has."""
    return dict(flatten_sequential=True, out_indices=tuple(range(len(kwargs.get('depths', (1, 1, 3, 1))))))


_TIMM_NAMES = register_family(
    globals(),
    LMSwinTransformer,
    {f'lm_{name}': name for name in list_models(module='swin_transformer')},
    'LM-{base}: timm {base} with the LM two-step recurrence in every stage (arXiv:1710.10121).',
    feature_cfg=_feature_cfg,
)
