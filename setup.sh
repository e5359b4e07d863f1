#!/usr/bin/env bash
# Set-up for a fresh machine, safe to run again (it only installs what changed):
#  - .venv/ with torch, timm-lm (editable) and its test tools;
#  - timm's own model test-suite (tests/test_models.py of the installed timm's source distribution, from
#    PyPI) under .timm-tests/, which tests/test_timm_model_suite.py runs on the LM models;
#  - Debian's Fashion-MNIST (dataset-fashion-mnist) for the quickstart, when apt-get can be used.
# TORCH_PIP_SPEC overrides the torch pin (the default is the build that this project is tested with).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

python=${PYTHON:-python3}
torch_spec=${TORCH_PIP_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
[ -x .venv/bin/python ] || "$python" -m venv .venv

stamp=.venv/.timm-lm-setup
want=$(cat pyproject.toml setup.sh | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install -q $torch_spec
    .venv/bin/python -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi

.ci/fetch-timm-suite "$(.venv/bin/python -c 'import timm; print(timm.__version__)')"

fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/train-images-idx3-ubyte.gz" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
    else
        echo "setup.sh: Fashion-MNIST is not installed; run 'sudo apt-get install dataset-fashion-mnist'" \
             "(or pass --data-dir to the quickstart)" >&2
    fi
fi
