"""The project's main job: the whole LM pipeline on real data, on a CPU, in a few minutes.

    python -m train_wrappers.quickstart [--model lm_resnet20_cifar] [--epochs 1] [--output output/quickstart]

1. trains an LM CIFAR-style model on Fashion-MNIST (1 channel, 28x28, Debian's ``dataset-fashion-mnist``
   files) for about one epoch, with a progress bar;
2. validates it on the 10,000 test images and prints top-1, the parameter count and the learned k_n
   (with the modified-equation view), and saves a plot of k_n per block;
3. publishes the checkpoint as a Hub folder (``timm-lm-publish``), reloads it with
   ``timm.create_model('local-dir:...')`` and checks that it gets the same accuracy.

Training uses timm's stock train.py when ``TIMM_SCRIPTS_DIR`` points at a pytorch-image-models
checkout, otherwise the compact trainer in ``train_wrappers.trainer`` (timm library parts only); both
write the same checkpoint and summary.csv. Every run gets a new folder under ``--output``: running it
again never overwrites an earlier run.
"""
import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import timm
import torch

from timm_lm.analysis import format_coefficients, lm_coefficients, plot_coefficients, summarize_coefficients
from timm_lm.loading import CheckpointError, load_lm_model
from train_wrappers import publish as publish_tool
from train_wrappers.trainer import TrainConfig, create_split_loader, evaluate, train

DEBIAN_FMNIST = '/usr/share/datasets/fashion-mnist'
FMNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
FMNIST_LABELS = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                 'Ankle boot')


class QuickstartError(Exception):
    """Bad input or environment: one line, exit status 2."""


def prepare_fashion_mnist(source: Path, cache: Path) -> Path:
    """torchvision's layout (``<root>/FashionMNIST/raw/<file>``) from the Debian .gz files; reused across runs."""
    raw = cache / 'FashionMNIST' / 'raw'
    if all((raw / name).is_file() for name in FMNIST_FILES):
        return cache
    missing = [n for n in FMNIST_FILES if not (source / f'{n}.gz').is_file() and not (source / n).is_file()]
    if missing:
        raise QuickstartError(
            f'--data-dir {source}: Fashion-MNIST files missing ({", ".join(missing)}); install them with '
            f'"apt-get install dataset-fashion-mnist" or pass the folder that holds them')
    raw.mkdir(parents=True, exist_ok=True)
    for name in FMNIST_FILES:
        tmp = raw / f'.{name}.part'
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp)
        else:
            with gzip.open(source / f'{name}.gz', 'rb') as src, open(tmp, 'wb') as dst:
                shutil.copyfileobj(src, dst)
        tmp.rename(raw / name)
    return cache


def idx_count(path: Path) -> int:
    """Number of items in an idx file (big-endian count after the magic number)."""
    with open(path, 'rb') as f:
        return int.from_bytes(f.read(8)[4:], 'big')


def new_run_dir(output: Path, model: str) -> Path:
    base = output / f'{time.strftime("%Y%m%d-%H%M%S")}-{model}'
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f'{base}-{n}')
    path.mkdir(parents=True)
    return path


def train_config(args: argparse.Namespace, data_root: Path, run_dir: Path) -> TrainConfig:
    return TrainConfig(
        model=args.model, model_kwargs=dict(args.model_kwargs), data_dir=str(data_root), dataset='torch/fashion_mnist',
        train_split='train', val_split='test', num_classes=10, in_chans=1, input_size=(1, 28, 28),
        mean=FMNIST_MEAN, std=FMNIST_STD, crop_pct=1.0, interpolation='bilinear', scale=(0.85, 1.0),
        ratio=(0.9, 1.1), hflip=0.5, color_jitter=0.0, batch_size=args.batch_size, epochs=args.epochs, opt='sgd',
        lr=args.lr, momentum=0.9, weight_decay=5e-4, sched='cosine', sched_on_updates=True, warmup_epochs=0,
        channels_last=True, workers=args.workers, seed=args.seed, output=str(run_dir), experiment='train',
        progress=not args.no_progress)


