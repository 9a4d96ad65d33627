"""`study report`: results.csv, report.md and a figure from a study folder, every sentence computed from the numbers.

Rows: one per cell x benchmark x task type and per cell x benchmark x sub-task (n, accuracy, Wilson 95% interval)
with the cell's size and cost. Comparisons: each cell against the plan's reference connector at the same
resolution and seed, per benchmark and task type, by exact McNemar on the questions both answered, Holm-corrected
over every comparison of the report (a cell is compared with the reference at its own resolution, seed and
fine-tuning variant).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..data.skips import DataError
from ..errors import InputError
from ..evaluation.paired import holm, mcnemar_exact
from ..evaluation.stats import wilson
from ..evaluation.task_types import TYPES, load_mapping
from ..utils.io import atomic_write_text
from .figures import figures
from .findings import ALPHA, TRAINING_FREE, budgets, findings, sanity
from .folder import BLIND_SUFFIX as BLIND
from .folder import StudyFolder, StudyIndex, study_states
from .projection import projection_section
from .quality import (
    UNRELIABLE_EXTRACTION,
    data_section,
    extraction_failure_rate,
    failed_cells,
    failed_section,
    reliable_only,
    unreliable,
    unreliable_section,
)
from .recommend import Recommendation, recommend
from .recommend import sentence as sentence_for
from .results import CellResult, load_cells

COLUMNS = ["cell", "connector", "family", "resolution", "tokens", "compression", "seed", "variant", "benchmark", "level",
           "name", "n", "accuracy", "ci_low", "ci_high", "chance", "blind_accuracy", "visual_tokens", "connector_parameters",
           "connector_flops", "pretrain_s", "finetune_s", "pretrain_step_ms", "finetune_step_ms",
           "pretrain_flops_per_sample", "finetune_flops_per_sample",
           "pretrain_peak_mb", "finetune_peak_mb", "extraction_failure_rate"]
ABOUT = "about.md"  # a study folder's own description (the quick start writes one), placed under the report's title


def _rows(cell: CellResult) -> list[dict]:
    state, size = cell.state, cell.size
    base = {"cell": cell.label, "connector": size.connector, "family": size.family, "resolution": size.resolution,
            "tokens": size.tokens_axis, "compression": size.compression, "seed": size.seed, "variant": size.variant,
            "visual_tokens": size.visual_tokens, "connector_parameters": size.parameters, "connector_flops": size.flops,
            "pretrain_s": state.pretrain_s, "finetune_s": state.finetune_s,
            "pretrain_step_ms": cell.steps.get("pretrain"), "finetune_step_ms": cell.steps.get("finetune"),
            "pretrain_peak_mb": state.pretrain_peak_mb, "finetune_peak_mb": state.finetune_peak_mb,
            "pretrain_flops_per_sample": state.pretrain_flops_per_sample,
            "finetune_flops_per_sample": state.finetune_flops_per_sample}
    rows = []
    for bench, scores in cell.scores.items():
        base["extraction_failure_rate"] = extraction_failure_rate(scores)
        for ttype in TYPES:
            t = (scores.get("task_types") or {}).get(ttype)
            if t and t["n"]:
                rows.append({**base, "benchmark": bench, "level": "task_type", "name": ttype, "n": t["n"],
                             "accuracy": t["accuracy"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
                             "chance": t.get("chance")})
        by_sub = defaultdict(list)
        for _, sub, ok in scores.get("units", []):
            by_sub[sub].append(ok)
        for sub, oks in sorted(by_sub.items()):
            lo, hi = wilson(sum(oks), len(oks))
            rows.append({**base, "benchmark": bench, "level": "subtask", "name": sub, "n": len(oks),
                         "accuracy": sum(oks) / len(oks), "ci_low": lo, "ci_high": hi})
    return rows


def with_blind(df: pd.DataFrame) -> pd.DataFrame:
    """Each row's accuracy without the image (the cell's `<benchmark>_blind` row of the same level and name)."""
    blind = df[df.benchmark.str.endswith(BLIND)]
    key = blind.assign(benchmark=blind.benchmark.str.removesuffix(BLIND))[["cell", "benchmark", "level", "name", "accuracy"]]
    merged = df.drop(columns="blind_accuracy").merge(key.rename(columns={"accuracy": "blind_accuracy"}), how="left",
                                                     on=["cell", "benchmark", "level", "name"])
    return merged[COLUMNS]


def _correct_by_unit(scores: dict, subtasks: set[str]) -> dict[str, bool]:
    return {key: bool(ok) for key, sub, ok in scores.get("units", []) if sub in subtasks}


def comparisons(cells: list[CellResult], reference: str | None) -> list[dict]:
    """Each cell against the reference connector's cell at the same resolution, seed and fine-tuning variant."""
    if not reference:
        return []
    refs = {c.size.setting: c for c in cells if c.size.connector == reference}
    found = []
    for cell in cells:
        size = cell.size
        ref = refs.get(size.setting)
        if ref is None or ref is cell:
            continue
        for bench, scores in cell.scores.items():
            if bench.endswith(BLIND) or bench not in ref.scores:
                continue
            for ttype in TYPES:
                subs = set((scores.get("task_types") or {}).get(ttype, {}).get("subtasks") or [])
                a, b = _correct_by_unit(scores, subs), _correct_by_unit(ref.scores[bench], subs)
                if not a.keys() & b.keys():
                    continue
                test = mcnemar_exact(a, b)
                found.append({"cell": cell.label, "reference": ref.label, "benchmark": bench,
                              "task_type": ttype, "n": test.n, "difference": test.difference,
                              "cell_only": test.a_only, "reference_only": test.b_only, "p_value": test.p_value})
    for row, p in zip(found, holm([r["p_value"] for r in found]), strict=True):
        row["p_holm"] = p
        row["significant"] = p < ALPHA
    return found


