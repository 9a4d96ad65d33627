"""`connectorlab eval` and `connectorlab score`."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..errors import MissingPathError
from .app import app, console, errors, on_interrupt, setup_logging

score_app = typer.Typer(no_args_is_help=True, help="Score predictions made by connectorlab or another toolkit.")
app.add_typer(score_app, name="score")

ALLOW_INCOMPLETE = typer.Option(False, help="exit 0 even when sub-tasks, questions or predictions are missing")
AS_JSON = typer.Option(False, "--json", help="print the full result as JSON instead of tables")
TASK_TYPES = typer.Option(None, help="task-type mapping YAML replacing the built-in one")


@app.command("eval")
def eval_command(
    model: Path = typer.Option(..., exists=True, file_okay=False, help="a saved MultimodalLM folder"),
    benchmark: str = typer.Option(..., help="mmbench | mme | seedbench | probe"),
    data: str = typer.Option(..., help="MMBench TSV, MME release folder, SEED-Bench JSON; or the Hub dataset lmms-eval "
                                       "reads (lmms-lab/MME, lmms-lab/MMBench, lmms-lab/SEED-Bench) or parquet files of it"),
    out: Path = typer.Option(..., help="output folder (predictions.jsonl, records.jsonl, results.json)"),
    subset: str = typer.Option(None, help="Hub dataset: its subset (default: en for MMBench)"),
    split: str = typer.Option(None, help="Hub dataset: its split (default: dev for MMBench, test otherwise)"),
    image_folder: Path = typer.Option(None, help="SEED-Bench image folder (default: beside the JSON)"),
    batch_size: int = typer.Option(8, min=1, help="prompts generated together (answers do not depend on it)"),
    max_new_tokens: int = typer.Option(None, min=1, help="longest answer generated, in tokens (default: LLaVA's script's "
                                                         "cap: MMBench 1024, MME and SEED-Bench 128)"),
    template: str = typer.Option(None, help="conversation template (default: the model's)"),
    task_types: Path = TASK_TYPES,
    task_section: str = typer.Option(None, help="mapping section of the task types (default: the benchmark's; for "
                                                "MMBench-layout data the one its categories belong to)"),
    blind: bool = typer.Option(False, help="no-image baseline: the same prompts without the image"),
    strict: bool = typer.Option(False, help="raise on the first malformed row instead of skipping it"),
    image_workers: int = typer.Option(4, min=0, help="threads decoding the next batch's images (0: inline)"),
    overwrite: bool = typer.Option(False, help="discard predictions that --out holds from another run"),
    reduce: str = typer.Option(None, help="training-free token reduction of a preserving connector's output, "
                                          "METHOD:TOKENS with METHOD random | avgpool | cls_attention"),
    allow_incomplete: bool = ALLOW_INCOMPLETE,
):
    """Run a saved model on a benchmark with LLaVA's prompts; an interrupted run resumes where it stopped. Under
    `accelerate launch -m connectorlab eval ...` the batches are dealt out to the processes (same answers)."""
    from ..evaluation.registry import BENCHMARKS, load_benchmark
    from ..evaluation.result import RESULTS
    from ..evaluation.runner import evaluate
    from ..language.processor import MultimodalProcessor
    from ..model.mllm import MultimodalLM
    from ..utils.distributed import process_state

    setup_logging()
    from ..evaluation.hub import is_hub_source

    if not is_hub_source(data) and not Path(data).exists():
        raise MissingPathError(f"--data {data}: no such file or folder (nor an owner/name Hub dataset id)")
    bench = load_benchmark(benchmark, data, image_folder, strict, task_types, task_section, subset, split)
    if max_new_tokens is None:
        max_new_tokens = BENCHMARKS[benchmark].max_new_tokens
    state = process_state()
    mllm = MultimodalLM.from_pretrained(model).to(state.device)
    if template:
        mllm.processor = MultimodalProcessor(mllm.tokenizer, template, mllm.connector.num_output_tokens,
                                             mllm.config.max_length)
    if reduce:
        from ..reduction import parse

        mllm.set_reduction(parse(reduce))
    on_interrupt(f"evaluation of {model} on {benchmark}", lambda: saved_predictions(out))
    result = evaluate(mllm, bench, out, batch_size, max_new_tokens, blind, {"model": str(model)},
                      workers=image_workers, overwrite=overwrite, state=state)
    if not state.is_main_process:  # the main process reports; every process exits with the same code
        raise typer.Exit(0 if result.complete or allow_incomplete else INCOMPLETE_EXIT)
    if result.resumed_predictions:
        console.print(f"[yellow]reused {result.resumed_predictions} predictions already in {out / 'predictions.jsonl'}"
                      f" (same model content {result.identity['model_fingerprint'][:19]}..., data and settings); answered "
                      f"{result.answered_now} now[/yellow]", highlight=False)
    if bench.skips.total:
        console.print(f"[yellow]{bench.skips.summary()}[/yellow]")
    unanswered = result.skipped_prompts
    for reason, n in unanswered["by_reason"].items():
        console.print(f"[yellow]not answered: {n} question(s), {reason} (first: "
                      f"{'; '.join(unanswered['examples'].get(reason, [])[:3])}); a re-run tries them again[/yellow]",
                      highlight=False)
    show(benchmark, result.scores)
    console.print(f"results: {out / RESULTS}")
    exit_if_incomplete(result.scores, allow_incomplete)


def saved_predictions(out: Path) -> str:
    files = [out / "predictions.jsonl", *sorted(out.glob("predictions.rank*.jsonl"))]
    n = sum(sum(1 for line in f.read_text().splitlines() if line.strip()) for f in files if f.is_file())
    return f"{n} predictions in {out} (kept by the next run of the same command)"


def show(benchmark: str, scores: dict) -> None:
    from ..evaluation.registry import BENCHMARKS

    summary = BENCHMARKS[benchmark].render(scores)
    console.print(summary.headline)
    if summary.rows:
        table = Table(*summary.columns)
        for row in summary.rows:
            table.add_row(*row)
        console.print(table)
    if scores.get("task_types"):
        table = Table("task type", "n", "accuracy", "95% CI", "macro", title="task types (micro accuracy, Wilson CI)")
        for t, d in scores["task_types"].items():
            if t == "unmapped_subtasks" or not d["n"]:
                continue
            table.add_row(t, str(d["n"]), f"{100 * d['accuracy']:.1f}",
                          f"{100 * d['ci_low']:.1f}-{100 * d['ci_high']:.1f}", f"{d['macro']:.2f}")
        console.print(table)
    console.print(f"extraction failures: {scores.get('extraction_failures', 0)}, "
                  f"missing predictions: {scores.get('missing_predictions', 0)}")
    for line in warnings(scores):
        console.print(f"[yellow]{line}[/yellow]", highlight=False)
    if not scores.get("complete", True):
        console.print(f"[bold red]INCOMPLETE: {incompleteness(scores)}[/bold red]", highlight=False)


def warnings(scores: dict) -> list[str]:
    out = []
    if scores.get("ignored_files"):
        out.append(f"ignored {len(scores['ignored_files'])} file(s) that are not one of MME's 14 sub-task files: "
                   + ", ".join(scores["ignored_files"][:10]))
    for key, what in (("duplicate_answers", "answers given twice (first kept)"), ("blank_lines", "blank lines skipped"),
                      ("unmatched_answers", "answers matching no ground-truth question (not scored)"),
                      ("unmatched_rows", "prediction rows not in --questions (scored with their own answer column)")):
        if scores.get(key):
            examples = scores.get(key.replace("answers", "examples"), [])
            out.append(f"{scores[key]} {what}" + (f", e.g. {'; '.join(examples[:3])}" if isinstance(examples, list)
                                                   and examples else ""))
    if scores.get("task_section_note"):
        out.append(scores["task_section_note"])
    types = scores.get("task_types")
    if types is not None and not any(v.get("n") for k, v in types.items() if k != "unmapped_subtasks"):
        out.append("the task-type table is empty: no sub-task maps to a task type"
                   + (f" (unmapped: {', '.join(types.get('unmapped_subtasks', [])[:8])}); pass --task-types or "
                      "--task-section" if types.get("unmapped_subtasks") else ""))
    return out


def incompleteness(scores: dict) -> str:
    parts = []
    if scores.get("missing_subtasks"):
        parts.append(f"missing sub-task(s) {', '.join(scores['missing_subtasks'])}, not counted in the totals")
    if scores.get("short_subtasks"):
        short = scores["short_subtasks"].items()
        parts.append("fewer questions than the release in " + ", ".join(f"{k} ({v})" for k, v in short))
    if scores.get("unreadable_images"):
        parts.append(f"{scores['unreadable_images']} question(s) with an image that does not decode, not answered")
    if scores.get("missing_predictions"):
        parts.append(f"{scores['missing_predictions']} question(s) without a prediction, "
                     + scores.get("missing_rule", "scored as wrong"))
    return "; ".join(parts) or "see --json"


def emit(benchmark: str, scores: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(scores, indent=2))
    else:
        show(benchmark, scores)


INCOMPLETE_EXIT = 3


def finish(benchmark: str, scores: dict, as_json: bool, allow_incomplete: bool) -> None:
    """Print, then exit non-zero for an incomplete score unless the user accepts it."""
    emit(benchmark, scores, as_json)
    exit_if_incomplete(scores, allow_incomplete)


def exit_if_incomplete(scores: dict, allow_incomplete: bool) -> None:
    if not scores.get("complete", True) and not allow_incomplete:
        errors.print(f"[red]exit code {INCOMPLETE_EXIT}: the score is incomplete (--allow-incomplete accepts it)[/red]",
                     highlight=False)
        raise typer.Exit(INCOMPLETE_EXIT)


@score_app.command("mme")
def score_mme(
    predictions: Path = typer.Option(..., exists=True, help="MME tool folder (<subtask>.txt) or LLaVA answer JSONL"),
    ground_truth: Path = typer.Option(None, exists=True, file_okay=False, help="ground-truth folder for a JSONL"),
    task_types: Path = TASK_TYPES,
    missing_as_wrong: bool = typer.Option(False, help="score a question without an answer as wrong (LLaVA JSONL); "
                                                      "the official pipeline leaves it out"),
    allow_incomplete: bool = ALLOW_INCOMPLETE,
    as_json: bool = AS_JSON,
):
    """MME with the official tool's rules: perception, cognition and every sub-task score."""
    from ..evaluation.benchmarks.mme import join_llava_answers, read_tool_folder, score_lines
    from ..evaluation.task_types import load_mapping

    if predictions.is_dir():
        folder = read_tool_folder(predictions)
        lines, extra = folder.lines, {"missing_predictions": 0, "ignored_files": folder.ignored}
    else:
        if ground_truth is None:
            raise typer.BadParameter("a LLaVA answer file needs --ground-truth (the MME tool's ground-truth folder)")
        joined = join_llava_answers(predictions, ground_truth, missing_as_wrong)
        lines, extra = joined.lines, joined.report()
    scores = {**score_lines(lines, load_mapping("mme", task_types)), **extra}
    scores["complete"] = scores["complete"] and not scores["missing_predictions"]
    finish("mme", scores, as_json, allow_incomplete)


