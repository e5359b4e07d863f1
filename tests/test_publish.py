"""timm-lm-publish: train.py checkpoint -> Hub folder that timm loads; refusals write nothing."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

from timm_lm.pretrained import lm_coefficient_keys
from train_wrappers.publish import PublishError, main, publish_checkpoint


class Payload:
    """An object that runs a command when unpickled: a checkpoint must never get that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.fixture
def run_dir(tmp_path):
    """A train.py-like output folder: last.pth.tar (with EMA weights and args) and summary.csv."""
    torch.manual_seed(0)
    model = timm.create_model('lm_resnet20_cifar', num_classes=10, in_chans=1, k_stable=True, k_init=(-0.4, 0.2))
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    args = argparse.Namespace(model='lm_resnet20_cifar', model_kwargs={'k_stable': True, 'k_init': (-0.4, 0.2)},
                              input_size=[1, 32, 32], mean=[0.2860], std=[0.3530], gp=None, num_classes=10,
                              in_chans=1, crop_pct=1.0, interpolation='bilinear')
    torch.save({'epoch': 1, 'arch': 'lm_resnet20_cifar', 'state_dict': model.state_dict(), 'state_dict_ema': ema,
                'args': args, 'metric': 81.5, 'version': 2}, tmp_path / 'last.pth.tar')
    (tmp_path / 'summary.csv').write_text(
        'epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n0,1.1,0.9,70.25,96.0,0.1\n'
        '1,0.8,0.6,81.5,98.75,0.05\n2,0.7,0.65,80.0,98.5,0.01\n')
    return tmp_path


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_publish_train_checkpoint(run_dir, capsys):
    labels = run_dir / 'labels.txt'
    labels.write_text('\n'.join(f'class {i}' for i in range(10)))
    out = run_dir / 'hub'
    assert main([str(run_dir / 'last.pth.tar'), '--model', 'lm_resnet20_cifar', '--out-dir', str(out),
                 '--label-names', str(labels), '--dataset', 'fashion_mnist']) == 0
    assert 'reloaded with local-dir' in capsys.readouterr().out
    assert _files(out) == ['README.md', 'config.json', 'model.safetensors']
    assert [p.name for p in run_dir.iterdir() if p.name.startswith('.hub')] == []  # no staging left behind

    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'lm_resnet20_cifar' and config['num_classes'] == 10
    assert config['model_args']['k_stable'] is True and config['model_args']['in_chans'] == 1
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [1, 32, 32] and cfg['mean'] == [0.286] and cfg['std'] == [0.353]
    assert config['label_names'][3] == 'class 3'
    assert 'notes' not in cfg and 'tag' not in cfg

    weights = load_file(str(out / 'model.safetensors'))
    checkpoint = torch.load(run_dir / 'last.pth.tar', weights_only=False)['state_dict']
    assert set(weights) == set(checkpoint) and all(torch.equal(weights[k], checkpoint[k]) for k in weights)

    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert model.lm_options.k_stable and model.num_classes == 10
    assert all(torch.equal(model.state_dict()[k], checkpoint[k]) for k in checkpoint)

    card = (out / 'README.md').read_text()
    assert card.startswith('---\nlibrary_name: timm\nlicense: apache-2.0\n')
    assert '- fashion_mnist' in card and '- timm-lm' in card
    assert 'epoch 1' in card and 'top1 81.50' in card and 'top5 98.75' in card  # the checkpoint's epoch row
    assert 'evaluation logged by timm train.py' in card  # train.py's args do not name a trainer
    assert 'stages.2.blocks.2' in card  # the learned k table
    assert "timm.create_model('local-dir:" in card
    assert 'u[n+1] = (1 - k_n) u[n] + k_n u[n-1] + f_n(u[n])' in card  # from MODEL_CARD.md
    assert '@inproceedings{lu2018beyond' in card


def test_publish_checkpoint_from_python_names_the_compact_trainer(run_dir):
    """The typed function (the quickstart's way in); a compact-trainer checkpoint's card says what trained it."""
    checkpoint = torch.load(run_dir / 'last.pth.tar', weights_only=False)
    checkpoint['args'].trainer = 'train_wrappers.trainer'  # as the compact trainer records itself
    torch.save(checkpoint, run_dir / 'compact.pth.tar')
    labels = [f'c{i}' for i in range(10)]
    out = publish_checkpoint(run_dir / 'compact.pth.tar', run_dir / 'hub', label_names=labels, dataset='fashion_mnist')
    assert out == run_dir / 'hub' and json.loads((out / 'config.json').read_text())['label_names'] == labels
    card = (out / 'README.md').read_text()
    assert "evaluation logged by timm-lm's compact trainer" in card and 'train.py' not in card
    with pytest.raises(PublishError, match='3 names for a model with 10 classes'):
        publish_checkpoint(run_dir / 'compact.pth.tar', run_dir / 'hub2', label_names=['a', 'b', 'c'])
    assert not (run_dir / 'hub2').exists()


