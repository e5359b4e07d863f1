"""Reading LM checkpoints safely, and rebuilding the model they belong to.

Accepted sources: a registered model name (``lm_resnet56_cifar``), a published Hub folder (with
``config.json``; also ``local-dir:`` / ``hf-hub:`` names), a checkpoint written by timm's train.py
(``last.pth.tar``, ``model_best.pth.tar``, optionally with EMA weights), a plain state dict
(``.pth``) or a ``.safetensors`` file.

Security: pickled checkpoints are read with ``torch.load(weights_only=True)`` (only tensors and plain
containers, plus ``argparse.Namespace`` for train.py's saved args); anything that would need
arbitrary unpickling is refused, never executed.
"""
import argparse
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn

__all__ = ['CheckpointError', 'read_checkpoint', 'infer_lm_kwargs', 'build_from_state_dict', 'load_lm_model']


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line saying why and what to do."""


def read_checkpoint(path, use_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state_dict, metadata) of a checkpoint file; metadata has train.py's 'arch', 'epoch', 'args' if present."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: no such file (pass a train.py checkpoint, a .pth state dict or a .safetensors file)')
    if path.suffix == '.safetensors':
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path)), {}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f'{path}: not a readable safetensors file ({_first_line(err)})') from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(
                f'{path}: refused, loading it would need arbitrary unpickling (of {", ".join(unsafe[:3])}); '
                f're-save only its state_dict, or convert it to safetensors') from None
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (corrupt, truncated or another format)') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({_first_line(err)})') from None

    meta: Dict[str, Any] = {}
    if isinstance(obj, dict) and 'state_dict' in obj:  # train.py: CheckpointSaver
        key = 'state_dict_ema' if use_ema else 'state_dict'
        if key not in obj:
            raise CheckpointError(f'{path}: has no EMA weights (state_dict_ema); train with --model-ema, or drop --ema')
        args = obj.get('args')
        meta = dict(arch=obj.get('arch'), epoch=obj.get('epoch'), metric=obj.get('metric'),
                    args=vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
        obj = obj[key]
    elif use_ema:
        raise CheckpointError(f'{path}: a plain state dict has no EMA weights; drop --ema')
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{path}: holds no state dict of tensors')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in obj.items()}, meta


def infer_lm_kwargs(state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """The LM options a state dict was trained with, read off its coefficient keys and shapes."""
    coef = {k: v for k, v in state_dict.items() if k.endswith(('.lm.k', '.lm.k_raw'))}
    if not coef:
        return dict(lm=False) if not any('.lm.' in k for k in state_dict) else {}
    return dict(
        k_stable=any(k.endswith('.k_raw') for k in coef),
        k_per_channel=any(v.ndim == 1 for v in coef.values()),
    )


def build_from_state_dict(model_name: str, state_dict: Dict[str, torch.Tensor], **kwargs) -> nn.Module:
    """Create ``model_name`` shaped like ``state_dict`` (classes, input channels, LM options) and load it strictly."""
    if not model_name or not timm.is_model(model_name):
        raise CheckpointError(f'unknown model {model_name!r}: see "timm-lm list" for the LM model names')
    with torch.device('meta'):
        probe = timm.create_model(model_name)
    cfg = probe.pretrained_cfg
    classifier = state_dict.get(f"{cfg.get('classifier')}.weight")
    first_conv = state_dict.get(f"{cfg.get('first_conv')}.weight")
    inferred = dict(infer_lm_kwargs(state_dict))
    if classifier is not None:
        inferred['num_classes'] = classifier.shape[0]
    if first_conv is not None and first_conv.ndim == 4:
        inferred['in_chans'] = first_conv.shape[1]
    inferred.update(kwargs)
    model = timm.create_model(model_name, **inferred)
    check_state_dict_matches(model, state_dict, model_name)
    model.load_state_dict(state_dict)
    return model


def check_state_dict_matches(model: nn.Module, state_dict: Dict[str, torch.Tensor], model_name: str) -> None:
    """One clear error for keys or shapes that differ (a checkpoint of another architecture)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        parts = [f'{len(v)} {what} (e.g. {v[0]})' for what, v in
                 (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', shapes)) if v]
        raise CheckpointError(
            f'the checkpoint does not match {model_name}: {", ".join(parts)}; pass the architecture it was '
            f'trained as')


def load_lm_model(source: str, model_name: Optional[str] = None, use_ema: bool = False) -> Tuple[nn.Module, str]:
    """(model in eval mode, one-line description) from a model name, Hub folder or checkpoint file."""
    path = Path(source)
    if source.startswith(('hf-hub:', 'local-dir:')):
        return timm.create_model(source, pretrained=True).eval(), source
    if path.is_dir():
        if not (path / 'config.json').is_file():
            raise CheckpointError(f'{path}: a folder without config.json is not a published model folder')
        return timm.create_model(f'local-dir:{path}', pretrained=True).eval(), f'published folder {path}'
    if path.exists() or path.suffix in ('.pth', '.tar', '.pt', '.bin', '.safetensors'):
        state_dict, meta = read_checkpoint(path, use_ema=use_ema)
        arch = model_name or meta.get('arch')
        if not arch:
            raise CheckpointError(f'{path}: the checkpoint does not name its architecture; pass the model name')
        model = build_from_state_dict(arch, state_dict)
        epoch = f', epoch {meta["epoch"]}' if meta.get('epoch') is not None else ''
        return model.eval(), f'{arch} from {path}{" (EMA)" if use_ema else ""}{epoch}'
    if timm.is_model(source):
        if not source.startswith('lm_'):
            raise CheckpointError(f'{source} is not an LM model: pass an lm_* name (see "timm-lm list")')
        return timm.create_model(source).eval(), f'{source} (initial coefficients)'
    raise CheckpointError(f'{source}: neither a registered LM model, a published folder nor a checkpoint file')


def _unsafe_globals(path: Path) -> list:
    """The globals a pickled checkpoint would import beyond the weights_only allow-list (none if unreadable)."""
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if g != 'argparse.Namespace']
    except Exception:  # not a zip checkpoint at all: corrupt, which the caller reports
        return []


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
