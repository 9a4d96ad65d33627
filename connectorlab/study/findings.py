"""The paper's four findings, judged on a study's own numbers: one verdict and its evidence per finding.

Rows are the study's task-type rows of one benchmark (results.csv, level `task_type`). Cells are compared with the
reference connector's cell at the same resolution, seed, variant (the paper compares at equal resolution); two
accuracies differ "beyond noise" when their difference exceeds the 95% margin of a difference of two independent
proportions. The paired tests of the report sit beside these verdicts; the rule here is the one the quick start has
always used, so that a verdict never moves because the wording changed.
"""
from __future__ import annotations

import math

import pandas as pd
from scipy.stats import wilcoxon

from ..evaluation.task_types import TYPES
from .budget import budget_label

TYPE_NAMES = {"coarse": "coarse-grained perception", "fine": "fine-grained perception", "reasoning": "reasoning"}
TRAINING_FREE = "training-free"  # the family of a trained preserving cell whose output is reduced at inference
WHERE = ["resolution", "seed", "variant"]  # cells compared with each other must agree on these
ALPHA = 0.05  # of every test in a study report
STAGE_KEYS = {"pre-training": "pretrain", "fine-tuning": "finetune"}  # as the paired step timing names its stages


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def within_noise(a, b) -> bool:
    """|difference| below the 95% margin of a difference of two independent proportions."""
    se = lambda r: math.sqrt(max(r.accuracy * (1 - r.accuracy), 1e-12) / r.n)  # noqa: E731
    return abs(a.accuracy - b.accuracy) < 1.96 * math.hypot(se(a), se(b))


def verdict(hits: int, total: int) -> str:
    if total == 0:
        return "cannot be judged"
    return "holds" if hits == total else ("partly holds" if hits > 0 else "does not hold")


def change(value: float, base: float) -> str:
    d = 1 - value / base
    return f"{100 * abs(d):.0f}% {'less' if d >= 0 else 'more'} time"


def _groups(tt: pd.DataFrame):
    """(where-label, rows) per resolution x seed x variant, in a stable order."""
    for key, part in tt.fillna({"variant": ""}).groupby(WHERE, sort=True):
        res, seed, variant = key
        label = f"{res} px" + (f", seed {seed}" if tt.seed.nunique() > 1 else "") + (f", {variant}" if variant else "")
        yield label, part


def budgets(tt: pd.DataFrame) -> pd.Series:
    ratios = tt["compression"] if "compression" in tt else pd.Series(None, index=tt.index, dtype=float)
    return pd.Series([budget_label(t, c) for t, c in zip(tt.tokens, ratios, strict=True)], index=tt.index, dtype=str)


def _short(row) -> str:
    return row.connector + budget_label(row.tokens, getattr(row, "compression", None))


def preserving_wins_fine(tt: pd.DataFrame, reference: str) -> str:
    lines, hits, judged = [], 0, 0
    for where, part in _groups(tt):
        fine = part[part.name == "fine"]
        pres, comp = fine[fine.family == "preserving"], fine[fine.family == "compressing"]
        if pres.empty or comp.empty:
            continue
        pairs = [(p, c) for p in pres.itertuples() for c in comp.itertuples()]
        above = sum(p.accuracy > c.accuracy and not within_noise(p, c) for p, c in pairs)
        judged, hits = judged + len(pairs), hits + above
        lines.append(f"at {where} the preserving connectors score {', '.join(pct(a) for a in pres.accuracy)} and the "
                     f"compressing ones {', '.join(pct(a) for a in comp.accuracy)}; {above} of {len(pairs)} "
                     "preserving-compressing pairs differ beyond the 95% margin in favour of preserving")
        for m in pres[pres.connector == reference].itertuples():
            for c in comp.itertuples():
                apart = m.ci_low > c.ci_high or c.ci_low > m.ci_high
                lines.append(f"{_short(m)} {pct(m.accuracy)} [{pct(m.ci_low)}, {pct(m.ci_high)}] vs {_short(c)} "
                             f"{pct(c.accuracy)} [{pct(c.ci_low)}, {pct(c.ci_high)}] at {where}: the intervals "
                             f"{'do not overlap' if apart else 'overlap'}")
    return f"**Preserving beats compressing on fine-grained perception: {verdict(hits, judged)}.** " + "; ".join(lines) + "."


def compressing_close(tt: pd.DataFrame, reference: str) -> str:
    pairs, close, far = 0, 0, []
    for where, part in _groups(tt):
        for t in ("coarse", "reasoning"):
            ref = part[(part.connector == reference) & (part.name == t)]
            if ref.empty:
                continue
            r = next(ref.itertuples())
            for row in part[(part.name == t) & (part.family == "compressing")].itertuples():
                pairs += 1
                if within_noise(row, r):
                    close += 1
                else:
                    far.append(f"{_short(row)} at {where} on {t} ({pct(row.accuracy)} vs {reference} {pct(r.accuracy)})")
    return (f"**Compressing stays within noise of {reference} on coarse perception and reasoning: "
            f"{verdict(close, pairs)}.** {close} of {pairs} comparisons lie within the 95% margin of the difference"
            + (f"; outside it: {', '.join(far)}." if far else "."))


