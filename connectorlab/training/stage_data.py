"""A stage's records: read, tokenized with the stage's template and the connector's token count, and checked (text-only
records in stage 1, undecodable images) the same way on every process, before any stage trains."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from accelerate import Accelerator
from accelerate.utils import gather_object

from ..data.images import find_undecodable
from ..data.llava import Sample, load_samples
from ..data.skips import SkipReport
from ..language.processor import MultimodalProcessor
from ..language.tokenizer import load_tokenizer
from ..model.shape import meta_connector
from ..utils.validation import ConfigError
from .config import TrainConfig

log = logging.getLogger("connectorlab.train")


@dataclass
class StageData:
    """A stage's records, validated and tokenized before any stage trains."""

    processor: MultimodalProcessor
    samples: list[Sample]
    report: SkipReport


def load_stage_data(cfg: TrainConfig, stage: str, accelerator: Accelerator, tokenizer=None,
                    num_tokens: int | None = None, records: list | None = None) -> StageData:
    sc = cfg.stage(stage)
    if not sc.data:
        raise ConfigError(f"{stage}.data is not set")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model.llm)
    num_tokens = num_tokens if num_tokens is not None else meta_connector(cfg.model).num_output_tokens
    processor = MultimodalProcessor(tokenizer, sc.template or cfg.model.template, num_tokens, cfg.model.max_length)
    report = SkipReport(strict=cfg.strict)
    samples = load_samples(sc.data, sc.image_folder, processor, report, records)
    if stage == "pretrain":  # stage 1 trains the connector alone: a text-only record gives nothing a gradient
        samples = drop_text_only(samples, report, sc.data)
    if cfg.check_images:
        samples = drop_undecodable(samples, report, accelerator, sc.image_workers, sc.data)
    if accelerator.is_main_process:
        log.info("%s: %d usable records from %s; %s", stage, len(samples), sc.data, report.summary())
    return StageData(processor, samples, report)


def drop_text_only(samples: list[Sample], report: SkipReport, source: str) -> list[Sample]:
    """A global batch of text-only records would leave the frozen LM and the unused connector without a gradient (the
    stage would crash at that step); the same records are dropped on every process, since all read the same file."""
    kept = []
    for s in samples:
        if s.image is None:
            report.skip("text_only_in_pretrain", s.id, "no 'image': stage 1 trains the connector on images only", source)
        else:
            kept.append(s)
    return kept


def drop_undecodable(samples: list[Sample], report: SkipReport, accelerator: Accelerator, workers: int,
                     source: str) -> list[Sample]:
    """Decode every image once, each process a slice, and skip the ones that fail on every process alike (a
    truncated file passes the header check and would otherwise crash the stage, and every resume, at its step)."""
    paths = sorted({s.image for s in samples if s.image is not None})
    mine = paths[accelerator.process_index::accelerator.num_processes]
    bad_here = sorted((str(p), why) for p, why in find_undecodable(mine, workers).items())
    bad = dict(gather_object(bad_here) if accelerator.num_processes > 1 else bad_here)
    if not bad:
        return samples
    kept = []
    for s in samples:
        if s.image is not None and str(s.image) in bad:
            report.skip("unreadable_image", s.id, f"field 'image': {s.image}: {bad[str(s.image)]}", source)
        else:
            kept.append(s)
    return kept
