"""The recipes in train_wrappers/recipes are valid train.py --config files for LM models.

train.py applies a recipe with ``parser.set_defaults(**cfg)``, which takes any key without a word: a
misspelt key is ignored and the run silently uses timm's default instead. So every key is checked
against train.py's argument dests: in CI against ``tests/data/train_py_dests.txt`` (a snapshot of
train.py's parser, as CI has no pytorch-image-models checkout), and, where ``TIMM_SCRIPTS_DIR`` points
at one, by parsing each recipe with train.py's own ``_parse_args``.

Regenerate the snapshot (repo root, timm-lm installed or on PYTHONPATH) with:
    TIMM_SCRIPTS_DIR=/path/to/pytorch-image-models python tests/test_recipes.py
"""
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

import timm_lm

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / 'train_wrappers' / 'recipes'
RECIPES = sorted(RECIPE_DIR.glob('*.yaml'))
DESTS_FILE = Path(__file__).resolve().parent / 'data' / 'train_py_dests.txt'
SCRIPTS_DIR = os.environ.get('TIMM_SCRIPTS_DIR')
needs_scripts = pytest.mark.skipif(
    not SCRIPTS_DIR, reason='TIMM_SCRIPTS_DIR is not set (path of a pytorch-image-models checkout with train.py)')

CIFAR_MODELS = ['lm_resnet20', 'lm_resnet32', 'lm_resnet44', 'lm_resnet56', 'lm_resnet110', 'lm_resnet164',
                'lm_resnext29_8x64d']
EXPECTED = sorted(
    [f'{m}_{d}.yaml' for m in CIFAR_MODELS for d in ('cifar10', 'cifar100')]
    + ['lm_resnetv2_50_in1k.yaml', 'lm_resnetv2_101_in1k.yaml', 'lm_resnext50_in1k.yaml',
       'lm_resnet50_in1k_finetune.yaml', 'lm_convnext_tiny_finetune.yaml'])
SD_DROP_PATH = 0.5  # the +SD variant of the CIFAR recipes (--drop-path 0.5, documented in their headers)


def load_recipe(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def snapshot_dests() -> set:
    lines = DESTS_FILE.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith('#')}


