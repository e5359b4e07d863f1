"""The project's main job: train, test, publish and reload an LM model on Fashion-MNIST, on the CPU.

    python -m train_wrappers.quickstart [--model lm_resnet20_cifar] [--epochs 1] [--output output/quickstart]

1. trains an LM CIFAR-style model on Fashion-MNIST (1 channel, 28x28, the idx files of Debian's
   ``dataset-fashion-mnist``) for one epoch, with a progress bar (``--no-progress``: a line every 50 batches);
2. tests the saved checkpoint on the 10,000 test images and prints top-1, the parameter count and the
   learned k_n (with the modified-equation view), and saves a plot of k_n per block;
3. publishes the checkpoint as a Hub folder (``publish_checkpoint``, as ``timm-lm-publish``), reloads it
   with ``timm.create_model('local-dir:...')``, runs all 10,000 test images through the reloaded model
   and checks that it predicts the same class as the checkpoint for every one.

The compact trainer (``train_wrappers.trainer``, timm library parts only) reads the idx files into
memory and augments whole batches (``train_wrappers.idx_data``); with ``TIMM_SCRIPTS_DIR`` set to a
pytorch-image-models checkout, timm's own train.py trains instead, with the same settings, from a copy
of the files in torchvision's layout under ``OUTPUT/data`` (55 MB, rebuilt when the source files change;
delete it freely). Every run gets a new folder under ``--output`` and writes its figures, timings and
provenance (commit, machine, date) to ``quickstart.json`` there; running again never overwrites a run.
README.md gives the time and top-1 of a recorded run, with its commit, machine and date.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch

from timm_lm.analysis import format_coefficients, lm_coefficients, plot_coefficients, summarize_coefficients
from timm_lm.cli import ArgumentParser
from timm_lm.loading import CheckpointError, load_lm_model
from train_wrappers.idx_data import IDX_FILES, IdxError, IdxLoader, find_idx_files, idx_bytes, load_idx_split
from train_wrappers.publish import PublishError, publish_checkpoint
from train_wrappers.trainer import TrainConfig, add_config_options, check_inputs, evaluate, train, train_py_args

DEBIAN_FMNIST = '/usr/share/datasets/fashion-mnist'
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
FMNIST_LABELS = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                 'Ankle boot')
TEST_BATCH = 256  # evaluation only; on 2 cores faster than 128 (per-batch overhead) and than 1000 (cache)

# The recipe (also benchmarks/fmnist_study.py's): one epoch of SGD (Nesterov) with a per-step cosine
# schedule, a mild random-resized crop and flip at 28x28.
RECIPE = TrainConfig(
    model='lm_resnet20_cifar', dataset='idx', train_split='train', val_split='test', num_classes=10, in_chans=1,
    input_size=(1, 28, 28), mean=FMNIST_MEAN, std=FMNIST_STD, crop_pct=1.0, interpolation='bilinear',
    train_interpolation='bilinear', scale=(0.85, 1.0), ratio=(0.9, 1.1), hflip=0.5, color_jitter=0.0, batch_size=128,
    validation_batch_size=TEST_BATCH, epochs=1, opt='sgd', lr=0.1, momentum=0.9, weight_decay=5e-4,
    sched='cosine', sched_on_updates=True, warmup_epochs=0, channels_last=True, seed=42, experiment='train')
OPTIONS = ('model', 'model_kwargs', 'epochs', 'batch_size', 'lr', 'seed', 'progress')  # the recipe's, on the command line


class QuickstartError(Exception):
    """Bad input or environment: one line, exit status 2."""


def train_config(data_dir: Path, output: Path, **options) -> TrainConfig:
    """The recipe for the idx files in ``data_dir``, run folders under ``output``, ``options`` on top."""
    return dataclasses.replace(RECIPE, data_dir=str(data_dir), output=str(output), **options)


def check_fashion_mnist(folder: Path) -> Dict[str, int]:
    """Images per split of the idx files in ``folder``; QuickstartError (one line) if any is missing or corrupt."""
    try:
        counts = {split: len(load_idx_split(folder, split)[1]) for split in IDX_FILES}
    except IdxError as err:
        raise QuickstartError(f'--data-dir {folder}: {err}; install Debian\'s dataset-fashion-mnist '
                              f'(apt-get install dataset-fashion-mnist) or pass the folder that holds the files') from None
    return counts


def torchvision_layout(source: Path, cache: Path) -> Path:
    """torchvision's FashionMNIST layout (``<cache>/FashionMNIST/raw/<file>``, uncompressed) for train.py.

    The cache records the SHA-256 of the source files it was made from and is rebuilt whenever they differ,
    so a run never trains on data other than the files it names.
    """
    files = find_idx_files(source)
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sorted(files.items())}
    manifest = cache / 'FashionMNIST' / 'source.json'
    wanted = dict(source=str(source.resolve()), sha256=digests)
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix='.FashionMNIST.', dir=cache))
    try:
        (staging / 'raw').mkdir()
        for name, path in files.items():
            (staging / 'raw' / name).write_bytes(idx_bytes(path))
        (staging / 'source.json').write_text(json.dumps(wanted, indent=1) + '\n')
        if (cache / 'FashionMNIST').exists():
            shutil.rmtree(cache / 'FashionMNIST')
        staging.rename(cache / 'FashionMNIST')
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return cache


def new_run_dir(output: Path, model: str) -> Path:
    base = output / f'{time.strftime("%Y%m%d-%H%M%S")}-{model}'
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f'{base}-{n}')
    path.mkdir(parents=True)
    return path


def _stock_train_py() -> Optional[Path]:
    scripts = os.environ.get('TIMM_SCRIPTS_DIR')
    return Path(scripts) / 'train.py' if scripts and (Path(scripts) / 'train.py').is_file() else None


def train_with_stock_script(train_py: Path, cfg: TrainConfig) -> Path:
    """timm's own train.py, through ``train_wrappers.run``, with ``cfg``'s settings (``train_py_args``)."""
    command = [sys.executable, '-m', 'train_wrappers.run', str(train_py), '--device', 'cpu', '--no-prefetcher',
               *train_py_args(cfg)]
    proc = subprocess.run(command)
    if proc.returncode != 0:
        raise QuickstartError(f'timm train.py failed with exit status {proc.returncode} (command: {" ".join(command)})')
    return Path(cfg.output) / cfg.experiment


def provenance(argv: List[str]) -> Dict[str, object]:
    """Where a result comes from: the command, the code's commit, the machine, the date."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(['git', '-C', str(repo), 'describe', '--always', '--dirty', '--abbrev=7'],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu = platform.processor()
    if Path('/proc/cpuinfo').is_file():
        cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                    if line.startswith('model name')), cpu)
    return dict(command=' '.join(['python -m train_wrappers.quickstart', *argv]), commit=commit,
                date=time.strftime('%Y-%m-%d %H:%M %Z'), cpu=cpu, cores=os.cpu_count(),
                torch_threads=torch.get_num_threads(), python=platform.python_version(), torch=torch.__version__,
                timm=timm.__version__)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog='python -m train_wrappers.quickstart', description=__doc__.splitlines()[0],
                       epilog='One epoch of LM-ResNet-20 on the CPU; README.md ("The quickstart") gives the measured '
                              'time and top-1 of a recorded run, with its commit, machine and date.')
    add_config_options(p, OPTIONS, defaults=RECIPE)
    p.add_argument('--data-dir', default=DEBIAN_FMNIST, help='folder with the Fashion-MNIST idx files (.gz or not)')
    p.add_argument('--output', default='output/quickstart', help='each run gets a new folder in here')
    p.add_argument('--trainer', choices=('auto', 'compact', 'train.py'), default='auto',
                   help='auto: timm train.py if TIMM_SCRIPTS_DIR is set, else the compact trainer')
    return p


