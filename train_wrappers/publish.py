"""Publish a checkpoint as a Hugging Face Hub model folder that timm loads, and optionally upload it.

    python -m train_wrappers.publish CHECKPOINT --out-dir DIR [--model NAME] [--repo-id ORG/NAME] [--ema]
        [--num-classes N] [--label-names FILE] [--summary summary.csv] [--dataset NAME] [--overwrite]

From Python: ``publish_checkpoint(checkpoint, out_dir, label_names=[...], dataset=...)`` (the quickstart's way).

CHECKPOINT is what timm's train.py writes (``last.pth.tar``, ``model_best.pth.tar``; ``--ema`` takes
its EMA weights), a plain state dict or a ``.safetensors`` file. The folder holds ``model.safetensors``
and ``config.json`` written by timm's own ``save_for_hf`` (architecture, num_classes, model_args,
pretrained_cfg with the data config the model was trained with, label names) and ``README.md``, the
model card rendered from MODEL_CARD.md. Before anything is put in place, the folder is reloaded with
``timm.create_model('local-dir:...')`` and must give the checkpoint's logits on a fixed input.

Refusals (one line, exit status 2, nothing written): an existing non-empty out-dir without
``--overwrite``, a checkpoint whose keys or shapes do not match the model, a missing or corrupt file,
a checkpoint that would need arbitrary unpickling, an unknown model name, label names that do not match
the classes. The model card says what trained the checkpoint (timm train.py, or this project's compact
trainer, which records itself in the checkpoint's args) and quotes that run's summary.csv. The upload uses the usual Hugging Face login or ``HF_TOKEN``; the token is never printed.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.models import save_for_hf

from timm_lm.cli import ArgumentParser
from timm_lm.loading import CheckpointError, build_from_state_dict, read_checkpoint
from train_wrappers.model_card import CardFacts, read_summary, render_card, trained_by

__all__ = ['PublishError', 'publish_checkpoint', 'main']

_DATA_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
_NOT_STRUCTURAL = ('k_init', 'drop_rate', 'drop_path_rate', 'drop_block_rate', 'pretrained')


class PublishError(ValueError):
    """A refusal: the message is the one line the user sees."""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog='timm-lm-publish', description=__doc__.splitlines()[0])
    p.add_argument('checkpoint', help="train.py checkpoint (last.pth.tar, model_best.pth.tar), .pth or .safetensors")
    p.add_argument('--model', help="LM model name (default: the 'arch' recorded in a train.py checkpoint)")
    p.add_argument('--out-dir', required=True, help='the Hub folder to write')
    p.add_argument('--repo-id', help='upload the folder to this Hub repository (ORG/NAME) when it is complete')
    p.add_argument('--ema', action='store_true', help="publish the checkpoint's EMA weights")
    p.add_argument('--num-classes', type=int, help='classes of the checkpoint (checked against its classifier)')
    p.add_argument('--label-names', help='file with one class name per line (or a JSON list)')
    p.add_argument('--summary', help="train.py's summary.csv (default: the one next to the checkpoint, if any)")
    p.add_argument('--dataset', help='dataset name for the card metadata, e.g. cifar10')
    p.add_argument('--overwrite', action='store_true', help='replace a non-empty out-dir')
    return p


def _model_kwargs(train_args: Dict[str, Any]) -> Dict[str, Any]:
    """Architecture kwargs that train.py was given (they change the function, not always the shapes)."""
    kwargs = {k: v for k, v in (train_args.get('model_kwargs') or {}).items() if k not in _NOT_STRUCTURAL}
    if train_args.get('gp'):
        kwargs['global_pool'] = train_args['gp']
    return kwargs


def read_label_names(path: str) -> List[str]:
    """Class names from a file: one per line, or a JSON list."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise PublishError(f'--label-names {path}: cannot be read ({err.strerror or err})') from None
    try:
        names = json.loads(text) if text.lstrip().startswith('[') else [l.strip() for l in text.splitlines() if l.strip()]
    except json.JSONDecodeError:
        raise PublishError(f'--label-names {path}: not a JSON list; use one name per line or a JSON list') from None
    return [str(n) for n in names]


def _fixed_input(model: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, *model.pretrained_cfg['input_size'], generator=generator)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise PublishError(f'--out-dir {out_dir}: exists and is not a folder')
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise PublishError(f'--out-dir {out_dir}: exists and is not empty; pass --overwrite to replace it, or another folder')


def build_checkpoint_model(checkpoint: Path, model_name: Optional[str], use_ema: bool,
                           num_classes: Optional[int]):
    """(model in eval mode, checkpoint metadata) of a checkpoint, its architecture checked against ``model_name``."""
    state_dict, meta = read_checkpoint(str(checkpoint), use_ema=use_ema)
    recorded = meta.get('arch')
    model_name = model_name or recorded
    if not model_name:
        raise PublishError(f'{checkpoint}: the checkpoint does not record its architecture; pass --model NAME')
    if recorded and model_name != recorded:
        raise PublishError(f'--model {model_name}: the checkpoint was trained as {recorded}; pass --model {recorded}')
    if not model_name.startswith('lm_'):
        raise PublishError(f'--model {model_name}: not an LM model name (see "timm-lm list")')
    kwargs = _model_kwargs(meta.get('args', {}))
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    model = build_from_state_dict(model_name, state_dict, **kwargs).eval()
    return model, meta