def stage_costs(row, ref) -> tuple[dict[str, tuple[float, float]], bool]:
    """Per stage, the (cell, reference) cost, and whether it is the time per step measured side by side (where the
    study timed both cells so) rather than each stage's wall-clock time where it ran (which drifts with the machine)."""
    paired = all(pd.notna(getattr(r, c, None)) for r in (row, ref) for c in ("pretrain_step_ms", "finetune_step_ms"))
    column = "{}_step_ms" if paired else "{}_s"
    return {name: (getattr(row, column.format(key)), getattr(ref, column.format(key)))
            for name, key in STAGE_KEYS.items()}, paired


def faster_in_rounds(cell: list[float], ref: list[float]) -> tuple[bool, str]:
    """Whether a cell's steps are faster than the reference's beyond the noise of the rounds they were timed in side by
    side: one-sided Wilcoxon signed-rank test on the per-round log ratios, alpha 0.05 (with 5 rounds: every round)."""
    logs = [math.log(a / b) for a, b in zip(cell, ref, strict=True)]
    p = float(wilcoxon(logs, alternative="less").pvalue) if any(logs) else 1.0
    below = sum(x < 0 for x in logs)
    return p < ALPHA, f"faster in {below} of {len(logs)} rounds, p = {p:.2g}"


def stage_verdict(name: str, values: tuple[float, float], label: str, rounds: dict, ref_label: str) -> tuple[bool, str]:
    """Whether the cell's stage costs less than the reference's, and the words for it: beyond the rounds' noise where
    both were timed side by side, else by the measured values alone (no noise to judge them against). The rounds' test
    looks at per-round ratios, the words give the ratio of the median steps: both must say faster, so that a
    sentence reading "more time" is never counted as faster."""
    text = f"{name} {change(*values)}"
    shorter = values[0] < values[1]
    a, b = rounds.get(label, {}).get(STAGE_KEYS[name]), rounds.get(ref_label, {}).get(STAGE_KEYS[name])
    if a and b and len(a) == len(b):
        beyond, how = faster_in_rounds(a, b)
        why = "" if beyond and shorter else ": not beyond noise" if not beyond else ": the median step is not shorter"
        return beyond and shorter, f"{text} ({how}{why})"
    return shorter, text


def compressing_faster(tt: pd.DataFrame, reference: str, rounds: dict | None = None) -> str:
    """A compressing cell trains faster when both of its stages cost less than the reference's (the paper reports
    both stages); `rounds`: per cell label and stage, the seconds per step of each round timed side by side."""
    faster, total, parts = 0, 0, []
    for where, part in _groups(tt.drop_duplicates("cell")):
        ref = part[part.connector == reference]
        if ref.empty:
            continue
        b = next(ref.itertuples())
        for row in part[part.family == "compressing"].itertuples():
            costs, paired = stage_costs(row, b)
            judged = [stage_verdict(name, values, row.cell, (rounds or {}) if paired else {}, b.cell)
                      for name, values in costs.items()]
            total += 1
            faster += all(ok for ok, _ in judged)
            what = "time per step, measured side by side" if paired else "stage wall-clock time"
            parts.append(f"{_short(row)} at {where}: {', '.join(t for _, t in judged)} than {reference} ({what})")
    return (f"**Compressing connectors train faster: {verdict(faster, total)}.** {faster} of {total} compressing cells "
            "cost less than the reference in both stages; " + "; ".join(parts) + ".")


def _settings(tt: pd.DataFrame) -> pd.DataFrame:
    return tt.assign(setting=tt.connector + budgets(tt) + "|" + tt.seed.astype(str) + tt.variant.fillna("").astype(str))


def fine_gains(keyed: pd.DataFrame, lo, hi) -> tuple[dict[str, list[float]], list]:
    """Per task type, each setting's gain from `lo` to `hi` px; and the settings whose fine-grained gain is beyond noise
    (as (row at lo, row at hi))."""
    gains, beyond = {t: [] for t in TYPES}, []
    for _, part in keyed.groupby("setting", sort=False):
        at = {r: {row.name: row for row in part[part.resolution == r].itertuples()} for r in (lo, hi)}
        if not at[lo] or not at[hi]:
            continue
        for t in TYPES:
            if t in at[lo] and t in at[hi]:
                gains[t].append(at[hi][t].accuracy - at[lo][t].accuracy)
        a, b = at[lo].get("fine"), at[hi].get("fine")
        if a is not None and b is not None and b.accuracy > a.accuracy and not within_noise(b, a):
            beyond.append((a, b))
    return gains, beyond


