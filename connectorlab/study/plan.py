"""The study plan: typed, validated, and expanded into cells without running anything.

A cell is one training configuration (the plan's base model and stages, with the grid's connector,
resolution, token budget and seed). Its identity is a hash of that resolved configuration, so a changed
plan entry can never silently reuse an old cell; cells whose stage 1 would be identical (LLaVA's stage 1
depends on the connector, tower, LLM, resolution, data and seed, not on the fine-tuning settings) share a
pre-training key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..connectors import CONNECTORS
from ..model.config import ModelConfig, from_mapping, read_mapping
from ..model.shape import ModelShape
from ..reduction import METHODS, Reduction
from ..training.config import STAGES, TrainConfig
from ..training.run_folder import RESULT_NEUTRAL, flatten
from ..training.zero import is_zero
from ..utils.validation import FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, ConfigError, Range, check_choice, check_ranges
from .budget import RATIO, budget_label, tokens_for_ratio

ENGINES = ("local", "accelerate", "slurm")
CELLS = "cells"  # the study folder's sub-folder of cell folders (see `folder`)
UNRELIABLE_EXTRACTION = 0.2  # the default share of unreadable answers above which a cell's score is not judged
CELL_FIELDS = ("connector", "resolution", "tokens", "compression", "seed", "variant")
GRID_MODEL_KEYS = ("connector", "connector_options", "image_size")  # set by the grid, not by `model:`
PRETRAIN_KEYS = ("model", "seed", "pretrain", "cache_features", "check_images", "bf16", "strict")
# A user string that becomes part of a file or folder name (a fine-tuning variant, the plan's name): no separator, no
# leading dot, nothing a shell or a file system treats specially
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
SAFE_CHARACTERS = "letters, digits and _ . + - (starting with a letter or digit, at most 64)"


def check_name(value: Any, where: str) -> None:
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise ConfigError(f"{where} = {value!r}: it becomes part of a folder name, so it may hold only {SAFE_CHARACTERS}")


def check_inside(path: Path, root: Path, what: str) -> Path:
    """Every path a study writes lies inside its folder, whatever the plan says."""
    resolved, top = path.resolve(), root.resolve()
    if resolved != top and top not in resolved.parents:
        raise ConfigError(f"{what} {path} would lie outside the study folder {root}")
    return path


@dataclass
class ConnectorEntry:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in CONNECTORS:
            raise ConfigError(f"unknown connector {self.name!r}; valid: {', '.join(CONNECTORS.names())}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"options = {self.options!r}: must be a mapping")

    @property
    def takes_budget(self) -> bool:
        """A `num_tokens` option the grid's token axis can set (not when the entry fixes it itself)."""
        params = inspect.signature(CONNECTORS[self.name].__init__).parameters
        return "num_tokens" in params and "num_tokens" not in self.options


@dataclass
class Grid:
    connectors: list[ConnectorEntry]
    resolutions: list[int | None] = field(default_factory=lambda: [None])  # None: the tower's native size
    tokens: list[int | None] = field(default_factory=lambda: [None])  # None: the connector's own default
    # Or the budget as compression ratios of each resolution's patch grid (4 = a quarter of the patches, as the
    # paper's 144 of 576); each cell keeps the nearest square number of tokens (study/budget.py).
    compression: list[float] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    # Fine-tuning variants ({name, ...finetune overrides}, e.g. full vs LoRA): cells that differ only here share stage 1.
    finetune: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    exclude: list[dict[str, Any]] = field(default_factory=list)  # cells matching every given field are dropped
    include: list[dict[str, Any]] = field(default_factory=list)  # extra cells: connector, resolution, tokens, seed
    # Training-free reduction of each preserving cell's output at evaluation: {method: name(s), tokens: budget(s)}
    # (or compression: ratio(s), as the grid's), every method at every budget; evaluated beside the trained cells,
    # never trained.
    reduce: dict[str, Any] | None = None

    def reductions(self, tokens_at: Callable[[float], int]) -> list[Reduction]:
        """The reductions of one cell; `tokens_at(ratio)` is that cell's token count for a ratio (called only for one,
        so a plan whose budgets are token counts never needs the tower's patch grid)."""
        if not self.reduce:
            return []
        budgets = ([tokens_at(r) for r in _as_list(self.reduce["compression"])]
                   if "compression" in self.reduce else _as_list(self.reduce["tokens"]))
        return [Reduction(m, t) for m in _as_list(self.reduce["method"]) for t in budgets]

    @property
    def reduce_methods(self) -> list[str]:
        return sorted(set(_as_list(self.reduce["method"]))) if self.reduce else []

    @property
    def budgets(self) -> list[tuple[int | None, float | None]]:
        """The budget axis as (tokens, ratio) pairs: one of the two is set, or neither (the connector's default)."""
        return [(None, r) for r in self.compression] if self.compression else [(t, None) for t in self.tokens]