@score_app.command("mmbench")
def score_mmbench_command(
    predictions: Path = typer.Option(..., exists=True, dir_okay=False, help="upload xlsx or TSV (index, A-D, prediction)"),
    questions: Path = typer.Option(None, exists=True, dir_okay=False, help="benchmark TSV (answers, categories)"),
    task_types: Path = TASK_TYPES,
    task_section: str = typer.Option(None, help="mapping section (default: mmbench, or probe for the probe's test set)"),
    allow_incomplete: bool = ALLOW_INCOMPLETE,
    as_json: bool = AS_JSON,
):
    """MMBench circular and vanilla accuracy, per category and L2 group where categories are known."""
    from ..evaluation.benchmarks.mmbench import predictions_table, score_mmbench
    from ..evaluation.task_types import choose_section

    table = predictions_table(predictions, questions)
    section, mapping, note = choose_section("mmbench", task_section, {r["category"] for r in table.rows}, task_types)
    scores = {**score_mmbench(table.rows, mapping), "task_section": section, "task_section_note": note,
              "unmatched_rows": table.unmatched}
    finish("mmbench", scores, as_json, allow_incomplete)


@score_app.command("seedbench")
def score_seed_command(
    predictions: Path = typer.Option(..., exists=True, dir_okay=False, help="LLaVA answer JSONL or lmms-eval samples"),
    questions: Path = typer.Option(None, exists=True, dir_okay=False, help="SEED-Bench JSON (for LLaVA answers)"),
    task_types: Path = TASK_TYPES,
    allow_incomplete: bool = ALLOW_INCOMPLETE,
    as_json: bool = AS_JSON,
):
    """SEED-Bench image accuracy (micro over dimensions 1-9) and per dimension."""
    from ..evaluation.benchmarks.seedbench import predictions_rows, score_seed
    from ..evaluation.task_types import load_mapping

    rows, names = predictions_rows(predictions, questions)
    finish("seedbench", score_seed(rows, names, load_mapping("seedbench", task_types)), as_json, allow_incomplete)
