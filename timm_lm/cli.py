"""The ``timm-lm`` command: list the LM models, inspect a model's coefficients.

Bad input (unknown model, missing or corrupt file, unknown option) ends with one line on stderr that
says what is wrong and what to do, and exit status 2; nothing is written.
"""
import argparse
import sys
from typing import List, Optional

import timm

from .analysis import format_coefficients
from .loading import CheckpointError, load_lm_model


class UsageError(Exception):
    """An error in what the user asked for: reported as one line, exit status 2."""


def _list(args: argparse.Namespace) -> None:
    names = timm.list_models(args.filter or 'lm_*', pretrained=args.pretrained)
    names = [n for n in names if n.startswith('lm_')]
    if not names:
        raise UsageError(f'no LM model matches {args.filter!r}: try "timm-lm list" for all of them')
    print('\n'.join(names))


def _inspect(args: argparse.Namespace) -> None:
    try:
        model, source = load_lm_model(args.model)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    print(source)
    print(format_coefficients(model))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-lm', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('list', help='list the LM models registered in timm')
    p.add_argument('filter', nargs='?', help="wildcard filter, e.g. 'lm_resnet*cifar'")
    p.add_argument('--pretrained', action='store_true', help='only models with pretrained weights')
    p.set_defaults(run=_list)
    p = sub.add_parser('inspect', help="print a model's k_n by stage and block")
    p.add_argument('model', help='an LM model name, a train.py checkpoint, or a published Hub folder')
    p.set_defaults(run=_inspect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UsageError as err:
        print(f'timm-lm {args.command}: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