def test_publish_ema_weights(run_dir):
    out = run_dir / 'hub-ema'
    assert main([str(run_dir / 'last.pth.tar'), '--out-dir', str(out), '--ema']) == 0
    ema = torch.load(run_dir / 'last.pth.tar', weights_only=False)['state_dict_ema']
    weights = load_file(str(out / 'model.safetensors'))
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    assert 'EMA weights' in (out / 'README.md').read_text()


def test_publish_plain_safetensors_with_model_name(tmp_path):
    model = timm.create_model('lm_resnet32_cifar', lm=False, num_classes=100)
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(tmp_path / 'w.safetensors'))
    assert main([str(tmp_path / 'w.safetensors'), '--model', 'lm_resnet32_cifar', '--out-dir', str(tmp_path / 'o'),
                 '--num-classes', '100']) == 0
    reloaded = timm.create_model(f'local-dir:{tmp_path / "o"}', pretrained=True)
    assert reloaded.num_classes == 100 and not lm_coefficient_keys(reloaded)  # an lm=False baseline stays one


def test_overwrite(run_dir):
    out = run_dir / 'hub'
    out.mkdir()
    (out / 'old.txt').write_text('x')
    assert main([str(run_dir / 'last.pth.tar'), '--out-dir', str(out)]) == 2
    assert _files(out) == ['old.txt']
    assert main([str(run_dir / 'last.pth.tar'), '--out-dir', str(out), '--overwrite']) == 0
    assert _files(out) == ['README.md', 'config.json', 'model.safetensors']


def _write_corrupt(path):
    path.write_bytes(b'not a checkpoint' * 10)


@pytest.mark.parametrize('case, message', [
    ('missing', 'no such file'),
    ('corrupt', 'not a readable PyTorch checkpoint'),
    ('corrupt_safetensors', 'not a readable safetensors file'),
    ('other_arch', 'does not match lm_resnet32_cifar'),
    ('unknown_model', "unknown model 'lm_nope'"),
    ('not_lm', 'not an LM model name'),
    ('labels', '3 names for a model with 10 classes'),
    ('no_ema', 'has no EMA weights'),
])
def test_refusals_write_nothing(run_dir, capsys, case, message):
    ckpt = run_dir / 'last.pth.tar'
    extra = []
    if case == 'missing':
        ckpt = run_dir / 'nope.pth.tar'
    elif case == 'corrupt':
        ckpt = run_dir / 'bad.pth'
        _write_corrupt(ckpt)
    elif case == 'corrupt_safetensors':
        ckpt = run_dir / 'bad.safetensors'
        _write_corrupt(ckpt)
    elif case == 'other_arch':
        ckpt = run_dir / 'plain.pth'
        torch.save(timm.create_model('lm_resnet20_cifar').state_dict(), ckpt)
        extra = ['--model', 'lm_resnet32_cifar']
    elif case == 'unknown_model':
        ckpt = run_dir / 'plain.pth'
        torch.save(timm.create_model('lm_resnet20_cifar').state_dict(), ckpt)
        extra = ['--model', 'lm_nope']
    elif case == 'not_lm':
        ckpt = run_dir / 'plain.pth'
        torch.save(timm.create_model('resnet18').state_dict(), ckpt)
        extra = ['--model', 'resnet18']
    elif case == 'labels':
        (run_dir / 'labels.txt').write_text('a\nb\nc\n')
        extra = ['--label-names', str(run_dir / 'labels.txt')]
    elif case == 'no_ema':
        ckpt = run_dir / 'plain.pth'
        torch.save(timm.create_model('lm_resnet20_cifar').state_dict(), ckpt)
        extra = ['--ema', '--model', 'lm_resnet20_cifar']
    before = _files(run_dir)
    assert main([str(ckpt), '--out-dir', str(run_dir / 'hub'), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1, err
    assert _files(run_dir) == before  # no out-dir, no staging folder


def test_arbitrary_unpickling_is_refused_and_never_executed(tmp_path, capsys):
    marker = tmp_path / 'pwned'
    model = timm.create_model('lm_resnet20_cifar')
    torch.save({'state_dict': model.state_dict(), 'arch': 'lm_resnet20_cifar', 'extra': Payload(marker)},
               tmp_path / 'evil.pth.tar')
    assert main([str(tmp_path / 'evil.pth.tar'), '--out-dir', str(tmp_path / 'hub')]) == 2
    assert 'arbitrary unpickling' in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / 'hub').exists()


def test_upload_failure_is_one_line_keeps_the_folder_and_never_shows_the_token(run_dir):
    env = dict(os.environ, HF_TOKEN='hf_secretTOKEN123456789', HF_HUB_OFFLINE='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'train_wrappers.publish', str(run_dir / 'last.pth.tar'), '--out-dir',
         str(run_dir / 'hub'), '--repo-id', 'timm-lm/test-upload'], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert 'upload to timm-lm/test-upload failed' in proc.stderr and proc.stderr.count('\n') == 1
    assert 'Traceback' not in proc.stderr
    assert 'hf_secretTOKEN' not in proc.stdout + proc.stderr
    assert _files(run_dir / 'hub') == ['README.md', 'config.json', 'model.safetensors']
    assert 'hf-hub:timm-lm/test-upload' in (run_dir / 'hub' / 'README.md').read_text()
