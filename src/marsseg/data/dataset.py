"""A torch Dataset serving (float image, long mask) pairs, and the DataLoader factory."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from marsseg.data.augment import augment_pair, crop_around_class
from marsseg.data.mixing import class_components, cutmix, frame_window, paste_components

# Fixed scaling (not fitted to the data, so a checkpoint needs no statistics): gray 0..255 -> about -1..1.
PIXEL_CENTER, PIXEL_SCALE = 127.5, 127.5


def scale_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Gray values 0..255 (float) -> the model's input range, about -1..1; the exported ONNX graph calls it too."""
    return (pixels - PIXEL_CENTER) / PIXEL_SCALE


def images_to_tensor(images: np.ndarray, *, in_channels: int = 1) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, C, H, W) float32, the gray channel replicated when C is 3."""
    tensor = scale_pixels(torch.from_numpy(np.ascontiguousarray(images)).float())
    return tensor.unsqueeze(1).expand(-1, in_channels, -1, -1).contiguous()


class SegmentationDataset(Dataset):
    """Samples `indices` of (images, masks), augmented by `pipeline` when given.

    Indices may repeat (oversampling); each repetition is augmented independently. Before `pipeline`, with their
    probabilities: a crop whose frame partner is in `below` ((N,) the crop under each top half, else -1: pairs within
    `indices`, split.frames_among) is replaced by a window between the two halves (`frame_shift`,
    mixing.frame_window); a big-rock image is replaced by a zoom centred on its big rock (`rare_crop`);
    1..`copy_paste_count` big-rock components cut from the crops of `indices` are pasted onto the image
    (`copy_paste`, data/mixing.py); a box of another crop of `indices` replaces the same box of the image and its mask
    (`cutmix`).
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        indices: np.ndarray,
        *,
        pipeline=None,
        in_channels: int = 1,
        rare_crop: float = 0.0,
        rare_crop_min_scale: float = 0.5,
        copy_paste: float = 0.0,
        copy_paste_count: int = 2,
        cutmix: float = 0.0,
        frame_shift: float = 0.0,
        below: np.ndarray | None = None,
    ):
        self.images, self.masks, self.indices = images, masks, np.asarray(indices)
        self.pipeline, self.in_channels = pipeline, in_channels
        self.rare_crop, self.rare_crop_min_scale = rare_crop, rare_crop_min_scale
        self.copy_paste, self.copy_paste_count, self.cutmix = copy_paste, copy_paste_count, cutmix
        self.components = class_components(images, masks, self.indices) if copy_paste > 0 else []
        self.frame_shift = frame_shift
        self.below = np.full(len(images), -1) if below is None else np.asarray(below)
        self.above = np.full(len(images), -1)
        self.above[self.below[self.below >= 0]] = np.nonzero(self.below >= 0)[0]
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.indices)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation's random stream (per epoch, and per worker), so runs and resumes repeat."""
        if self.pipeline is not None:
            self.pipeline.set_random_seed(seed)
        # Albumentations seeds its transforms with default_rng(seed): a stream of their own keeps the crops'
        # draws apart from theirs.
        self.rng = np.random.default_rng([seed, 1])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices[position]
        image, mask = self.images[index], self.masks[index]
        top, bottom = (index, self.below[index]) if self.below[index] >= 0 else (self.above[index], index)
        if self.frame_shift > 0 and top >= 0 and bottom >= 0 and self.rng.random() < self.frame_shift:
            image, mask = frame_window(
                (self.images[top], self.masks[top]), (self.images[bottom], self.masks[bottom]), self.rng
            )
        if self.rare_crop > 0 and self.rng.random() < self.rare_crop:
            image, mask = crop_around_class(image, mask, self.rng, self.rare_crop_min_scale)
        if self.copy_paste > 0 and self.rng.random() < self.copy_paste:
            count = int(self.rng.integers(1, self.copy_paste_count + 1))
            image, mask = paste_components(image, mask, self.components, self.rng, count)
        if self.cutmix > 0 and self.rng.random() < self.cutmix:
            other = self.indices[self.rng.integers(len(self.indices))]
            image, mask = cutmix(image, mask, self.images[other], self.masks[other], self.rng)
        image, mask = augment_pair(self.pipeline, image, mask)
        return images_to_tensor(image[None], in_channels=self.in_channels)[0], torch.from_numpy(
            np.ascontiguousarray(mask)
        ).long()


def _seed_worker(worker_id: int) -> None:
    # Each worker holds a copy of the dataset; without this all workers would draw the same augmentations.
    # torch.initial_seed() differs per worker and per epoch and follows the loader's seeded generator.
    dataset = torch.utils.data.get_worker_info().dataset
    if hasattr(dataset, "reseed"):
        dataset.reseed(torch.initial_seed() % 2**32)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    *,
    num_workers: int = 0,
    sampler=None,
    drop_last: bool = False,
) -> DataLoader:
    """A seeded DataLoader; `sampler` replaces shuffling when given."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
    )
