"""pytest plugin that runs timm's own model test-suite on LM models, as timm runs it on the models they extend.

Loaded with ``-p timm_suite_plugin`` into a pytest run of ``tests/test_models.py`` from the source
distribution of the installed timm (fetched by setup.sh, never committed). It does three things:

1. registers the LM models before timm's test module is imported, so its ``list_models()``
   parametrisations see them;
2. makes every ``model_name`` parametrisation treat ``lm_<name>`` as timm treats ``<name>``: timm selects
   models for a test by name patterns (``'vit_*'`` gets the non-spatial config test, ``'*_in21k'``
   models are skipped on CI, ...) and by module (the ``forward_intermediates`` tests), and those rules
   never match an ``lm_`` name. So an LM model of a timm family runs exactly the tests its timm model
   runs, with every tag mapped (a timm tag with weights is ``warmstart_<tag>`` here); a model of this
   project's own CIFAR family runs the tests that every model runs;
3. keeps only the items of the models named by ``--lm-models`` (architectures, without tags).

timm's test functions and checks run unchanged.
"""
from typing import List

import pytest
import timm
from timm.models import is_model, split_model_name_tag

import timm_lm  # noqa: F401  (registers the LM models before test_models.py is imported)
from timm_lm.pretrained import warm_start_tag


def pytest_addoption(parser):
    parser.addoption('--lm-models', nargs='+', default=[], help="LM architectures to run timm's model tests on")


def _base_of(lm_name: str) -> str:
    """The timm model an LM model extends ('' for this project's own models)."""
    arch, _ = split_model_name_tag(lm_name)
    base = arch[len('lm_'):]
    return base if arch.startswith('lm_') and is_model(base) and not base.startswith('lm_') else ''


def _lm_name_for(timm_name: str, lm_names: set) -> str:
    """'lm_<arch>[.<tag>]' for a timm 'arch[.tag]' ('' if there is no such LM model or tag)."""
    arch, tag = split_model_name_tag(timm_name)
    if not tag:
        return f'lm_{arch}' if f'lm_{arch}' in lm_names else ''
    for candidate in (f'lm_{arch}.{warm_start_tag(tag)}', f'lm_{arch}.{tag}'):
        if candidate in lm_names:
            return candidate
    return ''


def _mirror(values: List, lm_names: set, wanted: set) -> None:
    """Make the LM entries of one model list follow its timm entries (in place: it is the mark's list)."""
    timm_entries = {v for v in values if not v.startswith('lm_')}
    keep = [v for v in values if not v.startswith('lm_') or not _base_of(v)
            or _timm_entry_of(v, timm_entries)]
    added = [lm for v in values if not v.startswith('lm_')
             and (lm := _lm_name_for(v, lm_names)) and split_model_name_tag(lm)[0] in wanted and lm not in keep]
    values[:] = keep + added


def _timm_entry_of(lm_name: str, timm_entries: set) -> bool:
    arch, tag = split_model_name_tag(lm_name)
    base = arch[len('lm_'):]
    if not tag:
        return base in timm_entries
    plain_tag = tag[len(warm_start_tag('')):] if tag.startswith(warm_start_tag('')) else tag
    return f'{base}.{plain_tag}' in timm_entries


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc):
    wanted = set(metafunc.config.getoption('--lm-models'))
    if not wanted:
        return
    lm_names = set(timm.list_models('lm_*', include_tags=True)) | set(timm.list_models('lm_*'))
    for mark in metafunc.definition.iter_markers('parametrize'):
        names, values = mark.args[0], mark.args[1]
        if names == 'model_name' and isinstance(values, list) and all(isinstance(v, str) for v in values):
            _mirror(values, lm_names, wanted)  # idempotent: a list seen twice is left as it is


def pytest_collection_modifyitems(config, items):
    wanted = set(config.getoption('--lm-models'))
    keep, drop = [], []
    for item in items:
        name = getattr(getattr(item, 'callspec', None), 'params', {}).get('model_name')
        (keep if isinstance(name, str) and split_model_name_tag(name)[0] in wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
