"""The compact trainer: train.py's checkpoint and summary formats, end to end on a tiny ImageFolder, with resume;
its options, declared once in TrainConfig, checked before anything is written."""
import csv
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from timm.utils import random_seed

from timm_lm.loading import read_checkpoint
from train_wrappers.trainer import TrainConfig, build_parser, config_from_args, create_model, main, train, train_py_args


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


def test_sched_none_trains_at_a_constant_learning_rate(image_folder, tmp_path):
    train(_config(image_folder, tmp_path, sched='none', epochs=2, model_ema=False))
    assert [float(r['lr']) for r in _summary(tmp_path / 'run')] == [0.05, 0.05]


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


@pytest.mark.parametrize('argv, message', [
    (['--epochs', '0'], '--epochs 0: must be >= 1'),
    (['-b', '0'], '--batch-size 0: must be >= 1'),
    (['-vb', '0'], '--validation-batch-size 0: must be >= 1'),
    (['--lr', '-0.1'], '--lr -0.1: must be > 0'),
    (['--momentum', '1'], '--momentum 1.0: must be in [0, 1)'),
    (['--weight-decay', '-1'], '--weight-decay -1.0: must be >= 0'),
    (['-j', '-1'], '--workers -1: must be >= 0'),
    (['--hflip', '1.5'], '--hflip 1.5: must be in [0, 1]'),
    (['--scale', '0.9', '0.5'], '--scale 0.9 0.5: give the smaller value first'),
    (['--scale', '0', '1'], '--scale 0.0 1.0: must be in (0, 1] (each value)'),
    (['--drop-path', '1'], '--drop-path 1.0: must be in [0, 1)'),
    (['--model-ema-decay', '1'], '--model-ema-decay 1.0: must be in (0, 1)'),
    (['--checkpoint-hist', '0'], '--checkpoint-hist 0: must be >= 1'),
    (['--input-size', '1', '0', '28'], '--input-size 1 0 28: must be >= 1 (each value)'),
    (['--sched', 'plateau', '--sched-on-updates'], 'leave out --sched-on-updates'),
    (['--sched', 'nope', '-b', '8'], "Unknown scheduler 'nope'"),
    (['--model', 'lm_nope'], '--model lm_nope: unknown model'),
    (['--model-kwargs', 'bogus_option=1'], 'bogus_option'),
    (['--epochs', '100', '-b', '1000'], '--batch-size 1000: larger than the training set'),
])
def test_cli_refusals_are_one_line_and_write_nothing(argv, message, image_folder, tmp_path, capsys):
    assert main(['--data-dir', str(image_folder), '--output', str(tmp_path / 'out'), '--no-progress', *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1, err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('argv, message', [
    (['--epochs', 'two'], "argument --epochs: invalid int value: 'two'"),
    (['--no-such-flag'], 'unrecognized arguments: --no-such-flag'),
    (['--model-kwargs', 'k_stable'], '--model-kwargs k_stable: give key=value pairs'),
])
def test_cli_usage_errors_are_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(['--data-dir', str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and err.count('\n') == 1 and err.endswith('--help)\n')


def test_resume_past_the_last_epoch_is_refused(image_folder, tmp_path):
    train(_config(image_folder, tmp_path, epochs=1, model_ema=False))
    with pytest.raises(ValueError, match='has trained 1 epoch'):
        train(_config(image_folder, tmp_path, epochs=1, experiment='', resume=str(tmp_path / 'run' / 'last.pth.tar')))


def test_parser_options_are_the_config_fields():
    """One declaration per option: every field has its flag, and a config survives the trip through train.py's argv."""
    parser_dests = {a.dest for a in build_parser()._actions} - {'help'}
    assert parser_dests == {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(data_dir='d', dataset='idx', model_kwargs={'k_init': -0.05, 'act_layer': 'silu'}, num_classes=3,
                      input_size=(1, 20, 24), mean=(0.5,), std=(0.25,), scale=(0.5, 0.9), no_aug=True, drop_path=0.1,
                      model_ema=True, validation_batch_size=7, channels_last=True, progress=False)
    assert config_from_args(build_parser().parse_args(train_py_args(cfg) + ['--no-progress'])) == cfg


def test_idx_dataset_and_progress_lines(fake_fmnist, tmp_path, capsys):
    """--dataset idx trains from the idx files in memory; without the bar, a line every --log-interval batches."""
    assert main(['--data-dir', str(fake_fmnist), '--dataset', 'idx', '--train-split', 'train', '--val-split', 'test',
                 '--num-classes', '10', '--input-size', '1', '28', '28', '--mean', '0.286', '--std', '0.353',
                 '--crop-pct', '1', '--train-interpolation', 'bilinear', '--color-jitter', '0', '-b', '8',
                 '--log-interval', '2', '--no-progress', '--output', str(tmp_path), '--experiment', 'idx']) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if 'train epoch 0:' in line]
    assert [line.split(':')[1].split()[0] for line in lines] == ['2/6', '4/6', '6/6']
    assert 'about' in lines[0] and lines[-1].endswith('done')
    _, meta = read_checkpoint(tmp_path / 'idx' / 'last.pth.tar')
    assert meta['args']['dataset'] == 'idx' and meta['args']['trainer'] == 'train_wrappers.trainer'
    idx = dict(data_dir=str(fake_fmnist), dataset='idx', train_split='train', val_split='test', num_classes=10,
               input_size=(1, 28, 28), train_interpolation='bilinear', output=str(tmp_path))
    with pytest.raises(ValueError, match='--color-jitter 0.4: --dataset idx has no colour jitter'):
        train(TrainConfig(**idx))
    with pytest.raises(ValueError, match='--train-interpolation random: --dataset idx resamples bilinearly'):
        train(TrainConfig(**dict(idx, color_jitter=0, train_interpolation='random')))
