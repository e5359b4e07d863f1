"""timm's own model test-suite on one model of every LM family, as timm's CI runs it.

``tests/test_models.py`` comes from the source distribution of the installed timm (setup.sh fetches it
from PyPI into ``.timm-tests/``; nothing of it is committed). It runs in a child pytest with timm's own
settings (its pyproject's markers, ``GITHUB_ACTIONS=1`` for timm's CI exclusions, ``HF_HUB_OFFLINE=1``
for no network tests) and ``timm_suite_plugin``, which gives each LM model the tests timm gives the model
it extends (see that module). No test is excluded for being an LM model: every item must pass.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / '.timm-tests' / f'timm-{timm.__version__}'

# one model per family (post-/pre-activation ResNets, CIFAR, ConvNeXt, ViT, DeiT, Swin, EfficientNet,
# MobileNet, RegNet), small enough for a 2-core CI; grouped into child runs of similar length
GROUPS = {
    'resnets': ['lm_resnet18', 'lm_resnetv2_18', 'lm_resnet20_cifar'],
    'convnets': ['lm_convnext_atto', 'lm_efficientnet_b0', 'lm_mobilenetv3_small_100', 'lm_regnetx_002'],
    'vit': ['lm_vit_tiny_patch16_224', 'lm_vit_tiny_r_s16_p8_224'],  # ViT, and a hybrid (ResNet stem)
    'deit': ['lm_deit_tiny_distilled_patch16_224'],
    'swin': ['lm_swin_tiny_patch4_window7_224'],
}
# tests every model gets in timm's suite (the rest depend on the family: features, intermediates, ...)
ALWAYS = {'test_model_forward', 'test_model_backward', 'test_model_forward_torchscript'}


def _cases(junit: Path):
    for case in ET.parse(junit).getroot().iter('testcase'):
        outcome = next((child.tag for child in case if child.tag in ('failure', 'error', 'skipped')), 'passed')
        yield case.get('name'), outcome, case


@pytest.mark.timeout(1800)
@pytest.mark.parametrize('group', sorted(GROUPS))
def test_timm_model_suite_passes_on_lm_models(group, tmp_path):
    if not (SUITE / 'tests' / 'test_models.py').is_file():
        pytest.fail(f"timm's test suite for timm {timm.__version__} is missing from {SUITE}: run setup.sh, which "
                    f'fetches it from PyPI (pip download --no-binary :all: timm=={timm.__version__})')
    junit = tmp_path / 'junit.xml'
    env = dict(os.environ, GITHUB_ACTIONS='1', HF_HUB_OFFLINE='1',
               PYTHONPATH=os.pathsep.join([str(ROOT / 'tests'), str(ROOT), os.environ.get('PYTHONPATH', '')]))
    env.pop('PYTEST_ADDOPTS', None)  # options meant for this session (e.g. -n 1) are not timm's suite's
    command = [sys.executable, '-m', 'pytest', '-q', '-p', 'timm_suite_plugin', '-p', 'no:cacheprovider',
               '-p', 'no:xdist', f'--junitxml={junit}', 'tests/test_models.py', '--lm-models', *GROUPS[group]]
    proc = subprocess.run(command, cwd=SUITE, env=env, capture_output=True, text=True)
    assert junit.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = list(_cases(junit))
    bad = [f'{name}: {outcome}: {(case[0].get("message") or "")[:300]}'
           for name, outcome, case in cases if outcome in ('failure', 'error')]
    assert not bad and proc.returncode == 0, '\n'.join(bad) or proc.stdout[-3000:]
    for model in GROUPS[group]:  # each model really ran, and ran the tests every timm model runs
        ran = {name.split('[')[0] for name, outcome, _ in cases if outcome == 'passed' and f'-{model}' in name}
        assert ALWAYS <= ran, f'{model}: {sorted(ran)}'
