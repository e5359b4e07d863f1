"""MNIST-format (idx) image sets held in memory, with timm's training augmentation applied batch-wise.

Why this exists: timm's ``torch/fashion_mnist`` dataset goes through torchvision, which turns every image
into a PIL image and runs the transforms one image at a time in Python. On a 2-core machine that costs
about 30 s per Fashion-MNIST epoch and a few seconds per pass over the test set. Here the idx files
(plain or ``.gz``, as Debian ships them) are decoded once into a uint8 tensor and every batch is
transformed with a few tensor operations (about 4 s per epoch).

The batches are timm's, bit for bit: for the same seed, ``IdxLoader`` gives the same tensors as
``timm.data.create_loader`` over torchvision's dataset with the transform timm builds for it
(``create_transform``, no prefetcher, no workers), which the tests check. That takes:

- the same random numbers, drawn in the same order: the DataLoader iterator's base seed and its
  RandomSampler's seed and permutation from torch's generator; then, image by image, the crop
  parameters from timm's own ``RandomResizedCropAndInterpolation.get_params`` (Python's ``random``), the
  flip (``torch.rand(1) < hflip``) and, where timm adds a ``ColorJitter`` of strength 0, the
  ``torch.randperm(4)`` it draws to order adjustments it then does not make;
- the same pixels: PIL's bilinear resampling of the crop, reproduced as separable weight matrices in
  PIL's fixed point, horizontal pass first, each pass rounded to 8 bits as PIL does (where a crop is
  shrunk in both directions, which timm's default scale allows on larger images, PIL's one-call resize
  can round one grey level differently); then ``x / 255`` and ``(x - mean) / std`` in float32, as
  ``ToTensor`` + ``Normalize``; evaluation with ``crop_pct=1`` at the images' own size is that
  normalisation alone;
- the same batches: a new permutation each epoch, and training drops the last partial batch.

Not implemented, and refused by the trainer rather than ignored: colour jitter above 0, auto-augment,
random erasing, interpolation other than bilinear, evaluation at another size or crop.
"""
import functools
import gzip
import math
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from timm.data.transforms import RandomResizedCropAndInterpolation

__all__ = ['IDX_FILES', 'IdxError', 'IdxLoader', 'find_idx_files', 'idx_bytes', 'read_idx', 'load_idx_split',
           'random_resized_crop']

# split -> (images, labels), the names of MNIST, Fashion-MNIST and KMNIST (each also as <name>.gz)
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_UBYTE = 0x08


class IdxError(ValueError):
    """A missing or malformed idx file: the message names the file and what is wrong with it."""


def find_idx_files(folder: Path) -> Dict[str, Path]:
    """Every file of ``IDX_FILES`` in ``folder`` (plain or .gz), by name; IdxError names those missing."""
    found, missing = {}, []
    for name in (n for pair in IDX_FILES.values() for n in pair):
        path = next((p for p in (folder / name, folder / f'{name}.gz') if p.is_file()), None)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise IdxError(f'{folder}: idx files missing ({", ".join(missing)}, plain or .gz)')
    return found


def idx_bytes(path: Path) -> bytes:
    """The contents of an idx file, decompressed if its name ends in .gz."""
    try:
        opener = gzip.open if path.suffix == '.gz' else open
        with opener(path, 'rb') as f:
            return f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise IdxError(f'{path}: cannot be read ({err})') from None


def read_idx(path: Path) -> torch.Tensor:
    """An idx file of unsigned bytes (magic 0x0000080N, N big-endian dimensions, then the data) as uint8."""
    data = idx_bytes(path)
    if len(data) < 4 or data[:2] != b'\0\0' or data[2] != _UBYTE or not 1 <= data[3] <= 4:
        raise IdxError(f'{path}: not an idx file of unsigned bytes (bad magic number)')
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) != offset + math.prod(shape):
        raise IdxError(f'{path}: {len(data) - offset} data bytes where its header says {shape} '
                       f'({math.prod(shape)}); the file is truncated or corrupt')
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=offset).reshape(shape)


