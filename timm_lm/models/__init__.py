"""LM model families; importing this registers every LM model in timm's registry."""
from .lm_resnet import LMResNet
from .lm_resnetv2 import LMResNetV2
from .lm_cifar import LMCifarResNet
