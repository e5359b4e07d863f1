"""LM-ViT: timm's Vision Transformer family (ViT, DeiT, and the models sharing its blocks) with the LM rule.

``lm_<name>`` is registered for every model of timm's ``vision_transformer`` module. One transformer
block (attention + MLP, two residual sub-steps) is one LM step on the (B, N, C) token sequence: timm's
own block forward plus ``k_n (u[n-1] - u[n])``. All blocks form one stage: the first is a plain step
and hands its input (the embedded patches with the class and register tokens, which ride along as
tokens) on as the second block's ``u[n-1]``. Per-channel coefficients broadcast over the embedding
dimension.

timm's ``VisionTransformer`` runs its blocks one by one in ``forward_intermediates`` and in its
masked-attention path; those two paths are written here so that they run the recurrence (and the
first block's input, not a plain residual step, reaches the second block).
"""
import inspect
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from timm.models import list_models, vision_transformer
from timm.models._features import feature_take_indices

from ._base import LMModelMixin
from ._factory import register_family

__all__ = ['LMViTFamily', 'LMVisionTransformer']


class LMViTFamily(LMModelMixin):
    """The LM rule over a timm ``VisionTransformer`` (or subclass): mixed in before the timm class."""

    def lm_stage_paths(self) -> List[str]:
        return ['blocks']

    def _lm_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, position embedding (with prefix tokens), patch dropout, pre-norm: timm's order."""
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    @torch.jit.unused
    def _lm_block_outputs(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool):
        """Every block's output in turn, with the attention options the blocks take (timm < 1.0.26: no
        ``is_causal``). No test on the options' values, so that torch.fx can trace this with them as inputs."""
        block_kwargs: Dict[str, Any] = {}
        if attn_mask is not None:
            block_kwargs['attn_mask'] = attn_mask
        if len(self.blocks) and 'is_causal' in inspect.signature(type(self.blocks[0]).forward).parameters:
            block_kwargs['is_causal'] = is_causal
        return self.blocks.iter_outputs(x, **block_kwargs)

    @torch.jit.unused
    def _lm_masked_blocks(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool) -> torch.Tensor:
        for x in self._lm_block_outputs(x, attn_mask, is_causal):
            pass
        return x

    def forward_features(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        x = self._lm_embed(x)
        if attn_mask is not None or is_causal:  # timm's test, in timm's order (torch.fx traces it the same way)
            x = self._lm_masked_blocks(x, attn_mask, is_causal)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            output_dict: bool = False,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]], Dict[str, Any]]:
        """The outputs of the blocks at ``indices``, as timm's ``VisionTransformer.forward_intermediates``.

        Same arguments and outputs; the blocks run as the LM recurrence.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt={output_fmt!r}: pass 'NCHW' or 'NLC'")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        last = max_index if stop_early else len(self.blocks) - 1

        B, _, height, width = x.shape
        x = self._lm_embed(x)
        taps = []
        for i, x in enumerate(self._lm_block_outputs(x, attn_mask, is_causal)):
            if i in take_indices:
                taps.append(self.norm(x) if norm else x)
            if i == last:
                break

        prefix = [t[:, :self.num_prefix_tokens] for t in taps] if self.num_prefix_tokens else None
        taps = [t[:, self.num_prefix_tokens:] for t in taps]
        if output_fmt == 'NCHW':
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            taps = [t.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for t in taps]

        if output_dict:
            result: Dict[str, Any] = {'image_intermediates': taps}
            if prefix is not None and return_prefix_tokens:
                result['image_intermediates_prefix'] = prefix
            if not intermediates_only:
                result['image_features'] = self.norm(x)
            return result
        if return_prefix_tokens and prefix is not None:
            taps = list(zip(taps, prefix))
        if intermediates_only:
            return taps
        return self.norm(x), taps


class LMVisionTransformer(LMViTFamily, vision_transformer.VisionTransformer):
    """timm ``VisionTransformer`` whose blocks run the LM recurrence."""


_TIMM_NAMES = register_family(
    globals(),
    LMVisionTransformer,
    {f'lm_{name}': name for name in list_models(module='vision_transformer')},
    'LM-{base}: timm {base} with the LM two-step recurrence over its blocks (arXiv:1710.10121).',
    feature_cfg=dict(out_indices=3, feature_cls='getter'),  # as timm's ViT: the last 3 blocks, via intermediates
)