def load_idx_split(folder: Path, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 N x 1 x H x W, labels int64 N) of ``split`` ('train' or 'test') in ``folder``."""
    if split not in IDX_FILES:
        raise IdxError(f'split {split!r}: an idx folder has the splits {", ".join(IDX_FILES)}')
    files = find_idx_files(Path(folder))
    images, labels = (read_idx(files[name]) for name in IDX_FILES[split])
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise IdxError(f'{folder}: {split} images {tuple(images.shape)} and labels {tuple(labels.shape)} '
                       f'do not pair up (want N x H x W and N)')
    return images.unsqueeze(1), labels.long()


_PRECISION_BITS = 22  # PIL's fixed point for 8-bit images: coefficients and sums in units of 2**-22


def resample_weights(start: torch.Tensor, length: torch.Tensor, out_size: int, in_size: int) -> torch.Tensor:
    """B x out_size x in_size matrices of PIL's bilinear resampling of the windows [start, start + length).

    Row r holds the weights of output pixel r, computed as PIL's ``precompute_coeffs`` does in the crop's
    own coordinates: a triangle filter centred on ``(r + 0.5) * scale`` (``scale = length / out_size``)
    with support ``max(scale, 1)``, normalised over the window's pixels (so the crop's border pixels stand
    in for what lies outside it), then rounded to PIL's fixed point. float64, zero outside the window.
    """
    scale = (length.double() / out_size)[:, None, None]
    inv_support = 1.0 / scale.clamp(min=1.0)
    centre = (torch.arange(out_size, dtype=torch.float64)[None, :, None] + 0.5) * scale
    pixel = (torch.arange(in_size)[None, None, :] - start[:, None, None]).double()  # exact integers
    weight = (1 - ((pixel - centre + 0.5) * inv_support).abs()).clamp(min=0)  # PIL's order of operations
    weight = weight * ((pixel >= 0) & (pixel < length[:, None, None]))
    weight = weight / weight.sum(-1, keepdim=True)
    return torch.floor(weight * (1 << _PRECISION_BITS) + 0.5) / (1 << _PRECISION_BITS)


def _resample_pass(x: torch.Tensor) -> torch.Tensor:
    """PIL's rounding of one pass to 8 bits: half up, clipped (exact: x is a sum of bytes times 2**-22)."""
    return torch.floor(x + 0.5).clamp_(0, 255)


@functools.lru_cache(maxsize=4)
def _weight_table(in_size: int, out_size: int) -> torch.Tensor:
    """``resample_weights`` of every window of an ``in_size`` line: [start, length] -> out_size x in_size.

    One table per image and output size (28 x 29 windows, 5 MB for Fashion-MNIST), so that a batch's
    weights are one lookup instead of a dozen small tensor operations per batch.
    """
    start, length = torch.meshgrid(torch.arange(in_size), torch.arange(1, in_size + 1), indexing='ij')
    table = resample_weights(start.reshape(-1), length.reshape(-1), out_size, in_size)
    return torch.cat([table.new_zeros(in_size, 1, out_size, in_size),  # length 0 never occurs
                      table.reshape(in_size, in_size, out_size, in_size)], dim=1)


def _draw_like_timm(images: torch.Tensor, scale: Sequence[float], ratio: Sequence[float], hflip: float,
                    color_jitter: Optional[float]) -> Tuple[list, torch.Tensor]:
    """Crop parameters and flips, drawn image by image as timm's train transform draws them."""
    params, flips = [], []
    for image in images:
        params.append(RandomResizedCropAndInterpolation.get_params(image, scale, ratio))
        if hflip > 0:  # timm adds RandomHorizontalFlip only then
            flips.append(bool(torch.rand(1) < hflip))
        if color_jitter is not None:  # ColorJitter(0, 0, 0) still draws the order of its adjustments
            torch.randperm(4)
    return params, torch.tensor(flips or [False] * len(images))


