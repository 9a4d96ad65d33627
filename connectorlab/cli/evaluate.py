"""`connectorlab eval` and `connectorlab score`."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from . import app, console, setup_logging

score_app = typer.Typer(no_args_is_help=True, help="Score predictions made by connectorlab or another toolkit.")
app.add_typer(score_app, name="score")


@app.command("eval")
def eval_command(
    model: Path = typer.Option(..., exists=True, file_okay=False, help="a saved MultimodalLM folder"),
    benchmark: str = typer.Option(..., help="mmbench | mme | seedbench"),
    data: Path = typer.Option(..., exists=True, help="MMBench TSV, MME release folder, or SEED-Bench JSON"),
    out: Path = typer.Option(..., help="output folder (predictions.jsonl, records.jsonl, results.json)"),
    image_folder: Path = typer.Option(None, help="SEED-Bench image folder (default: beside the JSON)"),
    batch_size: int = 8,
    max_new_tokens: int = 128,
    template: str = typer.Option(None, help="conversation template (default: the model's)"),
    task_types: Path = typer.Option(None, help="a task-type mapping YAML replacing the built-in one"),
    task_section: str = typer.Option(None, help="mapping section for MMBench-layout data (e.g. probe)"),
    blind: bool = typer.Option(False, help="no-image baseline: the same prompts without the image"),
    strict: bool = typer.Option(False, help="raise on the first malformed row instead of skipping it"),
    image_workers: int = typer.Option(4, help="threads decoding the next batch's images (0: inline)"),
):
    """Run a saved model on a benchmark with LLaVA's prompts; an interrupted run resumes where it stopped."""
    from ..evaluation.runner import evaluate, load_benchmark
    from ..language.processor import MultimodalProcessor
    from ..model.mllm import MultimodalLM

    setup_logging()
    bench = load_benchmark(benchmark, data, image_folder, strict, task_types, task_section)
    mllm = MultimodalLM.from_pretrained(model)
    if template:
        mllm.processor = MultimodalProcessor(mllm.tokenizer, template, mllm.connector.num_output_tokens,
                                             mllm.config.max_length)
    result = evaluate(mllm, bench, out, batch_size, max_new_tokens, blind, {"model": str(model)},
                      workers=image_workers)
    if bench.skips.total:
        console.print(f"[yellow]{bench.skips.summary()}[/yellow]")
    show(benchmark, result["scores"])
    console.print(f"results: {out / 'results.json'}")


def show(benchmark: str, scores: dict) -> None:
    if benchmark == "mme":
        console.print(f"MME perception {scores['perception']:.2f}  cognition {scores['cognition']:.2f}")
        table = Table("subtask", "score", "acc", "acc+")
        for name, d in scores["subtask_details"].items():
            table.add_row(name, f"{d['score']:.2f}", f"{d['acc']:.2f}", f"{d['acc_plus']:.2f}")
        console.print(table)
    elif benchmark == "mmbench":
        console.print(f"MMBench circular {100 * scores['circular']:.2f}  vanilla {100 * scores['vanilla']:.2f}  "
                      f"({scores['questions']} questions, {scores['rows']} rows)")
        if scores["categories"]:
            table = Table("category", "circular", "questions")
            for name, acc in scores["categories"].items():
                table.add_row(name, f"{100 * acc:.2f}", str(scores["category_counts"][name]))
            console.print(table)
    else:
        console.print(f"SEED-Bench image {100 * scores['image']:.2f} ({scores['questions']} questions)")
        table = Table("dimension", "name", "accuracy", "questions")
        for d, acc in scores["dimensions"].items():
            table.add_row(d, scores["dimension_names"].get(d, ""), f"{100 * acc:.2f}", str(scores["dimension_counts"][d]))
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


def emit(benchmark: str, scores: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(scores, indent=2))
    else:
        show(benchmark, scores)


@score_app.command("mme")
def score_mme(
    predictions: Path = typer.Option(..., exists=True, help="MME tool folder (<subtask>.txt) or LLaVA answer JSONL"),
    ground_truth: Path = typer.Option(None, exists=True, file_okay=False, help="ground-truth folder for a JSONL"),
    task_types: Path = typer.Option(None, help="task-type mapping YAML"),
    as_json: bool = typer.Option(False, "--json"),
):
    """MME with the official tool's rules: perception, cognition and every sub-task score."""
    from ..evaluation.benchmarks.mme import join_llava_answers, read_tool_folder, score_lines
    from ..evaluation.task_types import load_mapping

    missing = 0
    if predictions.is_dir():
        lines = read_tool_folder(predictions)
    else:
        if ground_truth is None:
            raise typer.BadParameter("a LLaVA answer file needs --ground-truth (the MME tool's ground-truth folder)")
        lines, missing = join_llava_answers(predictions, ground_truth)
    scores = score_lines(lines, load_mapping("mme", task_types))
    scores["missing_predictions"] = missing
    emit("mme", scores, as_json)


@score_app.command("mmbench")
def score_mmbench_command(
    predictions: Path = typer.Option(..., exists=True, dir_okay=False, help="xlsx or TSV with index and prediction"),
    questions: Path = typer.Option(None, exists=True, dir_okay=False, help="benchmark TSV (answers, categories)"),
    task_types: Path = typer.Option(None, help="task-type mapping YAML"),
    task_section: str = typer.Option("mmbench", help="mapping section"),
    as_json: bool = typer.Option(False, "--json"),
):
    """MMBench circular and vanilla accuracy, per category and L2 group where categories are known."""
    from ..evaluation.benchmarks.mmbench import predictions_table, score_mmbench
    from ..evaluation.task_types import load_mapping

    scores = score_mmbench(predictions_table(predictions, questions), load_mapping(task_section, task_types))
    emit("mmbench", scores, as_json)


@score_app.command("seedbench")
def score_seed_command(
    predictions: Path = typer.Option(..., exists=True, dir_okay=False, help="LLaVA answer JSONL or lmms-eval samples"),
    questions: Path = typer.Option(None, exists=True, dir_okay=False, help="SEED-Bench JSON (for LLaVA answers)"),
    task_types: Path = typer.Option(None, help="task-type mapping YAML"),
    as_json: bool = typer.Option(False, "--json"),
):
    """SEED-Bench image accuracy (micro over dimensions 1-9) and per dimension."""
    from ..evaluation.benchmarks.seedbench import predictions_rows, score_seed
    from ..evaluation.task_types import load_mapping

    rows, names = predictions_rows(predictions, questions)
    emit("seedbench", score_seed(rows, names, load_mapping("seedbench", task_types)), as_json)