@dataclass
class BenchmarkSpec:
    name: str
    data: str
    image_folder: str | None = None
    blind: bool = False  # also run the no-image baseline
    task_types: str | None = None
    task_section: str | None = None
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        from ..evaluation.registry import BENCHMARKS

        check_choice(self.name, tuple(BENCHMARKS), "name")
        check_ranges(self, {"max_new_tokens": POSITIVE_INT}, "benchmark")


@dataclass
class SlurmSettings:
    cluster: str = "slurm"  # submitit's executor: slurm, or local / debug to try a plan on one machine
    partition: str | None = None
    gpus_per_node: int = 8
    nodes: int = 1
    cpus_per_task: int = 8
    mem_gb: int | None = None
    timeout_min: int = 24 * 60
    array_parallelism: int = 16

    def __post_init__(self) -> None:
        check_choice(self.cluster, ("slurm", "local", "debug"), "execution.slurm.cluster")
        check_ranges(self, {"gpus_per_node": NON_NEGATIVE_INT, "nodes": POSITIVE_INT, "cpus_per_task": POSITIVE_INT,
                            "mem_gb": Range(1, integer=True, optional=True), "timeout_min": POSITIVE_INT,
                            "array_parallelism": POSITIVE_INT}, "execution.slurm")


@dataclass
class Execution:
    engine: str = "local"
    processes: int = 1  # accelerate: processes per cell
    accelerate_config: str | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    # local: cells run in this many processes at once ("auto": one per CPU core), each with `threads` torch threads
    # (default: the cores shared out among the workers; with one worker, torch's own default)
    workers: int | str = 1
    threads: int | None = None

    def __post_init__(self) -> None:
        check_choice(self.engine, ENGINES, "execution.engine")
        check_ranges(self, {"processes": POSITIVE_INT, "threads": Range(1, integer=True, optional=True)}, "execution")
        if self.workers != "auto" and not POSITIVE_INT.ok(self.workers):
            raise ConfigError(f"execution.workers = {self.workers!r}: must be 'auto' or {POSITIVE_INT.describe()}")
        if self.workers != 1 and self.engine != "local":
            raise ConfigError(f"execution.workers = {self.workers!r} applies to the local engine only (engine "
                              f"{self.engine!r} runs its cells as its own processes or jobs)")


@dataclass
class Cell:
    connector: str
    options: dict[str, Any]
    resolution: int | None
    tokens: int | None  # the budget the grid set, None where the axis does not apply
    seed: int
    variant: str | None  # the fine-tuning variant's name
    config: TrainConfig  # output_dir is the cell's own folder
    cell_id: str  # hash of the resolved configuration (output_dir aside)
    pretrain_key: str  # cells with the same key would run an identical stage 1
    reductions: list[Reduction] = field(default_factory=list)  # training-free budgets evaluated on this cell's model
    compression: float | None = None  # the grid's ratio where the budget axis is one (tokens: what it gives here)

    @property
    def label(self) -> str:
        size = f"{self.resolution}px" if self.resolution else "native"
        budget = budget_label(self.tokens, self.compression)
        variant = f"-{self.variant}" if self.variant else ""
        return f"{self.connector}{budget}-{size}-s{self.seed}{variant}"

    @property
    def folder_name(self) -> str:
        return f"{self.label}-{self.cell_id[:8]}"


