"""The benchmark scripts run and write their results (tiny settings; the real runs are in benchmarks/README.md)."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / 'benchmarks'


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/x.py` has it, for `import machine`


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overhead_script(tmp_path):
    overhead = _load('overhead')
    out = tmp_path / 'overhead'
    assert overhead.main(['--pairs', 'resnet56_cifar', '--modes', 'infer', 'train', '--repeats', '3',
                          '--out', str(out)]) == 0
    results = json.loads(out.with_suffix('.json').read_text())
    timing = results['timing']['resnet56_cifar']
    assert set(timing) == {'infer', 'train'} and timing['train']['repeats'] == 3
    train = timing['train']
    assert len(train['lm_step_s']) == len(train['base_step_s']) == 3
    assert train['ratio_of_fastest'] == pytest.approx(min(train['base_step_s']) / min(train['lm_step_s']), rel=1e-4)
    assert 0.3 < timing['infer']['ratio_median'] < 3  # a ratio of two real timings
    memory = results['memory']['resnet56_cifar']['train']
    assert memory['base_peak_mib'] > 1 and 1.0 <= memory['ratio'] < 1.1  # the mix keeps at most a little more
    table = out.with_suffix('.md').read_text()
    assert 'lm_resnet56_cifar vs lm_resnet56_cifar lm=False (64x32x32) | infer' in table
    assert results['machine']['torch'] and 'python benchmarks/overhead.py' in results['command']


def test_fmnist_study_script(tmp_path, fake_fmnist):
    study = _load('fmnist_study')
    out = tmp_path / 'study'
    argv = ['--models', 'lm_resnet20_cifar', 'resnet20', '--seeds', '0', '--batch-size', '16',
            '--data-dir', str(fake_fmnist), '--work-dir', str(tmp_path / 'work'), '--out', str(out)]
    assert study.main(argv) == 0
    results = json.loads(out.with_suffix('.json').read_text())
    assert [(r['model'], r['family'], r['seed']) for r in results['runs']] == [
        ('lm_resnet20_cifar', 'LM-ResNet', 0), ('resnet20', 'ResNet', 0)]
    lm, plain = results['runs']
    assert lm['params'] - plain['params'] == 6  # one k per two-step block
    assert 0 <= lm['steal_percent'] <= 100
    assert out.with_suffix('.png').read_bytes()[:4] == b'\x89PNG'
    assert '| lm_resnet20_cifar | LM-ResNet |' in out.with_suffix('.md').read_text()
    # an interrupted study resumes: finished runs are not trained again
    assert study.main(argv) == 0
    assert json.loads(out.with_suffix('.json').read_text())['runs'] == results['runs']


def test_fmnist_study_unknown_model(capsys):
    study = _load('fmnist_study')
    assert study.main(['--models', 'resnet21']) == 2
    assert 'unknown model' in capsys.readouterr().err


def test_omp_wait_script(tmp_path, fake_fmnist_4_batches):
    omp_wait = _load('omp_wait')
    out = tmp_path / 'omp'
    assert omp_wait.main(['--steps', '1', '--repeats', '1', '--data-dir', str(fake_fmnist_4_batches),
                          '--out', str(out)]) == 0
    results = json.loads(out.with_suffix('.json').read_text())
    runs = results['runs']
    assert [(r['condition'], r['setting']) for r in runs] == [
        (c, s) for c in ('as it is', 'beside one busy process') for s in omp_wait.SETTINGS]
    assert all(0 < r['seconds_per_step'] < 60 and r['threads'] >= 1 for r in runs)
    table = out.with_suffix('.md').read_text()
    assert '| PASSIVE |' in table and results['command'].startswith('python benchmarks/omp_wait.py --steps 1')
