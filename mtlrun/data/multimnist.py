"""MultiMNIST and MultiFashion, built as Sener & Koltun did, from the IDX files the user already has.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS 2018), and their reference
code (github.com/isl-org/MultiObjectiveOptimization, ``multi_task/loaders/multi_mnist_loader.py``):
every source image becomes the *left* digit of one example; a second image drawn uniformly at random is the
*right* digit. On a 36x36 canvas the left digit sits at the top-left corner (rows and columns 0..27) and the
right digit is shifted 6 pixels down and right (rows and columns 6..33); where they overlap the brighter
pixel wins (pixel-wise max). The canvas is resized to 28x28 by nearest neighbour. Tasks: ``left`` and
``right``, the two source labels (10 classes each). MultiFashion is the same construction on Fashion-MNIST,
whose four files have the same names.

Our own choices, where the reference code leaves room:

- Nearest-neighbour sampling takes output pixel i from canvas pixel floor((i + 0.5) * 36 / 28), as PIL's
  NEAREST resize that the reference's ``scipy.misc.imresize(..., interp='nearest')`` called. That scipy
  function also stretched each canvas's intensity range to 0..255 (a no-op when the canvas already spans
  0..255); we keep the raw values. Inputs are scaled to [0, 1].
- The right digit is never the left digit's own image (the reference allows it with probability 1/N);
  the two labels may still be equal, as in the reference.
- Validation: ``val_size`` source images are carved from the training file (seeded) and pairs are drawn
  inside each pool, so no source image appears in two splits. Test pairs come from the t10k files.
- ``n_train`` / ``n_val`` / ``n_test`` subsample: that many distinct left images of the pool (null = all,
  one example per source image as in the reference); the right digit is drawn from the whole pool.
  Each split draws from its own stream of ``seed``, so changing one split's size leaves the others as
  they were.

Nothing is downloaded. The built pairs are cached (uint8) in ``<root>/.mtlrun_cache/<name>-<hash>.pt`` (or
``cache_dir``), keyed by every parameter and the source files' sizes and modification times, and loaded
with ``torch.load(weights_only=True)`` the next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from mtlrun.data import files
from mtlrun.data.base import SPLITS, Split, TensorData
from mtlrun.data.files import resolve_path
from mtlrun.data.idx import read_idx
from mtlrun.errors import ConfigError, DataError

log = logging.getLogger("mtlrun")

# The four files of MNIST and of Fashion-MNIST, each plain or with a .gz suffix.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Where each variant's files come from (printed when they are missing; mtlrun never downloads them).
SOURCES = {
    "multimnist": "MNIST (https://yann.lecun.com/exdb/mnist/ or any mirror of the same four files; "
    "torchvision keeps them in <its root>/MNIST/raw)",
    "multifashion": "Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist, folder data/fashion; "
    "torchvision keeps them in <its root>/FashionMNIST/raw)",
}
DIGIT = 28  # source images are DIGIT x DIGIT, and so are the built examples
CANVAS = 36  # the canvas both digits are placed on
SHIFT = 6  # the right digit's offset down and right on the canvas
NUM_CLASSES = 10
CACHED = ("x", "left", "right", "left_index", "right_index")  # tensors cached per split
CACHE_VERSION = 1  # bump when the construction changes, so old caches are not reused


def expected_files() -> str:
    return files.expected_files(FILES)


def find_files(root: Path, name: str) -> dict[str, Path]:
    """The four IDX files in ``root`` (plain preferred over ``.gz``); a DataError names what is missing."""
    where = SOURCES.get(name, "MNIST-format IDX files")
    hint = (
        f"data set {name} reads the four MNIST-format files {expected_files()} from data.root; "
        f"get them from {where}, put them in one directory and pass it as data.root=DIR "
        "(mtlrun downloads nothing)"
    )
    return files.find_files(root, FILES, hint)


def load_source(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] int64 from one pair of IDX files, checked against each other."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != (DIGIT, DIGIT):
        raise DataError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}; the MultiMNIST construction "
            f"needs {DIGIT}x{DIGIT} (MNIST, Fashion-MNIST)"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}; "
            "the two files must come from the same set"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_path}: label {labels.max()} outside 0..{NUM_CLASSES - 1}")
    return images, labels.astype(np.int64)


def overlap(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """[N, 28, 28] left and right digits on [N, 36, 36] canvases: left at the origin, right shifted by 6,
    pixel-wise max where they overlap."""
    canvas = np.zeros((len(left), CANVAS, CANVAS), dtype=left.dtype)
    canvas[:, :DIGIT, :DIGIT] = left
    shifted = canvas[:, SHIFT : SHIFT + DIGIT, SHIFT : SHIFT + DIGIT]
    np.maximum(shifted, right, out=shifted)
    return canvas


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """Square [N, S, S] images resized to [N, size, size]: pixel i reads pixel floor((i + 0.5) * S / size)."""
    source = images.shape[-1]
    index = (2 * np.arange(size) + 1) * source // (2 * size)
    return images[:, index][:, :, index]


def combine(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The examples for pairs of [N, 28, 28] source images: overlapped on the canvas, resized to 28x28."""
    return resize_nearest(overlap(left, right), DIGIT)


