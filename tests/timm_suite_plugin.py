"""pytest plugin that runs timm's own model test-suite on LM models.

Loaded with ``-p timm_suite_plugin`` into a pytest run of ``test_models.py`` from the source
distribution of the installed timm. It registers the LM models before timm's module collects (so that
its ``list_models()`` parametrisations include them) and keeps only the items parametrised with one of
the models named by ``--lm-models``: the suite's own tests and checks, unchanged, on those models.
"""
import timm_lm  # noqa: F401  (registers the LM models before test_models.py is imported)


def pytest_addoption(parser):
    parser.addoption('--lm-models', nargs='+', default=[], help='LM model names to run timm\'s model tests on')


def pytest_collection_modifyitems(config, items):
    wanted = set(config.getoption('--lm-models'))
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        (keep if params.get('model_name') in wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