def load_train_script(scripts_dir: str, tag: str):
    """train.py as a fresh module (its parser keeps set_defaults from an earlier recipe, so one per use)."""
    spec = importlib.util.spec_from_file_location(f'timm_train_script_{tag}', os.path.join(scripts_dir, 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parser_dests(train_module) -> set:
    return {action.dest for action in train_module.parser._actions} - {'help'}


def build_on_meta(model_name: str, num_classes=None, drop_path=None, model_kwargs=None):
    """The model as train.py creates it, without weights (pretrained is for the Hub, not for this check)."""
    with torch.device('meta'):
        return timm.create_model(
            model_name, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path, **(model_kwargs or {}))


def is_cifar(path: Path) -> bool:
    return '_cifar' in path.stem


def ids(paths):
    return [p.name for p in paths]


def is_user_data(path: Path) -> bool:
    """A fine-tuning recipe for the user's own ImageFolder: the classes come from the command line."""
    return 'num_classes' not in load_recipe(path)


CIFAR_RECIPES = [p for p in RECIPES if is_cifar(p)]
USER_DATA_RECIPES = [p for p in RECIPES if is_user_data(p)]
IMAGENET_RECIPES = [p for p in RECIPES if not is_cifar(p) and not is_user_data(p)]
PAPER_RECIPES = CIFAR_RECIPES + IMAGENET_RECIPES
USER_NUM_CLASSES = 7  # stands in for the --num-classes a user gives


def test_every_recipe_is_there():
    assert [p.name for p in RECIPES] == EXPECTED


@pytest.mark.parametrize('path', RECIPES, ids=ids(RECIPES))
def test_keys_are_train_py_dests(path):
    unknown = set(load_recipe(path)) - snapshot_dests()
    assert not unknown, f'{path.name}: not train.py arguments (set_defaults would ignore them): {sorted(unknown)}'


@pytest.mark.parametrize('path', RECIPES, ids=ids(RECIPES))
def test_no_number_written_as_a_string(path):
    # YAML 1.1 (PyYAML) reads 1e-4 as the string '1e-4'; 1.0e-4 is a float
    for key, value in load_recipe(path).items():
        assert not (isinstance(value, str) and re.fullmatch(r'[-+]?[0-9.]+([eE][-+]?[0-9]+)?', value)), \
            f'{path.name}: {key}: {value!r} is a string; write it as a float (1.0e-4)'


@pytest.mark.parametrize('path', RECIPES, ids=ids(RECIPES))
def test_recipe_builds_its_lm_model(path):
    cfg = load_recipe(path)
    num_classes = cfg.get('num_classes', USER_NUM_CLASSES)
    model = build_on_meta(cfg['model'], num_classes, cfg.get('drop_path'), cfg.get('model_kwargs'))
    assert model.num_classes == num_classes
    assert len(timm_lm.lm_coefficients(model)) > 0  # an LM model, not a plain timm one
    if is_cifar(path):
        drop_probs = [m.drop_prob for m in build_on_meta(cfg['model'], drop_path=SD_DROP_PATH).modules()
                      if type(m).__name__ == 'DropPath']
        assert drop_probs and max(drop_probs) == pytest.approx(SD_DROP_PATH)  # last block: survival 0.5


@pytest.mark.parametrize('path', PAPER_RECIPES, ids=ids(PAPER_RECIPES))
def test_paper_schedules_use_plain_momentum(path):
    assert load_recipe(path)['opt'] == 'momentum', "timm's 'sgd' is Nesterov SGD; the paper's schedules use plain momentum"


@pytest.mark.parametrize('path', RECIPES, ids=ids(RECIPES))
def test_schedule_is_consistent(path):
    cfg = load_recipe(path)
    assert cfg['epochs'] > cfg.get('warmup_epochs', 0) >= 0
    if cfg['sched'] == 'multistep':
        milestones = cfg['decay_milestones']
        assert milestones == sorted(set(milestones))
        assert cfg.get('warmup_epochs', 0) < milestones[0] and milestones[-1] < cfg['epochs']


@pytest.mark.parametrize('path', CIFAR_RECIPES, ids=ids(CIFAR_RECIPES))
def test_cifar_recipe_is_the_standard_schedule(path):
    cfg = load_recipe(path)
    classes = 100 if path.stem.endswith('cifar100') else 10
    assert (cfg['dataset'], cfg['num_classes']) == (f'torch/cifar{classes}', classes)
    assert cfg['input_size'] == [3, 32, 32] and cfg['batch_size'] == 128
    assert (cfg['lr'], cfg['momentum'], cfg['weight_decay']) == (0.1, 0.9, 1e-4)
    assert (cfg['epochs'], cfg['decay_milestones'], cfg['decay_rate']) == (160, [80, 120], 0.1)
    assert cfg['hflip'] == 0.5 and cfg['smoothing'] == 0.0


@pytest.mark.parametrize('path', IMAGENET_RECIPES, ids=ids(IMAGENET_RECIPES))
def test_imagenet_recipe_lr_is_per_256_images(path):
    cfg = load_recipe(path)
    assert 'lr' not in cfg and cfg['lr_base_size'] == 256 and cfg['lr_base_scale'] == 'linear'
    assert cfg['batch_size'] * 8 == 256  # the header's 8-process command
    if path.stem.endswith('finetune'):
        assert cfg['pretrained'] is True and cfg['lr_base'] < 0.1
    else:
        assert (cfg['lr_base'], cfg['epochs'], cfg['decay_milestones']) == (0.1, 90, [30, 60, 80])
        assert cfg['pretrained'] is False


@pytest.mark.parametrize('path', USER_DATA_RECIPES, ids=ids(USER_DATA_RECIPES))
def test_user_data_recipe_warm_starts_on_an_image_folder(path):
    """Fine-tuning on the user's ImageFolder: timm's weights with k_n = 0, classes from --num-classes."""
    cfg = load_recipe(path)
    assert 'dataset' not in cfg and cfg['pretrained'] is True  # train.py's default dataset is an ImageFolder
    assert cfg['opt'] == 'adamw' and cfg['lr_base'] < 1e-3 and cfg['lr_base_size'] == 256
    assert cfg['batch_size'] * 8 == 256  # the header's 8-process command
    header = '\n'.join(line for line in path.read_text().splitlines() if line.startswith('#'))
    assert '--num-classes N' in header
    variants = [cfg['model']] + re.findall(r'--model (lm_\w+)', header)  # the header's other model (a ViT)
    assert len(variants) == 2
    for name in variants:
        model = build_on_meta(name, USER_NUM_CLASSES)
        tag = model.pretrained_cfg['tag']
        assert tag.startswith('warmstart_'), f'{name}: default tag {tag!r} is not a warm start'
        assert f'{name[len("lm_"):]}.{tag[len("warmstart_"):]}' in header, f'{name}: header names other weights'


@pytest.mark.parametrize('path', RECIPES, ids=ids(RECIPES))
def test_header_says_how_to_run_it(path):
    header = [line for line in path.read_text().splitlines() if line.startswith('#')]
    text = '\n'.join(header)
    assert f'--config train_wrappers/recipes/{path.name}' in text
    for form in ('python -m train_wrappers.run train.py', 'python train.py --device-modules timm_lm',
                 'torchrun --nproc_per_node=', './distributed_train.sh', 'Expected:'):
        assert form in text, f'{path.name}: header lacks {form!r}'


@needs_scripts
@pytest.mark.parametrize('path', RECIPES, ids=ids(RECIPES))
def test_train_py_parses_recipe(path, monkeypatch):
    train = load_train_script(SCRIPTS_DIR, path.stem)
    cfg = load_recipe(path)
    assert set(cfg) <= parser_dests(train), sorted(set(cfg) - parser_dests(train))
    extra = ['--drop-path', str(SD_DROP_PATH)] if is_cifar(path) else []
    monkeypatch.setattr(sys, 'argv', ['train.py', '--config', str(path), '--data-dir', 'DATA', *extra])
    args, _ = train._parse_args()
    for key, value in cfg.items():
        if key != 'drop_path' or not extra:
            assert getattr(args, key) == value, key
    assert timm.is_model(args.model)
    model = build_on_meta(args.model, args.num_classes, args.drop_path, args.model_kwargs)
    assert len(timm_lm.lm_coefficients(model)) > 0
    if extra:
        assert args.drop_path == SD_DROP_PATH


@needs_scripts
def test_dests_snapshot_matches_train_py():
    header = DESTS_FILE.read_text().splitlines()[0]
    version = scripts_timm_version(SCRIPTS_DIR)
    if not version or version not in header:
        pytest.skip(f'the snapshot is of another train.py ({header!r}); this checkout is timm {version}')
    assert snapshot_dests() == parser_dests(load_train_script(SCRIPTS_DIR, 'snapshot'))


def scripts_timm_version(scripts_dir: str):
    """The version of the checkout's own timm/ (the one its train.py imports), or None."""
    version_file = Path(scripts_dir) / 'timm' / 'version.py'
    found = version_file.exists() and re.search(r"__version__ = '([^']+)'", version_file.read_text())
    return found.group(1) if found else None


def write_snapshot(scripts_dir: str) -> None:
    version = scripts_timm_version(scripts_dir)
    dests = sorted(parser_dests(load_train_script(scripts_dir, 'snapshot')))
    DESTS_FILE.write_text(
        f'# train.py argument dests, pytorch-image-models {version}\n'
        '# regenerate: TIMM_SCRIPTS_DIR=/path/to/pytorch-image-models python tests/test_recipes.py\n'
        + ''.join(f'{d}\n' for d in dests))
    print(f'{DESTS_FILE}: {len(dests)} dests of timm {version} train.py')


if __name__ == '__main__':
    if not SCRIPTS_DIR:
        sys.exit('set TIMM_SCRIPTS_DIR to a pytorch-image-models checkout')
    write_snapshot(SCRIPTS_DIR)
