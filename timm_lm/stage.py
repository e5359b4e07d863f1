"""LM stage: runs a stage's residual blocks with the linear two-step recurrence.

The stage holds timm's block modules unchanged, under their original names (``layer2.0``,
``stages.1.blocks.3``, ...), so state-dict keys are timm's plus one coefficient per two-step block
(``<block>.lm.k``). It maps one tensor to one tensor, like the ``nn.Sequential`` it replaces, so
everything timm does per stage (features_only, forward_intermediates, pruning) keeps working.

Rules (DESIGN.md, as in the authors' reference code):

* the first block of a stage (it may change stride or width) is a plain residual step and hands on
  its shortcut output (the projected input) as ``u[n-1]``;
* every later block is ``u[n+1] = post(f(u[n]) + (1 - k_n) u[n] + k_n u[n-1])``, with ``u[n-1]`` the
  previous block's input.

Gradient checkpointing is per block (its residual branch) and the recurrence runs outside it; timm's
own ``checkpoint_seq`` cannot be used because it calls the blocks one by one with a single tensor.
"""
from collections import OrderedDict
from typing import Iterator, Tuple

import torch
import torch.nn as nn
from timm.models import checkpoint

from .blocks import make_lm_block
from .lm import LMOptions, create_coefficient

__all__ = ['LMStage', 'make_lm_stage', 'lm_stages']


class LMStage(nn.Sequential):
    """A sequence of residual blocks run as the LM two-step recurrence.

    It stays an ``nn.Sequential`` so that ``stage[i]``, ``len(stage)`` and iteration behave as on
    timm's stage (e.g. ``model.layer4[-1]`` for CAM hooks). Calling an LM block on its own raises,
    so code that runs the blocks one by one fails loudly instead of computing a plain ResNet.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_prev = x
        for block in self:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                # checkpoint the branch only: the mix and activation after it save nothing that is not
                # kept anyway, and a checkpointed mix would make the recomputation run the branch's last
                # layer again just to reach it
                f, shortcut = checkpoint(block.branch_and_shortcut, x)
                x, x_prev = block.combine(f, shortcut, x_prev)
            else:
                x, x_prev = block.step(x, x_prev)
        return x


def make_lm_stage(blocks: nn.Sequential, options: LMOptions) -> LMStage:
    """Build an LM stage around the blocks of a timm stage (the blocks are retyped in place)."""
    named = list(blocks.named_children())
    if not named:
        raise ValueError('a stage needs at least one residual block')
    stage = LMStage(OrderedDict(named))
    for index, (name, block) in enumerate(named):
        block = make_lm_block(block)
        if index > 0:
            if block.downsample is not None:
                raise ValueError(
                    f'block {name} has a shortcut projection but is not the first block of its stage: '
                    f'the LM two-step rule needs u[n] and u[n-1] of the same shape')
            ref = next(block.parameters())
            block.lm = create_coefficient(options, block.num_out_channels(), device=ref.device, dtype=ref.dtype)
    return stage


def lm_stages(model: nn.Module) -> Iterator[Tuple[str, LMStage]]:
    """(path, stage) for every LM stage of a model (also inside a features_only wrapper), in forward order."""
    for name, module in model.named_modules():
        if isinstance(module, LMStage):
            yield name, module