@dataclass
class StepTiming:
    """Each cell's training steps timed side by side with the other cells of its resolution, seed and variant, in
    alternating rounds, after the cells trained (study/timing.py); 0 rounds: off, the stage times stand alone."""
    rounds: int = 0
    steps: int = 5  # optimizer steps per cell and round

    def __post_init__(self) -> None:
        check_ranges(self, {"rounds": NON_NEGATIVE_INT, "steps": POSITIVE_INT}, "timing")


@dataclass
class StudyPlan:
    model: dict[str, Any]  # ModelConfig fields but connector, connector_options, image_size
    grid: Grid
    pretrain: dict[str, Any] = field(default_factory=dict)  # StageConfig overrides of LLaVA-1.5's defaults
    finetune: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig's other keys (cache_features, bf16, ...)
    benchmarks: list[BenchmarkSpec] = field(default_factory=list)
    execution: Execution = field(default_factory=Execution)
    timing: StepTiming = field(default_factory=StepTiming)
    shape: ModelShape | None = None  # widths, when the checkpoints' config files are not on this machine
    reference_connector: str | None = None  # training time is reported relative to it
    reference_results: str | None = None  # a results.csv made elsewhere (e.g. the paper's released numbers)
    recommend: dict[str, Any] | None = None  # benchmark, weights, max_visual_tokens, max_train_s
    # Above this share of answers that name no option, a cell's accuracy on a benchmark is judged in no finding
    unreliable_extraction: float = UNRELIABLE_EXTRACTION
    # `study plan --estimate`'s workload per stage ({pretrain: {text_tokens, supervised_tokens, samples}, ...});
    # what is left out is measured from the stage's data when it is on this machine
    estimate: dict[str, Any] = field(default_factory=dict)
    output_dir: str = "runs/study"
    name: str = "study"
    source: str = "<python>"

    @classmethod
    def from_file(cls, path: str | Path) -> StudyPlan:
        try:
            return cls.from_dict(read_mapping(path), str(path))
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<python>") -> StudyPlan:
        data = dict(data)
        for key in ("model", "grid"):
            if not isinstance(data.get(key), dict):
                raise ConfigError(f"{key}: required, a mapping")
        fixed = sorted(set(data["model"]) & set(GRID_MODEL_KEYS))
        if fixed:
            raise ConfigError(f"model.{fixed[0]}: set by the grid (grid.connectors, grid.resolutions, grid.tokens)")
        data["grid"] = _grid(data["grid"])
        data["benchmarks"] = [from_mapping(BenchmarkSpec, _mapping(b, f"benchmarks[{i}]"), f"benchmarks[{i}]")
                              for i, b in enumerate(data.get("benchmarks") or [])]
        execution = _mapping(data.get("execution") or {}, "execution")
        if "slurm" in execution:
            execution["slurm"] = from_mapping(SlurmSettings, _mapping(execution["slurm"], "execution.slurm"),
                                              "execution.slurm")
        data["execution"] = from_mapping(Execution, execution, "execution")
        data["timing"] = from_mapping(StepTiming, _mapping(data.get("timing") or {}, "timing"), "timing")
        if data.get("shape") is not None:
            data["shape"] = from_mapping(ModelShape, _mapping(data["shape"], "shape"), "shape")
        allowed = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "output_dir", "seed", *STAGES}
        unknown = sorted(set(data.get("training") or {}) - allowed)
        if unknown:
            raise ConfigError(f"training: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
        plan = from_mapping(cls, {**data, "source": source}, "plan")
        check_name(plan.name, "name")
        check_sharded_execution(plan.training.get("sharding", "none"), plan.execution)
        check_ranges(plan, {"unreliable_extraction": FRACTION}, "")
        if plan.reference_connector and plan.reference_connector not in {c.name for c in plan.grid.connectors}:
            raise ConfigError(f"reference_connector = {plan.reference_connector!r}: not among grid.connectors")
        if plan.recommend is not None:
            from .recommend import Recommendation

            from_mapping(Recommendation, _mapping(plan.recommend, "recommend"), "recommend")
        if plan.reference_results and not Path(plan.reference_results).is_file():
            raise ConfigError(f"reference_results = {plan.reference_results!r}: no such file")
        expand(plan)  # every cell's training configuration is validated here, before anything runs
        return plan


def check_sharded_execution(sharding: str, execution: Execution) -> None:
    """DeepSpeed shards over the processes a launcher starts: its cells need a launching engine, two processes or
    more (the local engine would stop at its first cell)."""
    if is_zero(sharding) and not (execution.engine in ("accelerate", "slurm") and execution.processes > 1):
        raise ConfigError(f"training.sharding = {sharding!r} needs execution.engine accelerate (or slurm) with "
                          f"processes >= 2; this plan has engine {execution.engine!r}, processes {execution.processes}")


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return dict(value)


def _grid(data: dict) -> Grid:
    entries = data.get("connectors")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("grid.connectors: required, a non-empty list of names or {name, options}")
    connectors = []
    for i, entry in enumerate(entries):
        where = f"grid.connectors[{i}]"
        entry = {"name": entry} if isinstance(entry, str) else _mapping(entry, where)
        try:
            connectors.append(from_mapping(ConnectorEntry, entry, where))
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    grid = from_mapping(Grid, {**data, "connectors": connectors}, "grid")
    for axis, rule in (("resolutions", Range(1, integer=True, optional=True)), ("tokens", Range(1, integer=True, optional=True)),
                       ("seeds", NON_NEGATIVE_INT), ("compression", RATIO)):
        values = getattr(grid, axis)
        if axis == "compression" and values is None:
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{axis} = {values!r}: must be a non-empty list")
        for j, v in enumerate(values):
            if not rule.ok(v):
                raise ConfigError(f"grid.{axis}[{j}] = {v!r}: must be {rule.describe()}")
    _check_duplicates(grid)
    if grid.compression is not None and grid.tokens != [None]:
        raise ConfigError("grid.tokens and grid.compression: give the budget axis one way (token counts, or ratios "
                          "of each resolution's patch grid)")
    if not isinstance(grid.finetune, list) or not grid.finetune:
        raise ConfigError(f"grid.finetune = {grid.finetune!r}: must be a non-empty list of fine-tuning variants")
    names = [_mapping(v, f"grid.finetune[{j}]").get("name") for j, v in enumerate(grid.finetune)]
    for j, name in enumerate(names):
        if name is not None:
            check_name(name, f"grid.finetune[{j}].name")
    if len(grid.finetune) > 1 and (None in names or len(set(names)) != len(names)):
        raise ConfigError("grid.finetune: with several variants, each needs its own 'name'")
    for kind in ("exclude", "include"):
        for j, rule in enumerate(getattr(grid, kind)):
            rule = _mapping(rule, f"grid.{kind}[{j}]")
            unknown = sorted(set(rule) - set(CELL_FIELDS) - ({"options"} if kind == "include" else set()))
            if unknown:
                raise ConfigError(f"grid.{kind}[{j}]: unknown field(s) {', '.join(unknown)}; valid: {', '.join(CELL_FIELDS)}")
            if kind == "include" and "connector" not in rule:
                raise ConfigError(f"grid.include[{j}]: needs 'connector'")
    _check_reduce(grid.reduce)
    return grid


def _check_duplicates(grid: Grid) -> None:
    """A repeated value on an axis (or a repeated include) would silently run one cell where the plan reads as two, or
    two where it reads as one: refused, naming it."""
    seen_connectors = [(c.name, json.dumps(c.options, sort_keys=True)) for c in grid.connectors]
    axes = {"connectors": [n + (f" {o}" if o != "{}" else "") for n, o in seen_connectors],
            "resolutions": grid.resolutions, "tokens": grid.tokens, "seeds": grid.seeds,
            "compression": grid.compression or [],
            "include": [json.dumps(r, sort_keys=True) for r in grid.include]}
    for axis, values in axes.items():
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"grid.{axis}: {', '.join(repeated)} given more than once; give each once")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _check_reduce(reduce: Any) -> None:
    if reduce is None:
        return
    reduce = _mapping(reduce, "grid.reduce")
    budget = sorted(set(reduce) & {"tokens", "compression"})
    unknown = sorted(set(reduce) - {"method", "tokens", "compression"})
    if unknown or "method" not in reduce or len(budget) != 1:
        raise ConfigError(f"grid.reduce = {reduce!r}: needs 'method' and one of 'tokens' or 'compression' (a value or "
                          "a list each)")
    for key, ok, what in (("method", lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
                          ("tokens", POSITIVE_INT.ok, POSITIVE_INT.describe()), ("compression", RATIO.ok, RATIO.describe())):
        for v in _as_list(reduce.get(key, [])):
            if not ok(v):
                raise ConfigError(f"grid.reduce.{key}: {v!r} must be {what}")


def result_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved configuration, flattened, less the keys that change no number (how often to checkpoint, how many
    to keep, image threads, ...): a cell is the same cell whatever those say."""
    return {k: v for k, v in flatten(json.loads(json.dumps(cfg.to_dict()))).items() if k not in RESULT_NEUTRAL}


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


Candidate = tuple[ConnectorEntry, int | None, int | None, float | None, int, dict]


def _candidates(grid: Grid, tokens_at) -> list[Candidate]:
    """Axes multiplied, less the excluded cells, plus the included ones (an include is never excluded). A connector
    without a token knob gets one cell per resolution and seed, not one per budget. `tokens_at(resolution, ratio)`
    turns a compression ratio into that resolution's token count."""
    seen, out = set(), []
    axes = itertools.product(grid.connectors, grid.resolutions, grid.budgets, grid.seeds, grid.finetune)
    for entry, res, (tokens, ratio), seed, variant in axes:
        tokens, ratio = (tokens_at(res, ratio) if ratio else tokens, ratio) if entry.takes_budget else (None, None)
        key = (entry.name, json.dumps(entry.options, sort_keys=True), res, tokens, seed, variant.get("name"))
        values = {"connector": entry.name, "resolution": res, "tokens": tokens, "compression": ratio, "seed": seed,
                  "variant": variant.get("name")}
        if key not in seen and not _excluded(values, grid.exclude):
            seen.add(key)
            out.append((entry, res, tokens, ratio, seed, variant))
    variants = {v.get("name"): v for v in grid.finetune}
    for j, rule in enumerate(grid.include):
        entry = ConnectorEntry(rule["connector"], dict(rule.get("options") or {}))
        if rule.get("variant") not in variants:
            raise ConfigError(f"grid.include[{j}].variant = {rule.get('variant')!r}: not a grid.finetune name")
        res, ratio = rule.get("resolution", grid.resolutions[0]), rule.get("compression")
        tokens = tokens_at(res, ratio) if ratio else rule.get("tokens")
        out.append((entry, res, tokens, ratio, rule.get("seed", grid.seeds[0]), variants[rule.get("variant")]))
    return out


def _excluded(values: dict[str, Any], rules: list[dict]) -> bool:
    return any(all(values.get(k) == v for k, v in rule.items()) for rule in rules)


def expand(plan: StudyPlan, out: str | Path | None = None) -> list[Cell]:
    """Every cell of the plan, in axis order, each with its validated training configuration."""
    shapes: list[ModelShape] = []

    def grid_at(res: int | None) -> tuple[int, int]:
        """The patch grid at `res`, from the plan's shape or the tower's config (read once, and only when a ratio or a
        reduction needs it)."""
        if not shapes:
            try:
                shapes.append(plan.shape or ModelShape.read(ModelConfig(**{**plan.model, "connector": "linear"})))
            except (ValueError, TypeError) as err:
                raise ConfigError(f"{plan.source}: the tower's patch grid, needed for a compression ratio: {err}") from None
        try:
            return shapes[0].grid(ModelConfig(**{**plan.model, "connector": "linear", "image_size": res}))
        except ValueError as err:
            raise ConfigError(f"{plan.source}: {err}") from None

    root = Path(out or plan.output_dir) / CELLS
    cells = []
    for entry, res, tokens, ratio, seed, variant in _candidates(plan.grid, lambda r, x: tokens_for_ratio(grid_at(r), x)):
        options = {**entry.options, **({"num_tokens": tokens} if tokens is not None else {})}
        model = {**plan.model, "connector": entry.name, "connector_options": options, "image_size": res}
        finetune = {**plan.finetune, **{k: v for k, v in variant.items() if k != "name"}}
        data = {"model": model, "seed": seed, "pretrain": dict(plan.pretrain), "finetune": finetune,
                **plan.training, "output_dir": "."}
        try:
            cfg = TrainConfig.from_dict(data)
        except ValueError as err:
            raise ConfigError(f"cell {entry.name} at {res} px, tokens {tokens}, seed {seed}, fine-tuning "
                              f"{variant.get('name') or 'default'}: {err}") from None
        resolved = result_identity(cfg)
        preserving = CONNECTORS[entry.name].family == "preserving"
        reductions = plan.grid.reductions(lambda r, res=res: tokens_for_ratio(grid_at(res), r)) if preserving else []
        cell = Cell(entry.name, options, res, tokens, seed, variant.get("name"), cfg, _hash(resolved),
                    _hash({k: v for k, v in resolved.items() if k.split(".")[0] in PRETRAIN_KEYS}), reductions, ratio)
        cfg.output_dir = str(check_inside(root / cell.folder_name, root, f"cell {cell.label}'s folder"))
        cells.append(cell)
    if not cells:
        raise ConfigError("grid: every cell is excluded")
    by_id: dict[str, list[str]] = {}
    for cell in cells:
        by_id.setdefault(cell.cell_id, []).append(cell.label)
    same = [labels for labels in by_id.values() if len(labels) > 1]
    if same:
        raise ConfigError(f"grid: {' and '.join(same[0])} resolve to the same configuration (an include that repeats a "
                          "grid cell, or a variant that changes nothing); give each cell once")
    return cells


def _local(value: str) -> bool:
    """A path on this machine, as opposed to a Hub id (`owner/name`), which is looked up in the cache when loaded."""
    return value.startswith(("/", ".", "~")) or value.count("/") != 1 or Path(value).exists()


def missing_paths(plan: StudyPlan, cells: list[Cell]) -> list[str]:
    """Every input path the plan names that is not there, each once, so that a plan is fixed in one go rather than
    cell by cell at run time: training data and image folders, a given initial connector, local towers and LMs, each
    benchmark's data, image folder and task-type mapping."""
    from ..evaluation.hub import is_hub_source

    wanted: dict[str, str] = {}
    for cell in cells:
        cfg = cell.config
        for key, value in (("model.vision", cfg.model.vision), ("model.llm", cfg.model.llm)):
            if value and _local(value):
                wanted.setdefault(value, key)
        for stage in STAGES:
            sc = cfg.stage(stage)
            for key, value in (("data", sc.data), ("image_folder", sc.image_folder),
                               ("init_connector", None if sc.init_connector == "random" else sc.init_connector)):
                if value:
                    wanted.setdefault(value, f"{stage}.{key}" + (f" (variant {cell.variant})" if cell.variant else ""))
    for i, spec in enumerate(plan.benchmarks):
        if not is_hub_source(spec.data):
            wanted.setdefault(spec.data, f"benchmarks[{i}].data ({spec.name})")
        for key in ("image_folder", "task_types"):
            if getattr(spec, key):
                wanted.setdefault(getattr(spec, key), f"benchmarks[{i}].{key} ({spec.name})")
    return [f"{key} = {value!r}: no such file or folder" for value, key in wanted.items() if not Path(value).exists()]


def check_paths(plan: StudyPlan, cells: list[Cell]) -> None:
    missing = missing_paths(plan, cells)
    if missing:
        raise ConfigError(f"{plan.source}: {len(missing)} path(s) the plan names are missing:\n  " + "\n  ".join(missing))
