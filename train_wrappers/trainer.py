"""A compact trainer built only from timm's library parts, for machines without timm's train.py.

timm's train.py lives in the pytorch-image-models repository, not in the timm wheel. This trainer uses
what the wheel has (``timm.data`` datasets, transforms and loaders, ``timm.optim``, ``timm.scheduler``,
``timm.utils.CheckpointSaver`` / ``update_summary`` / ``ModelEmaV3``, ``timm.models.resume_checkpoint``)
and keeps train.py's conventions: the same argument names (saved in every checkpoint as an
``argparse.Namespace``), the same ``last.pth.tar`` / ``model_best.pth.tar`` / ``checkpoint-N.pth.tar``
files, ``summary.csv`` and ``args.yaml``, and EMA metrics used for checkpointing when EMA is on. So its
output can be resumed here, validated with validate.py, and published with ``timm-lm-publish``.

It trains on the CPU (or one device) without AMP or distribution: for those, use train.py.

    python -m train_wrappers.trainer --data-dir DIR [--dataset torch/fashion_mnist] --model lm_resnet20_cifar ...
"""
import argparse
import logging
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
import yaml
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.models import load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import AverageMeter, CheckpointSaver, ModelEmaV3, accuracy, random_seed, update_summary

import timm_lm  # noqa: F401  (registers the LM models)

__all__ = ['TrainConfig', 'TrainResult', 'train', 'evaluate', 'main']

_logger = logging.getLogger('train_wrappers.trainer')


@dataclass
class TrainConfig:
    """Training options, named as timm train.py's (``args.<name>`` in the saved checkpoint)."""
    model: str = 'lm_resnet20_cifar'
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data_dir: str = ''
    dataset: str = ''  # '' = ImageFolder under data_dir/<split>; 'torch/fashion_mnist', 'torch/cifar10', ...
    train_split: str = 'train'
    val_split: str = 'validation'
    num_classes: Optional[int] = None
    in_chans: Optional[int] = None
    input_size: Optional[Tuple[int, int, int]] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    crop_pct: Optional[float] = None
    interpolation: str = ''
    no_aug: bool = False
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3. / 4., 4. / 3.)
    hflip: float = 0.5
    color_jitter: float = 0.4
    batch_size: int = 128
    validation_batch_size: Optional[int] = None
    epochs: int = 1
    opt: str = 'sgd'
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    sched: str = 'cosine'
    sched_on_updates: bool = False
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    smoothing: float = 0.0
    drop_path: Optional[float] = None
    model_ema: bool = False
    model_ema_decay: float = 0.998
    channels_last: bool = False
    workers: int = 0
    seed: int = 42
    output: str = 'output/train'
    experiment: str = ''
    resume: str = ''
    checkpoint_hist: int = 2
    log_interval: int = 50
    progress: bool = True


@dataclass
class TrainResult:
    output_dir: Path
    best_metric: Optional[float]
    best_epoch: Optional[int]
    last_metrics: Dict[str, float]


def _namespace(cfg: TrainConfig) -> argparse.Namespace:
    """train.py's args object (safe types only, so ``torch.load(weights_only=True)`` reads it back)."""
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    values.update(gp=None, in_chans=cfg.in_chans)
    return argparse.Namespace(**values)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with huggingface_hub; without it, no bar
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)


def train_one_epoch(model, loader, optimizer, loss_fn, scheduler, epoch, ema=None, cfg: TrainConfig = TrainConfig()):
    model.train()
    losses, top1 = AverageMeter(), AverageMeter()
    updates_per_epoch = len(loader)
    bar = _progress(loader, updates_per_epoch, f'train {epoch}', cfg.progress)
    for step, (x, y) in enumerate(bar):
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        output = model(x)
        loss = loss_fn(output, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model, step=epoch * updates_per_epoch + step)
        scheduler.step_update(num_updates=epoch * updates_per_epoch + step + 1)
        losses.update(loss.item(), x.size(0))
        top1.update(accuracy(output.detach(), y, topk=(1,))[0].item(), x.size(0))
        if hasattr(bar, 'set_postfix'):
            bar.set_postfix(loss=f'{losses.avg:.3f}', top1=f'{top1.avg:.1f}', lr=f'{optimizer.param_groups[0]["lr"]:.4f}')
    return OrderedDict([('loss', losses.avg), ('top1', top1.avg)])


