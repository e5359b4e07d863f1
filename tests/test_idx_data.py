"""The in-memory idx loader against timm's own loader and PIL pipeline: the same batches for a seed, clear refusals."""
import dataclasses
import gzip
import random
import struct

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.data.transforms import RandomResizedCropAndInterpolation
from timm.utils import random_seed

from train_wrappers.idx_data import IdxError, IdxLoader, load_idx_split, random_resized_crop, read_idx
from train_wrappers.quickstart import RECIPE, torchvision_layout
from train_wrappers.trainer import create_split_loader

MEAN, STD = (0.2860,), (0.3530,)


def _timm_pil_reference(images, size, scale, ratio, params, flips):
    """timm's training crop (bilinear) + flip through torchvision's PIL functions, with given parameters."""
    out = []
    for image, (i, j, h, w), flip in zip(images, params, flips):
        pil = F.resized_crop(Image.fromarray(image[0].numpy(), mode='L'), i, j, h, w, list(size),
                             F.InterpolationMode.BILINEAR)
        out.append(torch.from_numpy(np.array(F.hflip(pil) if flip else pil)).float())
    return torch.stack(out)[:, None]


@pytest.mark.parametrize('size, scale, exact', [
    ((28, 28), (0.85, 1.0), True),   # the quickstart's recipe
    ((28, 28), (0.08, 1.0), True),   # strong crops, enlarged
    ((32, 32), (0.08, 1.0), True),
    ((16, 16), (0.08, 1.0), False),  # shrunk: PIL's one-call resize rounds differently, by one grey level
])
def test_crop_and_flip_give_pils_pixels(size, scale, exact):
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    random.seed(3)
    torch.manual_seed(3)
    got = random_resized_crop(images, size, scale, (0.9, 1.1), 0.5)
    random.seed(3)  # the same draws, in the same order: per image, crop parameters (timm's get_params) and flip
    torch.manual_seed(3)
    params, flips = [], []
    for image in images:
        params.append(RandomResizedCropAndInterpolation.get_params(image, scale, (0.9, 1.1)))
        flips.append(bool(torch.rand(1) < 0.5))
    flips = torch.tensor(flips)
    assert 0 < int(flips.sum()) < len(images) and len({p[2:] for p in params}) > 5
    expected = _timm_pil_reference(images, size, scale, (0.9, 1.1), params, flips)
    difference = (got - expected).abs()
    if exact:
        assert torch.equal(got, expected)
    else:
        assert difference.max() <= 1 and (difference > 0).float().mean() < 0.02


def test_same_batches_as_timms_loader_for_a_seed(fake_fmnist, tmp_path):
    """The quickstart's recipe: two epochs and the evaluations between them, from timm's create_loader over
    torchvision's FashionMNIST (PIL images, per-image transforms) and from the idx loader: equal tensors."""
    torchvision_cfg = dataclasses.replace(RECIPE, dataset='torch/fashion_mnist', batch_size=8, validation_batch_size=5,
                                          data_dir=str(torchvision_layout(fake_fmnist, tmp_path)))
    idx_cfg = dataclasses.replace(torchvision_cfg, dataset='idx', data_dir=str(fake_fmnist))
    data_config = resolve_data_config(dict(input_size=RECIPE.input_size, mean=RECIPE.mean, std=RECIPE.std,
                                           crop_pct=RECIPE.crop_pct, interpolation=RECIPE.interpolation))

    def batches(cfg):
        random_seed(cfg.seed, 0)
        train = create_split_loader(cfg, data_config, 'train', is_training=True)
        test = create_split_loader(cfg, data_config, 'test', is_training=False)
        return [batch for _ in range(2) for loader in (train, test) for batch in loader]

    expected, got = batches(torchvision_cfg), batches(idx_cfg)
    assert len(got) == len(expected) == 2 * (6 + 5)
    for (x, y), (x_timm, y_timm) in zip(got, expected):
        assert torch.equal(y, y_timm) and torch.equal(x, x_timm)
    assert not torch.equal(got[0][1], got[11][1])  # each epoch its own order


