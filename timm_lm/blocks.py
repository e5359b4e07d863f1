"""What the LM recurrence needs from each kind of timm residual block, in one place.

A timm block computes ``out = post(f(u) + s(u))``: its residual branch ``f``, its shortcut ``s``
(identity, or a projection in the first block of a stage) and, for post-activation blocks, a final
activation ``post``. The LM step needs ``f`` and ``s`` separately, so that it can mix the shortcut
with the previous block's input before ``post``:

    u[n+1] = post(f(u[n]) + lerp(s(u[n]), u[n-1], k_n))    lerp(a, b, k) = (1 - k) a + k b

For each supported timm block class there is a subclass here that adds ``branch_and_shortcut`` and
``post`` (composed from the block's own submodules, in the block's order) and nothing else: no new
state, so parameter names stay timm's. ``make_lm_block`` turns a block built by timm into its LM
subclass in place, the way ``torch.nn.utils.parametrize`` retypes modules, and gives it its k_n.

A new timm block type is supported by adding one subclass and one entry in ``_LM_BLOCK_TYPES``; the
exactness tests (k = 0 gives timm's model) guard each one against drift in timm.
"""
from typing import Dict, Tuple, Type

import torch
import torch.nn as nn
from timm.models import resnet, resnetv2

from .lm import lm_mix

__all__ = ['LMBlockMixin', 'make_lm_block', 'is_lm_block']


class LMBlockMixin:
    """The LM step shared by every block type; subclasses say how to split the block.

    ``self.lm`` is the block's ``LMCoefficient``, or None for a plain residual step. (No class
    annotation: TorchScript would try to resolve it for every block type.)
    """

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return x  # pre-activation blocks add and stop

    def num_out_channels(self) -> int:
        raise NotImplementedError

    def step(self, x: torch.Tensor, x_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step of the recurrence: returns (u[n+1], the u[n-1] that the next block mixes in)."""
        f, shortcut = self.branch_and_shortcut(x)
        return self.combine(f, shortcut, x_prev)

    def combine(self, f: torch.Tensor, shortcut: torch.Tensor, x_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``post(f + mix)``, and the shortcut output, handed on as the next block's u[n-1].

        Without a coefficient this is the plain residual step. The shortcut output is the projected
        input for the first block of a stage (so shapes match the next block) and the input otherwise.
        """
        if self.lm is None:
            f += shortcut
        else:
            f = lm_mix(f, shortcut, x_prev, self.lm(shortcut))
        return self.post(f), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lm is not None:
            raise RuntimeError(
                'an LM block needs the input of the block before it: run it through its LMStage '
                '(the stage module), not on its own')
        return self.step(x, x)[0]


class LMBasicBlock(LMBlockMixin, resnet.BasicBlock):
    """timm ``resnet.BasicBlock`` (post-activation)."""

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        x = self.conv2(x)
        x = self.bn2(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return x, shortcut

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(x)

    def num_out_channels(self) -> int:
        return self.conv2.out_channels


class LMBottleneck(LMBlockMixin, resnet.Bottleneck):
    """timm ``resnet.Bottleneck`` (post-activation; ResNet-50+, ResNeXt, SE/ECA variants)."""

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        x = self.aa(x)
        x = self.conv3(x)
        x = self.bn3(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return x, shortcut

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(x)

    def num_out_channels(self) -> int:
        return self.conv3.out_channels


class LMPreActBasic(LMBlockMixin, resnetv2.PreActBasic):
    """timm ``resnetv2.PreActBasic``: the shortcut projection reads the pre-activated input."""

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.drop_path(x)
        return x, shortcut

    def num_out_channels(self) -> int:
        return self.conv2.out_channels


class LMPreActBottleneck(LMBlockMixin, resnetv2.PreActBottleneck):
    """timm ``resnetv2.PreActBottleneck`` (the paper's ImageNet block)."""

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        x = self.drop_path(x)
        return x, shortcut

    def num_out_channels(self) -> int:
        return self.conv3.out_channels


class LMResNetV2Bottleneck(LMBlockMixin, resnetv2.Bottleneck):
    """timm ``resnetv2.Bottleneck`` (``preact=False``, post-activation)."""

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.conv1(x)
        x = self.norm1(x)
        x = self.conv2(x)
        x = self.norm2(x)
        x = self.conv3(x)
        x = self.norm3(x)
        x = self.drop_path(x)
        return x, shortcut

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(x)

    def num_out_channels(self) -> int:
        return self.conv3.out_channels


_LM_BLOCK_TYPES: Dict[Type[nn.Module], Type[nn.Module]] = {
    resnet.BasicBlock: LMBasicBlock,
    resnet.Bottleneck: LMBottleneck,
    resnetv2.PreActBasic: LMPreActBasic,
    resnetv2.PreActBottleneck: LMPreActBottleneck,
    resnetv2.Bottleneck: LMResNetV2Bottleneck,
}


def is_lm_block(module: nn.Module) -> bool:
    return isinstance(module, LMBlockMixin)


def make_lm_block(block: nn.Module) -> LMBlockMixin:
    """Retype a timm block (in place) as its LM subclass, with no coefficient yet (``lm = None``).

    Exact types only: a subclass of a timm block may compute something else in its forward, and
    silently running timm's order of operations on it would be wrong.
    """
    if is_lm_block(block):
        return block
    lm_type = _LM_BLOCK_TYPES.get(type(block))
    if lm_type is None:
        names = ', '.join(f'{t.__module__}.{t.__qualname__}' for t in _LM_BLOCK_TYPES)
        raise ValueError(
            f'block={type(block).__module__}.{type(block).__qualname__} is not supported by the '
            f'LM-architecture: supported blocks are {names}')
    block.__class__ = lm_type
    block.lm = None
    return block