def sentence(c: dict) -> str:
    points = 100 * c["difference"]
    if not c["significant"]:
        verdict = f"within noise ({points:+.1f} points, Holm-adjusted p = {c['p_holm']:.3g})"
    else:
        verdict = f"{'better' if points > 0 else 'worse'} by {abs(points):.1f} points (Holm-adjusted p = {c['p_holm']:.3g})"
    return (f"{c['cell']} vs {c['reference']} on {c['benchmark']} {c['task_type']}: {verdict}, "
            f"{c['n']} paired questions ({c['cell_only']} right only for the cell, {c['reference_only']} only for the reference)")


def check_benchmark(rec: Recommendation | None, meta: StudyIndex, tt: pd.DataFrame) -> None:
    known = sorted(set(meta.benchmarks or []) | {b for b in tt.benchmark if not b.endswith(BLIND)})
    if rec is not None and rec.benchmark not in known:
        raise InputError(f"--benchmark {rec.benchmark!r}: the study has no such benchmark (it has {', '.join(known)})")


@dataclass
class ReportPaths:
    """What `write_report` wrote and the numbers it summarised."""
    report: Path  # report.md
    results: Path  # results.csv
    figures: list[Path]
    cells: int  # finished cells reported, training-free reductions included
    rows: int  # rows of results.csv
    comparisons: list[dict] = field(default_factory=list)  # the paired tests, Holm-adjusted
    recommendation: dict | None = None