def _test(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, desc: str):
    """Every test image through ``model``, in the trainer's memory format."""
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = IdxLoader(images, labels, TEST_BATCH, False, cfg.input_size, cfg.mean, cfg.std)
    return evaluate(model, loader, cfg.channels_last, cfg.progress, desc=desc, log_interval=cfg.log_interval)


def run(args: argparse.Namespace, argv: List[str]) -> dict:
    """The four steps; every refusal (bad option, data, model) comes before the run folder is made."""
    if not args.model.startswith('lm_') or not timm.is_model(args.model):
        raise QuickstartError(f'--model {args.model}: not an LM model; see "timm-lm list" (e.g. lm_resnet20_cifar)')
    train_py = _stock_train_py() if args.trainer != 'compact' else None
    if args.trainer == 'train.py' and train_py is None:
        raise QuickstartError('--trainer train.py: set TIMM_SCRIPTS_DIR to a pytorch-image-models checkout')
    times: Dict[str, float] = {}
    start = time.time()
    data_dir, output = Path(args.data_dir), Path(args.output)
    cfg = train_config(data_dir, output, **{name: getattr(args, name) for name in OPTIONS})  # checks every number
    counts = check_fashion_mnist(data_dir)
    check_inputs(cfg)  # the model options
    run_dir = new_run_dir(output, args.model)
    cfg = dataclasses.replace(cfg, output=str(run_dir))
    print(f'[1/4] data: Fashion-MNIST from {data_dir} ({counts["train"]:,} train / {counts["test"]:,} test images, '
          f'1x28x28)')
    if train_py:
        cfg = dataclasses.replace(cfg, dataset='torch/fashion_mnist', data_dir=str(torchvision_layout(
            data_dir, output / 'data')), workers=max(1, cfg.workers))  # train.py's workers persist: it refuses 0
    times['data_s'] = time.time() - start

    print(f'[2/4] training {args.model} for {cfg.epochs} epoch(s) with '
          f'{"timm train.py (" + str(train_py) + ")" if train_py else "the compact timm trainer"}', flush=True)
    start = time.time()
    train_dir = train_with_stock_script(train_py, cfg) if train_py else train(cfg).output_dir
    times['train_s'] = time.time() - start
    checkpoint = train_dir / 'model_best.pth.tar'

    print(f'[3/4] testing the checkpoint on the {counts["test"]:,} test images', flush=True)
    start = time.time()
    images, labels = load_idx_split(data_dir, 'test')
    model, _ = load_lm_model(str(checkpoint))
    tested = _test(model, images, labels, cfg, 'test checkpoint')
    top1 = tested.metrics['top1']
    params = sum(p.numel() for p in model.parameters())
    rows = lm_coefficients(model)
    plot_path = run_dir / 'k_coefficients.png'
    if rows:
        plot_coefficients(rows, plot_path, title=f'{args.model} on Fashion-MNIST: learned k_n')
    times['test_s'] = time.time() - start
    print(f'      top-1 {top1:.2f}%   parameters {params:,}   training time {times["train_s"]:.0f} s')
    print(format_coefficients(rows) if rows else '      (lm=False: no coefficients)')
    if rows:
        print(f'      {summarize_coefficients(rows)}')

    print('[4/4] publishing the checkpoint as a Hub folder, reloading it with local-dir: and testing it again',
          flush=True)
    start = time.time()
    hub_dir = run_dir / 'hub'
    publish_checkpoint(checkpoint, hub_dir, label_names=FMNIST_LABELS, dataset='fashion_mnist')
    times['publish_s'] = time.time() - start
    start = time.time()
    reloaded = timm.create_model(f'local-dir:{hub_dir}', pretrained=True)
    retested = _test(reloaded, images, labels, cfg, 'test reloaded')
    times['reload_s'] = time.time() - start
    differ = int((retested.predictions != tested.predictions).sum())
    print(f'      reloaded top-1 {retested.metrics["top1"]:.2f}%: ' + (
        f'the same class as the checkpoint for all {len(labels):,} test images' if not differ else
        f'a different class for {differ} of {len(labels):,} test images'))
    if differ:
        raise QuickstartError(f'the published folder {hub_dir} predicts another class than the checkpoint for '
                              f'{differ} of {len(labels):,} test images')

    trainer = 'train.py' if train_py else 'compact'
    result = dict(model=args.model, model_kwargs=dict(args.model_kwargs), epochs=cfg.epochs, seed=cfg.seed,
                  trainer=trainer, top1=top1, top5=tested.metrics['top5'], reloaded_top1=retested.metrics['top1'],
                  reloaded_same_predictions=len(labels), params=params, seconds={k: round(v, 1) for k, v in times.items()}, run_dir=str(run_dir),
                  checkpoint=str(checkpoint), hub_dir=str(hub_dir), k_plot=str(plot_path) if rows else None,
                  k=[r.k_mean for r in rows], provenance=provenance(argv))
    (run_dir / 'quickstart.json').write_text(json.dumps(result, indent=2) + '\n')
    print(f'\nDone in {sum(times.values()):.0f} s ({", ".join(f"{k[:-2]} {v:.0f} s" for k, v in times.items())}). '
          f'Output folder: {run_dir}')
    print(f'  checkpoint {checkpoint}\n  summary    {train_dir / "summary.csv"}\n  hub folder {hub_dir}'
          + (f'\n  k_n plot   {plot_path}' if rows else '') + f'\n  result     {run_dir / "quickstart.json"}')
    print(f'Options: --model {args.model} --epochs {cfg.epochs} --batch-size {cfg.batch_size} --lr {cfg.lr} '
          f'--seed {cfg.seed} --trainer {trainer}'
          + (f' --model-kwargs {" ".join(f"{k}={v}" for k, v in args.model_kwargs.items())}' if args.model_kwargs else ''))
    return result


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, argv)
    except (QuickstartError, PublishError, CheckpointError, ValueError) as err:
        print(f'quickstart: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
