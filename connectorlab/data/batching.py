"""Global batch order, its split over processes and micro-batches, and padding.

The order of a whole epoch is a pure function of (lengths, modality, seed, epoch), identical on
every process; step s always consumes the same global batch. That is what makes a 2-process run
equal a 1-process run, and a resumed run equal an uninterrupted one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..language.processor import IGNORE_INDEX


def epoch_order(lengths: list[int], has_image: list[bool], global_batch: int, seed: int, epoch: int,
                group_by_length: bool = True, length_span: int = 1) -> list[list[int]]:
    """Global batches (lists of sample indices) for one epoch; the incomplete tail is dropped.

    With grouping (LLaVA's modality-length grouping), multimodal and text-only samples form
    separate global batches, and each global batch is sorted by length so that micro-batches pad
    little. With `length_span` > 1 (as Hugging Face's LengthGroupedSampler, which uses 50), each run of that many
    global batches is sorted by length before it is cut, so a global batch also holds samples of like length: where
    one process runs one micro-batch per step, that is the only grouping that removes padding.
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
        span = global_batch * length_span
        for start in range(0, full, span) if length_span > 1 else ():
            end = min(start + span, full)
            idx[start:end] = sorted(idx[start:end], key=lambda i: (-lengths[i], i))
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


class StepPlan:
    """What each optimizer step consumes on this process, as a pure function of the step number, so a
    resumed run, a loader that looks a step ahead and an uninterrupted run all see the same batches."""

    def __init__(self, lengths: list[int], has_image: list[bool], global_batch: int, seed: int, group_by_length: bool,
                 world: int, rank: int, micro_batch: int, length_span: int = 1):
        self.lengths, self.has_image, self.global_batch, self.seed = lengths, has_image, global_batch, seed
        self.group_by_length, self.world, self.rank, self.micro_batch = group_by_length, world, rank, micro_batch
        self.length_span = length_span
        self.steps_per_epoch = len(lengths) // global_batch
        self._orders: dict[int, list[list[int]]] = {}

    def __call__(self, step: int) -> tuple[int, list[int], list[list[int]]]:
        """(epoch, global batch, this process's micro-batches) of `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch not in self._orders:  # the previous epoch stays: a step and the one ahead may straddle the boundary
            self._orders[epoch] = epoch_order(self.lengths, self.has_image, self.global_batch, self.seed, epoch,
                                              self.group_by_length, self.length_span)
            for old in [e for e in self._orders if e < epoch - 1]:
                del self._orders[old]
        gbatch = self._orders[epoch][k]
        return epoch, gbatch, split_global_batch(gbatch, self.world, self.rank, self.micro_batch)


def accumulation_steps(global_batch: int, world: int, micro_batch: int) -> int:
    if global_batch % (world * micro_batch):
        raise InputError(f"global_batch={global_batch} must be a multiple of processes x micro_batch "
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
