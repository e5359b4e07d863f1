"""The ``timm-lm`` command: list the LM models, inspect a model's coefficients.

``timm-lm inspect`` prints, per stage and block, k_n, the modified-equation coefficients ``1 + k_n``
(on u') and ``(1 - k_n) / 2`` (on dt u''), the roots 1 and -k_n of the step's characteristic polynomial
with a zero-stability flag, and a one-line summary; ``--plot`` draws k_n against depth.

Bad input (unknown model, missing or corrupt file, unknown option) ends with one line on stderr that
says what is wrong and what to do, and exit status 2; nothing is written.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

import timm

from .analysis import format_coefficients, lm_coefficients, plot_coefficients, summarize_coefficients
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
    if args.plot and Path(args.plot).suffix.lower() not in ('.png', '.pdf', '.svg', '.jpg'):
        raise UsageError(f'--plot {args.plot}: give a .png, .pdf, .svg or .jpg file name')
    try:
        model, source = load_lm_model(args.model, model_name=args.arch, use_ema=args.ema)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    rows = lm_coefficients(model)
    print(source)
    print(format_coefficients(rows))
    print(summarize_coefficients(rows))
    if args.plot:
        if not rows:
            raise UsageError('the model has no LM coefficients to plot (lm=False)')
        try:
            plot_coefficients(rows, args.plot, title=f'k_n of {source}')
        except (RuntimeError, OSError) as err:
            raise UsageError(f'--plot {args.plot}: {err}') from None
        print(f'plot written to {args.plot}')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-lm', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('list', help='list the LM models registered in timm')
    p.add_argument('filter', nargs='?', help="wildcard filter, e.g. 'lm_resnet*cifar'")
    p.add_argument('--pretrained', action='store_true', help='only models with pretrained weights')
    p.set_defaults(run=_list)
    p = sub.add_parser('inspect', help="print a model's k_n by stage and block, with the modified-equation view")
    p.add_argument('model', help='an LM model name (initial k), a train.py checkpoint or state dict, '
                                 'a published Hub folder, or an hf-hub:/local-dir: name')
    p.add_argument('--plot', metavar='FILE', help='also draw k_n against depth with stage boundaries (matplotlib)')
    p.add_argument('--ema', action='store_true', help="a train.py checkpoint's EMA weights")
    p.add_argument('--arch', help='architecture of a checkpoint that does not record it (plain state dict)')
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
