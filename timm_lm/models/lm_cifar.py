"""LM-ResNet and LM-ResNeXt for CIFAR (32x32 inputs), the paper's CIFAR models.

The layout is the authors' reference code's: a 3x3 stride-1 stem with no pooling, three stages of
pre-activation blocks (16/32/64 wide for ResNets, times 4 for bottlenecks; ResNeXt-29 as Xie et al.
2017), a final norm + activation before global pooling, and a linear classifier. It is assembled from
timm's ResNetV2 parts (``ResNetStage``, ``PreActBasic`` / ``PreActBottleneck``, ``BatchNormAct2d``,
``ClassifierHead``) and inherits every timm API from ``ResNetV2``; only the constructor differs.

Depths: basic blocks give 6n + 2 layers (20, 32, 44, 56, 110), bottlenecks 9n + 2 (164, ResNeXt-29).
"""
from collections import OrderedDict
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, ClassifierHead, LayerType, calculate_drop_path_rates, create_conv2d, \
    get_act_layer, get_norm_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.resnetv2 import PreActBasic, PreActBottleneck, ResNetStage

from ..lm import DEFAULT_K_INIT, LMOptions
from ..pretrained import PAPER_ID, lm_trained_cfgs, warm_start_filter
from ._base import check_model_kwargs
from .lm_resnetv2 import LMResNetV2

__all__ = ['LMCifarResNet']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class LMCifarResNet(LMResNetV2):
    """Pre-activation CIFAR ResNet / ResNeXt with LM stages.

    Args:
        layers: blocks per stage (three stages).
        channels: output channels of each stage.
        stem_chs: channels of the 3x3 stem convolution.
        basic: basic (two 3x3 convs) blocks, else bottlenecks.
        bottle_ratio: width of a block's inner convs relative to its output channels.
        groups: groups of the 3x3 conv (ResNeXt cardinality).
        lm, k_init, k_per_channel, k_stable: the LM options (``timm_lm.lm.LMOptions``).
        The others are as in timm's ``ResNetV2``.
    """

    def __init__(
            self,
            layers: Sequence[int],
            channels: Tuple[int, ...] = (16, 32, 64),
            stem_chs: int = 16,
            basic: bool = True,
            bottle_ratio: float = 1.0,
            groups: int = 1,
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = BatchNormAct2d,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = False,
            lm: bool = True,
            k_init: Union[float, Tuple[float, float]] = DEFAULT_K_INIT,
            k_per_channel: bool = False,
            k_stable: bool = False,
            device=None,
            dtype=None,
    ):
        nn.Module.__init__(self)  # ResNetV2's constructor builds the ImageNet layout; this builds the CIFAR one
        options = LMOptions.create(lm=lm, k_init=k_init, k_per_channel=k_per_channel, k_stable=k_stable)
        if len(layers) != len(channels):
            raise ValueError(f'layers={tuple(layers)} and channels={tuple(channels)} must have one entry per stage')
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_act_layer(norm_layer, act_layer=act_layer)

        self.stem = nn.Sequential(OrderedDict(conv=create_conv2d(in_chans, stem_chs, 3, stride=1, **dd)))
        self.stem_feat_idx = 0
        self.feature_info = [dict(num_chs=stem_chs, reduction=1, module='stem.conv')]

        self.stages = nn.Sequential()
        prev_chs, reduction = stem_chs, 1
        stage_dprs = calculate_drop_path_rates(drop_path_rate, list(layers), stagewise=True)  # linear in depth
        for idx, (depth, out_chs, dprs) in enumerate(zip(layers, channels, stage_dprs)):
            stride = 1 if idx == 0 else 2
            reduction *= stride
            self.stages.add_module(str(idx), ResNetStage(
                prev_chs,
                out_chs,
                stride=stride,
                dilation=1,
                depth=depth,
                bottle_ratio=bottle_ratio,
                groups=groups,
                block_dpr=dprs,
                block_fn=PreActBasic if basic else PreActBottleneck,
                act_layer=act_layer,
                conv_layer=create_conv2d,
                norm_layer=norm_layer,
                **dd,
            ))
            prev_chs = out_chs
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f'stages.{idx}'))

        self.num_features = prev_chs
        self.norm = norm_layer(self.num_features, **dd)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = getattr(self.head, 'num_features', self.num_features)  # timm < 1.0.24 lacks it
        self.init_weights(zero_init_last=zero_init_last)
        self.init_lm(options)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features at the taps of ``feature_info`` (stem, then each stage), as timm's ResNetV2.

        Own implementation because the taps differ from ImageNet ResNetV2's (four, and a stride-1 stem).
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt={output_fmt!r}: only 'NCHW' is supported")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        last_idx = len(self.stages)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages, start=1):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, **kwargs) -> List[int]:
        # resolve the indices against this model's four taps; ResNetV2's pruning then applies as is
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        return super().prune_intermediate_layers(take_indices, **kwargs)


