"""Global batch order, its split over processes and micro-batches, and padding.

The order of a whole epoch is a pure function of (lengths, modality, seed, epoch), identical on
every process; step s always consumes the same global batch. That is what makes a 2-process run
equal a 1-process run, and a resumed run equal an uninterrupted one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..language.processor import IGNORE_INDEX


def epoch_order(lengths: list[int], has_image: list[bool], global_batch: int, seed: int, epoch: int,
                group_by_length: bool = True) -> list[list[int]]:
    """Global batches (lists of sample indices) for one epoch; the incomplete tail is dropped.

    With grouping (LLaVA's modality-length grouping), multimodal and text-only samples form
    separate global batches, and each global batch is sorted by length so that micro-batches pad
    little.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    if not group_by_length:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        return [order[i:i + global_batch] for i in range(0, len(order) - global_batch + 1, global_batch)]
    batches, leftovers = [], []
    for modality in (True, False):
        idx = [i for i in range(len(lengths)) if has_image[i] == modality]
        rng.shuffle(idx)
        full = len(idx) - len(idx) % global_batch
        batches += [idx[i:i + global_batch] for i in range(0, full, global_batch)]
        leftovers += idx[full:]
    rng.shuffle(leftovers)
    full = len(leftovers) - len(leftovers) % global_batch
    batches += [leftovers[i:i + global_batch] for i in range(0, full, global_batch)]
    batches = [sorted(b, key=lambda i: (-lengths[i], i)) for b in batches]
    rng.shuffle(batches)
    return batches


def split_global_batch(batch: list[int], world: int, rank: int, micro_batch: int) -> list[list[int]]:
    """This rank's micro-batches: consecutive micro-batches go round-robin to the ranks."""
    micro = [batch[i:i + micro_batch] for i in range(0, len(batch), micro_batch)]
    return micro[rank::world]


def accumulation_steps(global_batch: int, world: int, micro_batch: int) -> int:
    if global_batch % (world * micro_batch):
        raise ValueError(f"global_batch={global_batch} must be a multiple of processes x micro_batch "
                         f"= {world} x {micro_batch}")
    return global_batch // (world * micro_batch)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    image_index: list[int]  # which samples carry an image, in order

    @property
    def num_supervised(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def collate(samples, pad_id: int) -> Batch:
    width = max(s.length for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, : s.length] = torch.tensor(s.input_ids)
        labels[i, : s.length] = torch.tensor(s.labels)
        mask[i, : s.length] = 1
    return Batch(ids, mask, labels, [i for i, s in enumerate(samples) if s.image is not None])
