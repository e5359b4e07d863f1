"""LM-MobileNetV3 / V4: timm's ``mobilenetv3`` module (MobileNetV3, MobileNetV4, FBNetV3) with LM stages.

``lm_<name>`` is registered for every model of timm's ``mobilenetv3`` module that has two consecutive
residual blocks. The rule is EfficientNet's (``timm_lm.models.lm_efficientnet``): blocks with a skip
(inverted residuals, universal inverted residuals, MobileNetV4's attention blocks) run timm's own
forward plus ``k_n (u[n-1] - u[n])``; a stage's first block changes stride or width and has no skip,
its second block is a plain residual step, and the recurrence starts at its third block. Models
without such a stage (LCNet, ...) are not registered.
"""
from typing import List

from timm.models import list_models, mobilenetv3

from ._base import LMModelMixin
from ._factory import register_family

__all__ = ['LMMobileNetV3', 'LMMobileNetV3Features']


class LMMobileNetV3(LMModelMixin, mobilenetv3.MobileNetV3):
    """timm ``MobileNetV3`` whose stages (``blocks.<i>``) run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [f'blocks.{name}' for name, _ in self.blocks.named_children()]


class LMMobileNetV3Features(LMModelMixin, mobilenetv3.MobileNetV3Features):
    """timm ``MobileNetV3Features`` (what timm builds for ``features_only``) whose stages run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [f'blocks.{name}' for name, _ in self.blocks.named_children()]


_TIMM_NAMES = register_family(
    globals(),
    (LMMobileNetV3, LMMobileNetV3Features),
    {f'lm_{name}': name for name in list_models(module='mobilenetv3')},
    'LM-{base}: timm {base} with the LM two-step recurrence in its residual blocks (arXiv:1710.10121).',
    feature_cfg=dict(flatten_sequential=True),  # with feature_cls / feature_cfg: the stages are the taps
    timm_feature_class=True,  # plain features_only: timm's own feature class, as timm's _create_* builds it
)
