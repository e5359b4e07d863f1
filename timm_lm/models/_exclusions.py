"""timm models that have no LM version, and why (generated: python -m timm_lm.models._survey --write).

Surveyed with timm 1.0.31; tests/test_registry.py checks it against the installed timm.
"""

EXCLUDED = {
    'test_convnext2': 'convnext: no two consecutive residual blocks of one shape',
    'test_convnext3': 'convnext: no two consecutive residual blocks of one shape',
    'mobilenetv1_100': 'efficientnet: no two consecutive residual blocks of one shape',
    'mobilenetv1_100h': 'efficientnet: no two consecutive residual blocks of one shape',
    'mobilenetv1_125': 'efficientnet: no two consecutive residual blocks of one shape',
    'test_efficientnet': 'efficientnet: no two consecutive residual blocks of one shape',
    'test_efficientnet_evos': 'efficientnet: no two consecutive residual blocks of one shape',
    'test_efficientnet_gn': 'efficientnet: no two consecutive residual blocks of one shape',
    'test_efficientnet_ln': 'efficientnet: no two consecutive residual blocks of one shape',
    'tinynet_e': 'efficientnet: no two consecutive residual blocks of one shape',
    'lcnet_035': 'mobilenetv3: no two consecutive residual blocks of one shape',
    'lcnet_050': 'mobilenetv3: no two consecutive residual blocks of one shape',
    'lcnet_075': 'mobilenetv3: no two consecutive residual blocks of one shape',
    'lcnet_100': 'mobilenetv3: no two consecutive residual blocks of one shape',
    'lcnet_150': 'mobilenetv3: no two consecutive residual blocks of one shape',
    'resnet10t': 'resnet: no two consecutive residual blocks of one shape',
    'resnet14t': 'resnet: no two consecutive residual blocks of one shape',
    'test_resnet': 'resnet: no two consecutive residual blocks of one shape',
}