def _build_lm_cifar(variant: str, **kwargs) -> LMCifarResNet:
    check_model_kwargs([LMCifarResNet], kwargs, variant)
    return LMCifarResNet(**kwargs)


def _create_lm_cifar(variant: str, pretrained: bool = False, **kwargs) -> LMCifarResNet:
    return build_model_with_cfg(
        partial(_build_lm_cifar, variant),
        variant,
        pretrained,
        pretrained_filter_fn=warm_start_filter,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),  # stem + three stages
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'stem.conv', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': PAPER_ID,
        **kwargs,
    }


_NAMES = [f'lm_resnet{d}_cifar' for d in (20, 32, 44, 56, 110, 164)] + \
    ['lm_resnext29_8x64d_cifar', 'lm_resnext29_16x64d_cifar']
default_cfgs = generate_default_cfgs({key: cfg for name in _NAMES for key, cfg in lm_trained_cfgs(name, _cfg()).items()})


def _basic(depth: int) -> Dict[str, Any]:
    n = (depth - 2) // 6
    return dict(layers=(n, n, n), channels=(16, 32, 64), basic=True, bottle_ratio=1.0)


def _resnext29(cardinality: int, base_width: int) -> Dict[str, Any]:
    # Xie et al.: 3 x 3 bottlenecks, 64-wide stem, outputs 256/512/1024, inner width cardinality * base_width
    return dict(layers=(3, 3, 3), channels=(256, 512, 1024), stem_chs=64, basic=False,
                bottle_ratio=cardinality * base_width / 256, groups=cardinality)


@register_model
def lm_resnet20_cifar(pretrained: bool = False, **kwargs) -> LMCifarResNet:
    """LM-ResNet-20 for CIFAR (3 x 3 basic blocks)."""
    return _create_lm_cifar('lm_resnet20_cifar', pretrained, **dict(_basic(20), **kwargs))


@register_model
def lm_resnet32_cifar(pretrained: bool = False, **kwargs) -> LMCifarResNet:
    """LM-ResNet-32 for CIFAR (3 x 5 basic blocks)."""
    return _create_lm_cifar('lm_resnet32_cifar', pretrained, **dict(_basic(32), **kwargs))


@register_model
def lm_resnet44_cifar(pretrained: bool = False, **kwargs) -> LMCifarResNet:
    """LM-ResNet-44 for CIFAR (3 x 7 basic blocks)."""
    return _create_lm_cifar('lm_resnet44_cifar', pretrained, **dict(_basic(44), **kwargs))


@register_model
def lm_resnet56_cifar(pretrained: bool = False, **kwargs) -> LMCifarResNet:
    """LM-ResNet-56 for CIFAR (3 x 9 basic blocks)."""
    return _create_lm_cifar('lm_resnet56_cifar', pretrained, **dict(_basic(56), **kwargs))


@register_model
def lm_resnet110_cifar(pretrained: bool = False, **kwargs) -> LMCifarResNet:
    """LM-ResNet-110 for CIFAR (3 x 18 basic blocks)."""
    return _create_lm_cifar('lm_resnet110_cifar', pretrained, **dict(_basic(110), **kwargs))


@register_model
def lm_resnet164_cifar(pretrained: bool = False, **kwargs) -> LMCifarResNet:
    """LM-ResNet-164 for CIFAR (3 x 18 bottlenecks, outputs 64/128/256)."""
    model_args = dict(layers=(18, 18, 18), channels=(64, 128, 256), basic=False, bottle_ratio=0.25)
    return _create_lm_cifar('lm_resnet164_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def lm_resnext29_8x64d_cifar(pretrained: bool = False, **kwargs) -> LMCifarResNet:
    """LM-ResNeXt-29 (8x64d) for CIFAR."""
    return _create_lm_cifar('lm_resnext29_8x64d_cifar', pretrained, **dict(_resnext29(8, 64), **kwargs))


@register_model
def lm_resnext29_16x64d_cifar(pretrained: bool = False, **kwargs) -> LMCifarResNet:
    """LM-ResNeXt-29 (16x64d) for CIFAR."""
    return _create_lm_cifar('lm_resnext29_16x64d_cifar', pretrained, **dict(_resnext29(16, 64), **kwargs))