def _stock_train_py() -> Optional[Path]:
    scripts = os.environ.get('TIMM_SCRIPTS_DIR')
    return Path(scripts) / 'train.py' if scripts and (Path(scripts) / 'train.py').is_file() else None


def train_with_stock_script(train_py: Path, cfg: TrainConfig) -> Path:
    """timm's own train.py, through ``train_wrappers.run``, with the same settings as the compact trainer."""
    command = [
        sys.executable, '-m', 'train_wrappers.run', str(train_py), '--device', 'cpu', '--no-prefetcher',
        '--dataset', cfg.dataset, '--data-dir', cfg.data_dir, '--train-split', cfg.train_split,
        '--val-split', cfg.val_split, '--model', cfg.model, '--num-classes', str(cfg.num_classes),
        '--in-chans', str(cfg.in_chans), '--input-size', *map(str, cfg.input_size), '--mean', *map(str, cfg.mean),
        '--std', *map(str, cfg.std), '--crop-pct', str(cfg.crop_pct), '--interpolation', cfg.interpolation,
        '--scale', *map(str, cfg.scale), '--ratio', *map(str, cfg.ratio), '--hflip', str(cfg.hflip),
        '--color-jitter', str(cfg.color_jitter), '--batch-size', str(cfg.batch_size), '--epochs', str(cfg.epochs),
        '--opt', cfg.opt, '--lr', str(cfg.lr), '--momentum', str(cfg.momentum), '--weight-decay',
        str(cfg.weight_decay), '--sched', cfg.sched, '--sched-on-updates', '--warmup-epochs', '0',
        '--workers', str(max(1, cfg.workers)),  # train.py's persistent workers refuse 0
        '--seed', str(cfg.seed), '--channels-last', '--output', cfg.output,
        '--experiment', cfg.experiment, '--checkpoint-hist', '1', '--log-interval', '50',
    ]
    if cfg.model_kwargs:
        command += ['--model-kwargs', *[f'{k}={v}' for k, v in cfg.model_kwargs.items()]]
    proc = subprocess.run(command)
    if proc.returncode != 0:
        raise QuickstartError(f'timm train.py failed with exit status {proc.returncode} (command: {" ".join(command)})')
    return Path(cfg.output) / cfg.experiment


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from timm.utils import ParseKwargs
    p = argparse.ArgumentParser(prog='python -m train_wrappers.quickstart', description=__doc__.splitlines()[0])
    p.add_argument('--model', default='lm_resnet20_cifar', help='an LM model (CIFAR-style models suit 28x28)')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, help='e.g. k_stable=True lm=False')
    p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--workers', type=int, default=0, help='data loader processes (0 suits 2 cores)')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--data-dir', default=DEBIAN_FMNIST, help='folder with the Fashion-MNIST (.gz) files')
    p.add_argument('--output', default='output/quickstart', help='each run gets a new folder in here')
    p.add_argument('--trainer', choices=('auto', 'compact', 'train.py'), default='auto',
                   help='auto: timm train.py if TIMM_SCRIPTS_DIR is set, else the compact trainer')
    p.add_argument('--no-progress', action='store_true')
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    if not args.model.startswith('lm_') or not timm.is_model(args.model):
        raise QuickstartError(f'--model {args.model}: not an LM model; see "timm-lm list" (e.g. lm_resnet20_cifar)')
    train_py = _stock_train_py() if args.trainer != 'compact' else None
    if args.trainer == 'train.py' and train_py is None:
        raise QuickstartError('--trainer train.py: set TIMM_SCRIPTS_DIR to a pytorch-image-models checkout')
    timm.create_model(args.model, **args.model_kwargs, device='meta')  # bad model options fail here, before any output
    output = Path(args.output)
    data_root = prepare_fashion_mnist(Path(args.data_dir), output / 'data')
    run_dir = new_run_dir(output, args.model)
    cfg = train_config(args, data_root, run_dir)

    raw = data_root / 'FashionMNIST' / 'raw'
    n_train, n_test = idx_count(raw / FMNIST_FILES[0]), idx_count(raw / FMNIST_FILES[2])
    print(f'[1/4] data: Fashion-MNIST from {args.data_dir} ({n_train:,} train / {n_test:,} test images, 1x28x28)')
    print(f'[2/4] training {args.model} for {args.epochs} epoch(s) with '
          f'{"timm train.py (" + str(train_py) + ")" if train_py else "the compact timm trainer"}')
    start = time.time()
    train_dir = train_with_stock_script(train_py, cfg) if train_py else train(cfg).output_dir
    train_seconds = time.time() - start
    checkpoint = train_dir / 'model_best.pth.tar'

    print(f'[3/4] validating on the {n_test:,} test images')
    model, _ = load_lm_model(str(checkpoint))
    test_loader = create_split_loader(cfg, timm.data.resolve_data_config(vars(cfg), model=model), cfg.val_split, False)
    top1 = evaluate(model, test_loader, progress=not args.no_progress)['top1']
    params = sum(p.numel() for p in model.parameters())
    plot_path = run_dir / 'k_coefficients.png'
    rows = lm_coefficients(model)
    if rows:
        plot_coefficients(rows, plot_path, title=f'{args.model} on Fashion-MNIST: learned k_n')
    print(f'      top-1 {top1:.2f}%   parameters {params:,}   training time {train_seconds:.0f} s')
    print(format_coefficients(rows) if rows else '      (lm=False: no coefficients)')
    if rows:
        print(f'      {summarize_coefficients(rows)}')

    print('[4/4] publishing the checkpoint as a Hub folder and reloading it with local-dir:')
    labels = run_dir / 'labels.txt'
    labels.write_text('\n'.join(FMNIST_LABELS) + '\n')
    hub_dir = run_dir / 'hub'
    publish_tool.publish(publish_tool.parse_args([
        str(checkpoint), '--out-dir', str(hub_dir), '--label-names', str(labels), '--dataset', 'fashion_mnist']))
    reloaded = timm.create_model(f'local-dir:{hub_dir}', pretrained=True)
    reloaded_top1 = evaluate(reloaded, test_loader, progress=not args.no_progress)['top1']
    same = reloaded_top1 == top1
    print(f'      reloaded top-1 {reloaded_top1:.2f}% ({"identical" if same else "DIFFERENT"})')
    if not same:
        raise QuickstartError(f'the published folder gives top-1 {reloaded_top1:.2f}%, the checkpoint {top1:.2f}%')

    result = dict(model=args.model, model_kwargs=dict(args.model_kwargs), epochs=args.epochs,
                  trainer='train.py' if train_py else 'compact', top1=top1, reloaded_top1=reloaded_top1,
                  params=params, train_seconds=round(train_seconds, 1), run_dir=str(run_dir),
                  checkpoint=str(checkpoint), hub_dir=str(hub_dir),
                  k_plot=str(plot_path) if rows else None, k=[r.k_mean for r in rows])
    (run_dir / 'quickstart.json').write_text(json.dumps(result, indent=2) + '\n')
    print(f'\nDone. Output folder: {run_dir}')
    print(f'  checkpoint {checkpoint}\n  summary    {train_dir / "summary.csv"}\n  hub folder {hub_dir}'
          + (f'\n  k_n plot   {plot_path}' if rows else ''))
    print(f'Options: --model {args.model} --epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} '
          f'--seed {args.seed} --trainer {result["trainer"]}'
          + (f' --model-kwargs {" ".join(f"{k}={v}" for k, v in args.model_kwargs.items())}' if args.model_kwargs else ''))
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (QuickstartError, publish_tool.PublishError, CheckpointError, ValueError) as err:
        print(f'quickstart: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
