"""`connectorlab quickstart`: the whole study, both training stages included, on a laptop CPU.

The quick start is a built-in study plan (`plans/quickstart.yaml`) run by the same `run_study` and `write_report` as
any plan. What it adds is what a laptop lacks: it draws the granularity probe and makes the tiny presets (a small ViT
pre-trained once on probe images, then frozen; a small Llama warmed up on the probe's text), fills their paths into
the plan, and describes them in the report. Every step is skipped when its output exists, so a re-run resumes.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import InputError
from ..probe.generate import TASK_SECTION, ProbeParams, generate, task_types
from ..probe.presets import TinySizes, build_presets
from ..training.run_folder import differences
from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.progress import progress_bar
from ..utils.validation import NON_NEGATIVE_INT, POSITIVE_INT, check_ranges
from .budget import budget_label, tokens_for_ratio
from .plan import StudyPlan
from .report import ABOUT, ReportPaths
from .runner import StudyRun, run_study

BUILTIN_PLAN = Path(__file__).with_name("plans") / "quickstart.yaml"
SECTION_NOTE = f"section `{TASK_SECTION}` of evaluation/task_types.yaml"
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
CONFIG_FILE = "quickstart_config.json"  # the settings a quick start folder was made with (a re-run must match them)


def builtin_plan() -> dict[str, Any]:
    return yaml.safe_load(BUILTIN_PLAN.read_text())


@dataclass
class QuickstartConfig:
    out: str = "runs/quickstart"
    seed: int = 0  # of the probe, the presets and the first training seed of every cell
    seeds: int = 1  # training seeds per cell (seed, seed + 1, ...): the report gives the spread over them
    full: bool = False  # the plan's `full:` grid entries (more connectors, the third resolution) replace its own
    probe: ProbeParams | None = None  # the probe's drawing; its seed is `seed` (None: the default probe at `seed`)
    sizes: TinySizes = field(default_factory=TinySizes)
    vision_steps: int = 700
    warmup_epochs: int = 1
    plan: dict[str, Any] = field(default_factory=builtin_plan)  # a study plan with ${probe} ${vision} ${llm} ${seeds}

    eval_batch: int = 128

    def __post_init__(self) -> None:
        check_ranges(self, {"seed": NON_NEGATIVE_INT, "seeds": POSITIVE_INT}, "quickstart")
        if self.probe is None:
            self.probe = ProbeParams(seed=self.seed)
        elif self.probe.seed != self.seed:  # one seed draws the probe and the presets: two would pair mismatched files
            raise InputError(f"quickstart.probe.seed = {self.probe.seed} differs from quickstart.seed = {self.seed}: "
                             f"the probe is drawn with the quick start's seed (leave probe out, or give it seed={self.seed})")

    @property
    def grid(self) -> dict[str, Any]:
        return {**self.plan["grid"], **(self.plan.get("full") or {} if self.full else {})}

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(self.grid["resolutions"])


def fill(value: Any, values: dict[str, Any]) -> Any:
    """Placeholders replaced: a value that is one placeholder takes the value's type (`[${seed}]` -> `[0]`)."""
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    return value


def check_same_config(path: Path, qc: QuickstartConfig) -> None:
    """The probe and presets are reused on a re-run, so a folder made with other settings would mix two studies."""
    if not path.exists():
        return
    changed = [d for d in differences(json.loads(path.read_text()), dataclasses.asdict(qc)) if not d.startswith("out:")]
    if changed:
        raise InputError(f"{path.parent} holds a quick start made with other settings ({'; '.join(changed)}); "
                         "use another --out or remove that folder")


def prepare(qc: QuickstartConfig, bar) -> tuple[Path, Path, Path]:
    out = Path(qc.out)
    probe = out / "probe"
    drawn = probe / "probe.json"
    if not drawn.exists() or json.loads(drawn.read_text())["params"] != dataclasses.asdict(qc.probe):
        generate(probe, qc.probe, progress=bar)
    vision, llm = build_presets(probe, out / "presets", qc.resolutions, qc.sizes, qc.vision_steps, qc.warmup_epochs,
                                qc.seed, progress=bar)
    return probe, vision, llm


