"""LM model families; importing this registers every LM model in timm's registry.

``FAMILIES`` maps each timm module that has an LM family to its LM model class (the CIFAR family is
this project's own and has no timm module).
"""
from .lm_resnet import LMResNet
from .lm_resnetv2 import LMResNetV2
from .lm_cifar import LMCifarResNet
from .lm_convnext import LMConvNeXt
from .lm_vision_transformer import LMVisionTransformer
from .lm_swin_transformer import LMSwinTransformer
from .lm_efficientnet import LMEfficientNet
from .lm_mobilenetv3 import LMMobileNetV3
from .lm_regnet import LMRegNet

FAMILIES = {
    'resnet': LMResNet,
    'resnetv2': LMResNetV2,
    'convnext': LMConvNeXt,
    'vision_transformer': LMVisionTransformer,
    'swin_transformer': LMSwinTransformer,
    'efficientnet': LMEfficientNet,
    'mobilenetv3': LMMobileNetV3,
    'regnet': LMRegNet,
}
