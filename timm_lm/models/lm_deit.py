"""LM-DeiT: timm's ``deit`` module (DeiT, DeiT III, distilled DeiT) with the LM rule over its blocks.

DeiT models are timm Vision Transformers (the distilled ones add a distillation token, which rides
along as a prefix token): the rule is LM-ViT's (``timm_lm.models.lm_vision_transformer``), one block =
one LM step, the first block a plain step handing its input on.
"""
from timm.models import deit, list_models

from ._factory import register_family
from .lm_vision_transformer import LMVisionTransformer, LMViTFamily

__all__ = ['LMVisionTransformerDistilled']


class LMVisionTransformerDistilled(LMViTFamily, deit.VisionTransformerDistilled):
    """timm ``VisionTransformerDistilled`` (class + distillation tokens) whose blocks run the LM recurrence."""


_TIMM_NAMES = register_family(
    globals(),
    (LMVisionTransformer, LMVisionTransformerDistilled),
    {f'lm_{name}': name for name in list_models(module='deit')},
    'LM-{base}: timm {base} with the LM two-step recurrence over its blocks (arXiv:1710.10121).',
    feature_cfg=dict(out_indices=3, feature_cls='getter'),  # as timm's DeiT
)
