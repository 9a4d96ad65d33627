"""Every benchmark connectorlab evaluates on, one entry each: how its files load, the task-type section it is read
with, LLaVA's answer cap, how its prompts are built and how a score is shown. The evaluation runner, the CLI and the
study ask this table; none of them branches on a benchmark's name.

A new benchmark is one module under `benchmarks/` (loader, scorer, `summary`) and one entry here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..probe.generate import TASK_SECTION as PROBE_SECTION
from ..registry import Registry
from . import hub
from .base import Benchmark, Summary, mc_prompt
from .benchmarks import mmbench, mme, seedbench


@dataclass(frozen=True)
class BenchmarkEntry:
    name: str
    # (data, image_folder, strict, task_types, task_section) -> Benchmark, from the release files
    load: Callable[..., Benchmark]
    task_section: str  # the section of task_types.yaml its sub-tasks are read with by default
    max_new_tokens: int  # the answer cap of LLaVA's evaluation script for it
    prompt: Callable[..., str]  # how one question becomes LLaVA's user text
    render: Callable[[dict], Summary]
    data: str  # what `--data` names, for help texts
    hub: hub.HubSource | None = None  # the Hub dataset lmms-eval reads, when there is one


def _mmbench(data, image_folder, strict, task_types, task_section):
    return mmbench.load_mmbench(data, strict, task_section, task_types)  # None: chosen from its categories


def _mme(data, image_folder, strict, task_types, task_section):
    return mme.load_mme(data, strict, task_types)


def _seedbench(data, image_folder, strict, task_types, task_section):
    return seedbench.load_seedbench(data, image_folder, strict, task_types)


def _probe(data, image_folder, strict, task_types, task_section):
    # The probe's test set is written in MMBench's layout and scored by MMBench's circular scorer; only its
    # sub-tasks (and so their task types) are its own.
    return mmbench.load_mmbench(data, strict, task_section or PROBE_SECTION, task_types)


# model_vqa_mmbench writes up to 1024 new tokens; model_vqa_loader (MME, SEED-Bench) defaults to 128
BENCHMARKS: Registry[BenchmarkEntry] = Registry("benchmark", {
    "mmbench": BenchmarkEntry("mmbench", _mmbench, "mmbench", 1024, mc_prompt, mmbench.summary,
                              "MMBench TSV (dev or test)", hub.MMBENCH),
    "mme": BenchmarkEntry("mme", _mme, "mme", 128, mme.llava_prompt, mme.summary, "MME release folder", hub.MME),
    "seedbench": BenchmarkEntry("seedbench", _seedbench, "seedbench", 128, mc_prompt, seedbench.summary,
                                "SEED-Bench JSON", hub.SEED_BENCH),
    "probe": BenchmarkEntry("probe", _probe, PROBE_SECTION, 1024, mc_prompt,
                            lambda scores: mmbench.summary(scores, "probe"), "the probe's test.tsv"),
})


def load_benchmark(name: str, data: str | Path, image_folder: str | Path | None = None, strict: bool = False,
                   task_types: str | Path | None = None, task_section: str | None = None, subset: str | None = None,
                   split: str | None = None) -> Benchmark:
    """The release files, or (a Hub id such as lmms-lab/MME, or parquet files of that schema) the Hub's dataset."""
    entry = BENCHMARKS[name]
    if entry.hub is not None and hub.is_hub_source(data):
        return hub.load_hub_benchmark(entry.hub, name, data, subset, split, strict, task_types, task_section)
    return entry.load(data, image_folder, strict, task_types, task_section)