def resolution_helps_fine(tt: pd.DataFrame) -> str | None:
    """From the lowest to the highest resolution, per connector setting (connector, budget, seed, variant); and the
    first step, per family (the paper's 224 -> 336 px)."""
    resolutions = sorted(tt.resolution.dropna().unique())
    if len(resolutions) < 2:
        return None
    lo, hi = resolutions[0], resolutions[-1]
    keyed = _settings(tt)
    gains, beyond = fine_gains(keyed, lo, hi)
    mean = {t: sum(v) / len(v) for t, v in gains.items() if v}
    best = max(mean, key=mean.get) if mean else None
    # A largest mean gain of a point or two is noise at a few hundred questions: ask for at least one
    # connector whose fine-grained gain exceeds the 95% margin of the difference.
    if best != "fine":
        word = "does not hold"
    else:
        word = "holds" if beyond else "not shown (the largest mean gain, but within noise for every connector)"
    listed = lambda pairs: ", ".join(f"{_short(a)} ({pct(a.accuracy)} -> {pct(b.accuracy)})" for a, b in pairs)  # noqa: E731
    text = (f"**Higher resolution helps fine-grained perception most: {word}.** Mean gain from {lo} to {hi} px over "
            "connectors: " + ", ".join(f"{TYPE_NAMES[t]} {100 * g:+.1f} points" for t, g in mean.items())
            + "; connectors whose fine-grained gain exceeds the 95% margin: " + (listed(beyond) or "none"))
    if tt.family.nunique() > 1:
        _, first = fine_gains(keyed, resolutions[0], resolutions[1])
        families = sorted(set(tt.family))
        text += (f"; from {resolutions[0]} to {resolutions[1]} px, beyond the margin: " + "; ".join(
            f"{fam}: {listed([p for p in first if p[0].family == fam]) or 'none'}" for fam in families))
    return text + "."


def training_free_vs_trained(tt: pd.DataFrame) -> list[str]:
    """Per training-free method: its fine-grained accuracy against each compressing connector trained to the same
    budget, at the same resolution, seed and variant; one sentence whose verdict counts the comparisons."""
    free = tt[(tt.family == TRAINING_FREE) & (tt.name == "fine")]
    out = []
    for method, rows in free.groupby("connector", sort=True):
        better, worse, close, parts = 0, 0, 0, []
        for where, part in _groups(tt[tt.name == "fine"]):
            for row in rows[rows.cell.isin(part.cell)].itertuples():
                trained = part[(part.family == "compressing") & (part.tokens == row.tokens)]
                if trained.empty:
                    continue
                for c in trained.itertuples():
                    apart = not within_noise(row, c)
                    better += apart and row.accuracy > c.accuracy
                    worse += apart and row.accuracy < c.accuracy
                    close += not apart
                parts.append(f"at {where}, {int(row.tokens)} tokens: {pct(row.accuracy)} vs "
                             + ", ".join(f"{_short(c)} {pct(c.accuracy)}" for c in trained.itertuples()))
        total = better + worse + close
        if total == 0:
            continue
        word = ("better than" if better == total else "worse than" if worse == total
                else "as well as (within noise)" if close == total else "better than or within noise of" if not worse
                else "worse than or within noise of" if not better else "neither consistently better nor worse than")
        out.append(f"**Training-free `{method}` keeps fine-grained perception {word} the compressing connectors trained "
                   f"at the same budget.** {better} of {total} comparisons are better beyond the 95% margin, {worse} worse,"
                   f" {close} within it; " + "; ".join(parts) + ".")
    return out


def findings(tt: pd.DataFrame, reference: str = "mlp", rounds: dict | None = None) -> list[str]:
    """One sentence per finding of the paper, its verdict computed from `tt` (task-type rows of one benchmark) and the
    paired step timing's `rounds` where the study has one, then one per training-free reduction method against the
    connectors trained to compress."""
    trained = tt[tt.family != TRAINING_FREE]
    out = [preserving_wins_fine(trained, reference), compressing_close(trained, reference),
           compressing_faster(trained, reference, rounds)]
    resolution = resolution_helps_fine(trained)
    return out + ([resolution] if resolution else []) + training_free_vs_trained(tt)


def sanity(tt: pd.DataFrame, reference: str = "mlp") -> list[str]:
    """The reference connector against chance on every task type: a demo whose best model is near chance shows nothing."""
    lines = []
    for where, part in _groups(tt):
        ref = part[(part.connector == reference) & part.chance.notna()]
        if ref.empty:
            continue
        ratios = {r.name: r.accuracy / r.chance for r in ref.itertuples()}
        ok = all(v >= 2 for v in ratios.values())
        lines.append(f"{reference} at {where} scores {', '.join(f'{v:.1f}x chance on {t}' for t, v in ratios.items())} "
                     f"({'at least' if ok else 'not'} twice chance on every task type).")
    return lines
