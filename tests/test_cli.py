"""The timm-lm command: output on success, one line and exit status 2 on bad input."""
import argparse
import importlib
import os
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


def test_list_says_what_it_printed(capsys):
    assert main(['list']) == 0
    captured = capsys.readouterr()
    names = captured.out.split()
    assert names and all(n.startswith('lm_') and '.' not in n for n in names)
    assert captured.err == f'{len(names)} LM models ("timm-lm list --pretrained" lists their pretrained weights, ' \
                           f'one MODEL.TAG per line)\n'
    assert main(['list', '--pretrained']) == 0
    captured = capsys.readouterr()
    tags = captured.out.split()
    assert all(t.count('.') == 1 and t.split('.')[0] in names for t in tags)
    models = {t.split('.')[0] for t in tags}
    assert len(tags) > len(models)  # some models have several tags: one line per tag
    assert captured.err == f'{len(tags)} pretrained weights (MODEL.TAG) of {len(models)} LM models\n'


def test_a_closed_pipe_ends_quietly():
    """`timm-lm list | head`: the reader goes away before the output is written; no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, '-m', 'timm_lm.cli', 'list'], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 1 and proc.stderr == ''


@pytest.mark.parametrize('module', ['timm_lm.cli', 'train_wrappers.quickstart', 'train_wrappers.trainer',
                                    'train_wrappers.publish'])
def test_help_is_plain_text(module):
    parser = importlib.import_module(module).build_parser()
    texts = [parser.format_help()] + [p.format_help() for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                                      for p in a.choices.values()]
    assert all('usage:' in t and '``' not in t and 'a few minutes' not in t for t in texts)


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        main(['list', '--bogus'])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err == 'timm-lm: unrecognized arguments: --bogus (see timm-lm --help)\n'