def write_folder(model: nn.Module, folder: Path, meta: Dict[str, Any], facts: CardFacts,
                 label_names: Optional[Sequence[str]], summary: Optional[Path]) -> None:
    """model.safetensors + config.json (timm's save_for_hf) + README.md into ``folder``."""
    train_args = meta.get('args', {})
    data_config = resolve_data_config(train_args, model=model)
    model.pretrained_cfg = dict(model.pretrained_cfg, **{k: data_config[k] for k in _DATA_KEYS if k in data_config},
                                num_classes=model.num_classes)
    for stale in ('label_names', 'tag', 'notes', 'description'):  # they describe the registry tag, not these weights
        model.pretrained_cfg.pop(stale, None)
    model_config: Dict[str, Any] = {}
    if label_names is not None:
        if len(label_names) != model.num_classes:
            raise PublishError(f'label names: {len(label_names)} names for a model with {model.num_classes} classes; '
                               f'give one name per class')
        model_config['label_names'] = [str(n) for n in label_names]
    model_args = dict(model.lm_options.model_args(), in_chans=model.pretrained_cfg['input_size'][0],
                      num_classes=model.num_classes, **_model_kwargs(train_args))
    save_for_hf(model, folder, model_config=model_config, model_args=model_args, safe_serialization=True)

    if summary is not None:
        try:
            found = read_summary(summary, meta.get('epoch'))
        except (OSError, ValueError, KeyError) as err:
            raise PublishError(f'--summary {summary}: cannot be read as train.py summary.csv ({err})') from None
        facts.metrics, facts.best = found['row'], found['best']
    (folder / 'README.md').write_text(render_card(model, facts))


def verify_folder(folder: Path, model: nn.Module) -> None:
    """Reload the folder as a user would and compare logits with the checkpoint's model."""
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = _fixed_input(model)
    with torch.no_grad():
        expected, got = model(x), reloaded(x)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise PublishError(f'the written folder does not reproduce the checkpoint (max |diff| '
                           f'{(got - expected).abs().max().item() if got.shape == expected.shape else "shape"}); nothing kept')


def upload(folder: Path, repo_id: str) -> str:
    """Upload with huggingface_hub (token from the HF login or HF_TOKEN); returns the repo URL."""
    from huggingface_hub import HfApi
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type='model', exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type='model',
                          commit_message='Upload LM-architecture model (timm-lm)')
    except Exception as err:  # the hub client raises many types; the message (never the token) is what matters
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PublishError(f'upload to {repo_id} failed ({reason}); the folder {folder} is complete: '
                           f'upload it later with: huggingface-cli upload {repo_id} {folder}') from None
    return f'https://huggingface.co/{repo_id}'


def _make_readable(folder: Path) -> None:
    """Give the folder and its files the usual umask permissions (mkdtemp and some writers use 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def publish_checkpoint(checkpoint: Union[str, Path], out_dir: Union[str, Path], *, model: Optional[str] = None,
                       label_names: Optional[Sequence[str]] = None, dataset: Optional[str] = None,
                       summary: Optional[Union[str, Path]] = None, num_classes: Optional[int] = None,
                       ema: bool = False, repo_id: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write ``checkpoint`` as a Hub folder at ``out_dir`` (checked by reloading it), upload it to ``repo_id``.

    ``model``: the architecture, when the checkpoint does not record it; ``label_names``: one per class;
    ``summary``: the run's summary.csv (default: the one next to the checkpoint, if any) for the card's
    metrics. Raises PublishError or CheckpointError (one-line messages) before anything is written.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    built, meta = build_checkpoint_model(checkpoint, model, ema, num_classes)
    if summary is None and (checkpoint.parent / 'summary.csv').is_file():
        summary = checkpoint.parent / 'summary.csv'
    facts = CardFacts(model_name=built.pretrained_cfg['architecture'], repo_id=repo_id, dataset=dataset,
                      checkpoint=checkpoint.name, epoch=meta.get('epoch'), ema=ema,
                      trained_by=trained_by(meta.get('args')))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', dir=out_dir.parent))
    try:
        write_folder(built, staging, meta, facts, label_names, Path(summary) if summary is not None else None)
        verify_folder(staging, built)
        _make_readable(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    print(f'published {built.pretrained_cfg["architecture"]} to {out_dir} (reloaded with local-dir: and checked)')
    if repo_id:
        print(f'uploaded to {upload(out_dir, repo_id)}')
    return out_dir


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        publish_checkpoint(
            args.checkpoint, args.out_dir, model=args.model, dataset=args.dataset, summary=args.summary,
            label_names=read_label_names(args.label_names) if args.label_names else None,
            num_classes=args.num_classes, ema=args.ema, repo_id=args.repo_id, overwrite=args.overwrite)
    except (PublishError, CheckpointError) as err:
        print(f'timm-lm-publish: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
