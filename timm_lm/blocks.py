"""What the LM recurrence needs from each kind of timm residual block, in one place.

An LM stage runs its blocks with ``u[n+1] = (1 - k_n) u[n] + k_n u[n-1] + f_n(u[n])``. Each supported
timm block class has a subclass here (no new state, so parameter names stay timm's) that tells the
stage how to take that step. There are two ways:

* **whole** (the default): a block whose forward is ``x + F(x)`` with nothing after the add (pre-norm
  transformers, ConvNeXt, inverted residuals with a skip, pre-activation ResNets) runs timm's own
  forward, unchanged, and the step adds ``k_n (u[n-1] - u[n])``. It hands its input on as the next
  block's ``u[n-1]``. Nothing of the block is copied or opened.
* **split**: a post-activation block ends in ``act(F(x) + shortcut)`` (ResNet v1, RegNet, the
  non-pre-activation ResNetV2 bottleneck): the mix must come before the activation, so the subclass
  says what the residual branch, the shortcut and the final activation are. A pre-activation block
  whose shortcut is a projection (the first block of a stage) is split too, because the next block
  mixes in its projected shortcut, which its forward does not return; the pre-activation ResNet blocks
  are split throughout, because that is measurably faster on CPUs (see below). A split block hands its
  shortcut output on.

A block is *residual* when it is a step on a fixed-shape state (an identity skip, or a shortcut that
the split exposes). The stage gives block ``n`` a coefficient when it and block ``n - 1`` are both
residual: then ``u[n-1]`` has the shape of ``u[n]``. See ``timm_lm.stage``.

A block with a coefficient refuses to be called on its own (``block(x)``): it needs ``u[n-1]`` from its
stage, and computing the plain residual step instead would be silently wrong. ``block.forward(x)``
remains timm's forward. For the same reason the stage never calls ``block(x)``, so forward and backward
hooks on a block do not run: registering one warns, and says what to hook instead. A new timm block type is supported by adding one subclass and one entry in
``_LM_BLOCK_TYPES``; the exactness tests (k = 0 gives timm's model) guard each one against drift in timm.
"""
import warnings
from typing import Dict, Optional, Tuple, Type

import torch
import torch.nn as nn
from timm.models import _efficientnet_blocks as effnet_blocks
from timm.models import checkpoint, convnext, regnet, resnet, resnetv2, swin_transformer, vision_transformer

from .lm import lm_mix

__all__ = ['LMBlockMixin', 'LMWholeBlock', 'LMSplitBlock', 'make_lm_block', 'is_lm_block', 'supported_block_types']