@torch.no_grad()
def evaluate(model: nn.Module, loader, channels_last: bool = False, progress: bool = False, desc: str = 'eval'):
    """Loss, top-1 and top-5 (top-k capped at the number of classes) as train.py's validate()."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
    for x, y in _progress(loader, len(loader), desc, progress):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        output = model(x)
        acc1, acc5 = accuracy(output, y, topk=(1, 5))
        losses.update(loss_fn(output, y).item(), x.size(0))
        top1.update(acc1.item(), x.size(0))
        top5.update(acc5.item(), x.size(0))
    return OrderedDict([('loss', losses.avg), ('top1', top1.avg), ('top5', top5.avg)])


def create_model(cfg: TrainConfig) -> nn.Module:
    kwargs = dict(cfg.model_kwargs)
    for name in ('num_classes', 'in_chans'):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    if cfg.drop_path is not None:
        kwargs['drop_path_rate'] = cfg.drop_path
    return timm.create_model(cfg.model, **kwargs)


def create_split_loader(cfg: TrainConfig, data_config: Dict[str, Any], split: str, is_training: bool):
    """timm dataset + loader for one split, with train.py's transforms (no prefetcher: CPU-friendly)."""
    img_mode = 'RGB' if data_config['input_size'][0] == 3 else 'L'  # as train.py does without --input-img-mode
    batch_size = cfg.batch_size if is_training else cfg.validation_batch_size or cfg.batch_size
    dataset = create_dataset(cfg.dataset, root=cfg.data_dir, split=split, is_training=is_training,
                             batch_size=batch_size, input_img_mode=img_mode)
    augment = dict(no_aug=cfg.no_aug, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
                   color_jitter=cfg.color_jitter) if is_training else dict(crop_pct=data_config['crop_pct'])
    return create_loader(
        dataset, input_size=data_config['input_size'], batch_size=batch_size, is_training=is_training,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        num_workers=cfg.workers, use_prefetcher=False, persistent_workers=False, pin_memory=False, **augment)


def _run_dir(cfg: TrainConfig) -> Path:
    """``output/experiment`` (a timestamped name by default); resuming without a name continues in the
    checkpoint's own folder, appending to its summary.csv."""
    if cfg.resume and not cfg.experiment:
        return Path(cfg.resume).parent
    path = Path(cfg.output) / (cfg.experiment or '-'.join([time.strftime('%Y%m%d-%H%M%S'), cfg.model]))
    path.mkdir(parents=True, exist_ok=True)
    return path


def train(cfg: TrainConfig) -> TrainResult:
    random_seed(cfg.seed, 0)
    model = create_model(cfg)
    data_config = resolve_data_config(vars(_namespace(cfg)), model=model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None

    start_epoch = 0
    if cfg.resume:
        start_epoch = resume_checkpoint(model, cfg.resume, optimizer=optimizer, log_info=False) or 0
        if ema is not None:
            load_checkpoint(ema.module, cfg.resume, use_ema=True)

    train_loader = create_split_loader(cfg, data_config, cfg.train_split, is_training=True)
    eval_loader = create_split_loader(cfg, data_config, cfg.val_split, is_training=False)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=not cfg.sched_on_updates,
        updates_per_epoch=len(train_loader))
    if start_epoch:
        scheduler.step(start_epoch)

    output_dir = _run_dir(cfg)
    args = _namespace(cfg)
    (output_dir / 'args.yaml').write_text(yaml.safe_dump(vars(args), default_flow_style=False))
    saver = CheckpointSaver(model=model, optimizer=optimizer, args=args, model_ema=ema, checkpoint_dir=str(output_dir),
                            recovery_dir=str(output_dir), decreasing=False, max_history=cfg.checkpoint_hist)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)
    best_metric = best_epoch = None
    eval_metrics: Dict[str, float] = {}
    for epoch in range(start_epoch, num_epochs):
        train_metrics = train_one_epoch(model, train_loader, optimizer, loss_fn, scheduler, epoch, ema, cfg)
        eval_metrics = evaluate(model, eval_loader, cfg.channels_last, cfg.progress)
        if ema is not None:  # as train.py: the EMA weights' metrics are the ones logged and checkpointed
            eval_metrics = evaluate(ema.module, eval_loader, cfg.channels_last, cfg.progress, desc='eval (EMA)')
        lrs = [g['lr'] for g in optimizer.param_groups]
        update_summary(epoch, train_metrics, eval_metrics, filename=str(output_dir / 'summary.csv'),
                       lr=sum(lrs) / len(lrs), write_header=not (output_dir / 'summary.csv').exists())
        best_metric, best_epoch = saver.save_checkpoint(epoch, metric=eval_metrics['top1'])
        scheduler.step(epoch + 1)
        _logger.info(f'epoch {epoch}: train loss {train_metrics["loss"]:.4f}, eval top-1 {eval_metrics["top1"]:.2f}')
    return TrainResult(output_dir, best_metric, best_epoch, dict(eval_metrics))


