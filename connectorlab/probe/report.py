"""results.csv, figures and report.md for a study, every sentence computed from the numbers."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from ..utils.io import atomic_write_text

TYPES = ("coarse", "fine", "reasoning")
TYPE_NAMES = {"coarse": "coarse-grained perception", "fine": "fine-grained perception", "reasoning": "reasoning"}
COLUMNS = ["connector", "family", "resolution", "visual_tokens", "task_type", "n", "accuracy", "ci_low", "ci_high",
           "pretrain_s", "finetune_s"]


def results_frame(cells: list[dict]) -> pd.DataFrame:
    rows = []
    for c in cells:
        for t in TYPES:
            d, b = c["scores"]["task_types"][t], c["blind"]["task_types"][t]
            rows.append({"connector": c["connector"], "family": c["family"], "resolution": c["resolution"],
                         "visual_tokens": c["visual_tokens"], "task_type": t, "n": d["n"], "accuracy": d["accuracy"],
                         "ci_low": d["ci_low"], "ci_high": d["ci_high"], "pretrain_s": c["pretrain_s"],
                         "finetune_s": c["finetune_s"], "mechanism": c["mechanism"], "blind_accuracy": b["accuracy"],
                         "chance": c.get("chance", {}).get(t), "extraction_failures": c["scores"]["extraction_failures"]})
    return pd.DataFrame(rows)


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def within_noise(a: pd.Series, b: pd.Series) -> bool:
    """|difference| below the 95% margin of a difference of two independent proportions."""
    return abs(a.accuracy - b.accuracy) < 1.96 * math.sqrt(_se(a.accuracy, a.n) ** 2 + _se(b.accuracy, b.n) ** 2)


def verdict(hits: int, total: int) -> str:
    if total == 0:
        return "cannot be judged"
    return "holds" if hits == total else ("partly holds" if hits > 0 else "does not hold")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def change(value: float, base: float) -> str:
    d = 1 - value / base
    return f"{100 * abs(d):.0f}% {'less' if d >= 0 else 'more'} time"


def findings(df: pd.DataFrame) -> list[str]:
    out = []
    get = lambda conn, res, t: df[(df.connector == conn) & (df.resolution == res) & (df.task_type == t)].iloc[0]  # noqa: E731
    resolutions = sorted(df.resolution.unique())
    # 1. preserving beats compressing on fine-grained perception
    lines, hits, judged = [], 0, 0
    for res in resolutions:
        fine = df[(df.resolution == res) & (df.task_type == "fine")]
        pres, comp = fine[fine.family == "preserving"], fine[fine.family == "compressing"]
        if pres.empty or comp.empty:
            continue
        pairs = [(p, c) for _, p in pres.iterrows() for _, c in comp.iterrows()]
        above = sum(p.accuracy > c.accuracy and not within_noise(p, c) for p, c in pairs)
        judged += len(pairs)
        hits += above
        lines.append(f"at {res} px the preserving connectors score {', '.join(pct(a) for a in pres.accuracy)} and the "
                     f"compressing ones {', '.join(pct(a) for a in comp.accuracy)}; {above} of {len(pairs)} "
                     "preserving-compressing pairs differ beyond the 95% margin in favour of preserving")
        if {"mlp", "avgpool"} <= set(fine.connector):
            m, a = get("mlp", res, "fine"), get("avgpool", res, "fine")
            apart = m.ci_low > a.ci_high or a.ci_low > m.ci_high
            lines.append(f"mlp {pct(m.accuracy)} [{pct(m.ci_low)}, {pct(m.ci_high)}] vs avgpool {pct(a.accuracy)} "
                         f"[{pct(a.ci_low)}, {pct(a.ci_high)}] at {res} px: the intervals "
                         f"{'do not overlap' if apart else 'overlap'}")
    out.append(f"**Preserving beats compressing on fine-grained perception: {verdict(hits, judged)}.** "
               + "; ".join(lines) + ".")
    # 2. compressing stays within noise on coarse perception and reasoning (against mlp, same resolution)
    pairs, close, far = 0, 0, []
    for res in resolutions:
        for t in ("coarse", "reasoning"):
            if df[(df.connector == "mlp") & (df.resolution == res)].empty:
                continue
            ref = get("mlp", res, t)
            for _, row in df[(df.resolution == res) & (df.task_type == t) & (df.family == "compressing")].iterrows():
                pairs += 1
                if within_noise(row, ref):
                    close += 1
                else:
                    far.append(f"{row.connector} at {res} px on {t} ({pct(row.accuracy)} vs mlp {pct(ref.accuracy)})")
    out.append(f"**Compressing stays within noise of mlp on coarse perception and reasoning: {verdict(close, pairs)}.** "
               f"{close} of {pairs} comparisons lie within the 95% margin of the difference"
               + (f"; outside it: {', '.join(far)}." if far else "."))
    # 3. compressing connectors train faster (both stages, against mlp at the same resolution)
    timing = df.drop_duplicates(["connector", "resolution"])
    faster, total, parts = 0, 0, []
    for res in resolutions:
        base = timing[(timing.connector == "mlp") & (timing.resolution == res)]
        if base.empty:
            continue
        b = base.iloc[0]
        for _, row in timing[(timing.resolution == res) & (timing.family == "compressing")].iterrows():
            total += 1
            quicker = row.pretrain_s + row.finetune_s < b.pretrain_s + b.finetune_s
            faster += quicker
            parts.append(f"{row.connector} at {res} px: pre-training {change(row.pretrain_s, b.pretrain_s)}, "
                         f"fine-tuning {change(row.finetune_s, b.finetune_s)} than mlp")
    out.append(f"**Compressing connectors train faster: {verdict(faster, total)}.** " + "; ".join(parts) + ".")
    # 4. higher resolution helps fine-grained perception most
    if len(resolutions) >= 2:
        lo, hi = resolutions[0], resolutions[-1]
        gains = {t: [] for t in TYPES}
        for conn in df.connector.unique():
            if any(df[(df.connector == conn) & (df.resolution == r)].empty for r in (lo, hi)):
                continue
            for t in TYPES:
                gains[t].append(get(conn, hi, t).accuracy - get(conn, lo, t).accuracy)
        mean = {t: sum(v) / len(v) for t, v in gains.items() if v}
        best = max(mean, key=mean.get) if mean else None
        # A largest mean gain of a point or two is noise at a few hundred questions: ask for at least one
        # connector whose fine-grained gain exceeds the 95% margin of the difference.
        beyond = [conn for conn in df.connector.unique()
                  if not df[(df.connector == conn) & (df.resolution == lo)].empty
                  and not df[(df.connector == conn) & (df.resolution == hi)].empty
                  and get(conn, hi, "fine").accuracy > get(conn, lo, "fine").accuracy
                  and not within_noise(get(conn, hi, "fine"), get(conn, lo, "fine"))]
        if best != "fine":
            word = "does not hold"
        else:
            word = "holds" if beyond else "not shown (the largest mean gain, but within noise for every connector)"
        out.append(f"**Higher resolution helps fine-grained perception most: {word}.** "
                   f"Mean gain from {lo} to {hi} px over connectors: "
                   + ", ".join(f"{TYPE_NAMES[t]} {100 * g:+.1f} points" for t, g in mean.items())
                   + "; connectors whose fine-grained gain exceeds the 95% margin: "
                   + (", ".join(f"{c} ({pct(get(c, lo, 'fine').accuracy)} -> {pct(get(c, hi, 'fine').accuracy)})"
                                for c in beyond) or "none") + ".")
    return out


def sanity(df: pd.DataFrame) -> list[str]:
    lines = []
    for res in sorted(df.resolution.unique()):
        mlp = df[(df.connector == "mlp") & (df.resolution == res)]
        if mlp.empty:
            continue
        ratios = {r.task_type: r.accuracy / r.chance for r in mlp.itertuples() if r.chance}
        ok = all(v >= 2 for v in ratios.values())
        lines.append(f"mlp at {res} px scores {', '.join(f'{v:.1f}x chance on {t}' for t, v in ratios.items())} "
                     f"({'at least' if ok else 'not'} twice chance on every task type).")
    return lines


def table(df: pd.DataFrame, res: int) -> str:
    sub = df[df.resolution == res]
    head = "| connector | family | visual tokens | " + " | ".join(f"{TYPE_NAMES[t]} (blind)" for t in TYPES) + \
        " | pre-train s | fine-tune s |\n|---|---|---|" + "---|" * (len(TYPES) + 2) + "\n"
    body = ""
    for conn in sub.connector.unique():
        rows = {r.task_type: r for r in sub[sub.connector == conn].itertuples()}
        r0 = rows[TYPES[0]]
        cells = [f"{pct(rows[t].accuracy)} [{pct(rows[t].ci_low)}, {pct(rows[t].ci_high)}] ({pct(rows[t].blind_accuracy)})"
                 for t in TYPES]
        body += (f"| {conn} | {r0.family} | {r0.visual_tokens} | " + " | ".join(cells)
                 + f" | {r0.pretrain_s:.1f} | {r0.finetune_s:.1f} |\n")
    return head + body


def figures(df: pd.DataFrame, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    resolutions = sorted(df.resolution.unique())
    fig, axes = plt.subplots(1, len(resolutions), figsize=(6 * len(resolutions), 4), sharey=True, squeeze=False)
    for ax, res in zip(axes[0], resolutions, strict=True):
        sub = df[df.resolution == res]
        conns = list(sub.connector.unique())
        width = 0.8 / len(TYPES)
        for i, t in enumerate(TYPES):
            rows = [sub[(sub.connector == c) & (sub.task_type == t)].iloc[0] for c in conns]
            xs = [j + (i - 1) * width for j in range(len(conns))]
            ax.bar(xs, [r.accuracy for r in rows], width, label=TYPE_NAMES[t],
                   yerr=[[max(0.0, r.accuracy - r.ci_low) for r in rows], [max(0.0, r.ci_high - r.accuracy) for r in rows]],
                   capsize=2)
            ax.scatter(xs, [r.blind_accuracy for r in rows], marker="_", color="black", s=60,
                       label="no image" if i == 0 else None, zorder=3)
        chance = sub.chance.dropna()
        if not chance.empty:
            ax.axhline(chance.mean(), color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(range(len(conns)), [f"{c}\n({sub[sub.connector == c].visual_tokens.iloc[0]} tok)" for c in conns],
                      fontsize=8)
        ax.set_title(f"{res} px")
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("circular accuracy (95% CI)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle("Probe accuracy per task type, connector and resolution")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / "task_type_accuracy.png", dpi=120)
    plt.close(fig)
    names.append("task_type_accuracy.png")
    for xcol, fname, label in (("visual_tokens", "accuracy_vs_tokens.png", "visual tokens per image"),
                               ("train_s", "accuracy_vs_time.png", "training time, both stages (s)")):
        fig, axes = plt.subplots(1, len(TYPES), figsize=(5 * len(TYPES), 3.8), sharey=True)
        d = df.assign(train_s=df.pretrain_s + df.finetune_s)
        for ax, t in zip(axes, TYPES, strict=True):
            sub = d[d.task_type == t]
            for fam, marker in (("preserving", "o"), ("compressing", "^")):
                f = sub[sub.family == fam]
                yerr = [(f.accuracy - f.ci_low).clip(lower=0), (f.ci_high - f.accuracy).clip(lower=0)]
                ax.errorbar(f[xcol], f.accuracy, yerr=yerr, fmt=marker, capsize=2, label=fam)
            for r in sub.itertuples():
                ax.annotate(f"{r.connector}@{r.resolution}", (getattr(r, xcol), r.accuracy), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            ax.set_title(TYPE_NAMES[t])
            ax.set_xlabel(label)
            if xcol == "visual_tokens":
                ax.set_xscale("log", base=2)
        axes[0].set_ylabel("circular accuracy (95% CI)")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        names.append(fname)
    return names


def write_report(out: Path, cells: list[dict], qc) -> Path:
    df = results_frame(cells)
    atomic_write_text(out / "results.csv", df[COLUMNS + ["mechanism", "blind_accuracy", "chance", "extraction_failures"]]
                      .to_csv(index=False))
    pngs = figures(df, out)
    p = qc.probe
    first = df[(df.connector == df.connector.iloc[0]) & (df.resolution == df.resolution.iloc[0])]
    questions = int(first.n.sum())
    lines = [
        "# Quick-start study on the granularity probe", "",
        "## What was measured", "",
        f"- Probe: {p.n_train} training images, {p.n_test} test images ({questions} questions, each asked in every "
        f"rotation of its options), drawn at {p.image_size} px; the small shape is {p.object_scale:.2f} of the side, "
        f"with up to {p.clutter} decoy specks per image; seed {p.seed}.",
        f"- Model: a {qc.sizes.vision_layers}-layer ViT (width {qc.sizes.vision_hidden}, patch {qc.sizes.patch_size}) "
        f"pre-trained once on probe images and frozen; a {qc.sizes.llm_layers}-layer Llama (width {qc.sizes.llm_hidden}) "
        "warmed up on the probe's text; LLaVA's two stages per connector "
        f"(pre-train {qc.pretrain.epochs} epoch(s), fine-tune {qc.finetune.epochs} epoch(s), global batch "
        f"{qc.finetune.global_batch}).",
        "- Accuracy: MMBench circular accuracy per task type (a question counts only if all rotations are right), "
        "with n questions and a Wilson 95% interval; in brackets after each interval, the same model without the image "
        "(blind). Chance is 1/4 per question (four options). Training time: wall-clock seconds of each stage on this machine.",
        "",
    ]
    for res in sorted(df.resolution.unique()):
        lines += [f"### {res} px", "", table(df, res), ""]
    lines += ["## The paper's findings on the probe", "", *[f"- {s}" for s in findings(df)], "",
              "## Sanity checks", "", *[f"- {s}" for s in sanity(df)], "",
              "## Figures", "", *[f"![{n}]({n})" for n in pngs], ""]
    cfg = dataclasses.asdict(qc)
    lines += ["## Configuration", "", "```", *[f"{k}: {v}" for k, v in cfg.items()], "```", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
