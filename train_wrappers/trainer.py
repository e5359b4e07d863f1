"""A compact trainer built only from timm's library parts, for machines without timm's train.py.

timm's train.py lives in the pytorch-image-models repository, not in the timm wheel. This trainer uses
what the wheel has (``timm.data`` datasets, transforms and loaders, ``timm.optim``, ``timm.scheduler``,
``timm.utils.CheckpointSaver`` / ``update_summary`` / ``ModelEmaV3``, ``timm.models.resume_checkpoint``)
and keeps train.py's conventions: the same option names (saved in every checkpoint as an
``argparse.Namespace``), the same ``last.pth.tar`` / ``model_best.pth.tar`` / ``checkpoint-N.pth.tar``
files, ``summary.csv`` and ``args.yaml``, and EMA metrics used for checkpointing when EMA is on. So its
output can be resumed here, validated with validate.py, and published with ``timm-lm-publish``.

It trains on the CPU (or one device) without AMP or distribution: for those, use train.py. Besides
timm's datasets it reads MNIST-format idx folders (``--dataset idx``) into memory and augments them
batch-wise (``train_wrappers.idx_data``), which is what makes the quickstart fast on two cores.

The options are declared once, as the fields of ``TrainConfig``: the command line, the checks of every
number and the equivalent train.py command line (``train_py_args``) all come from those declarations.

    python -m train_wrappers.trainer --data-dir DIR [--dataset idx|torch/fashion_mnist|...] --model lm_resnet20_cifar ...
"""
import argparse
import dataclasses
import sys
import time
import typing
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import yaml
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.models import load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import AverageMeter, CheckpointSaver, ModelEmaV3, accuracy, random_seed, update_summary

from timm_lm.cli import ArgumentParser, ParseKwargs
from train_wrappers.idx_data import IdxLoader, load_idx_split

__all__ = ['TrainConfig', 'TrainResult', 'Evaluation', 'train', 'evaluate', 'build_parser', 'add_config_options',
           'train_py_args', 'main']

TRAINER_ID = 'train_wrappers.trainer'  # recorded in each checkpoint's args, so a model card can say what trained it


@dataclass(frozen=True)
class Range:
    """The values a numeric option accepts (each element, for a tuple); ``ordered``: a pair given as MIN MAX."""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    ordered: bool = False

    def describe(self) -> str:
        if self.high is None:
            return f'{">" if self.low_open else ">="} {self.low:g}'
        return f'in {"(" if self.low_open else "["}{self.low:g}, {self.high:.10g}{")" if self.high_open else "]"}'

    def problem(self, value: Any) -> Optional[str]:
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if (self.low is not None and (v < self.low or (self.low_open and v == self.low))) or \
                    (self.high is not None and (v > self.high or (self.high_open and v == self.high))):
                return f'must be {self.describe()}' + (' (each value)' if len(values) > 1 else '')
        if self.ordered and values[0] > values[1]:
            return 'give the smaller value first (MIN MAX)'
        return None


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, low_open=True)
FRACTION, PROBABILITY = Range(0, 1, high_open=True), Range(0, 1)


