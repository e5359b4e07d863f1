"""k_n analysis and `timm-lm inspect` on a model with known coefficients."""
import argparse

import pytest
import timm
import torch

import timm_lm
from timm_lm.cli import main

KNOWN_K = [0.5, -0.25, 1.5, -1.0, 0.0, 1.0]  # stages 0-2, blocks 1-2 of LM-ResNet-20


@pytest.fixture
def known_model():
    model = timm.create_model('lm_resnet20_cifar')
    with torch.no_grad():
        for k, row in zip(KNOWN_K, [b.lm for s in model.stages for b in s.blocks if b.lm is not None]):
            row.k.fill_(k)
    return model


def test_rows_and_modified_equation(known_model):
    rows = timm_lm.lm_coefficients(known_model)
    assert [r.k_mean for r in rows] == KNOWN_K
    assert [(r.stage, r.block, r.depth) for r in rows] == [(0, 1, 1), (0, 2, 2), (1, 1, 4), (1, 2, 5), (2, 1, 7), (2, 2, 8)]
    assert [float(r.u_prime_coefficient) for r in rows] == [1.5, 0.75, 2.5, 0.0, 1.0, 2.0]
    assert [float(r.u_second_coefficient) for r in rows] == [0.25, 0.625, -0.25, 1.0, 0.5, 0.0]
    # zero-stable iff -1 < k <= 1: 1.5 is not (root -1.5 outside the unit disc), -1 is not (double root at 1)
    assert [r.zero_stable for r in rows] == [True, True, False, False, True, True]
    assert timm_lm.summarize_coefficients(rows) == (
        'mean k per stage: stage 0: +0.1250, stage 1: +0.2500, stage 2: +0.5000; 2 of 6 blocks not zero-stable')


def test_per_channel_zero_stability_needs_every_channel():
    model = timm.create_model('lm_resnet20_cifar', k_per_channel=True)
    with torch.no_grad():
        model.stages[0].blocks[1].lm.k.fill_(0.1)[3] = 1.2
    row = timm_lm.lm_coefficients(model)[0]
    assert row.k.shape == (16,) and not row.zero_stable
    assert '[+0.1000, +1.2000]' in timm_lm.format_coefficients([row])


def _save_train_checkpoint(model, path):
    args = argparse.Namespace(model='lm_resnet20_cifar', model_kwargs={}, num_classes=10)
    torch.save({'epoch': 4, 'arch': 'lm_resnet20_cifar', 'state_dict': model.state_dict(), 'args': args}, path)


@pytest.mark.parametrize('source', ['checkpoint', 'state_dict', 'hub_folder'])
def test_inspect_reads_checkpoints_and_hub_folders(known_model, tmp_path, capsys, source):
    if source == 'checkpoint':
        target = tmp_path / 'last.pth.tar'
        _save_train_checkpoint(known_model, target)
        argv = ['inspect', str(target)]
    elif source == 'state_dict':
        target = tmp_path / 'weights.pth'
        torch.save(known_model.state_dict(), target)
        argv = ['inspect', str(target), '--arch', 'lm_resnet20_cifar']
    else:
        target = tmp_path / 'hub'
        timm.models.save_for_hf(known_model, target, safe_serialization=True)
        argv = ['inspect', str(target)]
    plot = tmp_path / 'k.png'
    assert main(argv + ['--plot', str(plot)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    stable_col = [l.split()[-1] for l in lines if l.startswith(('0 ', '1 ', '2 '))]
    assert stable_col == ['yes', 'yes', 'NO', 'NO', 'yes', 'yes']
    assert '+1.5000  +2.5000   -0.2500' in out  # k, 1 + k, (1 - k) / 2 of stages.1.blocks.1
    assert '1, -1.5000' in out  # its roots
    assert '2 of 6 blocks not zero-stable' in out
    assert plot.read_bytes()[:4] == b'\x89PNG'
    if source == 'checkpoint':
        assert 'epoch 4' in lines[0]


def test_inspect_plain_state_dict_without_arch(known_model, tmp_path, capsys):
    torch.save(known_model.state_dict(), tmp_path / 'w.pth')
    assert main(['inspect', str(tmp_path / 'w.pth')]) == 2
    assert 'does not name its architecture' in capsys.readouterr().err


def test_inspect_bad_plot_name(capsys):
    assert main(['inspect', 'lm_resnet20_cifar', '--plot', 'k.txt']) == 2
    assert '--plot k.txt' in capsys.readouterr().err