def draw_pairs(pool: np.ndarray, n: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (left, right) of ``n`` pairs from ``pool`` (null = one per pool image): distinct
    left images, each with a right image drawn uniformly from the rest of the pool."""
    size = len(pool)
    count = size if n is None else n
    left = rng.permutation(size)[:count]
    right = rng.integers(0, size - 1, size=count)
    right += right >= left  # skip the left image itself: uniform over the other size - 1 images
    return pool[left], pool[right]


class MultiMNIST(TensorData):
    """Two-digit images with tasks ``left`` and ``right`` (see the module docstring for the construction).

    After the build, ``source_indices[split]`` holds the ``left`` and ``right`` source-image indices of
    each example (into the training file for train and val, the t10k file for test), ``files`` the IDX
    files read, ``cache_path`` the cache file (None when caching is off) and ``from_cache`` whether the
    pairs were loaded from it.
    """

    name = "multimnist"

    def __init__(
        self,
        root: str,
        name: str = "multimnist",
        val_size: int = 10000,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        self.name = name
        sizes = {"train": n_train, "val": n_val, "test": n_test}
        for split, n in sizes.items():
            if n is not None and n < 1:
                raise ConfigError(f"data.n_{split}: {n} examples; give a positive count, or null for all")
        if val_size < 2:
            raise ConfigError(
                f"data.val_size: {val_size} source images; the validation pool needs at least 2"
            )
        self.root = resolve_path(root, "data.root", f"DIR holding {expected_files()}")
        self.files = find_files(self.root, name)
        params = {"val_size": val_size, "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed}
        self.cache_path = None
        if cache:
            directory = (
                resolve_path(cache_dir, "data.cache_dir") if cache_dir else self.root / ".mtlrun_cache"
            )
            self.cache_path = directory / f"{name}-{self._cache_key(params)}.pt"
        arrays = self._load_cache()
        self.from_cache = arrays is not None
        if arrays is None:
            arrays = self._build(val_size, sizes, seed)
            self._save_cache(arrays)
        self.source_indices = {
            split: {side: arrays[f"{split}.{side}_index"].numpy() for side in ("left", "right")}
            for split in SPLITS
        }
        splits = {
            split: Split(
                x=arrays[f"{split}.x"].unsqueeze(1).float().div_(255.0),  # [N, 1, 28, 28] in [0, 1]
                y={"left": arrays[f"{split}.left"], "right": arrays[f"{split}.right"]},
            )
            for split in SPLITS
        }
        super().__init__(splits)

    def _build(self, val_size: int, sizes: dict[str, int | None], seed: int) -> dict[str, torch.Tensor]:
        """Read the IDX files and draw the pairs of every split; uint8 images, int64 labels and indices."""
        train_images, train_labels = load_source(self.files["train_images"], self.files["train_labels"])
        test_images, test_labels = load_source(self.files["test_images"], self.files["test_labels"])
        if not 2 <= val_size <= len(train_images) - 2:
            raise ConfigError(
                f"data.val_size: {val_size} of the {len(train_images)} training images leaves too few for "
                f"train or val (each pool needs at least 2); use 2..{len(train_images) - 2}"
            )
        if len(test_images) < 2:
            raise DataError(f"{self.files['test_images']}: {len(test_images)} image(s); test pairs need >= 2")
        carve, *streams = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
        order = carve.permutation(len(train_images))
        pools = {"train": np.sort(order[val_size:]), "val": np.sort(order[:val_size])}
        pools["test"] = np.arange(len(test_images))
        source = {"train": (train_images, train_labels), "val": (train_images, train_labels)}
        source["test"] = (test_images, test_labels)
        arrays = {}
        for split, rng in zip(SPLITS, streams, strict=True):
            pool, n = pools[split], sizes[split]
            if n is not None and n > len(pool):
                raise ConfigError(
                    f"data.n_{split}: {n} examples asked, but the {split} pool has {len(pool)} source images "
                    f"(each is the left digit of at most one example); use at most {len(pool)}, or null"
                )
            left, right = draw_pairs(pool, n, rng)
            images, labels = source[split]
            arrays[f"{split}.x"] = torch.from_numpy(combine(images[left], images[right]))
            arrays[f"{split}.left"] = torch.from_numpy(labels[left])
            arrays[f"{split}.right"] = torch.from_numpy(labels[right])
            arrays[f"{split}.left_index"] = torch.from_numpy(left.astype(np.int64))
            arrays[f"{split}.right_index"] = torch.from_numpy(right.astype(np.int64))
        log.info(
            "data %s: built %s pairs from %s",
            self.name,
            {s: int(sizes[s] or len(pools[s])) for s in SPLITS},
            self.root,
        )
        return arrays

    def _cache_key(self, params: dict) -> str:
        """A short hash of the parameters, the root and each source file's size and modification time."""
        stats = {
            key: [path.name, path.stat().st_size, path.stat().st_mtime_ns] for key, path in self.files.items()
        }
        content = {"version": CACHE_VERSION, "root": str(self.root), "files": stats, **params}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def _load_cache(self) -> dict[str, torch.Tensor] | None:
        if self.cache_path is None or not self.cache_path.is_file():
            return None
        try:
            arrays = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged or foreign file: rebuild rather than fail
            log.warning("data %s: cannot read the cache %s (%s); rebuilding", self.name, self.cache_path, err)
            return None
        expected = {f"{split}.{part}" for split in SPLITS for part in CACHED}
        if not isinstance(arrays, dict) or set(arrays) != expected:
            log.warning("data %s: %s is not a cache of this data set; rebuilding", self.name, self.cache_path)
            return None
        log.info("data %s: loaded the pairs from the cache %s", self.name, self.cache_path)
        return arrays

    def _save_cache(self, arrays: dict[str, torch.Tensor]) -> None:
        if self.cache_path is None:
            return
        tmp = self.cache_path.with_name(f"{self.cache_path.name}.{os.getpid()}.tmp")
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(arrays, tmp)
            os.replace(tmp, self.cache_path)  # atomic: a concurrent run never reads half a file
        except OSError as err:
            log.warning(
                "data %s: cannot write the cache %s (%s); set data.cache_dir to a writable directory",
                self.name,
                self.cache_path,
                err,
            )