def option(default: Any = None, help: str = '', *, flags: Sequence[str] = (), check: Optional[Range] = None,
           train_py: bool = True, required: bool = False, **argparse_kwargs) -> Any:
    """A TrainConfig field with what its command-line option needs (help, extra flags, accepted values).

    ``train_py=False`` marks the options that only this trainer has (left out of ``train_py_args``).
    """
    metadata = dict(help=help, flags=tuple(flags), check=check, train_py=train_py, required=required,
                    argparse=argparse_kwargs)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Training options, named as timm train.py's (``args.<name>`` in the saved checkpoint)."""
    data_dir: str = option('', 'dataset folder (an ImageFolder with one folder per split, an idx folder, '
                               'or the root of a torchvision dataset)', required=True)
    dataset: str = option('', "'' for ImageFolder, 'idx' for MNIST-format files held in memory, or a timm "
                              "dataset name such as torch/fashion_mnist")
    train_split: str = option('train', 'training split')
    val_split: str = option('validation', 'evaluation split')
    model: str = option('lm_resnet20_cifar', 'model name (timm registry)')
    model_kwargs: Dict[str, Any] = option({}, 'model options, e.g. k_stable=True k_init=-0.05')
    num_classes: Optional[int] = option(None, 'classes (default: the model\'s)', check=AT_LEAST_1)
    in_chans: Optional[int] = option(None, 'image channels', check=AT_LEAST_1)
    input_size: Optional[Tuple[int, int, int]] = option(None, 'C H W of the model input', check=AT_LEAST_1,
                                                        metavar=('C', 'H', 'W'))
    mean: Optional[Tuple[float, ...]] = option(None, 'normalisation mean, per channel')
    std: Optional[Tuple[float, ...]] = option(None, 'normalisation std, per channel', check=POSITIVE)
    crop_pct: Optional[float] = option(None, 'evaluation centre-crop fraction', check=POSITIVE)
    interpolation: str = option('', 'evaluation resize interpolation (default: the model\'s)')
    train_interpolation: str = option('random', "training crop interpolation ('random': bilinear or bicubic "
                                                "per image; '': as --interpolation)")
    no_aug: bool = option(False, 'no training augmentation')
    scale: Tuple[float, float] = option((0.08, 1.0), 'random-resized-crop area range',
                                        check=Range(0, 1, low_open=True, ordered=True), metavar=('MIN', 'MAX'))
    ratio: Tuple[float, float] = option((3. / 4., 4. / 3.), 'random-resized-crop aspect ratio range',
                                        check=Range(0, low_open=True, ordered=True), metavar=('MIN', 'MAX'))
    hflip: float = option(0.5, 'horizontal flip probability', check=PROBABILITY)
    color_jitter: float = option(0.4, 'colour jitter strength', check=AT_LEAST_0)
    batch_size: int = option(128, 'training batch size', flags=('-b',), check=AT_LEAST_1)
    validation_batch_size: Optional[int] = option(None, 'evaluation batch size (default: --batch-size)',
                                                  flags=('-vb',), check=AT_LEAST_1)
    epochs: int = option(1, 'epochs to train', check=AT_LEAST_1)
    opt: str = option('sgd', 'optimizer (timm.optim name)')
    lr: float = option(0.1, 'learning rate', check=POSITIVE)
    momentum: float = option(0.9, 'optimizer momentum', check=FRACTION)
    weight_decay: float = option(1e-4, 'weight decay', check=AT_LEAST_0)
    sched: str = option('cosine', 'learning-rate schedule (timm.scheduler name)')
    sched_on_updates: bool = option(False, 'step the schedule every batch, not every epoch')
    warmup_epochs: int = option(0, 'warm-up epochs', check=AT_LEAST_0)
    warmup_lr: float = option(1e-5, 'learning rate at the start of the warm-up', check=AT_LEAST_0)
    min_lr: float = option(0.0, 'lowest learning rate of the schedule', check=AT_LEAST_0)
    smoothing: float = option(0.0, 'label smoothing', check=FRACTION)
    drop_path: Optional[float] = option(None, 'stochastic depth rate (residual branches only)', check=FRACTION)
    model_ema: bool = option(False, 'keep an EMA of the weights (its metrics choose the best checkpoint)')
    model_ema_decay: float = option(0.998, 'EMA decay', check=Range(0, 1, low_open=True, high_open=True))
    channels_last: bool = option(False, 'channels-last memory format')
    workers: int = option(0, 'data loader processes (timm datasets; --dataset idx needs none)', flags=('-j',),
                          check=AT_LEAST_0)
    seed: int = option(42, 'random seed', check=Range(0, 2 ** 32 - 1))
    output: str = option('output/train', 'folder for run folders')
    experiment: str = option('', 'run folder name (default: date-time-model)')
    resume: str = option('', 'checkpoint to continue from (last.pth.tar)')
    checkpoint_hist: int = option(2, 'epoch checkpoints to keep', check=AT_LEAST_1)
    log_interval: int = option(50, 'batches between progress lines when the bar is off', check=AT_LEAST_1)
    progress: bool = option(True, 'no progress bar: a line every log-interval batches (50 by default) instead',
                            flags=('--no-progress',), train_py=False, action='store_false')

    def __post_init__(self):
        problem = config_problem(self)
        if problem:
            raise ValueError(problem)


def _flag(f: dataclasses.Field) -> str:
    return '--' + f.name.replace('_', '-')


def _option_text(f: dataclasses.Field, value: Any) -> str:
    shown = ' '.join(map(str, value)) if isinstance(value, (tuple, list)) else value
    return f'{_flag(f)} {shown}'


