"""Batch samplers for ``DataLoader(dataset, batch_sampler=...)``, sharded over distributed ranks.

Both samplers yield lists of dataset indices (``list[int]``, one list per batch) and are
deterministic functions of ``(seed, epoch, rank, world_size)`` plus their constructor arguments:
nothing is drawn from the global RNGs and no RNG state survives between epochs, so a run resumed at
an epoch boundary (restore :meth:`state_dict`, or just call ``set_epoch(epoch)``) sees exactly the
batches it would have seen without the interruption. Call ``set_epoch`` before every epoch, as
with ``DistributedSampler``; every rank must use the same ``seed``.

:class:`ShuffledBatchSampler`
    Plain shuffling: ``DistributedSampler(num_replicas=world_size, rank=rank, shuffle, seed)``
    followed by ``BatchSampler(batch_size, drop_last)``, index for index.

:class:`BalancedBatchSampler`
    Class-balanced batches (a published DeepLesion study's scheme). Each image belongs to the pool
    of every class it has a lesion of; batches are filled class by class in round-robin, so every
    class gets an equal share of every batch, and an epoch lasts until the largest class has been
    seen once. Small classes are oversampled (their pools are reshuffled and cycled). See the
    class docstring for the exact rule and for how the stream is split over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["BalancedBatchSampler", "ShuffledBatchSampler", "image_classes_from_targets"]


def _check_common(batch_size: int, rank: int, world_size: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if int(world_size) != world_size or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    if int(rank) != rank or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size) = [0, {world_size}), got {rank!r}")


def _check_epoch(epoch: int) -> int:
    if int(epoch) != epoch or epoch < 0:
        raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
    return int(epoch)


def _batches(indices: Sequence[int], batch_size: int, drop_last: bool) -> Iterator[list[int]]:
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    for start in range(0, stop, batch_size):
        yield list(indices[start:start + batch_size])


def _n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


class ShuffledBatchSampler(Sampler[list[int]]):
    """Plain shuffling (what ``DistributedSampler`` + ``BatchSampler`` do), per rank.

    Per epoch: a permutation of ``range(n_images)`` from ``torch.Generator().manual_seed(seed +
    epoch)`` (``range(n_images)`` itself when ``shuffle=False``), padded by wrapping around to
    ``world_size * ceil(n_images / world_size)`` indices so that every rank gets the same count;
    rank ``r`` takes positions ``r, r + world_size, r + 2 world_size, ...`` and cuts them, in order,
    into batches of ``batch_size`` (the last, shorter batch is kept unless ``drop_last``). This is
    ``DistributedSampler``'s rule (with its own ``drop_last=False``), so the order matches it index
    for index.

    Args:
        n_images: dataset length (``>= 1``).
        batch_size: images per batch on this rank (``>= 1``).
        seed: base seed; must be equal on all ranks.
        rank, world_size: this process's place in the distributed group (``0 <= rank <
            world_size``); the defaults mean a single process.
        shuffle: ``False`` keeps dataset order (still sharded and padded the same way).
        drop_last: drop this rank's last batch when it is shorter than ``batch_size``.

    Iteration yields ``list[int]`` of dataset indices in ``[0, n_images)``.
    """

    def __init__(self, n_images: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, drop_last: bool = False) -> None:
        if int(n_images) != n_images or n_images < 1:
            raise ValueError(f"n_images must be an integer >= 1 (an empty dataset cannot be "
                             f"sampled), got {n_images!r}")
        _check_common(batch_size, rank, world_size)
        self.n_images = int(n_images)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Indices per epoch on each rank (after padding), ``ceil(n_images / world_size)``."""
        return -(-self.n_images // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``__iter__`` yields (``epoch >= 0``)."""
        self.epoch = _check_epoch(epoch)

    def rank_indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order, before batching
        (``num_samples`` of them)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.n_images, generator=g).tolist()
        else:
            indices = list(range(self.n_images))
        total = self.num_samples * self.world_size
        # Wrap around as often as needed (more than once only when n_images < world_size).
        indices = (indices * math.ceil(total / len(indices)))[:total]
        return indices[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return _batches(self.rank_indices(), self.batch_size, self.drop_last)

    def __len__(self) -> int:
        """Batches per epoch on this rank (equal on all ranks)."""
        return _n_batches(self.num_samples, self.batch_size, self.drop_last)

    def state_dict(self) -> dict:
        """``{"seed", "epoch", "shuffle"}``: with the constructor's sizes, what fixes the order."""
        return {"seed": self.seed, "epoch": self.epoch, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"])
        self.shuffle = bool(state.get("shuffle", self.shuffle))


class BalancedBatchSampler(Sampler[list[int]]):
    """Class-balanced batches: every class present gets an equal share of every batch.

    Pools
        ``image_classes[i]`` lists the classes (non-negative integers, e.g. DeepLesion's lesion
        types) of the lesions in image ``i``. Image ``i`` is in the pool of each class it lists, so
        an image with lesions of two classes can be drawn for either (and both in one batch). An
        image that lists no class is **never drawn**; a class that no image lists does not exist
        for the sampler. ``C`` is the number of non-empty classes, taken in ascending class order;
        ``M`` the size of the largest pool.

    Global stream (identical on every rank)
        The stream is a sequence of *rounds*; a round is one image of each class, in class order,
        so sample ``k`` comes from class ``k % C``. Class ``c`` supplies its images from its own
        stream: its pool shuffled with ``numpy.random.default_rng(SeedSequence([seed, epoch,
        c]))``; when the pool runs out it is shuffled again by the same generator and cycled. One
        epoch is ``ceil(M / world_size) * world_size`` rounds: ``M`` rounds, so that the largest
        class is seen exactly once, plus fewer than ``world_size`` rounds of padding that continue
        the round-robin (for the largest class they start its next, freshly shuffled cycle) so
        that the rounds split evenly over ranks. With one process there is no padding: the epoch
        is ``C * M`` samples, each class ``M`` times, each image of the largest class once and an
        image of a pool of size ``s`` ``floor(M / s)`` or ``ceil(M / s)`` times.

    Sharding
        Rank ``r`` takes the ``r``-th of ``world_size`` contiguous equal blocks of rounds
        (``ceil(M / world_size)`` rounds, ``C * ceil(M / world_size)`` samples, the same on all
        ranks) and cuts it, in order, into batches of ``batch_size``. Because a block starts at a
        round boundary, every rank's batches are balanced exactly as on a single process; together
        the ranks see the largest class once (plus the padding). If ``batch_size`` is a multiple of
        ``C`` each batch (the short last one included) holds exactly ``batch_size / C`` samples of
        every class; otherwise class counts within a batch differ by at most one.

    Args:
        image_classes: per dataset index, the class indices present in that image (duplicates are
            ignored); see :func:`image_classes_from_targets`.
        batch_size: samples per batch on this rank (``>= 1``).
        seed: base seed, ``>= 0``; must be equal on all ranks.
        rank, world_size: this process's place in the distributed group.
        drop_last: drop this rank's last batch when it is shorter than ``batch_size``.

    Iteration yields ``list[int]`` of dataset indices (an index may repeat within an epoch, and
    within a batch when the image has several classes or its pool is smaller than the batch share).
    """

    def __init__(self, image_classes: Sequence[Sequence[int]], batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False) -> None:
        _check_common(batch_size, rank, world_size)
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be an integer >= 0 (it seeds numpy's SeedSequence), "
                             f"got {seed!r}")
        pools: dict[int, list[int]] = {}
        for i, classes in enumerate(image_classes):
            for c in sorted(set(classes)):
                if int(c) != c or c < 0:
                    raise ValueError(f"class indices must be integers >= 0, image {i} has {c!r}")
                pools.setdefault(int(c), []).append(i)
        if not pools:
            raise ValueError(f"no image has a class ({len(image_classes)} images given): nothing "
                             "to sample; BalancedBatchSampler needs at least one image with a "
                             "class")
        self.classes = sorted(pools)
        self.pools = [np.asarray(pools[c], dtype=np.int64) for c in self.classes]
        self.n_images = len(image_classes)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        """``C``, the number of non-empty classes."""
        return len(self.pools)

    @property
    def max_class_size(self) -> int:
        """``M``, the size of the largest class pool."""
        return max(len(p) for p in self.pools)

    @property
    def rounds_per_rank(self) -> int:
        """Rounds (one sample of each class) per epoch on each rank, ``ceil(M / world_size)``."""
        return -(-self.max_class_size // self.world_size)

    @property
    def num_samples(self) -> int:
        """Samples per epoch on each rank, ``C * ceil(M / world_size)``."""
        return self.num_classes * self.rounds_per_rank

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``__iter__`` yields (``epoch >= 0``)."""
        self.epoch = _check_epoch(epoch)

    def _class_stream(self, k: int, n: int) -> np.ndarray:
        """The first ``n`` draws of class ``self.classes[k]`` this epoch: shuffled pool, reshuffled
        and cycled; int64 ``(n,)``."""
        pool = self.pools[k]
        entropy = [self.seed, self.epoch, self.classes[k]]
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        cycles = [rng.permutation(pool) for _ in range(-(-n // len(pool)))]
        return np.concatenate(cycles)[:n]

    def global_stream(self) -> np.ndarray:
        """The whole epoch's stream over all ranks, int64 ``(world_size * num_samples,)``; sample
        ``k`` is from class ``classes[k % C]``."""
        n_rounds = self.rounds_per_rank * self.world_size
        # (rounds, C): row j is round j, in class order; row-major flattening interleaves classes.
        table = np.stack([self._class_stream(k, n_rounds) for k in range(self.num_classes)], axis=1)
        return table.reshape(-1)

    def rank_indices(self) -> list[int]:
        """This rank's contiguous block of the global stream (``num_samples`` indices), in order."""
        start = self.rank * self.num_samples
        return self.global_stream()[start:start + self.num_samples].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return _batches(self.rank_indices(), self.batch_size, self.drop_last)

    def __len__(self) -> int:
        """Batches per epoch on this rank (equal on all ranks)."""
        return _n_batches(self.num_samples, self.batch_size, self.drop_last)

    def state_dict(self) -> dict:
        """``{"seed", "epoch"}``: with the constructor's pools and sizes, what fixes the order."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        seed = state["seed"]
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.set_epoch(state["epoch"])


def image_classes_from_targets(labels_per_image: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per image, the sorted distinct class indices of its lesions: ``[[2, 1, 2], []]`` ->
    ``[[1, 2], []]``. Input: per dataset index, the labels of its boxes (ints or an int tensor);
    output is :class:`BalancedBatchSampler`'s ``image_classes``."""
    return [sorted({int(c) for c in labels}) for labels in labels_per_image]
