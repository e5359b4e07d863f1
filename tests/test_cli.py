"""The timm-lm command: output on success, one line and exit status 2 on bad input."""
import subprocess
import sys

import pytest

from timm_lm.cli import main


def test_list(capsys):
    assert main(['list', 'lm_resnet*_cifar']) == 0
    out = capsys.readouterr().out.split()
    assert 'lm_resnet56_cifar' in out and all(n.startswith('lm_') for n in out)


def test_list_nothing_matches(capsys):
    assert main(['list', 'lm_nope*']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'no LM model matches' in err


def test_inspect_a_registered_name(capsys):
    assert main(['inspect', 'lm_resnet20_cifar']) == 0
    out = capsys.readouterr().out
    assert 'stages.2.blocks.2' in out


@pytest.mark.parametrize('arg, message', [
    ('missing.pth', 'no such file'),
    ('resnet18', 'not an LM model'),
    ('no_such_thing', 'neither a registered LM model'),
])
def test_inspect_bad_input(capsys, arg, message):
    assert main(['inspect', arg]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count('\n') == 1 and not captured.out


def test_console_entry_point_runs_as_module():
    proc = subprocess.run([sys.executable, '-m', 'timm_lm.cli', 'inspect', 'broken.safetensors'],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
