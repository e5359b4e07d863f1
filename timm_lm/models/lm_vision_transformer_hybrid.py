"""LM-ViT hybrids: timm's ``vision_transformer_hybrid`` module (a ResNet stem feeding ViT blocks) with the LM rule.

The transformer blocks follow LM-ViT's rule (``timm_lm.models.lm_vision_transformer``); the ResNet
stem is timm's patch embedding, unchanged.
"""
from timm.models import list_models

from ._factory import register_family
from .lm_vision_transformer import LMVisionTransformer

__all__ = []

_TIMM_NAMES = register_family(
    globals(),
    LMVisionTransformer,
    {f'lm_{name}': name for name in list_models(module='vision_transformer_hybrid')},
    'LM-{base}: timm {base} with the LM two-step recurrence over its transformer blocks (arXiv:1710.10121).',
    feature_cfg=dict(out_indices=3, feature_cls='getter'),  # as timm's hybrid ViTs
)