class LMBlockMixin:
    """What every LM block has: ``lm`` (its ``LMCoefficient``, or None) and ``lm_step``.

    (No class annotation for ``lm``: TorchScript would try to resolve it for every block type.)
    """
    lm_channel_dim = 1  # where the channels are in the block's activations: 1 (NCHW) or -1 (NLC, NHWC)

    def lm_residual(self) -> bool:
        """True if the block is a residual step on a state of its output's shape (it can take a k_n)."""
        return True

    def lm_channels(self) -> int:
        """Channels of the block's output (the size of a per-channel k_n)."""
        raise NotImplementedError

    def lm_step(self, x: torch.Tensor, x_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step of the recurrence: (u[n+1], the u[n-1] that the next block mixes in)."""
        raise NotImplementedError

    @torch.jit.unused
    def lm_step_eager(self, x: torch.Tensor, x_prev: torch.Tensor, checkpointed: bool = False, **block_kwargs):
        """``lm_step`` outside TorchScript: optionally gradient-checkpointed, with extra forward kwargs."""
        raise NotImplementedError

    def _lm_finish(self, y: torch.Tensor, x: torch.Tensor, x_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The whole-block step: ``y = block(x)``, plus ``k (u[n-1] - u[n])``; hands ``x`` on."""
        if self.lm is not None:
            y = lm_mix(y, x, x_prev, self.lm(x), f_includes_u=True)
        return y, x

    def _lm_hook_warning(self, kind: str) -> None:
        warnings.warn(
            f'{kind} hooks on {type(self).__name__} do not run: its LM stage takes the two-step step with '
            f'block.lm_step(), not block(x) (which would be the plain residual step). Hook the stage (its output '
            f'is its last block\'s u[n+1]) or a module inside the block, or use forward_intermediates / '
            f'features_only for the blocks\' outputs', stacklevel=3)

    def register_forward_hook(self, *args, **kwargs):
        self._lm_hook_warning('forward')
        return super().register_forward_hook(*args, **kwargs)

    def register_forward_pre_hook(self, *args, **kwargs):
        self._lm_hook_warning('forward pre-')
        return super().register_forward_pre_hook(*args, **kwargs)

    def register_full_backward_hook(self, *args, **kwargs):
        self._lm_hook_warning('backward')
        return super().register_full_backward_hook(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        if self.lm is not None:
            raise RuntimeError(
                f'{type(self).__name__} has an LM coefficient: it needs the input of the block before it, so run '
                f'it through its LM stage (the block container), not on its own; block.forward(x) is timm\'s '
                f'plain residual step')
        return super().__call__(*args, **kwargs)


class LMWholeBlock(LMBlockMixin):
    """A block whose forward is ``x + F(x)`` with nothing after the add: timm's forward runs as is."""

    def lm_step(self, x: torch.Tensor, x_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._lm_finish(self.forward(x), x, x_prev)

    @torch.jit.unused
    def lm_step_eager(self, x: torch.Tensor, x_prev: torch.Tensor, checkpointed: bool = False, **block_kwargs):
        y = checkpoint(self.forward, x, **block_kwargs) if checkpointed else self.forward(x, **block_kwargs)
        return self._lm_finish(y, x, x_prev)


class LMSplitBlock(LMBlockMixin):
    """A block run from its parts: ``post(f + mix)``, handing its shortcut output on.

    ``lm_split`` (set when the block is made an LM block) says whether this instance needs the split;
    an instance that does not (a pre-activation block with an identity shortcut, a block without a
    shortcut) takes the whole-block step.
    """

    def _lm_needs_split(self) -> bool:
        return True

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return x  # pre-activation blocks add and stop

    def _lm_combine(self, f: torch.Tensor, shortcut: torch.Tensor, x_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``post(f + (1 - k) s + k u[n-1])`` (the plain ``post(f + s)`` without a coefficient), and ``s``."""
        if self.lm is None:
            f += shortcut
        else:
            f = lm_mix(f, shortcut, x_prev, self.lm(shortcut))
        return self.post(f), shortcut

    def lm_step(self, x: torch.Tensor, x_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.lm_split:
            f, shortcut = self.branch_and_shortcut(x)
            return self._lm_combine(f, shortcut, x_prev)
        return self._lm_finish(self.forward(x), x, x_prev)

    @torch.jit.unused
    def lm_step_eager(self, x: torch.Tensor, x_prev: torch.Tensor, checkpointed: bool = False, **block_kwargs):
        if block_kwargs:
            raise TypeError(f'{type(self).__name__} takes no extra forward arguments ({", ".join(block_kwargs)})')
        if not self.lm_split:
            return self._lm_finish(checkpoint(self.forward, x) if checkpointed else self.forward(x), x, x_prev)
        # checkpoint the branch only: the mix and activation after it save nothing that is not kept anyway
        f, shortcut = checkpoint(self.branch_and_shortcut, x) if checkpointed else self.branch_and_shortcut(x)
        return self._lm_combine(f, shortcut, x_prev)


# ---- post-activation blocks: split before the final activation --------------------------------------

class LMBasicBlock(LMSplitBlock, resnet.BasicBlock):
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

    def lm_channels(self) -> int:
        return self.conv2.out_channels


class LMBottleneck(LMSplitBlock, resnet.Bottleneck):
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

    def lm_channels(self) -> int:
        return self.conv3.out_channels


class LMResNetV2Bottleneck(LMSplitBlock, resnetv2.Bottleneck):
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

    def lm_channels(self) -> int:
        return self.conv3.out_channels


class LMRegNetBottleneck(LMSplitBlock, regnet.Bottleneck):
    """timm ``regnet.Bottleneck`` (post-activation; ``downsample=None`` means no shortcut at all)."""

    def lm_residual(self) -> bool:
        return self.downsample is not None

    def _lm_needs_split(self) -> bool:
        return self.downsample is not None

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shortcut = x
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.se(x)
        x = self.conv3(x)
        x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return x, shortcut

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(x)

    def lm_channels(self) -> int:
        return self.conv3.conv.out_channels


# ---- pre-activation ResNet blocks: split as well ----------------------------------------------------
# The whole-block step would do here (x + F(x), nothing after the add), but on a CPU the split is 1.31x as
# fast in eager inference on the CIFAR networks: timm's forward allocates x + F(x) and the mix then passes
# over it again, where the split mixes into the branch output in place (benchmarks/overhead.py,
# resnet56_cifar_split / resnetv2_50_split). The projecting first block of a stage needs the split anyway.

class LMPreActBasic(LMSplitBlock, resnetv2.PreActBasic):
    """timm ``resnetv2.PreActBasic``: the shortcut projection reads the pre-activated input."""

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.drop_path(x)
        return x, shortcut

    def lm_channels(self) -> int:
        return self.conv2.out_channels


class LMPreActBottleneck(LMSplitBlock, resnetv2.PreActBottleneck):
    """timm ``resnetv2.PreActBottleneck`` (the paper's ImageNet block)."""

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        x = self.conv3(self.norm3(x))
        x = self.drop_path(x)
        return x, shortcut

    def lm_channels(self) -> int:
        return self.conv3.out_channels


class LMRegNetPreBottleneck(LMSplitBlock, regnet.PreBottleneck):
    """timm ``regnet.PreBottleneck`` (pre-activation; the shortcut reads the pre-activated input).

    Its forward is ``s + F(x)`` with ``s = downsample(norm1(x))``: even the identity shortcut carries
    ``norm1(x)`` (norm + activation), not ``x``. It is not ``x + F(x)``, so the whole-block step would mix
    the raw states around a step based at ``norm1(x)``; every block with a shortcut is split instead
    (``F + (1 - k) s + k s_prev``, handing its shortcut output on).
    """

    def lm_residual(self) -> bool:
        return self.downsample is not None

    def _lm_needs_split(self) -> bool:
        return self.downsample is not None

    def branch_and_shortcut(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.norm1(x)
        shortcut = x
        x = self.conv1(x)
        x = self.norm2(x)
        x = self.conv2(x)
        x = self.se(x)
        x = self.norm3(x)
        x = self.conv3(x)
        x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return x, shortcut

    def lm_channels(self) -> int:
        return self.conv3.out_channels


# ---- whole blocks: x + F(x), timm's forward runs unchanged ---------------------------------------------

class _TokenBlock(LMWholeBlock):
    """Transformer blocks on (B, N, C) tokens: one block (attention + MLP) is one LM step."""
    lm_channel_dim = -1

    def lm_channels(self) -> int:
        for name in ('norm1', 'in_norm'):
            norm = getattr(self, name, None)
            if norm is not None and hasattr(norm, 'normalized_shape'):
                return int(norm.normalized_shape[-1])
        return int(self.attns[0].norm.normalized_shape[-1])  # ParallelThingsBlock


class LMViTBlock(_TokenBlock, vision_transformer.Block):
    """timm ``vision_transformer.Block`` (pre-norm attention + MLP)."""


class LMViTResPostBlock(_TokenBlock, vision_transformer.ResPostBlock):
    """timm ``vision_transformer.ResPostBlock`` (norm inside the residual branch, nothing after the add)."""


class LMViTParallelScalingBlock(_TokenBlock, vision_transformer.ParallelScalingBlock):
    """timm ``vision_transformer.ParallelScalingBlock`` (attention and MLP in parallel)."""


if hasattr(vision_transformer, 'DiffParallelScalingBlock'):  # newer timm releases only
    class LMViTDiffParallelScalingBlock(_TokenBlock, vision_transformer.DiffParallelScalingBlock):
        """timm ``vision_transformer.DiffParallelScalingBlock`` (differential attention, parallel MLP)."""


class LMViTParallelThingsBlock(_TokenBlock, vision_transformer.ParallelThingsBlock):
    """timm ``vision_transformer.ParallelThingsBlock`` (parallel attentions, then parallel MLPs)."""


class LMSwinTransformerBlock(LMWholeBlock, swin_transformer.SwinTransformerBlock):
    """timm ``swin_transformer.SwinTransformerBlock`` on (B, H, W, C) maps (window or shifted window)."""
    lm_channel_dim = -1

    def lm_channels(self) -> int:
        return self.dim


class LMConvNeXtBlock(LMWholeBlock, convnext.ConvNeXtBlock):
    """timm ``convnext.ConvNeXtBlock`` (V1 and V2): residual when its shortcut is the identity."""

    def lm_residual(self) -> bool:
        return isinstance(self.shortcut, nn.Identity)

    def lm_channels(self) -> int:
        return self.conv_dw.out_channels


class _EfficientNetBlock(LMWholeBlock):
    """EfficientNet / MobileNet blocks: residual where timm gives them a skip (stride 1, same width)."""

    def lm_residual(self) -> bool:
        return bool(self.has_skip)

    def lm_channels(self) -> int:
        return int(self.feature_info('bottleneck')['num_chs'])


class LMConvBnAct(_EfficientNetBlock, effnet_blocks.ConvBnAct):
    """timm ``ConvBnAct`` (EfficientNet family)."""


class LMDepthwiseSeparableConv(_EfficientNetBlock, effnet_blocks.DepthwiseSeparableConv):
    """timm ``DepthwiseSeparableConv`` (EfficientNet family)."""


class LMInvertedResidual(_EfficientNetBlock, effnet_blocks.InvertedResidual):
    """timm ``InvertedResidual`` (MBConv)."""


class LMCondConvResidual(_EfficientNetBlock, effnet_blocks.CondConvResidual):
    """timm ``CondConvResidual`` (CondConv MBConv)."""


class LMEdgeResidual(_EfficientNetBlock, effnet_blocks.EdgeResidual):
    """timm ``EdgeResidual`` (FusedMBConv)."""


class LMUniversalInvertedResidual(_EfficientNetBlock, effnet_blocks.UniversalInvertedResidual):
    """timm ``UniversalInvertedResidual`` (MobileNetV4)."""


class LMMobileAttention(_EfficientNetBlock, effnet_blocks.MobileAttention):
    """timm ``MobileAttention`` (MobileNetV4 hybrid): ``x + cpe(x)`` then a residual attention step."""

    def lm_channels(self) -> int:
        # its feature_info names a conv it does not have; with a skip, output channels = input channels
        norm = self.norm
        return int(norm.num_features if hasattr(norm, 'num_features') else norm.normalized_shape[-1])


def _timm_class(lm_cls: type) -> Optional[Type[nn.Module]]:
    """The timm block class an LM block class extends (None for the mixins above)."""
    return next((c for c in lm_cls.__mro__ if c.__module__.startswith('timm.')), None)


# every LM block class defined above, by the timm class it extends
_LM_BLOCK_TYPES: Dict[Type[nn.Module], Type[nn.Module]] = {
    _timm_class(obj): obj for obj in list(globals().values())
    if isinstance(obj, type) and issubclass(obj, LMBlockMixin) and _timm_class(obj) is not None}


def supported_block_types() -> Tuple[Type[nn.Module], ...]:
    """The timm block classes that can be LM blocks."""
    return tuple(_LM_BLOCK_TYPES)


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
        raise ValueError(
            f'block={type(block).__module__}.{type(block).__qualname__} is not supported by the LM-architecture '
            f'(timm_lm.blocks lists the supported timm block types)')
    block.__class__ = lm_type
    block.lm = None
    if isinstance(block, LMSplitBlock):
        block.lm_split = block._lm_needs_split()
    return block