def test_eval_batches_equal_timms_eval_transform():
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(10)
    transform = create_transform((1, 28, 28), is_training=False, interpolation='bilinear', mean=MEAN, std=STD,
                                 crop_pct=1.0)
    expected = torch.stack([transform(Image.fromarray(i[0].numpy(), mode='L')) for i in images])
    batches = list(IdxLoader(images, labels, 4, False, (1, 28, 28), MEAN, STD))
    assert [len(y) for _, y in batches] == [4, 4, 2]  # every image, in order
    assert torch.equal(torch.cat([x for x, _ in batches]), expected)
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


def test_training_batches_shuffle_drop_the_last_partial_batch_and_follow_the_seed():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 28, 28).contiguous() * 20
    labels = torch.arange(10)
    loader = IdxLoader(images, labels, 4, True, (1, 28, 28), MEAN, STD, scale=(0.85, 1.0), ratio=(0.9, 1.1))
    assert len(loader) == 2

    def epoch(seed):
        torch.manual_seed(seed)
        random.seed(seed)
        return [(x.clone(), y.clone()) for x, y in loader]

    first, again = epoch(0), epoch(0)
    seen = torch.cat([y for _, y in first])
    assert len(seen) == 8 and len(set(seen.tolist())) == 8 and not torch.equal(seen, torch.arange(8))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    for x, y in first:  # constant images stay constant under crop and flip: each keeps its own label's value
        assert x.shape == (4, 1, 28, 28)
        assert torch.allclose(x[:, 0, 0, 0], (y * 20 / 255 - MEAN[0]) / STD[0])


def _write(path, magic_and_dims, payload):
    with gzip.open(path, 'wb') as f:
        f.write(struct.pack(f'>{len(magic_and_dims)}I', *magic_and_dims) + payload)


def test_read_idx_and_its_refusals(tmp_path):
    _write(tmp_path / 'ok.gz', (0x803, 2, 3, 4), bytes(range(24)))
    assert torch.equal(read_idx(tmp_path / 'ok.gz'), torch.arange(24, dtype=torch.uint8).view(2, 3, 4))
    _write(tmp_path / 'short.gz', (0x803, 2, 3, 4), bytes(20))
    with pytest.raises(IdxError, match='truncated or corrupt'):
        read_idx(tmp_path / 'short.gz')
    _write(tmp_path / 'float.gz', (0xD03, 1, 1, 1), bytes(4))
    with pytest.raises(IdxError, match='bad magic number'):
        read_idx(tmp_path / 'float.gz')
    (tmp_path / 'notgz.gz').write_bytes(b'plain text')
    with pytest.raises(IdxError, match='cannot be read'):
        read_idx(tmp_path / 'notgz.gz')


def test_load_split_names_what_is_missing(fake_fmnist, tmp_path):
    images, labels = load_idx_split(fake_fmnist, 'test')
    assert images.shape == (24, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    with pytest.raises(IdxError, match='idx files missing .*t10k-labels-idx1-ubyte'):
        (tmp_path / 'train-images-idx3-ubyte').write_bytes(b'')
        load_idx_split(tmp_path, 'train')
    with pytest.raises(IdxError, match="split 'validation'"):
        load_idx_split(fake_fmnist, 'validation')


def test_loader_refuses_a_size_it_does_not_resample():
    images, labels = torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(IdxError, match='1 channel'):
        IdxLoader(images, labels, 2, True, (3, 28, 28), MEAN * 3, STD * 3)
    with pytest.raises(IdxError, match='3 mean and 3 std values for 1-channel images'):
        IdxLoader(images, labels, 2, True, (1, 28, 28), MEAN * 3, STD * 3)  # e.g. ImageNet's, the model default
    with pytest.raises(IdxError, match='give that input size'):
        IdxLoader(images, labels, 2, False, (1, 32, 32), MEAN, STD)
    IdxLoader(images, labels, 2, True, (1, 32, 32), MEAN, STD)  # training resamples to any size
