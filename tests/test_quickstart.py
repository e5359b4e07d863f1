"""The main job, end to end on a tiny generated Fashion-MNIST (same idx.gz format as Debian's files)."""
import json
import os

import pytest
import timm

from train_wrappers.quickstart import main


def test_quickstart_runs_and_never_overwrites_a_run(fake_fmnist, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('TIMM_SCRIPTS_DIR', raising=False)
    args = ['--data-dir', str(fake_fmnist), '--output', str(tmp_path), '--batch-size', '16', '--no-progress',
            '--model-kwargs', 'k_stable=True']
    assert main(args) == 0
    out = capsys.readouterr().out
    assert 'compact timm trainer' in out and 'Output folder:' in out and 'Options: --model lm_resnet20_cifar' in out
    assert 'reloaded top-1' in out and 'identical' in out and 'zero-stable' in out
    runs = [p for p in tmp_path.iterdir() if p.name != 'data']
    assert len(runs) == 1
    run = runs[0]
    result = json.loads((run / 'quickstart.json').read_text())
    assert result['top1'] == result['reloaded_top1'] and result['trainer'] == 'compact'
    assert result['params'] == sum(p.numel() for p in timm.create_model(
        'lm_resnet20_cifar', in_chans=1, k_stable=True).parameters())
    assert (run / 'k_coefficients.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert sorted(p.name for p in (run / 'hub').iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert 'Trouser' in (run / 'hub' / 'config.json').read_text()
    assert (run / 'train' / 'summary.csv').is_file()
    assert len(result['k']) == 6

    assert main(args) == 0  # a second run gets its own folder; the first is untouched
    runs_after = sorted(p for p in tmp_path.iterdir() if p.name != 'data')
    assert len(runs_after) == 2 and run in runs_after
    assert json.loads((run / 'quickstart.json').read_text()) == result


@pytest.mark.skipif(not os.environ.get('TIMM_SCRIPTS_DIR'), reason='needs TIMM_SCRIPTS_DIR (a pytorch-image-models checkout)')
def test_quickstart_with_timms_train_py(fake_fmnist, tmp_path, capsys):
    assert main(['--data-dir', str(fake_fmnist), '--output', str(tmp_path), '--batch-size', '16', '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'with timm train.py' in out and 'identical' in out and '48 train / 24 test' in out
    (run,) = [p for p in tmp_path.iterdir() if p.name != 'data']
    assert json.loads((run / 'quickstart.json').read_text())['trainer'] == 'train.py'
    assert (run / 'train' / 'args.yaml').is_file()  # written by train.py itself


@pytest.mark.parametrize('argv, message', [
    (['--data-dir', '/nonexistent/fmnist'], 'Fashion-MNIST files missing'),
    (['--model', 'resnet18'], 'not an LM model'),
    (['--trainer', 'train.py'], 'set TIMM_SCRIPTS_DIR'),
    (['--model-kwargs', 'k_init=2'], 'k_init=2 is outside (-1, 1)'),
])
def test_quickstart_bad_input(argv, message, fake_fmnist, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('TIMM_SCRIPTS_DIR', raising=False)
    if '--data-dir' not in argv:
        argv = argv + ['--data-dir', str(fake_fmnist)]
    assert main(argv + ['--output', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1
    assert not (tmp_path / 'o').exists() or not [p for p in (tmp_path / 'o').iterdir() if p.name != 'data']
