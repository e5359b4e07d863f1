"""``python -m train_wrappers.run SCRIPT args``: runs SCRIPT as ``python SCRIPT args`` would, LM models registered.

The scripts here are tiny generated ones (CI has no timm scripts): each writes what it saw (argv,
``__name__``, ``sys.path[0]``, whether ``lm_resnet20_cifar`` is in timm's registry) to a JSON file. The
tests that need a fresh interpreter (registration before the script runs, exit status, the error for a
missing script, torchrun) run the wrapper as a subprocess; the others call ``main`` in this process.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_wrappers.run import main

REPO = Path(__file__).resolve().parents[1]

PROBE = """\
import json, os, sys
import timm
report = dict(
    registered=timm.is_model('lm_resnet20_cifar'), name=__name__, argv=sys.argv, path0=sys.path[0], file=__file__,
    rank=os.environ.get('RANK'), world_size=os.environ.get('WORLD_SIZE'), tag={tag!r},
)
with open(os.environ['PROBE_OUT'] + os.environ.get('RANK', ''), 'w') as f:
    json.dump(report, f)
if 'PROBE_EXIT' in os.environ:
    sys.exit(int(os.environ['PROBE_EXIT']))
"""


def write_probe(folder: Path, tag: str = 'probe', name: str = 'probe.py') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(PROBE.format(tag=tag))
    return script


def read_report(out: Path, rank: str = '') -> dict:
    return json.loads(Path(str(out) + rank).read_text())


def wrapper_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_SCRIPTS_DIR'}
    env.update(HF_HUB_OFFLINE='1', **extra)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), env.get('PYTHONPATH')) if p)
    return env


def run_wrapper(args, cwd, **env):
    return subprocess.run([sys.executable, '-m', 'train_wrappers.run', *args], cwd=cwd, env=wrapper_env(**env),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def in_process(monkeypatch, tmp_path):
    """main() in this process: argv and sys.path are restored afterwards, output goes to tmp_path."""
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    monkeypatch.delenv('TIMM_SCRIPTS_DIR', raising=False)
    monkeypatch.delenv('PROBE_EXIT', raising=False)
    monkeypatch.setenv('PROBE_OUT', str(tmp_path / 'report.json'))
    return tmp_path / 'report.json'


def test_subprocess_registers_models_first_and_passes_argv_and_exit_status(tmp_path):
    script = write_probe(tmp_path / 'scripts')
    out = tmp_path / 'report.json'
    args = ['--model', 'lm_resnet20_cifar', '-h', '--', '--config=x.yaml', 'positional', '']
    result = run_wrapper([str(script), *args], cwd=tmp_path, PROBE_OUT=str(out), PROBE_EXIT='3')
    assert result.returncode == 3, result.stderr
    report = read_report(out)
    assert report['registered'] is True  # `import timm_lm` ran before the script's first line
    assert report['name'] == '__main__'
    assert report['argv'] == [str(script), *args]
    assert report['path0'] == str(script.parent)  # as `python scripts/probe.py`: its folder, not the cwd


def test_subprocess_missing_script_is_one_line_and_exit_2(tmp_path):
    result = run_wrapper(['missing.py', '--model', 'x'], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ''
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "'missing.py'" in lines[0] and 'pytorch-image-models' in lines[0] and 'TIMM_SCRIPTS_DIR' in lines[0]
    assert 'Traceback' not in result.stderr


def test_subprocess_under_torchrun_sees_its_rank(tmp_path):
    torchrun = Path(sys.executable).with_name('torchrun')
    if not torchrun.exists():
        pytest.skip(f'no torchrun next to {sys.executable}')
    script = write_probe(tmp_path / 'scripts')
    out = tmp_path / 'report.json'
    result = subprocess.run(
        [str(torchrun), '--standalone', '--nproc_per_node=2', '-m', 'train_wrappers.run', str(script), '--x', '1'],
        cwd=tmp_path, env=wrapper_env(PROBE_OUT=str(out), OMP_NUM_THREADS='1'), capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [read_report(out, rank) for rank in ('0', '1')]
    assert [(r['rank'], r['world_size']) for r in reports] == [('0', '2'), ('1', '2')]
    assert all(r['registered'] and r['argv'] == [str(script), '--x', '1'] for r in reports)


def test_argv_is_exactly_the_scripts_own(in_process, tmp_path):
    script = write_probe(tmp_path / 'scripts')
    args = ['--config', 'r.yaml', '--model-kwargs', 'k_stable=True', '-h', '--help', '--', '-x', 'a b']
    assert main([str(script), *args]) == 0
    report = read_report(in_process)
    assert report['argv'] == [str(script), *args]
    assert report['file'] == str(script) and report['name'] == '__main__'


def test_script_folder_is_first_on_sys_path(in_process, tmp_path):
    folder = tmp_path / 'scripts'
    folder.mkdir()
    (folder / 'lm_probe_sibling_module.py').write_text('VALUE = 42\n')
    (folder / 'uses_sibling.py').write_text(
        'import sys\nimport lm_probe_sibling_module as m\nsys.exit(m.VALUE)\n')  # as timm's scripts import timm/
    with pytest.raises(SystemExit) as exc:
        main([str(folder / 'uses_sibling.py')])
    assert exc.value.code == 42
    sys.modules.pop('lm_probe_sibling_module', None)


@pytest.mark.parametrize('code', [0, 3])
def test_exit_status_of_the_script_propagates(in_process, tmp_path, monkeypatch, code):
    monkeypatch.setenv('PROBE_EXIT', str(code))
    with pytest.raises(SystemExit) as exc:
        main([str(write_probe(tmp_path))])
    assert exc.value.code == code


def test_uncaught_exception_propagates(in_process, tmp_path):
    script = tmp_path / 'fails.py'
    script.write_text("raise RuntimeError('from the script')\n")
    with pytest.raises(RuntimeError, match='from the script'):  # python then prints it and exits 1
        main([str(script)])


def test_script_ending_normally_returns_0(in_process, tmp_path):
    script = tmp_path / 'quiet.py'
    script.write_text('x = 1\n')
    assert main([str(script)]) == 0


def test_bare_name_resolves_in_timm_scripts_dir(in_process, tmp_path, monkeypatch):
    scripts = write_probe(tmp_path / 'checkout', tag='checkout').parent
    monkeypatch.setenv('TIMM_SCRIPTS_DIR', str(scripts))
    monkeypatch.chdir(tmp_path)
    assert main(['probe.py', '--b', '2']) == 0
    report = read_report(in_process)
    assert report['tag'] == 'checkout' and report['argv'] == [str(scripts / 'probe.py'), '--b', '2']


def test_existing_path_wins_over_timm_scripts_dir(in_process, tmp_path, monkeypatch):
    monkeypatch.setenv('TIMM_SCRIPTS_DIR', str(write_probe(tmp_path / 'checkout', tag='checkout').parent))
    write_probe(tmp_path / 'here', tag='here')
    monkeypatch.chdir(tmp_path / 'here')
    assert main(['probe.py']) == 0
    assert read_report(in_process)['tag'] == 'here'


def test_bare_name_missing_from_timm_scripts_dir(in_process, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TIMM_SCRIPTS_DIR', str(tmp_path / 'checkout'))
    monkeypatch.chdir(tmp_path)
    assert main(['validate.py']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(tmp_path / 'checkout' / 'validate.py') in err


def test_path_with_a_folder_is_not_looked_up_in_timm_scripts_dir(in_process, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TIMM_SCRIPTS_DIR', str(write_probe(tmp_path / 'checkout' / 'sub').parent.parent))
    monkeypatch.chdir(tmp_path)
    assert main(['sub/probe.py']) == 2
    assert "'sub/probe.py'" in capsys.readouterr().err


def test_a_folder_is_not_a_script(in_process, tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'not a readable file' in err


def test_no_arguments_prints_usage(in_process, capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith('usage:')


def test_help_is_plain_text(in_process, capsys):
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: python -m train_wrappers.run SCRIPT.py') and '``' not in out