def write_report(out: str | Path, recommendation: Recommendation | None = None,
                 include_orphans: bool = False) -> ReportPaths:
    """`recommendation` overrides the plan's `recommend:` (default: the first benchmark, equal task-type weights).
    Failed cells are named; a failed reference cell, or a reference whose answers could not be read, leaves the
    findings, comparisons and recommendation unjudged rather than judged on what is left."""
    out = Path(out)
    cells = load_cells(out, include_orphans)  # first: it names a folder that is not a study
    meta = StudyFolder(out).read_index()
    failed = failed_cells(out)
    orphaned_cells = [e.label for e, s in study_states(out, orphans=True) if e.orphan and s and s.status == "done"]
    reference = meta.reference_connector
    reference_failed = [e for e, _ in failed if e.size.connector == reference]
    orphaned = {e.size.setting for e in reference_failed}  # settings whose reference cell failed
    limit = meta.unreliable_extraction
    bad = unreliable(cells, limit)
    judged = [c for c in reliable_only(cells, bad) if c.size.setting not in orphaned]
    df = with_blind(pd.DataFrame([r for c in cells for r in _rows(c)], columns=COLUMNS))
    check_benchmark(recommendation, meta, df)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    comps = comparisons(judged, reference)
    lines = [f"# Study report: {meta.name}", ""]
    if (out / ABOUT).is_file():
        lines += [(out / ABOUT).read_text().strip(), ""]
    trained = sum(c.size.family != TRAINING_FREE for c in cells)
    reduced = len(cells) - trained
    lines += [f"{trained} finished cells of {len(meta.cells)}"
              + (f", and {reduced} training-free reductions of their outputs." if reduced else "."), ""]
    if orphaned_cells:
        lines += [f"{len(orphaned_cells)} finished cell(s) are outside the plan now: {', '.join(orphaned_cells)} ("
                  + ("included below, as `--include-orphans` asks)." if include_orphans else
                     "left out of the tables; `study report --include-orphans` puts them in)."), ""]
    lines += failed_section(failed, reference_failed, reference,
                            [c.label for c in cells if c.size.setting in orphaned])
    tt = df[df.level == "task_type"]
    lines += data_section(cells)
    lines += tables_section(tt, limit)
    lines += unreliable_section(bad, limit)
    kept = {c.label for c in judged}
    judged_rows = pd.Series([c in kept and (c, b) not in bad for c, b in zip(tt.cell, tt.benchmark.str.removesuffix(BLIND),
                                                                        strict=True)], index=tt.index, dtype=bool)
    judged_tt = tt[judged_rows]  # a boolean Series: an empty list would select no columns (a study with no benchmark)
    rounds = {c.label: c.rounds for c in cells if c.rounds}
    lines += findings_section(judged_tt, reference, rounds)
    if comps:
        lines += [f"## Paired comparisons against `{meta.reference_connector}` (exact McNemar, Holm over "
                  f"{len(comps)} comparisons, alpha {ALPHA})", ""]
        lines += [f"- {sentence(c)}" for c in comps]
        lines.append("")
    lines += effects_section(judged_tt[~judged_tt.benchmark.str.endswith(BLIND)], reference)
    lines += seeds_section(judged_tt[~judged_tt.benchmark.str.endswith(BLIND)])
    rec = recommendation or default_recommendation(meta, tt)
    picked = recommend(judged, rec) if rec else None
    if picked:
        lines += ["## Recommendation", "", sentence_for(picked), ""]
    if meta.reference_results:
        lines += reference_section(Path(meta.reference_results))
    if cells:
        lines += projection_section(sorted({c.size.connector for c in cells
                                            if c.size.family != TRAINING_FREE}))
    pngs = figures(df, out)
    lines += ["## Figures", "", *[f"![{name}]({name})" for name in pngs], ""] if pngs else []
    atomic_write_text(out / "report.md", "\n".join(lines))
    return ReportPaths(out / "report.md", out / "results.csv", [out / name for name in pngs], len(cells), len(df), comps,
                       picked)


def tables_section(tt: pd.DataFrame, limit: float = UNRELIABLE_EXTRACTION) -> list[str]:
    """Per benchmark, a row per cell: accuracy by task type with its interval and, where run, the no-image baseline."""
    lines = []
    for bench, part in tt[~tt.benchmark.str.endswith(BLIND)].groupby("benchmark", sort=True):
        header = "| cell | family | Q | " + " | ".join(TYPES) + " | no option % | pre-train s | fine-tune s |"
        blind = "; without the image in brackets" if part.blind_accuracy.notna().any() else ""
        lines += [f"## {bench}: accuracy by task type (%, Wilson 95% interval{blind})",
                  "", header, "|---|---|---:|" + "---:|" * (len(TYPES) + 3)]
        for cell, rows in part.groupby("cell", sort=False):
            by = {r.name: r for r in rows.itertuples()}
            first = rows.iloc[0]
            cols = [f"{100 * by[t].accuracy:.1f} [{100 * by[t].ci_low:.1f}, {100 * by[t].ci_high:.1f}]"
                    + (f" ({100 * by[t].blind_accuracy:.1f})" if pd.notna(by[t].blind_accuracy) else "") if t in by else "-"
                    for t in TYPES]
            rate = first.extraction_failure_rate
            flag = " (unreliable)" if pd.notna(rate) and rate > limit else ""
            lines.append(f"| {cell}{flag} | {first.family} | {first.visual_tokens} | " + " | ".join(cols)
                         + f" | {'-' if pd.isna(rate) else f'{100 * rate:.1f}'} | {first.pretrain_s:.1f} | "
                         f"{first.finetune_s:.1f} |")
        chance = part.groupby("name").chance.mean().dropna()
        if not chance.empty:
            lines += ["", "Chance (a consistent guess among the options): "
                      + ", ".join(f"{t} {100 * chance[t]:.1f}" for t in TYPES if t in chance) + "."]
        lines.append("")
    return lines


