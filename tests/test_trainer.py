"""The compact trainer: train.py's checkpoint and summary formats, end to end on a tiny ImageFolder, with resume."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from timm.utils import random_seed

from timm_lm.loading import read_checkpoint
from train_wrappers.trainer import TrainConfig, create_model, main, train


def make_image_folder(root, classes=2, per_class=8, size=32, splits=('train', 'validation')):
    """Tiny ImageFolder whose classes differ in brightness, so that a model can learn something."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in range(classes):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 96, (size, size, 3)) + 128 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


def _config(image_folder, tmp_path, **kwargs):
    base = dict(model='lm_resnet20_cifar', model_kwargs={'k_stable': True}, data_dir=str(image_folder), num_classes=2,
                input_size=(3, 32, 32), batch_size=8, epochs=2, lr=0.05, output=str(tmp_path), experiment='run',
                progress=False, model_ema=True, model_ema_decay=0.9, drop_path=0.1, scale=(0.5, 1.0))
    base.update(kwargs)
    return TrainConfig(**base)


def _summary(run):
    with open(run / 'summary.csv') as f:
        return list(csv.DictReader(f))


def test_train_writes_train_py_outputs_and_resumes(image_folder, tmp_path):
    result = train(_config(image_folder, tmp_path))
    run = tmp_path / 'run'
    assert result.output_dir == run
    for name in ('last.pth.tar', 'model_best.pth.tar', 'summary.csv', 'args.yaml'):
        assert (run / name).is_file(), name
    rows = _summary(run)
    assert [r['epoch'] for r in rows] == ['0', '1']
    assert {'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'} <= set(rows[0])

    state_dict, meta = read_checkpoint(run / 'last.pth.tar')  # weights_only, as every consumer reads it
    assert meta['arch'] == 'lm_resnet20_cifar' and meta['epoch'] == 1
    assert meta['args']['model_kwargs'] == {'k_stable': True} and meta['args']['num_classes'] == 2
    ema, _ = read_checkpoint(run / 'last.pth.tar', use_ema=True)
    k_key = 'stages.1.blocks.1.lm.k_raw'
    assert not torch.equal(state_dict[k_key], ema[k_key])  # both sets of weights are saved
    random_seed(42, 0)  # the trainer's seed: the same initial model, whose k_n training moved
    initial = create_model(_config(image_folder, tmp_path))
    assert not torch.equal(initial.state_dict()[k_key], state_dict[k_key])

    resumed = train(_config(image_folder, tmp_path, epochs=3, experiment='', resume=str(run / 'last.pth.tar')))
    assert resumed.output_dir == run  # continues in the run's own folder
    assert [r['epoch'] for r in _summary(run)] == ['0', '1', '2']
    _, meta = read_checkpoint(run / 'last.pth.tar')
    assert meta['epoch'] == 2


def test_cli_bad_input(tmp_path, capsys):
    assert main(['--data-dir', str(tmp_path / 'none')]) == 2
    assert 'no such folder' in capsys.readouterr().err
    assert main(['--data-dir', str(tmp_path), '--resume', str(tmp_path / 'x.pth.tar')]) == 2
    assert 'no such checkpoint' in capsys.readouterr().err


def test_cli_bad_model_option(image_folder, tmp_path, capsys):
    code = main(['--data-dir', str(image_folder), '--model', 'lm_resnet20_cifar', '--model-kwargs', 'k_init=(0.5,-0.5)',
                 '--output', str(tmp_path), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 2 and 'k_init' in err and 'reversed' in err and err.count('\n') == 1
