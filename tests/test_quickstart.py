"""The main job, end to end on a tiny generated Fashion-MNIST (same idx.gz format as Debian's files)."""
import dataclasses
import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
import timm

from train_wrappers.quickstart import RECIPE, main, torchvision_layout, train_config
from train_wrappers.trainer import TrainConfig, build_parser, config_from_args, train_py_args

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_never_overwrites_a_run(fake_fmnist, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('TIMM_SCRIPTS_DIR', raising=False)
    args = ['--data-dir', str(fake_fmnist), '--output', str(tmp_path), '--batch-size', '16', '--no-progress',
            '--model-kwargs', 'k_stable=True']
    assert main(args) == 0
    out = capsys.readouterr().out
    assert 'compact timm trainer' in out and 'Output folder:' in out and 'Options: --model lm_resnet20_cifar' in out
    assert 'the same class as the checkpoint for all 24 test images' in out and 'zero-stable' in out
    assert 'train epoch 0: 3/3 batches (100%), loss' in out  # --no-progress: lines instead of a bar
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1  # the compact trainer reads the idx files where they are: no data cache
    run = runs[0]
    result = json.loads((run / 'quickstart.json').read_text())
    assert result['top1'] == result['reloaded_top1'] and result['trainer'] == 'compact'
    assert result['reloaded_same_predictions'] == 24
    assert set(result['seconds']) == {'data_s', 'train_s', 'test_s', 'publish_s', 'reload_s'}
    assert result['provenance']['command'].endswith('--model-kwargs k_stable=True')
    assert result['provenance']['cores'] == os.cpu_count() and result['provenance']['timm'] == timm.__version__
    assert result['params'] == sum(p.numel() for p in timm.create_model(
        'lm_resnet20_cifar', in_chans=1, k_stable=True).parameters())
    assert (run / 'k_coefficients.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(p.name for p in (run / 'hub').iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert 'Trouser' in (run / 'hub' / 'config.json').read_text()
    assert "timm-lm's compact trainer" in (run / 'hub' / 'README.md').read_text()
    assert (run / 'train' / 'summary.csv').is_file()
    assert len(result['k']) == 6

    assert main(args) == 0  # a second run gets its own folder; the first is untouched
    runs_after = sorted(tmp_path.iterdir())
    assert len(runs_after) == 2 and run in runs_after
    assert json.loads((run / 'quickstart.json').read_text()) == result


@pytest.mark.skipif(not os.environ.get('TIMM_SCRIPTS_DIR'), reason='needs TIMM_SCRIPTS_DIR (a pytorch-image-models checkout)')
def test_quickstart_with_timms_train_py(fake_fmnist, tmp_path, capsys):
    assert main(['--data-dir', str(fake_fmnist), '--output', str(tmp_path), '--batch-size', '16', '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'with timm train.py' in out and 'for all 24 test images' in out and '48 train / 24 test' in out
    (run,) = [p for p in tmp_path.iterdir() if p.name != 'data']
    assert json.loads((run / 'quickstart.json').read_text())['trainer'] == 'train.py'
    assert (run / 'train' / 'args.yaml').is_file()  # written by train.py itself
    assert 'timm train.py' in (run / 'hub' / 'README.md').read_text()


def _exit_status(argv):
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's usage errors
        return exit.code


@pytest.mark.parametrize('argv, message', [
    (['--data-dir', '/nonexistent/fmnist'], 'idx files missing'),
    (['--model', 'resnet18'], 'not an LM model'),
    (['--trainer', 'train.py'], 'set TIMM_SCRIPTS_DIR'),
    (['--model-kwargs', 'k_init=2'], 'k_init=2 is outside (-1, 1)'),
    (['--model-kwargs', 'k_stable'], '--model-kwargs k_stable: give key=value pairs'),
    (['--model-kwargs', 'no_such_option=1'], 'no_such_option'),
    (['--epochs', '0'], '--epochs 0: must be >= 1'),
    (['--batch-size', '0'], '--batch-size 0: must be >= 1'),
    (['--lr', '0'], '--lr 0.0: must be > 0'),
    (['--lr', 'fast'], "argument --lr: invalid float value: 'fast'"),
    (['--seed', '-1'], '--seed -1: must be in [0, 4294967295]'),
    (['--bogus'], 'unrecognized arguments: --bogus'),
])
def test_quickstart_bad_input_is_one_line_and_creates_nothing(argv, message, fake_fmnist, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.delenv('TIMM_SCRIPTS_DIR', raising=False)
    if '--data-dir' not in argv:
        argv = argv + ['--data-dir', str(fake_fmnist)]
    assert _exit_status(argv + ['--output', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1, err
    assert not (tmp_path / 'o').exists()


def test_a_named_data_folder_is_used_or_refused_whatever_is_cached(fake_fmnist, tmp_path, capsys, monkeypatch):
    """--data-dir /nonexistent is refused even where an earlier run's cache exists (it used to train on the cache)."""
    monkeypatch.delenv('TIMM_SCRIPTS_DIR', raising=False)
    output = tmp_path / 'o'
    torchvision_layout(fake_fmnist, output / 'data')
    assert main(['--data-dir', str(tmp_path / 'nonexistent'), '--output', str(output)]) == 2
    assert 'idx files missing' in capsys.readouterr().err
    corrupt = tmp_path / 'corrupt'
    shutil.copytree(fake_fmnist, corrupt)
    data = gzip.decompress((corrupt / 't10k-images-idx3-ubyte.gz').read_bytes())
    (corrupt / 't10k-images-idx3-ubyte.gz').write_bytes(gzip.compress(data[:-100]))
    assert main(['--data-dir', str(corrupt), '--output', str(output)]) == 2
    err = capsys.readouterr().err
    assert 't10k-images-idx3-ubyte.gz' in err and 'truncated or corrupt' in err and err.count('\n') == 1
    assert sorted(p.name for p in output.iterdir()) == ['data']  # no run folder


def test_train_py_cache_follows_the_source_files(fake_fmnist, tmp_path):
    """The torchvision layout that train.py reads is rebuilt when the named files differ from those it came from."""
    cache = tmp_path / 'cache'
    raw = torchvision_layout(fake_fmnist, cache) / 'FashionMNIST' / 'raw'
    labels = raw / 't10k-labels-idx1-ubyte'
    assert labels.read_bytes() == gzip.decompress((fake_fmnist / 't10k-labels-idx1-ubyte.gz').read_bytes())
    stamp = labels.stat().st_mtime_ns
    torchvision_layout(fake_fmnist, cache)
    assert labels.stat().st_mtime_ns == stamp  # unchanged source: reused

    other = tmp_path / 'other'
    shutil.copytree(fake_fmnist, other)
    data = bytearray(gzip.decompress((other / 't10k-labels-idx1-ubyte.gz').read_bytes()))
    data[-1] = (data[-1] + 1) % 10
    (other / 't10k-labels-idx1-ubyte.gz').write_bytes(gzip.compress(bytes(data)))
    torchvision_layout(other, cache)
    assert labels.read_bytes() == bytes(data)
    assert [p.name for p in cache.iterdir()] == ['FashionMNIST']  # no staging folder left behind


def test_train_py_command_line_comes_from_the_config():
    """Every option the quickstart gives train.py is one of train.py's, and parses back to the same config."""
    cfg = dataclasses.replace(train_config('/data', '/out', model_kwargs={'k_stable': True, 'k_init': (-0.1, 0.0)}),
                              dataset='torch/fashion_mnist', workers=1)
    argv = train_py_args(cfg)
    train_py_dests = {line for line in (REPO / 'tests' / 'data' / 'train_py_dests.txt').read_text().split()
                      if not line.startswith('#')}
    flags = [a for a in argv if a.startswith('--')]
    assert '--progress' not in flags and len(flags) > 25
    assert {f[2:].replace('-', '_') for f in flags} <= train_py_dests
    assert config_from_args(build_parser().parse_args(argv)) == dataclasses.replace(cfg, progress=True)


def test_the_recipe_is_the_studys():
    assert RECIPE.dataset == 'idx' and RECIPE.epochs == 1 and RECIPE.scale == (0.85, 1.0)
    assert isinstance(train_config('/d', '/o', seed=0), TrainConfig)
    with pytest.raises(ValueError, match='--epochs 0: must be >= 1'):
        train_config('/d', '/o', epochs=0)