def config_problem(cfg: TrainConfig) -> Optional[str]:
    """The first option of ``cfg`` whose value is not accepted, as one line that names it; None if all are."""
    for f in dataclasses.fields(cfg):
        value, check = getattr(cfg, f.name), f.metadata.get('check')
        if value is not None and check is not None:
            problem = check.problem(value)
            if problem:
                return f'{_option_text(f, value)}: {problem}'
    if cfg.sched == 'plateau' and cfg.sched_on_updates:
        return '--sched plateau steps once per epoch: leave out --sched-on-updates'
    return None


def _argparse_type(annotation: Any) -> Dict[str, Any]:
    """argparse settings for a field's type: bool flag, scalar, fixed or open-length tuple, key=value dict."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        return _argparse_type(next(a for a in args if a is not type(None)))
    if annotation is bool:
        return dict(action='store_true')
    if origin is dict:
        return dict(nargs='*', action=ParseKwargs)
    if origin is tuple:
        return dict(type=args[0], nargs='+' if args[-1] is Ellipsis else len(args))
    return dict(type=annotation)


def add_config_options(parser: argparse.ArgumentParser, names: Optional[Iterable[str]] = None,
                       defaults: Optional[TrainConfig] = None) -> None:
    """Add TrainConfig's options (all, or ``names``) to ``parser``, with ``defaults``' values as defaults."""
    hints = typing.get_type_hints(TrainConfig)
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in (names or by_name):
        f = by_name[name]
        kwargs = dict(_argparse_type(hints[name]), **f.metadata['argparse'])
        default = getattr(defaults, name) if defaults is not None else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())
        help_text = f.metadata['help']
        if f.metadata['check'] is not None:
            help_text += f' ({f.metadata["check"].describe()})'
        if not isinstance(default, bool) and default not in (None, '', {}):
            help_text += f' [{" ".join(map(str, default)) if isinstance(default, tuple) else default}]'
        required = f.metadata['required'] and (defaults is None or not default)
        flags = f.metadata['flags'] if kwargs.get('action') == 'store_false' else (*f.metadata['flags'], _flag(f))
        parser.add_argument(*flags, dest=name, default=default, required=required, help=help_text, **kwargs)


def config_from_args(args: argparse.Namespace, base: Optional[TrainConfig] = None) -> TrainConfig:
    """TrainConfig from parsed options (lists become tuples); fields the parser lacks come from ``base``."""
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()
              if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    return dataclasses.replace(base, **values) if base is not None else TrainConfig(**values)


def train_py_args(cfg: TrainConfig) -> List[str]:
    """The train.py command-line options that give ``cfg`` (every option train.py shares, when set)."""
    argv: List[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not f.metadata['train_py'] or value is None or value is False or value == '' or value == {}:
            continue
        if value is True:
            argv.append(_flag(f))
        elif isinstance(value, dict):
            argv += [_flag(f), *(f'{k}={v!r}' for k, v in value.items())]
        elif isinstance(value, tuple):
            argv += [_flag(f), *map(str, value)]
        else:
            argv += [_flag(f), str(value)]
    return argv


@dataclass
class TrainResult:
    output_dir: Path
    best_metric: Optional[float]
    best_epoch: Optional[int]
    last_metrics: Dict[str, float]


class Evaluation(NamedTuple):
    metrics: 'OrderedDict[str, float]'  # loss, top1, top5: train.py's validate() metrics
    predictions: torch.Tensor  # the top-1 class of every image, in the loader's order


def _namespace(cfg: TrainConfig) -> argparse.Namespace:
    """train.py's args object (safe types only, so ``torch.load(weights_only=True)`` reads it back)."""
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    values.update(gp=None, trainer=TRAINER_ID)  # gp: train.py's global-pool option, read by timm-lm-publish
    return argparse.Namespace(**values)