def quickstart_plan(qc: QuickstartConfig, probe: Path, vision: Path, llm: Path) -> StudyPlan:
    values = {"probe": str(probe), "vision": str(vision), "llm": str(llm), "seed": qc.seed,
              "seeds": list(range(qc.seed, qc.seed + qc.seeds))}
    data = fill({k: v for k, v in copy.deepcopy(qc.plan).items() if k != "full"}, values)
    data["grid"] = fill(copy.deepcopy(qc.grid), values)
    return StudyPlan.from_dict({**data, "output_dir": qc.out}, str(BUILTIN_PLAN))


def budgets(qc: QuickstartConfig, plan: StudyPlan) -> str:
    """Each budget as the tokens it keeps at every resolution, and the paper's budget at that ratio of its 576."""
    grids = {res: (res // qc.sizes.patch_size,) * 2 for res in sorted(qc.resolutions)}
    if plan.grid.compression:
        return ", ".join(
            f"{budget_label(None, r).removeprefix('-')} fewer tokens than their patch grid ("
            + ", ".join(f"{tokens_for_ratio(g, r)} at {res} px" for res, g in grids.items())
            + f"; as {576 / r:.0f} of the paper's 576)" for r in plan.grid.compression)
    return ", ".join(f"{t} tokens (" + ", ".join(f"{g[0] * g[1] / t:.1f}x fewer than the {g[0]}x{g[1]} grid at {res} px"
                                                 for res, g in grids.items()) + ")" for t in plan.grid.tokens)


def about(qc: QuickstartConfig, plan: StudyPlan) -> str:
    p, s = qc.probe, qc.sizes
    types = task_types()
    subtasks = "; ".join(f"{t}: {', '.join(k for k, v in types.items() if v == t)}" for t in ("coarse", "fine", "reasoning"))
    grids = ", ".join(f"{r} px = {r // s.patch_size}x{r // s.patch_size} patches" for r in qc.resolutions)
    return "\n".join([
        "## What was measured", "",
        f"- Probe: {p.n_train} training images, {p.n_test} test images (each question asked in every rotation of its "
        f"options), drawn at {p.image_size} px; small shapes {p.object_scale:.2f} of the side, up to {p.clutter} decoy "
        f"specks per image; seed {p.seed}. Sub-tasks by task type ({SECTION_NOTE}): {subtasks}.",
        f"- Resolutions {grids}; the compressing connectors keep {budgets(qc, plan)}. Training-free reductions of the "
        "trained mlp's output to the same budgets: " + ", ".join(plan.grid.reduce_methods) + ".",
        f"- Model: a {s.vision_layers}-layer ViT (width {s.vision_hidden}, patch {s.patch_size}) pre-trained once on probe "
        f"images ({qc.vision_steps} steps) and frozen; a {s.llm_layers}-layer Llama (width {s.llm_hidden}) warmed up on "
        f"the probe's text; LLaVA's two stages per cell (pre-train {plan.pretrain.get('epochs', 1)} epoch(s), "
        f"fine-tune {plan.finetune.get('epochs', 1)} epoch(s), global batch {plan.finetune.get('global_batch')}).",
        "- Accuracy: MMBench circular accuracy per task type (a question counts only if all rotations are right), with "
        "n questions and a Wilson 95% interval; in brackets, the same model without the image (blind). Training time: "
        "wall-clock seconds of each stage on this machine" + (
            f", and each cell's time per step of each stage timed beside the other cells of its resolution "
            f"({plan.timing.rounds} alternating rounds of {plan.timing.steps} steps; the median)" if plan.timing.rounds
            else "") + ".",
        f"- The plan: `{BUILTIN_PLAN.name}` (built in{', its full grid' if qc.full else ''}), with this folder's probe and "
        "presets; `study status` and `study report` read this folder like any study's.",
    ])


@dataclass
class QuickstartResult:
    run: StudyRun
    report: ReportPaths


def quickstart(qc: QuickstartConfig = QuickstartConfig(), show_progress: bool = True) -> QuickstartResult:
    torch.manual_seed(qc.seed)
    out = Path(qc.out)
    out.mkdir(parents=True, exist_ok=True)
    check_same_config(out / CONFIG_FILE, qc)
    atomic_write_json(out / CONFIG_FILE, dataclasses.asdict(qc))
    with progress_bar(show_progress) as bar:
        probe, vision, llm = prepare(qc, bar)
    plan = quickstart_plan(qc, probe, vision, llm)
    atomic_write_text(out / ABOUT, about(qc, plan))
    run = run_study(plan, out, retry_failed=True, show_progress=show_progress, eval_batch=qc.eval_batch)
    return QuickstartResult(run, run.report)
