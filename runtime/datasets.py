"""Datasets by name (``digits``, ``synthetic``, ``imagefolder``) and the deterministic batch order.

Every dataset yields ``(image, label)`` with images shaped like the model's input
``(C, H, W)``, normalised to roughly zero mean and unit variance, and comes as a fixed train /
validation split:

- ``digits``: the 1,797 real 8x8 handwritten digits scikit-learn ships (10 classes), upscaled
  bilinearly to (H, W) and repeated over the C channels. The split is fixed (seed
  ``SPLIT_SEED``), whatever the training seed, so every job validates on the same images.
- ``synthetic``: ``num_samples`` images of ``num_classes`` classes, each a fixed random
  low-resolution prototype of its class plus Gaussian noise; generated per index, so it needs no
  memory and is learnable.
- ``imagefolder``: ``<path>/train/<class>/*`` and ``<path>/val/<class>/*`` (torchvision's
  ``ImageFolder``), resized to (H, W); images are read from disk at every access.

Batches follow ``EpochBatchSampler``: a permutation of the training split that depends only on
(seed, epoch), so a run resumed at (epoch, batch) sees exactly the batches it would have seen.
On several devices every global batch of that order is split into equal, disjoint shards, one
per rank (rank r takes the r-th slice), so the ranks together see the batches one device would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets, transforms

from spartan.resolve import data_path
from spartan.settings import Settings
from spartan.spec import JobSpec

log = logging.getLogger(__name__)

SPLIT_SEED = 0


@dataclass(frozen=True)
class DataSplits:
    """The training and validation splits of one dataset."""

    train: Dataset
    val: Dataset
    num_classes: int


DatasetBuilder = Callable[[JobSpec, Settings], DataSplits]
_DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator adding a dataset builder to the registry under ``name``."""

    def decorator(builder: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[name] = builder
        return builder

    return decorator


def dataset_names() -> list[str]:
    """Registered dataset names."""
    return sorted(_DATASETS)


def build_datasets(spec: JobSpec, settings: Settings) -> DataSplits:
    """The train/validation splits for ``spec.data``.

    Raises:
        ValueError: naming ``data.source`` or ``data.path``.
    """
    builder = _DATASETS.get(spec.data.source)
    if builder is None:
        raise ValueError(
            f"data.source: unknown dataset {spec.data.source!r}; known: {dataset_names()}"
        )
    splits = builder(spec, settings)
    if len(splits.train) < spec.training.batch_size:  # type: ignore[arg-type]
        raise ValueError(
            f"training.batch_size: {spec.training.batch_size} is larger than the training "
            f"split ({len(splits.train)} samples)"  # type: ignore[arg-type]
        )
    if splits.num_classes > spec.model.num_classes:
        raise ValueError(
            f"model.num_classes: the data has {splits.num_classes} classes, "
            f"more than num_classes={spec.model.num_classes}"
        )
    return splits


# batch order --------------------------------------------------------------------------------
def epoch_permutation(num_samples: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The training order of one epoch: a permutation depending only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


class EpochBatchSampler(Sampler[list[int]]):
    """Full batches of one epoch's permutation, starting at batch ``start_batch``.

    The last incomplete batch is dropped, so every epoch has ``num_samples // batch_size``
    steps. With ``world_size`` ranks, ``batch_size`` is the global batch and rank ``rank``
    gets its ``batch_size // world_size`` samples: the ``rank``-th slice of each batch.

    Raises:
        ValueError: naming ``training.batch_size`` when it is not a multiple of ``world_size``.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"training.batch_size: {batch_size} does not split evenly across "
                f"{world_size} devices (resources.devices)"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size

    @staticmethod
    def batches_per_epoch(num_samples: int, batch_size: int) -> int:
        return num_samples // batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch(self.num_samples, self.batch_size) - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.num_samples, seed=self.seed, epoch=self.epoch).tolist()
        total = self.batches_per_epoch(self.num_samples, self.batch_size)
        shard = self.batch_size // self.world_size
        for b in range(self.start_batch, total):
            start = b * self.batch_size + self.rank * shard
            yield order[start : start + shard]


def train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches of one training epoch in the deterministic order, from ``start_batch`` on; with
    ``world_size`` ranks, this rank's shard of each (global) batch of ``batch_size``."""
    sampler = EpochBatchSampler(
        len(dataset),  # type: ignore[arg-type]
        batch_size=batch_size,
        seed=seed,
        epoch=epoch,
        start_batch=start_batch,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory
    )


def eval_loader(
    dataset: Dataset, *, batch_size: int, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Batches of the validation split in order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def _split(num_samples: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Fixed (train, val) index lists."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = max(1, round(num_samples * val_fraction))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


# digits -------------------------------------------------------------------------------------
class UpscaledImages(Dataset):
    """Small grayscale images, resized to (H, W) and repeated over C channels on access."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, input_size: tuple[int, int, int]
    ) -> None:
        self.images = images  # (N, 1, h, w), normalised
        self.labels = labels  # (N,) int64
        self.input_size = input_size

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        channels, height, width = self.input_size
        image = self.images[index : index + 1]  # (1, 1, h, w)
        if image.shape[-2:] != (height, width):
            image = F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False)
        return image[0].expand(channels, height, width).contiguous(), int(self.labels[index])


@register_dataset("digits")
def _digits(spec: JobSpec, settings: Settings) -> DataSplits:
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, val_idx = _split(len(labels), spec.data.val_fraction)
    size = spec.model.input_size
    return DataSplits(
        train=UpscaledImages(images[train_idx], labels[train_idx], size),
        val=UpscaledImages(images[val_idx], labels[val_idx], size),
        num_classes=10,
    )


# synthetic ----------------------------------------------------------------------------------
class SyntheticImages(Dataset):
    """Class prototypes plus per-index Gaussian noise; sample i has label i mod num_classes."""

    def __init__(
        self,
        indices: list[int],
        *,
        num_classes: int,
        input_size: tuple[int, int, int],
        noise: float = 0.7,
        seed: int = SPLIT_SEED,
    ) -> None:
        self.indices = indices
        self.num_classes = num_classes
        self.input_size = input_size
        self.noise = noise
        self.seed = seed
        channels, height, width = input_size
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num_classes, channels, 4, 4, generator=generator)
        # (num_classes, C, H, W): smooth class patterns
        self.prototypes = F.interpolate(coarse, size=(height, width), mode="bilinear")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.indices[index]
        label = sample % self.num_classes
        generator = torch.Generator().manual_seed(self.seed * 7_919 + sample + 1)
        noise = torch.randn(self.input_size, generator=generator)
        return self.prototypes[label] + self.noise * noise, label


@register_dataset("synthetic")
def _synthetic(spec: JobSpec, settings: Settings) -> DataSplits:
    num_classes = spec.model.num_classes
    train_idx, val_idx = _split(spec.data.num_samples, spec.data.val_fraction)
    kwargs = {"num_classes": num_classes, "input_size": spec.model.input_size}
    return DataSplits(
        train=SyntheticImages(train_idx, **kwargs),  # type: ignore[arg-type]
        val=SyntheticImages(val_idx, **kwargs),  # type: ignore[arg-type]
        num_classes=num_classes,
    )


# imagefolder --------------------------------------------------------------------------------
@register_dataset("imagefolder")
def _imagefolder(spec: JobSpec, settings: Settings) -> DataSplits:
    assert spec.data.path is not None  # the schema requires it for imagefolder
    root = data_path(spec.data.path, settings, loc=("data", "path"))
    channels, height, width = spec.model.input_size
    if channels not in (1, 3):
        raise ValueError(f"model.input_size: imagefolder gives 1 or 3 channels, not {channels}")
    transform = transforms.Compose(
        [
            _ConvertMode("L" if channels == 1 else "RGB"),
            transforms.Resize((height, width)),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * channels, [0.5] * channels),
        ]
    )
    splits = {}
    for split in ("train", "val"):
        folder = Path(root) / split
        if not folder.is_dir():
            raise ValueError(f"data.path: {spec.data.path!r} has no {split}/ folder")
        splits[split] = datasets.ImageFolder(str(folder), transform=transform)
    train, val = splits["train"], splits["val"]
    if train.classes != val.classes:
        raise ValueError(
            f"data.path: train/ and val/ of {spec.data.path!r} must have the same class folders"
        )
    return DataSplits(train=train, val=val, num_classes=len(train.classes))


class _ConvertMode:
    """PIL mode conversion as a picklable transform (for DataLoader worker processes)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image):  # type: ignore[no-untyped-def]
        return image.convert(self.mode)
