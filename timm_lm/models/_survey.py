"""Which timm models the LM rule cannot take, and why: the source of ``_exclusions.py``.

    python -m timm_lm.models._survey [--modules resnet convnext ...] [--write]

For every model of every timm module with an LM family, timm's own model is built on the meta device
and its block containers are read as an LM model would read them. A model is excluded when it has no
two consecutive residual blocks of one shape (the LM rule would change nothing), when it uses a block
type that ``timm_lm.blocks`` does not know, or when it builds another class than its family's. Run it
with ``--write`` after upgrading timm; the tests check that the file matches the installed timm.
"""
import argparse
import sys
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import timm
import torch

from ..stage import two_step_positions
from ._base import timm_class_of

__all__ = ['exclusion_reason', 'survey', 'render', 'main']

EXCLUSIONS_FILE = Path(__file__).with_name('_exclusions.py')


def exclusion_reason(timm_name: str, lm_classes: Sequence[type]) -> Optional[str]:
    """Why no class of ``lm_classes`` can extend timm's ``timm_name``, or None if one can."""
    with warnings.catch_warnings(), torch.device('meta'):
        warnings.simplefilter('ignore')
        model = timm.create_model(timm_name)
    lm_cls = {timm_class_of(c): c for c in lm_classes}.get(type(model))
    if lm_cls is None:
        return f'builds a {type(model).__name__}, which has no LM class'
    try:
        positions = [two_step_positions(model.get_submodule(p)) for p in lm_cls.lm_stage_paths(model)]
    except ValueError as err:  # a block type the LM rule does not know
        return str(err).split(' is not supported')[0].replace('block=', 'block type ') + ' is not supported'
    if not any(any(p) for p in positions):
        return 'no two consecutive residual blocks of one shape'
    return None


def survey(families: Dict[str, Sequence[type]], modules: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, str]]:
    """{timm module: {timm model name: reason}} for the models each family must leave out."""
    found = {}
    for module in modules or families:
        found[module] = {name: reason for name in timm.list_models(module=module)
                         if (reason := exclusion_reason(name, families[module])) is not None}
    return found


def render(found: Dict[str, Dict[str, str]]) -> str:
    lines = [
        '"""timm models that have no LM version, and why (generated: python -m timm_lm.models._survey --write).',
        '',
        f'Surveyed with timm {timm.__version__}; tests/test_registry.py checks it against the installed timm.',
        '"""',
        '',
        'EXCLUDED = {',
    ]
    for module in sorted(found):
        for name, reason in sorted(found[module].items()):
            lines.append(f'    {name!r}: {f"{module}: {reason}"!r},')
    lines.append('}')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    from . import FAMILIES
    parser = argparse.ArgumentParser(prog='python -m timm_lm.models._survey', description=__doc__.splitlines()[0])
    parser.add_argument('--modules', nargs='+', choices=sorted(FAMILIES), help='timm modules to survey (default: all)')
    parser.add_argument('--write', action='store_true', help=f'rewrite {EXCLUSIONS_FILE.name} (needs all modules)')
    args = parser.parse_args(argv)
    if args.write and args.modules:
        parser.error('--write surveys every family: drop --modules')
    found = survey(FAMILIES, args.modules)
    text = render(found)
    if args.write:
        EXCLUSIONS_FILE.write_text(text)
        print(f'wrote {EXCLUSIONS_FILE} ({sum(map(len, found.values()))} models excluded)')
    else:
        sys.stdout.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
