"""timm's real train.py, validate.py and benchmark.py with an LM model, on CPU and a tiny generated dataset.

Needs a pytorch-image-models checkout: set TIMM_SCRIPTS_DIR to it (skipped otherwise; CI has none). The
scripts run the way users run them: through ``python -m train_wrappers.run`` (with bare script names,
resolved in TIMM_SCRIPTS_DIR) and as ``python train.py --device-modules timm_lm``; a checkout puts its
own ``timm/`` first on sys.path, so the scripts use that timm, not the installed one.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import timm_lm

REPO = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = os.environ.get('TIMM_SCRIPTS_DIR')
pytestmark = pytest.mark.skipif(
    not SCRIPTS_DIR, reason='TIMM_SCRIPTS_DIR is not set (path of a pytorch-image-models checkout with train.py)')

MODEL = 'lm_resnet20_cifar'
K_INIT = -0.05  # a constant initial k_n, so that "trained" is "different from K_INIT"
MODEL_KWARGS = dict(k_stable=True, k_init=K_INIT)
COMMON = [
    '--model', MODEL, '--num-classes', '2', '--input-size', '3', '32', '32', '--device', 'cpu',
    '--workers', '1',  # train.py's loaders use persistent workers, which --workers 0 rejects
]


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory) -> Path:
    """2 classes x 8 random 32x32 PNGs in train/ and validation/; the class sets the red channel."""
    root = tmp_path_factory.mktemp('data')
    rng = np.random.default_rng(0)
    for split in ('train', 'validation'):
        for label in (0, 1):
            folder = root / split / f'class{label}'
            folder.mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                pixels[..., 0] = 255 * label
                Image.fromarray(pixels).save(folder / f'{i}.png')
    return root


def run(args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), env.get('PYTHONPATH')) if p)
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f'{args[:3]} exited {result.returncode}:\n{result.stderr[-4000:]}'
    return result


def summary_epochs(path: Path):
    # train.py writes the header again when a resumed run appends to summary.csv
    return [int(line.split(',')[0]) for line in path.read_text().splitlines() if not line.startswith('epoch')]


def coefficients(checkpoint: Path, key: str = 'state_dict') -> torch.Tensor:
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)[key]
    model = timm.create_model(MODEL, num_classes=2, **MODEL_KWARGS)
    model.load_state_dict(state)  # strict: the checkpoint has every LM key (k_raw with k_stable)
    return torch.stack([c.k for c in timm_lm.lm_coefficients(model)]).detach()


def test_train_resume_validate(image_folder, tmp_path):
    out = tmp_path / 'output'
    train_args = [
        '--data-dir', str(image_folder), *COMMON, '--batch-size', '8', '--validation-batch-size', '16',
        '--model-kwargs', *(f'{k}={v}' for k, v in MODEL_KWARGS.items()), '--drop-path', '0.1', '--model-ema',
        '--opt', 'momentum', '--lr', '0.1', '--warmup-epochs', '0', '--output', str(out), '--experiment', 'lm20',
    ]
    run_dir = out / 'lm20'

    # 2 epochs through the wrapper, the script named bare (resolved in TIMM_SCRIPTS_DIR)
    run(['-m', 'train_wrappers.run', 'train.py', *train_args, '--epochs', '2'], cwd=tmp_path)
    assert summary_epochs(run_dir / 'summary.csv') == [0, 1]
    saved = yaml.safe_load((run_dir / 'args.yaml').read_text())
    assert saved['model_kwargs'] == MODEL_KWARGS and saved['drop_path'] == 0.1 and saved['model_ema'] is True

    # one more epoch, resumed, as `python train.py --device-modules timm_lm`
    run([os.path.join(SCRIPTS_DIR, 'train.py'), '--device-modules', 'timm_lm', *train_args, '--epochs', '3',
         '--resume', str(run_dir / 'last.pth.tar')], cwd=tmp_path)
    assert summary_epochs(run_dir / 'summary.csv') == [0, 1, 2]
    for name in ('last.pth.tar', 'model_best.pth.tar', 'checkpoint-1.pth.tar', 'checkpoint-2.pth.tar'):
        assert (run_dir / name).is_file(), name
    last = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert last['epoch'] == 2 and 'state_dict_ema' in last

    k_after_2, k_after_3 = coefficients(run_dir / 'checkpoint-1.pth.tar'), coefficients(run_dir / 'last.pth.tar')
    assert k_after_3.numel() == 6  # lm_resnet20_cifar: 3 stages x 2 two-step blocks
    assert ((k_after_2 - K_INIT).abs() > 1e-6).all(), 'k_n did not train'
    assert ((k_after_3 - k_after_2).abs() > 1e-6).all(), 'k_n did not train in the resumed epoch'
    assert ((coefficients(run_dir / 'last.pth.tar', 'state_dict_ema') - K_INIT).abs() > 1e-7).all()

    # the checkpoint through the wrapper's validate.py (same --model-kwargs: k_stable stores k_raw)
    results = tmp_path / 'validate.csv'
    run(['-m', 'train_wrappers.run', 'validate.py', str(image_folder), '--split', 'validation', *COMMON,
         '--batch-size', '8', '--checkpoint', str(run_dir / 'last.pth.tar'),
         '--model-kwargs', *(f'{k}={v}' for k, v in MODEL_KWARGS.items()), '--results-file', str(results)],
        cwd=tmp_path)
    rows = list(csv.DictReader(results.open()))
    assert len(rows) == 1 and rows[0]['model'] == MODEL and 0 <= float(rows[0]['top1']) <= 100


def test_benchmark_inference(tmp_path):
    results = tmp_path / 'benchmark.csv'
    run(['-m', 'train_wrappers.run', 'benchmark.py', '--model', MODEL, '--device', 'cpu', '--bench', 'inference',
         '--num-warm-iter', '1', '--num-bench-iter', '5',  # fewer than 5 bench iterations: ZeroDivisionError
         '--batch-size', '2', '--img-size', '32', '--model-kwargs', 'k_stable=True', '--results-file', str(results)],
        cwd=tmp_path)
    rows = list(csv.DictReader(results.open()))
    assert len(rows) == 1 and rows[0]['model'] == MODEL and float(rows[0]['infer_samples_per_sec']) > 0
