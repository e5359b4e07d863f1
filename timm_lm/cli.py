"""The timm-lm command: list the LM models and their pretrained weights, inspect a model's k_n.

``timm-lm list`` prints model names, one per line; ``timm-lm list --pretrained`` prints pretrained
weights, one ``MODEL.TAG`` per line (a model can have several tags). Each also says on stderr how many
lines it printed, so that a pipe (``timm-lm list | head``) gets the names alone.

``timm-lm inspect`` prints, per stage and block, k_n, the modified-equation coefficients ``1 + k_n``
(on u') and ``(1 - k_n) / 2`` (on dt u''), the roots 1 and -k_n of the step's characteristic polynomial
with a zero-stability flag, and a one-line summary; ``--plot`` draws k_n against depth.

Bad input (unknown model, missing or corrupt file, unknown option) ends with one line on stderr that
says what is wrong and what to do, and exit status 2; nothing is written. ``ArgumentParser`` and
``ParseKwargs`` here give every command of the project (``train_wrappers`` too) that convention.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

import timm
import timm.utils

from .analysis import format_coefficients, lm_coefficients, plot_coefficients, summarize_coefficients
from .loading import CheckpointError, load_lm_model


class UsageError(Exception):
    """An error in what the user asked for: reported as one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's convention for bad input: one line on stderr, exit status 2.

    argparse's own error() prints the whole usage block before the message; here the message names the
    option and points at --help instead. Subcommand parsers inherit it.
    """

    def error(self, message: str):
        self.exit(2, f'{self.prog}: {message} (see {self.prog} --help)\n')


class ParseKwargs(timm.utils.ParseKwargs):
    """timm's ``key=value`` option parser (``--model-kwargs``), with a usage error for an item without '='."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = next((v for v in values if v and '=' not in v), None)
        if bad is not None:
            parser.error(f'{option_string} {bad}: give key=value pairs, e.g. k_stable=True')
        super().__call__(parser, namespace, values, option_string)


def _list(args: argparse.Namespace) -> None:
    names = [n for n in timm.list_models(args.filter or 'lm_*', pretrained=args.pretrained) if n.startswith('lm_')]
    if not names:
        raise UsageError(f'no LM model matches {args.filter!r}: try "timm-lm list" for all of them')
    print('\n'.join(names))
    if args.pretrained:
        models = len({n.split('.')[0] for n in names})
        print(f'{len(names)} pretrained weights (MODEL.TAG) of {models} LM models', file=sys.stderr)
    else:
        print(f'{len(names)} LM models ("timm-lm list --pretrained" lists their pretrained weights, '
              f'one MODEL.TAG per line)', file=sys.stderr)


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
    parser = ArgumentParser(prog='timm-lm', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('list', help='print the LM model names, one per line (--pretrained: their weights)',
                       description='Print the LM model names registered in timm, one per line; with --pretrained, '
                                   'their pretrained weights, one MODEL.TAG per line (several per model).')
    p.add_argument('filter', nargs='?', help="wildcard filter, e.g. 'lm_resnet*cifar'")
    p.add_argument('--pretrained', action='store_true',
                   help='print pretrained weights as MODEL.TAG, one line per tag, instead of model names')
    p.set_defaults(run=_list)
    p = sub.add_parser('inspect', help="print a model's k_n by stage and block, with the modified-equation view",
                       description="Print a model's k_n by stage and block, with the modified-equation view.")
    p.add_argument('model', help='an LM model name (initial k), a train.py checkpoint or state dict, '
                                 'a published Hub folder, or an hf-hub:/local-dir: name')
    p.add_argument('--plot', metavar='FILE', help='also draw k_n against depth with stage boundaries (matplotlib)')
    p.add_argument('--ema', action='store_true', help="a train.py checkpoint's EMA weights")
    p.add_argument('--arch', help='architecture of a checkpoint that does not record it (plain state dict)')
    p.set_defaults(run=_inspect)
    return parser


def _stdout_closed() -> int:
    """The reader of stdout went away (``timm-lm list | head``): stop quietly, as Python's docs advise.

    stdout is pointed at /dev/null so that the interpreter's final flush does not raise again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except UsageError as err:
        print(f'timm-lm {args.command}: {err}', file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _stdout_closed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
