"""Test set-up: no network, and a Hugging Face cache that the tests lay out themselves.

The Hub variables are read when huggingface_hub is imported, so they are set here, before timm (and
through it huggingface_hub) is imported: every hub load in the tests then runs timm's and
huggingface_hub's real resolution code against this temporary cache, offline.
"""
import gzip
import os
import struct
import tempfile
from pathlib import Path

# one compute thread per test process: pytest-xdist runs a process per core, and OpenMP threads that wait on
# each other across oversubscribed cores make small models 10-30x slower
os.environ.setdefault('OMP_NUM_THREADS', '1')

HF_CACHE = Path(tempfile.mkdtemp(prefix='timm-lm-test-hf-cache-'))
os.environ['HF_HUB_CACHE'] = str(HF_CACHE)
os.environ['HF_HUB_OFFLINE'] = '1'
for _var in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_ENDPOINT'):
    os.environ.pop(_var, None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import timm_lm  # noqa: E402,F401  (registers the LM models)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def hf_cache():
    """Put files into the offline Hugging Face cache: ``hf_cache(repo_id, {filename: writer(path)})``."""
    def put(repo_id: str, files: dict) -> Path:
        repo = HF_CACHE / ('models--' + repo_id.replace('/', '--'))
        commit = f'{abs(hash(repo_id)):040d}'[:40]
        snapshot = repo / 'snapshots' / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / 'refs').mkdir(exist_ok=True)
        (repo / 'refs' / 'main').write_text(commit)
        for name, write in files.items():
            write(snapshot / name)
        return snapshot
    return put


def _write_idx(path, array, labels=False):
    header = struct.pack('>II', 0x801, len(array)) if labels else struct.pack('>IIII', 0x803, *array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_fake_fmnist(root, train: int, test: int):
    rng = np.random.default_rng(0)
    for prefix, n in (('train', train), ('t10k', test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 64, (n, 28, 28)) + 19 * labels[:, None, None]
        _write_idx(root / f'{prefix}-images-idx3-ubyte.gz', images)
        _write_idx(root / f'{prefix}-labels-idx1-ubyte.gz', labels, labels=True)
    return root


@pytest.fixture(scope='session')
def fake_fmnist(tmp_path_factory):
    """A tiny Fashion-MNIST in Debian's file format (idx, gzipped): 48 training and 24 test images."""
    return _write_fake_fmnist(tmp_path_factory.mktemp('fmnist'), 48, 24)


@pytest.fixture(scope='session')
def fake_fmnist_4_batches(tmp_path_factory):
    """The same format with 512 training images: four of the quickstart's batches of 128."""
    return _write_fake_fmnist(tmp_path_factory.mktemp('fmnist512'), 512, 24)
