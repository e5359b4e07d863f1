"""timm-lm: the LM-architecture (Lu, Zhong, Li & Dong, ICML 2018, arXiv:1710.10121) for timm.

``import timm_lm`` registers every LM model in timm's registry, so that ``timm.create_model``,
timm's ``train.py --model`` and the Hub loaders know them. Small public API:

* ``lm_coefficients(model)`` / ``format_coefficients(model)``: every k_n by stage and block, with the
  modified-equation coefficients and zero-stability (``timm_lm.analysis``);
* ``LMOptions``: the LM model options (``lm``, ``k_init``, ``k_per_channel``, ``k_stable``);
* the errors ``create_model`` raises for LM models: ``UnknownOptionError`` (a ``TypeError``, as timm's
  contract says, and a ``ValueError``) and ``PretrainedWeightsUnavailable`` (an ``OSError`` naming the
  weights it tried).
"""
import warnings

with warnings.catch_warnings():
    # timm 1.0.22's hrnet.py decorates a class with torch.jit.interface, which torch 2.14 deprecates with a
    # FutureWarning when timm is imported: a note to timm's code (later releases dropped it), not to our
    # users, and it would be the first line of every timm-lm command's output. Only that warning, only here.
    warnings.filterwarnings('ignore', message=r'`torch\.jit\.interface` is deprecated', category=FutureWarning)
    import timm  # noqa: F401

from .version import __version__
from .lm import LMOptions
from .analysis import BlockCoefficient, format_coefficients, lm_coefficients, plot_coefficients, \
    summarize_coefficients
from . import models  # registers the models
from .models._base import UnknownOptionError
from .models._factory import PretrainedWeightsUnavailable

__all__ = [
    '__version__', 'LMOptions', 'BlockCoefficient', 'lm_coefficients', 'format_coefficients', 'summarize_coefficients',
    'plot_coefficients', 'models', 'UnknownOptionError', 'PretrainedWeightsUnavailable',
]
