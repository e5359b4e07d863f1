"""Run one of timm's stock scripts with the LM models registered.

    python -m train_wrappers.run SCRIPT.py [script args ...]
    torchrun --nproc_per_node=8 -m train_wrappers.run train.py --config RECIPE.yaml ...

timm's scripts look models up by name in timm's registry, and 'lm_*' names are only there after
'import timm_lm'. Only train.py can import a module itself ('--device-modules timm_lm'); validate.py,
benchmark.py, inference.py and onnx_export.py cannot. This wrapper imports 'timm_lm' and then runs the
script exactly as 'python SCRIPT.py args' would: as '__main__', with its own argv, with its folder
first on 'sys.path' (so a pytorch-image-models checkout uses its own 'timm/', as it does when run
directly), and with its exit status. Nothing is copied from or patched into the scripts.

A bare script name ('validate.py') that is not a file here is looked up in '$TIMM_SCRIPTS_DIR'.
"""
import os
import runpy
import sys
from typing import List, Optional

USAGE = 'usage: python -m train_wrappers.run SCRIPT.py [script args ...]  (or: timm-lm-run SCRIPT.py ...)'
SCRIPTS_ENV = 'TIMM_SCRIPTS_DIR'
GET_SCRIPTS = ("timm's scripts come with a pytorch-image-models checkout "
               '(git clone https://github.com/huggingface/pytorch-image-models): '
               f'pass the path of a script in it, or set {SCRIPTS_ENV} to the checkout to use bare names')


def resolve_script(name: str) -> str:
    """The file to run: ``name`` itself if it exists, else ``$TIMM_SCRIPTS_DIR/name`` for a bare name."""
    scripts_dir = os.environ.get(SCRIPTS_ENV)
    if os.path.exists(name) or not scripts_dir or os.path.dirname(name):
        return name
    return os.path.join(scripts_dir, name)


def script_error(name: str, path: str) -> Optional[str]:
    """One line saying why ``path`` (resolved from ``name``) cannot be run, or None if it can."""
    if os.path.isfile(path) and os.access(path, os.R_OK):
        return None
    looked = repr(path) if path == name else f'{path!r} (from {name!r} and {SCRIPTS_ENV})'
    why = 'is not a readable file' if os.path.exists(path) else 'does not exist'
    return f'train_wrappers.run: script {looked} {why}; {GET_SCRIPTS}'


def run_script(path: str, args: List[str]) -> None:
    """Run ``path`` as ``__main__`` with ``argv = [path, *args]``; SystemExit and errors propagate."""
    sys.argv = [path, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # as `python path` does
    import timm_lm  # noqa: F401  (registers the LM models; after the path change, so timm resolves as for the script)
    runpy.run_path(path, run_name='__main__')


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m train_wrappers.run`` and of the ``timm-lm-run`` console script.

    --help prints the module docstring, so that is written as plain text.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ('-h', '--help'):
        print(USAGE)
        print(__doc__)
        return 0
    name, args = argv[0], argv[1:]
    path = resolve_script(name)
    error = script_error(name, path)
    if error:
        print(error, file=sys.stderr)
        return 2
    run_script(path, args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