def findings_section(tt: pd.DataFrame, reference: str | None, rounds: dict | None = None) -> list[str]:
    """The paper's findings on each benchmark that has both families and the reference connector (`rounds`: the paired
    step timing's seconds per step of each round, per cell and stage)."""
    lines = []
    for bench, part in tt[~tt.benchmark.str.endswith(BLIND)].groupby("benchmark", sort=True):
        if not reference or reference not in set(part.connector) or part.family.nunique() < 2:
            continue
        lines += [f"## The paper's findings on {bench} (against `{reference}`)", "",
                  *[f"- {s}" for s in findings(part, reference, rounds)], ""]
        checks = sanity(part, reference)
        if checks:
            lines += [f"Sanity check on {bench}:", "", *[f"- {s}" for s in checks], ""]
    return lines


def default_recommendation(meta: StudyIndex, tt: pd.DataFrame) -> Recommendation | None:
    if meta.recommend:
        return Recommendation(**meta.recommend)
    benches = sorted(b for b in tt.benchmark.unique() if not b.endswith(BLIND))
    return Recommendation(benches[0]) if benches else None


def seeds_section(tt: pd.DataFrame) -> list[str]:
    """Mean and spread (sample standard deviation) over seeds, for settings run with more than one seed."""
    keys = ["benchmark", "connector", "tokens", "resolution", "variant", "name"]
    groups = tt.fillna({"tokens": -1, "variant": ""}).groupby(keys, sort=True)
    lines = []
    for (bench, connector, tokens, res, variant, ttype), part in groups:
        if part.seed.nunique() < 2:
            continue
        setting = f"{connector}{'' if tokens == -1 else f'-{int(tokens)}t'}-{res}px{f'-{variant}' if variant else ''}"
        acc = 100 * part.accuracy
        lines.append(f"- {bench}, {setting}, {ttype}: {acc.mean():.1f} +- {acc.std():.1f} over {part.seed.nunique()} "
                     f"seeds (min {acc.min():.1f}, max {acc.max():.1f})")
    return ["## Over seeds (mean +- sample standard deviation)", "", *lines, ""] if lines else []


def resolution_effect(tt: pd.DataFrame) -> list[str]:
    """Relative change of the family's mean accuracy from each resolution to the next, per benchmark and task type,
    over the connectors present at both (as the paper states it: 224 -> 336 px, +12.6 % fine for preserving)."""
    lines = []
    resolutions = sorted(tt.resolution.dropna().unique())
    for (bench, family, ttype), part in tt.groupby(["benchmark", "family", "name"], sort=True):
        for lo, hi in zip(resolutions, resolutions[1:], strict=False):
            a, b = part[part.resolution == lo], part[part.resolution == hi]
            both = sorted(set(a.connector + budgets(a)) & set(b.connector + budgets(b)))
            if not both:
                continue
            pick = lambda d, keep=both: d[(d.connector + budgets(d)).isin(keep)].accuracy.mean()  # noqa: E731
            x, y = pick(a), pick(b)
            change = f"{100 * (y - x) / x:+.1f} %" if x > 0 else f"{100 * (y - x):+.1f} points (from 0)"
            lines.append(f"- {bench}, {family}, {ttype}, {lo} -> {hi} px: {change} ({100 * x:.1f} -> {100 * y:.1f}, "
                         f"mean of {len(both)} connector setting(s))")
    return lines


def budget_effect(tt: pd.DataFrame) -> list[str]:
    lines = []
    for (bench, connector, res, _seed, ttype), part in tt.groupby(["benchmark", "connector", "resolution", "seed", "name"]):
        part = part.dropna(subset=["tokens"]).sort_values("tokens")
        if len(part) < 2:
            continue
        lo, hi = part.iloc[0], part.iloc[-1]
        lines.append(f"- {bench}, {connector} at {res} px, {ttype}: {int(lo.tokens)} -> {int(hi.tokens)} tokens "
                     f"{100 * (hi.accuracy - lo.accuracy):+.1f} points ({100 * lo.accuracy:.1f} -> {100 * hi.accuracy:.1f})")
    return lines


