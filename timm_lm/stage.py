"""LM stage: runs a stage's residual blocks with the linear two-step recurrence.

The stage holds timm's block modules unchanged, under their original names (``layer2.0``,
``stages.1.blocks.3``, ``blocks.7``, ...), so state-dict keys are timm's plus one coefficient per
two-step block (``<block>.lm.k``). It maps one tensor to one tensor, like the container it replaces, so
everything timm does per stage (features_only, forward_intermediates, pruning) keeps working.

Which blocks take the two-step rule: block ``n`` of a stage gets a coefficient k_n when it and block
``n - 1`` are both residual steps on the same state shape (``LMBlockMixin.lm_residual``); the other
blocks are plain steps. So:

* the first block of a stage is a plain step. A block that changes stride or width (ResNet) hands on
  its projected shortcut as ``u[n-1]``, as in the authors' reference code; a block with an identity
  skip (ViT, ConvNeXt after its stage's downsample) hands on its input;
* a block without a skip (the first block of an EfficientNet stage) is not a residual step: the
  recurrence starts after it, at the stage's third block;
* every two-step block computes ``u[n+1] = (1 - k_n) u[n] + k_n u[n-1] + f_n(u[n])`` with ``u[n-1]``
  handed on by the block before it.

Gradient checkpointing is per block (its residual branch, or its whole forward) and the mix runs
outside it; timm's own ``checkpoint_seq`` cannot be used because it calls the blocks one by one with a
single tensor.
"""
from collections import OrderedDict
from functools import partial
from typing import Iterator, List, Tuple

import torch
import torch.nn as nn

from .blocks import make_lm_block
from .lm import LMOptions, create_coefficient

__all__ = ['LMStage', 'make_lm_stage', 'lm_stages', 'two_step_positions']


class LMStage(nn.Sequential):
    """A sequence of residual blocks run as the LM two-step recurrence.

    It stays an ``nn.Sequential`` so that ``stage[i]``, ``len(stage)``, slicing and iteration behave as on
    timm's container. Calling an LM block on its own raises, so code that runs the blocks one by one fails
    loudly instead of computing a plain ResNet. Hooks on the stage run as usual (its output is its last
    block's u[n+1], e.g. for CAM on ``model.layer4``); hooks on a block do not (see ``timm_lm.blocks``).
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_prev = x
        for block in self:
            if torch.jit.is_scripting():
                x, x_prev = block.lm_step(x, x_prev)
            elif self.grad_checkpointing:
                x, x_prev = block.lm_step_eager(x, x_prev, True)
            elif isinstance(x, torch.fx.Proxy):
                x, x_prev = _traced_step(block, x, x_prev, False)
            else:
                x, x_prev = block.lm_step(x, x_prev)
        return x

    @torch.jit.unused
    def iter_outputs(self, x: torch.Tensor, **block_kwargs) -> Iterator[torch.Tensor]:
        """Yield every block's output u[n+1] in turn (for intermediates, stopping early, block kwargs)."""
        x_prev = x
        for block in self:
            if isinstance(x, torch.fx.Proxy):
                x, x_prev = _traced_step(block, x, x_prev, self.grad_checkpointing, **block_kwargs)
            else:
                x, x_prev = block.lm_step_eager(x, x_prev, self.grad_checkpointing, **block_kwargs)
            yield x


def _traced_step(block: nn.Module, x: torch.fx.Proxy, x_prev, checkpointed: bool, **block_kwargs):
    """One step under torch.fx, traced as a call of the block: the block's node (what
    ``create_feature_extractor`` returns for e.g. 'blocks.3') is then its output u[n+1], the mix included,
    as a plain block's node is its output. (The stage calls ``lm_step``, not the block, so without this
    the step's ops would be recorded as the stage's.)"""
    step = partial(block.lm_step_eager, checkpointed=checkpointed)
    return x.tracer.call_module(block, step, (x, x_prev), block_kwargs)


def two_step_positions(blocks: nn.Module) -> List[bool]:
    """For each block of a timm stage container, whether the LM rule gives it a coefficient."""
    residual = [make_lm_block(block).lm_residual() for block in blocks.children()]
    return [n > 0 and residual[n] and residual[n - 1] for n in range(len(residual))]


def make_lm_stage(blocks: nn.Module, options: LMOptions) -> LMStage:
    """Build an LM stage around the blocks of a timm stage container (the blocks are retyped in place)."""
    named = list(blocks.named_children())
    if not named:
        raise ValueError('a stage needs at least one residual block')
    stage = LMStage(OrderedDict(named))
    for block, two_step in zip(stage, two_step_positions(stage)):
        if two_step:
            ref = next(block.parameters())
            block.lm = create_coefficient(options, block.lm_channels(), block.lm_channel_dim, device=ref.device,
                                          dtype=ref.dtype)
    return stage


def lm_stages(model: nn.Module) -> Iterator[Tuple[str, LMStage]]:
    """(path, stage) for every LM stage of a model (also inside a features_only wrapper), in forward order."""
    for name, module in model.named_modules():
        if isinstance(module, LMStage):
            yield name, module
