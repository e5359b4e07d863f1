"""LM model families; importing this registers every LM model in timm's registry.

One module per timm module (``lm_resnet`` for timm's ``resnet``, ...), plus this project's CIFAR family
(``lm_cifar``). ``FAMILIES`` maps each timm module that has an LM family to the LM model classes of its
models.
"""
from . import lm_cifar, lm_convnext, lm_deit, lm_efficientnet, lm_mobilenetv3, lm_regnet, lm_resnet, lm_resnetv2, \
    lm_swin_transformer, lm_vision_transformer, lm_vision_transformer_hybrid
from .lm_cifar import LMCifarResNet
from .lm_convnext import LMConvNeXt
from .lm_deit import LMVisionTransformerDistilled
from .lm_efficientnet import LMEfficientNet
from .lm_mobilenetv3 import LMMobileNetV3
from .lm_regnet import LMRegNet
from .lm_resnet import LMResNet
from .lm_resnetv2 import LMResNetV2
from .lm_swin_transformer import LMSwinTransformer
from .lm_vision_transformer import LMVisionTransformer

FAMILIES = {
    module.__name__.rsplit('.', 1)[-1][len('lm_'):]: module.LM_CLASSES for module in (
        lm_resnet, lm_resnetv2, lm_convnext, lm_vision_transformer, lm_vision_transformer_hybrid, lm_deit,
        lm_swin_transformer, lm_efficientnet, lm_mobilenetv3, lm_regnet)
}
