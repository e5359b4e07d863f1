"""LM-EfficientNet: timm's EfficientNet family (EfficientNet, -V2, -Lite, MixNet, MnasNet, ...) with LM stages.

``lm_<name>`` is registered for every model of timm's ``efficientnet`` module that has two consecutive
residual blocks. An inverted residual with a skip (stride 1, same width) is ``x + F(x)`` with nothing
after the add: those blocks run timm's own forward plus ``k_n (u[n-1] - u[n])``. The first block of a
stage changes stride or width and has no skip: it is not a residual step, so the stage's state begins
at its output. The second block is a plain residual step and hands its input on, so the recurrence
starts at the third block of a stage (stages of one or two blocks stay as they are). Models without
such a stage (MobileNetV1, ...) are not registered.
"""
from typing import List

from timm.models import efficientnet, list_models

from ._base import LMModelMixin
from ._factory import register_family

__all__ = ['LMEfficientNet', 'LMEfficientNetFeatures']


class LMEfficientNet(LMModelMixin, efficientnet.EfficientNet):
    """timm ``EfficientNet`` whose stages (``blocks.<i>``) run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [f'blocks.{name}' for name, _ in self.blocks.named_children()]


class LMEfficientNetFeatures(LMModelMixin, efficientnet.EfficientNetFeatures):
    """timm ``EfficientNetFeatures`` (what timm builds for ``features_only``) whose stages run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [f'blocks.{name}' for name, _ in self.blocks.named_children()]


_TIMM_NAMES = register_family(
    globals(),
    (LMEfficientNet, LMEfficientNetFeatures),
    {f'lm_{name}': name for name in list_models(module='efficientnet')},
    'LM-{base}: timm {base} with the LM two-step recurrence in its residual blocks (arXiv:1710.10121).',
    feature_cfg=dict(flatten_sequential=True),  # with feature_cls / feature_cfg: the stages are the taps
    timm_feature_class=True,  # plain features_only: timm's own feature class, as timm's _create_* builds it
)