class Progress:
    """How far a loop is: a tqdm bar, or (``bar=False``, or without tqdm) a line every ``every`` steps.

    The lines are for runs whose output is not a terminal or that turned the bar off: without them a
    --no-progress run says nothing for minutes.
    """

    def __init__(self, total: int, desc: str, bar: bool, every: int):
        self.total, self.desc, self.every = total, desc, every
        self.start = time.time()
        self.bar = None
        if bar:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)
            except ImportError:  # tqdm comes with huggingface_hub; without it, lines
                pass

    def update(self, step: int, **stats: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(stats, refresh=False)
        elif step % self.every == 0 or step == self.total:
            elapsed = time.time() - self.start
            left = f'about {elapsed / step * (self.total - step):.0f} s left' if step < self.total else 'done'
            shown = ', '.join(f'{k} {v}' for k, v in stats.items())
            print(f'      {self.desc}: {step}/{self.total} batches ({100 * step / self.total:.0f}%), {shown}, '
                  f'{elapsed:.0f} s, {left}', flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_one_epoch(model, loader, optimizer, loss_fn, scheduler, epoch, ema, cfg: TrainConfig):
    model.train()
    losses, top1 = AverageMeter(), AverageMeter()
    updates_per_epoch = len(loader)
    progress = Progress(updates_per_epoch, f'train epoch {epoch}', cfg.progress, cfg.log_interval)
    for step, (x, y) in enumerate(loader):
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        output = model(x)
        loss = loss_fn(output, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model, step=epoch * updates_per_epoch + step)
        if scheduler is not None:  # --sched none: a constant learning rate
            scheduler.step_update(num_updates=epoch * updates_per_epoch + step + 1)
        losses.update(loss.item(), x.size(0))
        top1.update(accuracy(output.detach(), y, topk=(1,))[0].item(), x.size(0))
        progress.update(step + 1, loss=f'{losses.avg:.3f}', top1=f'{top1.avg:.1f}%',
                        lr=f'{optimizer.param_groups[0]["lr"]:.4f}')
    progress.close()
    return OrderedDict([('loss', losses.avg), ('top1', top1.avg)])


@torch.inference_mode()
def evaluate(model: nn.Module, loader, channels_last: bool = False, progress: bool = False, desc: str = 'eval',
             log_interval: int = 50) -> Evaluation:
    """train.py's validate() metrics (top-k capped at the number of classes) and every image's top-1 class."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
    predictions = []
    bar = Progress(len(loader), desc, progress, log_interval)
    for step, (x, y) in enumerate(loader):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        output = model(x)
        acc1, acc5 = accuracy(output, y, topk=(1, min(5, output.shape[-1])))
        losses.update(loss_fn(output, y).item(), x.size(0))
        top1.update(acc1.item(), x.size(0))
        top5.update(acc5.item(), x.size(0))
        predictions.append(output.argmax(-1))
        bar.update(step + 1, top1=f'{top1.avg:.2f}%')
    bar.close()
    return Evaluation(OrderedDict([('loss', losses.avg), ('top1', top1.avg), ('top5', top5.avg)]),
                      torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long))


def create_model(cfg: TrainConfig) -> nn.Module:
    """The model as train.py creates it (channels from --in-chans, else from --input-size)."""
    kwargs = dict(cfg.model_kwargs)
    if cfg.num_classes is not None:
        kwargs['num_classes'] = cfg.num_classes
    in_chans = cfg.in_chans if cfg.in_chans is not None else cfg.input_size[0] if cfg.input_size else None
    if in_chans is not None:
        kwargs['in_chans'] = in_chans
    if cfg.drop_path is not None:
        kwargs['drop_path_rate'] = cfg.drop_path
    return timm.create_model(cfg.model, **kwargs)


def _train_interpolation(cfg: TrainConfig, data_config: Dict[str, Any]) -> str:
    """train.py's rule: --train-interpolation, unless --no-aug or empty, then the evaluation one."""
    return data_config['interpolation'] if cfg.no_aug or not cfg.train_interpolation else cfg.train_interpolation


def _idx_loader(cfg: TrainConfig, data_config: Dict[str, Any], split: str, is_training: bool, batch_size: int):
    """The in-memory idx loader, after refusing what it does not implement (rather than ignoring it)."""
    augmenting = is_training and not cfg.no_aug
    if augmenting and _train_interpolation(cfg, data_config) != 'bilinear':
        raise ValueError(f'--train-interpolation {_train_interpolation(cfg, data_config)}: --dataset idx resamples '
                         f'bilinearly; give --train-interpolation bilinear')
    if augmenting and cfg.color_jitter:
        raise ValueError(f'--color-jitter {cfg.color_jitter}: --dataset idx has no colour jitter; give --color-jitter 0')
    if not is_training and data_config['crop_pct'] != 1:
        raise ValueError(f'--crop-pct {data_config["crop_pct"]}: --dataset idx evaluates whole images; give --crop-pct 1')
    images, labels = load_idx_split(Path(cfg.data_dir), split)
    return IdxLoader(images, labels, batch_size, is_training, data_config['input_size'], data_config['mean'],
                     data_config['std'], scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, no_aug=cfg.no_aug,
                     color_jitter=cfg.color_jitter if augmenting else None)  # 0: timm's no-op ColorJitter


def create_split_loader(cfg: TrainConfig, data_config: Dict[str, Any], split: str, is_training: bool):
    """timm dataset + loader for one split, with train.py's transforms (no prefetcher: CPU-friendly)."""
    batch_size = cfg.batch_size if is_training else cfg.validation_batch_size or cfg.batch_size
    if cfg.dataset == 'idx':
        return _idx_loader(cfg, data_config, split, is_training, batch_size)
    img_mode = 'RGB' if data_config['input_size'][0] == 3 else 'L'  # as train.py does without --input-img-mode
    dataset = create_dataset(cfg.dataset, root=cfg.data_dir, split=split, is_training=is_training,
                             batch_size=batch_size, input_img_mode=img_mode)
    augment = dict(no_aug=cfg.no_aug, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
                   color_jitter=cfg.color_jitter) if is_training else dict(crop_pct=data_config['crop_pct'])
    interpolation = _train_interpolation(cfg, data_config) if is_training else data_config['interpolation']
    return create_loader(
        dataset, input_size=data_config['input_size'], batch_size=batch_size, is_training=is_training,
        interpolation=interpolation, mean=data_config['mean'], std=data_config['std'],
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
    """Train as train.py would; everything that can be refused is checked before the run folder exists."""
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
        if start_epoch >= cfg.epochs:
            raise ValueError(f'--resume {cfg.resume}: that run has trained {start_epoch} epoch(s) already; '
                             f'give --epochs above {start_epoch}')

    train_loader = create_split_loader(cfg, data_config, cfg.train_split, is_training=True)
    if len(train_loader) == 0:
        raise ValueError(f'--batch-size {cfg.batch_size}: larger than the training set, and the last partial batch '
                         f'is dropped as in train.py; give a smaller batch size')
    eval_loader = create_split_loader(cfg, data_config, cfg.val_split, is_training=False)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=not cfg.sched_on_updates,
        updates_per_epoch=len(train_loader))
    if scheduler is None and cfg.sched != 'none':  # timm 1.0.22 and 1.0.26 return None for a name they lack
        raise ValueError(f"Unknown scheduler '{cfg.sched}'.")
    if start_epoch and scheduler is not None:
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
        evaluated = ema.module if ema is not None else model  # as train.py: with EMA, its metrics count
        eval_metrics = evaluate(evaluated, eval_loader, cfg.channels_last, cfg.progress,
                                desc=f'eval epoch {epoch}' + (' (EMA)' if ema is not None else ''),
                                log_interval=cfg.log_interval).metrics
        lrs = [g['lr'] for g in optimizer.param_groups]
        update_summary(epoch, train_metrics, eval_metrics, filename=str(output_dir / 'summary.csv'),
                       lr=sum(lrs) / len(lrs), write_header=not (output_dir / 'summary.csv').exists())
        best_metric, best_epoch = saver.save_checkpoint(epoch, metric=eval_metrics['top1'])
        if scheduler is not None:
            scheduler.step(epoch + 1, eval_metrics['top1'])
        print(f'      epoch {epoch}: train loss {train_metrics["loss"]:.4f}, eval top-1 {eval_metrics["top1"]:.2f}%',
              flush=True)
    return TrainResult(output_dir, best_metric, best_epoch, dict(eval_metrics))


def build_parser() -> argparse.ArgumentParser:
    """Every TrainConfig option, spelled as train.py's."""
    p = ArgumentParser(prog='python -m train_wrappers.trainer', description=__doc__.splitlines()[0])
    add_config_options(p)
    return p


def check_inputs(cfg: TrainConfig) -> None:
    """What can be checked before training starts: files and folders named, the model and its options."""
    if cfg.resume and not Path(cfg.resume).is_file():
        raise ValueError(f'--resume {cfg.resume}: no such checkpoint file')
    if not Path(cfg.data_dir).is_dir():
        raise ValueError(f'--data-dir {cfg.data_dir}: no such folder')
    if not timm.is_model(cfg.model):
        raise ValueError(f'--model {cfg.model}: unknown model; "timm-lm list" shows the LM models')
    try:
        timm.create_model(cfg.model, **cfg.model_kwargs, device='meta')
    except (TypeError, ValueError) as err:
        raise ValueError(f'--model-kwargs: {err}') from None


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        check_inputs(cfg)
        result = train(cfg)
    except ValueError as err:  # bad numbers, data or model options: one line, and no run folder
        print(f'trainer: {err}', file=sys.stderr)
        return 2
    print(f'output: {result.output_dir}  best top-1 {result.best_metric} (epoch {result.best_epoch})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