def time_against_reference(tt: pd.DataFrame, reference: str | None) -> list[str]:
    """Each trained cell's measured training time per stage relative to the reference connector at the same resolution
    and seed (the paper: C-Abstractor -80 % pre-training, -51 % fine-tuning against the two-layer MLP at 448 px); a
    training-free reduction was not trained, its times being those of the cell it reduces."""
    if not reference:
        return []
    cells = tt[tt.family != TRAINING_FREE].drop_duplicates("cell")
    refs = {(r.resolution, r.seed, r.variant): r for r in cells.itertuples() if r.connector == reference}
    lines = []
    for r in cells.itertuples():
        ref = refs.get((r.resolution, r.seed, r.variant))
        if ref is None or r.connector == reference or not ref.pretrain_s or not ref.finetune_s:
            continue
        flops = ""
        if pd.notna(r.pretrain_flops_per_sample) and pd.notna(ref.pretrain_flops_per_sample):
            flops = (f"; model FLOPs per sample {100 * (r.pretrain_flops_per_sample / ref.pretrain_flops_per_sample - 1):+.0f} %"
                     f" and {100 * (r.finetune_flops_per_sample / ref.finetune_flops_per_sample - 1):+.0f} % "
                     f"({r.pretrain_flops_per_sample / 1e9:.2f} and {r.finetune_flops_per_sample / 1e9:.2f} GFLOP)")
        paired = ""
        if all(pd.notna(x) for x in (r.pretrain_step_ms, r.finetune_step_ms, ref.pretrain_step_ms, ref.finetune_step_ms)):
            paired = (f"; time per step measured side by side {100 * (r.pretrain_step_ms / ref.pretrain_step_ms - 1):+.0f} % "
                      f"and {100 * (r.finetune_step_ms / ref.finetune_step_ms - 1):+.0f} % ({r.pretrain_step_ms:.1f} and "
                      f"{r.finetune_step_ms:.1f} ms)")
        lines.append(f"- {r.cell} vs {ref.cell}: pre-training {100 * (r.pretrain_s / ref.pretrain_s - 1):+.0f} %, "
                     f"fine-tuning {100 * (r.finetune_s / ref.finetune_s - 1):+.0f} % (measured wall-clock time){paired}{flops}")
    return lines


def effects_section(tt: pd.DataFrame, reference: str | None) -> list[str]:
    lines = []
    for title, body in (("Resolution effect (relative change of the family mean)", resolution_effect(tt)),
                        ("Token-budget effect", budget_effect(tt)),
                        (f"Training time against `{reference}`", time_against_reference(tt, reference))):
        if body:
            lines += [f"## {title}", "", *body, ""]
    return lines


REFERENCE_COLUMNS = ("cell", "benchmark", "level", "name", "n", "accuracy")


def reference_section(path: Path) -> list[str]:
    """Cells made elsewhere, regrouped into task types with the built-in mapping (question-weighted over their
    sub-tasks, Wilson interval), shown beside the study's own and marked as references."""
    df = pd.read_csv(path, dtype={"name": str})
    missing = [c for c in REFERENCE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: reference results lack column(s) {', '.join(missing)}")
    lines = []
    for bench, part in df[df.level == "subtask"].groupby("benchmark", sort=True):
        mapping = load_mapping(bench)
        lines += [f"## Reference cells: {bench} (made elsewhere, from {path.name}; not run by this study)", "",
                  "| reference cell | Q | px | " + " | ".join(TYPES) + " |", "|---|---:|---:|" + "---:|" * len(TYPES)]
        for cell, rows in part.groupby("cell", sort=False):
            cols = []
            for ttype in TYPES:
                sel = rows[rows.name.isin([s for s, e in mapping.items() if e["type"] == ttype])]
                n, k = int(sel.n.sum()), float((sel.accuracy * sel.n).sum())
                lo, hi = wilson(k, n)
                cols.append(f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" if n else "-")
            first = rows.iloc[0]
            lines.append(f"| {cell} | {first.get('visual_tokens', '')} | {first.get('resolution', '')} | "
                         + " | ".join(cols) + " |")
        lines.append("")
    return lines
