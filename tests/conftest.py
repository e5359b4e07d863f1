"""Test set-up: no network, and a Hugging Face cache that the tests lay out themselves.

The Hub variables are read when huggingface_hub is imported, so they are set here, before timm (and
through it huggingface_hub) is imported: every hub load in the tests then runs timm's and
huggingface_hub's real resolution code against this temporary cache, offline.
"""
import os
import tempfile
from pathlib import Path

HF_CACHE = Path(tempfile.mkdtemp(prefix='timm-lm-test-hf-cache-'))
os.environ['HF_HUB_CACHE'] = str(HF_CACHE)
os.environ['HF_HUB_OFFLINE'] = '1'
for _var in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_ENDPOINT'):
    os.environ.pop(_var, None)

import pytest  # noqa: E402
import torch  # noqa: E402

import timm_lm  # noqa: E402,F401  (registers the LM models)

torch.set_num_threads(min(2, torch.get_num_threads()))


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
