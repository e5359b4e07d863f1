"""What every LM model class shares, whatever timm model it extends.

An LM model is one of timm's own models (``ResNet``, ``VisionTransformer``, ``ConvNeXt``, ...) whose
block containers are LM stages. The mixin adds the little that timm's classes cannot know about:

* ``init_lm`` turns the model's block containers into LM stages and records the LM options;
* ``set_grad_checkpointing`` hands checkpointing to the LM stages (which checkpoint per block and
  carry both tensors of the recurrence) instead of timm's ``checkpoint_seq``, which would run the
  blocks one by one as plain residual blocks;

Everything else (heads, features, intermediates, pruning, layer-decay groups, pretrained loading) is
the timm class's own code, unchanged, except where a family's code runs blocks one by one (the
family module overrides that path).
"""
import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn
from timm.models import model_entrypoint

from ..lm import LMOptions
from ..pretrained import zero_lm_coefficients
from ..stage import LMStage, lm_stages, make_lm_stage, two_step_positions

__all__ = [
    'LMModelMixin', 'LM_OPTION_NAMES', 'UnknownOptionError', 'NoTwoStepBlockError', 'split_lm_options',
    'check_model_kwargs', 'build_lm_from_timm', 'timm_class_of',
]

LM_OPTION_NAMES = ('lm', 'k_init', 'k_per_channel', 'k_stable')


class UnknownOptionError(TypeError, ValueError):
    """An option the model does not have: a TypeError, as timm's contract (and Python's) wants, and a
    ValueError, as earlier timm-lm versions raised."""


class NoTwoStepBlockError(ValueError):
    """A timm model with no two consecutive residual blocks: the LM rule would change nothing."""


class LMModelMixin:
    """Mixed in before a timm model class: ``class LMResNet(LMModelMixin, ResNet)``."""
    lm_options: LMOptions
    __jit_ignored_attributes__ = ['lm_options']  # python-side metadata, not part of the scripted model

    def lm_stage_paths(self) -> List[str]:
        """Dotted paths of the block containers that become LM stages."""
        raise NotImplementedError

    @torch.jit.ignore
    def init_lm(self, options: LMOptions) -> None:
        paths = self.lm_stage_paths()
        if not any(any(two_step_positions(self.get_submodule(p))) for p in paths):
            raise NoTwoStepBlockError(
                f'{type(self).__name__} has no two consecutive residual blocks of the same shape: the LM rule '
                f'would leave it unchanged')
        self.lm_options = options
        for path in paths:
            parent_path, _, name = path.rpartition('.')
            parent = self.get_submodule(parent_path) if parent_path else self
            setattr(parent, name, make_lm_stage(getattr(parent, name), options))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)  # timm's own, for what is not an LM stage (e.g. a hybrid stem)
        stage_paths = [path for path, _ in lm_stages(self)]
        for name, module in self.named_modules():
            if isinstance(module, LMStage):
                module.grad_checkpointing = enable
            elif hasattr(module, 'grad_checkpointing') and any(
                    not name or path.startswith(name + '.') for path in stage_paths):
                module.grad_checkpointing = False  # a container of LM stages would checkpoint its blocks one by one


def split_lm_options(kwargs: Dict[str, Any]) -> Tuple[LMOptions, Dict[str, Any]]:
    """Take the LM options out of model kwargs and validate them."""
    lm_kwargs = {k: kwargs[k] for k in LM_OPTION_NAMES if k in kwargs}
    rest = {k: v for k, v in kwargs.items() if k not in LM_OPTION_NAMES}
    return LMOptions.create(**lm_kwargs), rest


def check_model_kwargs(model_classes: Sequence[Type[nn.Module]], kwargs: Dict[str, Any], model_name: str) -> None:
    """Refuse options the model does not have, naming them and what is accepted (``UnknownOptionError``).

    ``model_classes`` are the classes the model may be (a family's entrypoints can build more than one).
    timm itself would fail with a bare TypeError from deep inside the constructor; an LM user more often
    mistypes one of the LM options, so say which ones exist.
    """
    accepted = []
    for model_cls in model_classes:
        params = inspect.signature(model_cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        accepted += [n for n in params if n != 'self' and n not in accepted]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        names = '/'.join(c.__name__ for c in model_classes)
        raise UnknownOptionError(
            f'unknown option(s) {", ".join(unknown)} for {model_name}: LM options are '
            f'{", ".join(LM_OPTION_NAMES)}; {names} options are {", ".join(accepted)}')


def timm_class_of(lm_cls: Type[nn.Module]) -> Type[nn.Module]:
    """The timm model class an LM model class extends."""
    return next(c for c in lm_cls.__mro__ if c.__module__.startswith('timm.'))


def build_lm_from_timm(
        lm_classes: Sequence[Type[nn.Module]],
        base_name: str,
        lm_name: str,
        timm_pretrained_cfg: Optional[Dict[str, Any]] = None,
        timm_features_only: bool = False,
        **kwargs,
) -> nn.Module:
    """Build timm's ``base_name`` through its own entrypoint, then make its block containers LM stages.

    Going through timm's entrypoint means every timm model of the family, present or future, is
    built exactly as timm builds it (stems, attention, pruned channel configs, ...). The instance is
    then retyped to the LM subclass of its timm class (one of ``lm_classes``), which adds methods only.

    With ``timm_pretrained_cfg`` (a warm start) timm's entrypoint also loads those weights, with its own
    per-model filters, strictness and input / class adaptation, and every k_n is then set to 0.
    ``timm_features_only`` passes ``features_only=True`` to timm's entrypoint, for families whose
    entrypoint builds a feature class of its own.
    """
    options, model_kwargs = split_lm_options(kwargs)
    by_timm_class = {timm_class_of(c): c for c in lm_classes}
    check_model_kwargs(list(by_timm_class), model_kwargs, lm_name)
    if timm_pretrained_cfg is not None:
        model_kwargs['pretrained_cfg'] = timm_pretrained_cfg
    if timm_features_only:
        model_kwargs['features_only'] = True
    model = model_entrypoint(base_name)(pretrained=timm_pretrained_cfg is not None, **model_kwargs)
    lm_cls = by_timm_class.get(type(model))
    if lm_cls is None:
        raise ValueError(f'{base_name} builds a {type(model).__name__}, which has no LM class')
    model.__class__ = lm_cls
    model.init_lm(options)
    if timm_pretrained_cfg is not None:
        zero_lm_coefficients(model)
    return model