def random_resized_crop(images: torch.Tensor, size: Tuple[int, int], scale: Sequence[float],
                        ratio: Sequence[float], hflip: float, color_jitter: Optional[float] = None) -> torch.Tensor:
    """timm's RandomResizedCropAndInterpolation (bilinear) + RandomHorizontalFlip on a uint8 batch.

    Returns float32 pixel values (whole numbers in [0, 255]), PIL's wherever the crop is enlarged or
    kept (every crop of a 28x28 image with scale <= 1 at 28x28). ``color_jitter``: 0 where timm's
    transform has a ColorJitter that changes nothing (its random draw is made), None where it has none.
    """
    _, _, height, width = images.shape
    params, flip = _draw_like_timm(images, scale, ratio, hflip, color_jitter)
    top, left, crop_h, crop_w = (torch.tensor(p) for p in zip(*params))
    rows = _weight_table(height, size[0])[top, crop_h].unsqueeze(1)  # B x 1 x out_h x H
    cols = _weight_table(width, size[1])[left, crop_w]  # B x out_w x W
    cols = torch.where(flip[:, None, None], cols.flip(1), cols).unsqueeze(1)  # flipped: column c <- out_w - 1 - c
    x = _resample_pass(images.double() @ cols.transpose(2, 3))  # horizontal pass first, as PIL
    return _resample_pass(rows @ x).float()


class IdxLoader:
    """Batches of (normalised float32 images, int64 labels) from uint8 tensors, as timm's loader gives them.

    Training (``is_training=True``): shuffled each epoch, last partial batch dropped, and every image
    cropped and flipped as timm's train transform does (unless ``no_aug``). Evaluation: in order, every
    image, normalisation only (the images must already have the input size).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, is_training: bool,
                 input_size: Tuple[int, int, int], mean: Sequence[float], std: Sequence[float],
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, color_jitter: Optional[float] = None, no_aug: bool = False):
        if images.shape[1] != input_size[0]:
            raise IdxError(f'the images have {images.shape[1]} channel(s), the model takes {input_size[0]}: '
                           f'give input size {images.shape[1]}x{input_size[1]}x{input_size[2]}')
        if color_jitter:
            raise IdxError(f'colour jitter {color_jitter}: not implemented for idx data; give 0')
        if not len(mean) == len(std) == input_size[0]:
            raise IdxError(f'{len(mean)} mean and {len(std)} std values for {input_size[0]}-channel images: give one '
                           f'per channel (--mean, --std; Fashion-MNIST: 0.286 and 0.353)')
        self.resize = is_training and not no_aug
        if not self.resize and tuple(images.shape[2:]) != tuple(input_size[1:]):
            raise IdxError(f'{"evaluation" if not is_training else "training without augmentation"} uses the '
                           f'images as they are ({images.shape[2]}x{images.shape[3]}), not '
                           f'{input_size[1]}x{input_size[2]}: give that input size')
        self.images, self.labels = images, labels
        self.batch_size, self.is_training = batch_size, is_training
        self.size = tuple(input_size[1:])
        self.scale, self.ratio, self.hflip, self.color_jitter = tuple(scale), tuple(ratio), hflip, color_jitter
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.is_training else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        # torch's generator, as a DataLoader iterator uses it: a base seed (for worker processes), then
        # for shuffling, RandomSampler's seed for a generator of its own, and its permutation
        torch.empty((), dtype=torch.int64).random_()
        order: Optional[torch.Tensor] = None
        if self.is_training:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))
        for b in range(len(self)):
            index = slice(b * self.batch_size, (b + 1) * self.batch_size)
            chosen = order[index] if order is not None else index
            images, labels = self.images[chosen], self.labels[chosen]
            if self.resize:
                x = random_resized_crop(images, self.size, self.scale, self.ratio, self.hflip, self.color_jitter)
            else:
                x = images.float()
            yield x.div_(255).sub_(self.mean).div_(self.std), labels
