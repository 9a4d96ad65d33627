"""The study's figures (PNG), drawn from results.csv's frame: accuracy per task type with intervals, the no-image
baseline and chance; accuracy against visual tokens and against training time; every sub-task per cell."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.task_types import TYPES
from .findings import TRAINING_FREE, TYPE_NAMES
from .folder import BLIND_SUFFIX as BLIND


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(cell: str, resolution) -> str:
    return cell.replace(f"-{resolution}px", "")


def task_type_figure(tt: pd.DataFrame, out: Path, plt) -> str:
    """One panel per benchmark and resolution: a bar per cell and task type (95% CI), the same cell without the image
    as a black tick, chance as a dotted line."""
    panels = sorted({(b, r) for b, r in zip(tt.benchmark, tt.resolution, strict=True)}, key=str)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 1.3 * tt.cell.nunique() / len(panels) + 3) * len(panels), 4.2),
                             sharey=True, squeeze=False)
    width = 0.8 / len(TYPES)
    for ax, (bench, res) in zip(axes[0], panels, strict=True):
        sub = tt[(tt.benchmark == bench) & (tt.resolution == res)]
        cells = list(dict.fromkeys(sub.cell))
        for i, t in enumerate(TYPES):
            rows = sub[sub.name == t].set_index("cell").reindex(cells)
            xs = [j + (i - 1) * width for j in range(len(cells))]
            err = [(rows.accuracy - rows.ci_low).clip(lower=0), (rows.ci_high - rows.accuracy).clip(lower=0)]
            ax.bar(xs, rows.accuracy, width, yerr=err, capsize=2, label=TYPE_NAMES[t])
            if rows.blind_accuracy.notna().any():
                ax.scatter(xs, rows.blind_accuracy, marker="_", color="black", s=60, zorder=3,
                           label="no image" if i == 0 else None)
        if sub.chance.notna().any():
            ax.axhline(sub.chance.mean(), color="grey", ls=":", lw=1, label="chance")
        tokens = sub.drop_duplicates("cell").set_index("cell").visual_tokens
        ax.set_xticks(range(len(cells)), [f"{_short(c, res)}\n({tokens[c]} tok)" for c in cells], fontsize=7)
        ax.set_title(f"{bench} at {res} px")
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("accuracy (95% CI)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "task_type_accuracy.png", dpi=120)
    plt.close(fig)
    return "task_type_accuracy.png"


def cost_figures(tt: pd.DataFrame, out: Path, plt) -> list[str]:
    """Accuracy against visual tokens and against training time (both stages), a row per benchmark."""
    names = []
    benches = sorted(tt.benchmark.unique())
    data = tt.assign(train_s=tt.pretrain_s + tt.finetune_s)
    for xcol, fname, label in (("visual_tokens", "accuracy_vs_tokens.png", "visual tokens per image"),
                               ("train_s", "accuracy_vs_time.png", "training time, both stages (s)")):
        fig, axes = plt.subplots(len(benches), len(TYPES), figsize=(5 * len(TYPES), 3.8 * len(benches)), sharey=True,
                                 squeeze=False)
        for row, bench in zip(axes, benches, strict=True):
            for ax, t in zip(row, TYPES, strict=True):
                sub = data[(data.benchmark == bench) & (data.name == t)]
                for fam, marker in (("preserving", "o"), ("compressing", "^"), (TRAINING_FREE, "s")):
                    f = sub[sub.family == fam]
                    if f.empty:
                        continue
                    yerr = [(f.accuracy - f.ci_low).clip(lower=0), (f.ci_high - f.accuracy).clip(lower=0)]
                    ax.errorbar(f[xcol], f.accuracy, yerr=yerr, fmt=marker, capsize=2, label=fam)
                for r in sub.itertuples():
                    ax.annotate(r.cell, (getattr(r, xcol), r.accuracy), fontsize=6, xytext=(3, 3), textcoords="offset points")
                ax.set_title(f"{bench}: {TYPE_NAMES[t]}")
                ax.set_xlabel(label)
                if xcol == "visual_tokens":
                    ax.set_xscale("log", base=2)
            row[0].set_ylabel("accuracy (95% CI)")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        names.append(fname)
    return names


def subtask_figure(sub: pd.DataFrame, out: Path, plt) -> str | None:
    """Every sub-task per cell at each resolution (the paper's Figure 1 view, as rows of bars, not a radar)."""
    if sub.empty:
        return None
    panels = sorted({(b, r) for b, r in zip(sub.benchmark, sub.resolution, strict=True)}, key=str)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.5 * sub.name.nunique() + 4), 3.2 * len(panels)),
                             squeeze=False)
    for ax, (bench, res) in zip(axes[:, 0], panels, strict=True):
        part = sub[(sub.benchmark == bench) & (sub.resolution == res)]
        names = sorted(part.name.astype(str).unique())
        cells = list(dict.fromkeys(part.cell))
        width = 0.8 / max(1, len(cells))
        for i, cell in enumerate(cells):
            rows = part[part.cell == cell].assign(name=lambda d: d.name.astype(str)).set_index("name").reindex(names)
            ax.bar([j + i * width for j in range(len(names))], rows.accuracy, width, label=cell)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{bench} at {res} px: accuracy per sub-task")
        ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "subtasks.png", dpi=110)
    plt.close(fig)
    return "subtasks.png"


def figures(df: pd.DataFrame, out: Path) -> list[str]:
    """Every figure of the report from results.csv's frame (blind runs appear as the no-image tick, not as cells)."""
    seen = df[~df.benchmark.str.endswith(BLIND)]
    tt = seen[seen.level == "task_type"]
    if tt.empty:
        return []
    plt = _plt()
    names = [task_type_figure(tt, out, plt), *cost_figures(tt, out, plt),
             subtask_figure(seen[seen.level == "subtask"], out, plt)]
    return [n for n in names if n]