def build_parser() -> argparse.ArgumentParser:
    """Flags spelled as train.py's, for the options this trainer has."""
    from timm.utils import ParseKwargs
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog='python -m train_wrappers.trainer', description=__doc__.splitlines()[0])
    p.add_argument('--data-dir', required=True)
    p.add_argument('--dataset', default=defaults.dataset)
    p.add_argument('--train-split', default=defaults.train_split)
    p.add_argument('--val-split', default=defaults.val_split)
    p.add_argument('--model', default=defaults.model)
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    p.add_argument('--num-classes', type=int)
    p.add_argument('--in-chans', type=int)
    p.add_argument('--input-size', type=int, nargs=3)
    p.add_argument('--mean', type=float, nargs='+')
    p.add_argument('--std', type=float, nargs='+')
    p.add_argument('--crop-pct', type=float)
    p.add_argument('--interpolation', default='')
    p.add_argument('--no-aug', action='store_true')
    p.add_argument('--scale', type=float, nargs=2, default=defaults.scale)
    p.add_argument('--ratio', type=float, nargs=2, default=defaults.ratio)
    p.add_argument('--hflip', type=float, default=defaults.hflip)
    p.add_argument('--color-jitter', type=float, default=defaults.color_jitter)
    p.add_argument('-b', '--batch-size', type=int, default=defaults.batch_size)
    p.add_argument('-vb', '--validation-batch-size', type=int)
    p.add_argument('--epochs', type=int, default=defaults.epochs)
    p.add_argument('--opt', default=defaults.opt)
    p.add_argument('--lr', type=float, default=defaults.lr)
    p.add_argument('--momentum', type=float, default=defaults.momentum)
    p.add_argument('--weight-decay', type=float, default=defaults.weight_decay)
    p.add_argument('--sched', default=defaults.sched)
    p.add_argument('--sched-on-updates', action='store_true')
    p.add_argument('--warmup-epochs', type=int, default=defaults.warmup_epochs)
    p.add_argument('--min-lr', type=float, default=defaults.min_lr)
    p.add_argument('--smoothing', type=float, default=defaults.smoothing)
    p.add_argument('--drop-path', type=float)
    p.add_argument('--model-ema', action='store_true')
    p.add_argument('--model-ema-decay', type=float, default=defaults.model_ema_decay)
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('-j', '--workers', type=int, default=defaults.workers)
    p.add_argument('--seed', type=int, default=defaults.seed)
    p.add_argument('--output', default=defaults.output)
    p.add_argument('--experiment', default='')
    p.add_argument('--resume', default='')
    p.add_argument('--checkpoint-hist', type=int, default=defaults.checkpoint_hist)
    p.add_argument('--no-progress', dest='progress', action='store_false')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = build_parser().parse_args(argv)
    cfg = TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()})
    if cfg.resume and not Path(cfg.resume).is_file():
        print(f'trainer: --resume {cfg.resume}: no such checkpoint file', file=sys.stderr)
        return 2
    if not Path(cfg.data_dir).is_dir():
        print(f'trainer: --data-dir {cfg.data_dir}: no such folder', file=sys.stderr)
        return 2
    try:
        result = train(cfg)
    except ValueError as err:  # bad model options: one line
        print(f'trainer: {err}', file=sys.stderr)
        return 2
    print(f'output: {result.output_dir}  best top-1 {result.best_metric} (epoch {result.best_epoch})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
