"""The one owner of a study folder's layout on disk: where the index, the cells, the shared stage-1 runs and the
paired timings live, the index itself (`StudyIndex`, study.json), and the names of a cell's evaluations (`EvalKey`).
The runner writes the folder; status, the report, the figures and the timing read it through here."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MissingPathError
from ..training.config import TrainConfig
from ..utils.io import atomic_write_json
from .plan import CELLS, UNRELIABLE_EXTRACTION, Cell, check_inside

INDEX = "study.json"
PRETRAIN = "pretrain"  # stage-1 runs, one folder per pre-training key, shared by the cells that have it
TIMING = "step_timing.json"
CELL_STATE = "cell.json"  # in each cell's folder
BLIND_SUFFIX = "_blind"  # an evaluation's name suffix for the no-image baseline
REDUCED_MARK = "@"  # between the benchmark and a training-free reduction (probe@random-9)


@dataclass(frozen=True)
class EvalKey:
    """One evaluation of a cell: a benchmark, optionally without its images (the blind baseline) or on the cell's
    output reduced to a smaller token budget. `str()` is the name stored on disk; `parse` reads it back."""

    benchmark: str
    blind: bool = False
    reduction: str | None = None  # a reduction's label (random-9)

    def __str__(self) -> str:
        if self.reduction is not None:
            return f"{self.benchmark}{REDUCED_MARK}{self.reduction}"
        return self.benchmark + (BLIND_SUFFIX if self.blind else "")

    @classmethod
    def parse(cls, name: str) -> EvalKey:
        if REDUCED_MARK in name:
            bench, label = name.split(REDUCED_MARK, 1)
            return cls(bench, reduction=label)
        if name.endswith(BLIND_SUFFIX):
            return cls(name.removesuffix(BLIND_SUFFIX), blind=True)
        return cls(name)

    @property
    def plain(self) -> bool:
        """The benchmark as the cell was trained for it: with its images, at the cell's own budget."""
        return not self.blind and self.reduction is None


@dataclass
class StudyIndex:
    """study.json: the plan's settings the report needs, and every cell's identity, folder and size."""

    cells: dict[str, dict[str, Any]]
    plan: str = ""
    name: str = "study"
    benchmarks: list[str] = field(default_factory=list)
    workers: int = 1
    reference_connector: str | None = None
    reference_results: str | None = None
    recommend: dict[str, Any] | None = None
    unreliable_extraction: float = UNRELIABLE_EXTRACTION
    orphans: dict[str, dict[str, Any]] = field(default_factory=dict)  # cells of earlier runs the plan no longer has

    @classmethod
    def from_dict(cls, data: dict) -> StudyIndex:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class StudyFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    @property
    def cells_dir(self) -> Path:
        return self.root / CELLS

    @property
    def timing_path(self) -> Path:
        return self.root / TIMING

    def pretrain_dir(self, pretrain_key: str) -> Path:
        return self.root / PRETRAIN / pretrain_key[:16]

    def has_index(self) -> bool:
        return self.index_path.is_file()

    def read_index(self) -> StudyIndex:
        if not self.has_index():
            raise MissingPathError(f"{self.root}: no {INDEX} (not a study folder; `study run` makes one)")
        return StudyIndex.from_dict(json.loads(self.index_path.read_text()))

    def write_index(self, index: StudyIndex) -> None:
        atomic_write_json(self.index_path, asdict(index))


def pretrain_config(cell: Cell, out: Path) -> TrainConfig:
    """Stage 1 runs in the folder of its pre-training key, which the cells that share it share."""
    return dataclasses.replace(cell.config, output_dir=str(check_inside(StudyFolder(out).pretrain_dir(cell.pretrain_key),
                                                                        out, "the stage-1 folder")))


def finetune_config(cell: Cell, pretrained_connector: Path) -> TrainConfig:
    return dataclasses.replace(cell.config, finetune=dataclasses.replace(cell.config.finetune,
                                                                        init_connector=str(pretrained_connector)))




@dataclass(frozen=True)
class CellSize:
    """A cell's size as `study plan` measures it on the meta device (saved in study.json beside its identity)."""
    cell: str
    cell_id: str
    connector: str
    family: str  # preserving | compressing (or training-free for a reduction of a cell's output)
    resolution: int
    tokens_axis: int | None  # the grid's token budget (None: the connector has no num_tokens option)
    compression: float | None
    seed: int
    variant: str | None
    visual_tokens: int
    parameters: int
    flops: float | None  # connector forward FLOPs per image
    pretrain_key: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def setting(self) -> tuple:
        """Where a cell meets its reference cell: resolution, seed and fine-tuning variant."""
        return self.resolution, self.seed, self.variant

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellSize:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"compression": None, "variant": None, "options": {}, "cell_id": "", "pretrain_key": "",
                      **{k: v for k, v in data.items() if k in known}})


@dataclass(frozen=True)
class CellEntry:
    """A cell as study.json lists it."""
    label: str
    folder: Path
    size: CellSize | None  # None in an index written before sizes were recorded
    orphan: bool = False  # a cell of an earlier run that the plan no longer has


@dataclass
class CellState:
    label: str
    cell_id: str
    status: str = "pending"  # pending | running | done | failed
    pretrain_s: float | None = None
    finetune_s: float | None = None
    eval_s: float | None = None
    pretrain_peak_mb: float | None = None
    finetune_peak_mb: float | None = None
    pretrain_flops_per_sample: float | None = None
    finetune_flops_per_sample: float | None = None
    pretrain_folder: str | None = None
    model: str | None = None
    evaluations: dict[str, str] = field(default_factory=dict)  # benchmark[/blind] -> results.json
    # What each evaluation was made from beside the model (benchmark content and settings): a change re-evaluates it
    eval_identity: dict[str, dict] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None

    @classmethod
    def read(cls, folder: Path) -> CellState | None:
        path = folder / CELL_STATE
        if not path.exists():
            return None
        known = {f.name for f in dataclasses.fields(cls)}  # a cell.json written before a field existed still reads
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})

    def write(self, folder: Path) -> None:
        atomic_write_json(folder / CELL_STATE, dataclasses.asdict(self))


def study_states(out: str | Path, orphans: bool = False) -> list[tuple[CellEntry, CellState | None]]:
    """(entry of study.json, state) per cell of the plan, for `study status` and the report; with `orphans`, then the
    cells outside the plan (their entries marked `orphan`)."""
    index = StudyFolder(out).read_index()
    entries = [(label, entry, False) for label, entry in index.cells.items()]
    if orphans:
        entries += [(label, entry, True) for label, entry in index.orphans.items()]
    return [(CellEntry(label, Path(entry["folder"]), CellSize.from_dict(entry["size"]) if "size" in entry else None, orphan),
             CellState.read(Path(entry["folder"]))) for label, entry, orphan in entries]
