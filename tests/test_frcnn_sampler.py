"""Batch samplers: class balance and counts, determinism, distributed sharding, equivalence with
torch's DistributedSampler, state_dict round trips, argument errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from deeplesion_cli.frcnn.sampler import (BalancedBatchSampler, ShuffledBatchSampler,
                                          image_classes_from_targets)

# Pools {0: 10 images, 1: 3 images, 2: 1 image}; image 14 has no class and must never be drawn.
POOL_OF = {**{i: 0 for i in range(10)}, 10: 1, 11: 1, 12: 1, 13: 2}
IMAGE_CLASSES = [[POOL_OF[i]] for i in range(14)] + [[]]


def flat(batches):
    return [i for b in batches for i in b]


def class_counts(batch, image_classes=IMAGE_CLASSES):
    return Counter(c for i in batch for c in image_classes[i])


# ---- BalancedBatchSampler, one process

def test_balanced_epoch_counts():
    s = BalancedBatchSampler(IMAGE_CLASSES, batch_size=3, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 10
    stream = flat(batches)
    assert len(stream) == 30 == s.num_samples
    # round-robin in class order: sample k comes from class k % 3
    assert [POOL_OF[i] for i in stream] == [0, 1, 2] * 10
    assert all(sorted(POOL_OF[i] for i in b) == [0, 1, 2] for b in batches)
    counts = Counter(stream)
    assert all(counts[i] == 1 for i in range(10))  # largest class: each image once
    assert sorted(counts[i] for i in (10, 11, 12)) == [3, 3, 4]  # floor/ceil(10 / 3), cycled
    assert counts[13] == 10
    assert 14 not in counts


def test_balanced_small_pool_is_reshuffled_each_cycle():
    # 30 images in class 0, 3 in class 1: class 1 is cycled 10 times; every cycle is a whole
    # permutation of the pool, and the cycles are not all the same permutation.
    classes = [[0]] * 30 + [[1]] * 3
    stream = flat(BalancedBatchSampler(classes, batch_size=2, seed=3))
    small = stream[1::2]
    cycles = [tuple(small[j:j + 3]) for j in range(0, 30, 3)]
    assert all(sorted(c) == [30, 31, 32] for c in cycles)
    assert len(set(cycles)) > 1
    assert sorted(stream[0::2]) == list(range(30))


def test_balanced_batch_not_multiple_of_classes_and_drop_last():
    s = BalancedBatchSampler(IMAGE_CLASSES, batch_size=4, seed=0)
    batches = list(s)
    assert [len(b) for b in batches] == [4] * 7 + [2]
    assert len(s) == 8
    for b in batches:  # round-robin windows: class counts differ by at most one
        counts = class_counts(b)
        assert max(counts.values()) - min(counts.get(c, 0) for c in (0, 1, 2)) <= 1
    dropped = BalancedBatchSampler(IMAGE_CLASSES, batch_size=4, seed=0, drop_last=True)
    assert list(dropped) == batches[:-1] and len(dropped) == 7


def test_balanced_multiclass_image_in_both_pools():
    # image 0 has lesions of classes 1 and 5; it is the only class-5 image, so it fills class 5's
    # share of every round, and is also drawn once as a class-1 image.
    classes = [[5, 1, 1], [1], [1], [1]]
    s = BalancedBatchSampler(classes, batch_size=2, seed=0)
    assert s.classes == [1, 5]
    stream = flat(s)
    assert len(stream) == 8
    assert stream[1::2] == [0, 0, 0, 0]
    assert sorted(stream[0::2]) == [0, 1, 2, 3]
    assert Counter(stream)[0] == 5


def test_balanced_deterministic_and_epoch_dependent():
    a = BalancedBatchSampler(IMAGE_CLASSES, batch_size=3, seed=5)
    b = BalancedBatchSampler(IMAGE_CLASSES, batch_size=3, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating does not advance any hidden state
    e2 = list(a)
    a.set_epoch(3)
    assert list(a) != e2
    c = BalancedBatchSampler(IMAGE_CLASSES, batch_size=3, seed=6)
    c.set_epoch(2)
    assert list(c) != e2


def test_balanced_ignores_global_rng():
    s = BalancedBatchSampler(IMAGE_CLASSES, batch_size=3, seed=0)
    torch.manual_seed(0)
    first = list(s)
    torch.manual_seed(123)
    np.random.seed(123)
    assert list(s) == first


def test_balanced_state_dict_round_trip():
    a = BalancedBatchSampler(IMAGE_CLASSES, batch_size=3, seed=9)
    a.set_epoch(4)
    expected = list(a)
    b = BalancedBatchSampler(IMAGE_CLASSES, batch_size=3)
    assert list(b) != expected
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"seed": 9, "epoch": 4}
    assert list(b) == expected


# ---- BalancedBatchSampler, distributed

@pytest.mark.parametrize("world_size", [2, 3])
def test_balanced_shards(world_size):
    ranks = [BalancedBatchSampler(IMAGE_CLASSES, batch_size=3, seed=2, rank=r,
                                  world_size=world_size) for r in range(world_size)]
    for s in ranks:
        s.set_epoch(1)
    stream = ranks[0].global_stream().tolist()
    # ceil(10 / world) * world rounds of 3: 30 samples for 2 ranks, 36 (2 rounds padding) for 3
    n_rounds = -(-10 // world_size) * world_size
    assert len(stream) == 3 * n_rounds
    assert [POOL_OF[i] for i in stream] == [0, 1, 2] * n_rounds
    shards = [flat(s) for s in ranks]
    shard_len = 3 * n_rounds // world_size
    assert all(len(sh) == shard_len == s.num_samples for sh, s in zip(shards, ranks))
    assert len({len(s) for s in ranks}) == 1
    # contiguous blocks: disjoint in stream position and together exactly the stream
    assert [i for sh in shards for i in sh] == stream
    for s in ranks:
        for b in s:
            assert sorted(POOL_OF[i] for i in b) == [0, 1, 2]
    # the largest class is seen once in the first M rounds; padding starts its next cycle
    largest = [i for i in stream if POOL_OF[i] == 0]
    assert sorted(largest[:10]) == list(range(10))
    assert len(set(largest[10:])) == len(largest[10:])
    # every rank computes the same global stream
    assert all(s.global_stream().tolist() == stream for s in ranks)


def test_balanced_world_two_no_padding_equals_single_process_stream():
    single = BalancedBatchSampler(IMAGE_CLASSES, batch_size=3, seed=4)
    ranks = [BalancedBatchSampler(IMAGE_CLASSES, batch_size=3, seed=4, rank=r, world_size=2)
             for r in range(2)]
    assert flat(ranks[0]) + flat(ranks[1]) == flat(single)
    assert len(ranks[0]) == len(ranks[1]) == 5


def test_balanced_with_dataloader():
    data = list(range(100, 115))
    loader = DataLoader(data, batch_sampler=BalancedBatchSampler(IMAGE_CLASSES, batch_size=3))
    batches = [b.tolist() for b in loader]
    assert len(batches) == 10
    assert all(len(b) == 3 and all(100 <= v < 114 for v in b) for b in batches)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_classes=IMAGE_CLASSES, batch_size=0), "batch_size"),
    (dict(image_classes=[], batch_size=2), "no image has a class"),
    (dict(image_classes=[[], []], batch_size=2), "no image has a class"),
    (dict(image_classes=IMAGE_CLASSES, batch_size=2, rank=2, world_size=2), "rank"),
    (dict(image_classes=IMAGE_CLASSES, batch_size=2, rank=-1), "rank"),
    (dict(image_classes=IMAGE_CLASSES, batch_size=2, world_size=0), "world_size"),
    (dict(image_classes=[[0], [-1]], batch_size=2), "class indices"),
    (dict(image_classes=IMAGE_CLASSES, batch_size=2, seed=-1), "seed"),
])
def test_balanced_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BalancedBatchSampler(**kwargs)


def test_image_classes_from_targets():
    assert image_classes_from_targets([[2, 1, 2], [], torch.tensor([3, 3])]) == [[1, 2], [], [3]]


# ---- ShuffledBatchSampler

@pytest.mark.parametrize("n_images", [1, 10, 11])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shuffled_equals_distributed_sampler(n_images, world_size, shuffle):
    for rank in range(world_size):
        for epoch in (0, 1, 7):
            ref = DistributedSampler(range(n_images), num_replicas=world_size, rank=rank,
                                     shuffle=shuffle, seed=3)
            ref.set_epoch(epoch)
            s = ShuffledBatchSampler(n_images, 4, seed=3, rank=rank, world_size=world_size,
                                     shuffle=shuffle)
            s.set_epoch(epoch)
            batches = list(s)
            assert flat(batches) == list(ref)
            assert all(len(b) == 4 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 4
            assert len(batches) == len(s) == -(-len(ref) // 4)


def test_shuffled_shards_cover_dataset_and_drop_last():
    ranks = [ShuffledBatchSampler(11, 2, seed=0, rank=r, world_size=3, drop_last=True)
             for r in range(3)]
    for s in ranks:
        assert len(s) == 2 and [len(b) for b in s] == [2, 2]  # 4 indices per rank, padded
    full = [ShuffledBatchSampler(11, 2, seed=0, rank=r, world_size=3) for r in range(3)]
    everything = Counter(i for s in full for i in flat(s))
    assert set(everything) == set(range(11)) and sum(everything.values()) == 12


def test_shuffled_epoch_changes_order_and_state_round_trip():
    a = ShuffledBatchSampler(50, 8, seed=1)
    e0 = list(a)
    a.set_epoch(1)
    e1 = list(a)
    assert e0 != e1 and sorted(flat(e0)) == sorted(flat(e1)) == list(range(50))
    b = ShuffledBatchSampler(50, 8)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"seed": 1, "epoch": 1, "shuffle": True}
    assert list(b) == e1


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_images=0, batch_size=2), "n_images"),
    (dict(n_images=5, batch_size=0), "batch_size"),
    (dict(n_images=5, batch_size=2, rank=1), "rank"),
])
def test_shuffled_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShuffledBatchSampler(**kwargs)
    with pytest.raises(ValueError, match="epoch"):
        ShuffledBatchSampler(5, 2).set_epoch(-1)
