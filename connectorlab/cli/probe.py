"""`connectorlab probe ...`: the generated granularity probe."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app, console

probe_app = typer.Typer(no_args_is_help=True, help="The generated granularity probe.")
app.add_typer(probe_app, name="probe")


@probe_app.command("generate")
def probe_generate(
    out: Path = typer.Option(..., help="output folder"),
    seed: int = typer.Option(0, help="random seed of the drawing (same seed, same files)"),
    image_size: int = typer.Option(None, help="side of the drawn images in pixels (default: the probe's)"),
    object_scale: float = typer.Option(None, help="side of a small shape as a fraction of the image (default: the probe's)"),
    clutter: int = typer.Option(None, help="at most this many specks per image, decoys for pooled tokens (default: the "
                                "probe's)"),
    n_train: int = typer.Option(None, min=1, help="training images, a caption and an instruction record each (default: "
                                "the probe's)"),
    n_test: int = typer.Option(None, min=1, help="test images, eleven questions each with circular copies (default: the "
                               "probe's)"),
    overwrite: bool = typer.Option(False, help="write into a non-empty --out that is not an earlier probe"),
):
    """Draw the probe: LLaVA captions and instructions for training, an MMBench-layout test set."""
    from ..probe.generate import ProbeParams, generate
    from ..utils.io import claim_output
    from ..utils.progress import progress_bar

    claim_output(out, "probe", overwrite)
    given = {"image_size": image_size, "object_scale": object_scale, "clutter": clutter, "n_train": n_train,
             "n_test": n_test}
    with progress_bar(True) as bar:
        meta = generate(out, ProbeParams(seed=seed, **{k: v for k, v in given.items() if v is not None}), progress=bar)
    console.print(f"wrote {meta['train_images']} training images and {meta['test_questions']} test questions "
                  f"({meta['test_rows']} rows with circular copies) to {out}")


@probe_app.command("models")
def probe_models(
    probe: Path = typer.Option(..., exists=True, file_okay=False, help="a folder from `probe generate`"),
    out: Path = typer.Option(..., help="where to save vision/ and llm/"),
    image_size: int = typer.Option(64, min=1, help="the tower's native resolution in pixels"),
    seed: int = typer.Option(0, help="random seed of the initial weights"),
    overwrite: bool = typer.Option(False, help="write into a non-empty --out that is not an earlier `probe models`"),
):
    """Tiny randomly initialised CLIP tower and Llama LM with a word-level tokenizer over the probe's words."""
    from ..probe.presets import make_random_presets
    from ..utils.io import claim_output

    claim_output(out, "probe models", overwrite)
    paths = make_random_presets(probe, out, image_size=image_size, seed=seed)
    console.print(f"vision: {paths['vision']}\nllm: {paths['llm']}")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="output folder (re-running skips finished cells)"),
    seed: int = typer.Option(0, help="seed of the probe, the presets and the first training seed"),
    seeds: int = typer.Option(1, min=1, help="training seeds per cell (seed, seed+1, ...); the report gives the spread"),
    object_scale: float = typer.Option(None, help="probe difficulty: side of a small shape, fraction of the image "
                                       "(default: the probe's)"),
    clutter: int = typer.Option(None, help="probe difficulty: at most this many decoy specks per image (default: the "
                                "probe's)"),
    full: bool = typer.Option(False, "--full", help="the full grid: five connectors at three resolutions and two "
                              "budgets (longer)"),
):
    """The whole study on a laptop CPU: probe, tiny MLLMs with a connector of each kind at two resolutions (the
    compressing ones at 4x fewer tokens than the patch grid), training-free reductions beside them, report (a built-in
    study plan, run like `connectorlab study run`)."""
    from ..probe.generate import ProbeParams
    from ..study.quickstart import QuickstartConfig
    from ..study.quickstart import quickstart as run
    from .app import setup_logging
    from .study import exit_if_failed

    setup_logging()
    import logging

    logging.getLogger("connectorlab").setLevel(logging.WARNING)  # the progress bars tell the story
    from .app import on_interrupt
    from .study import saved_cells

    on_interrupt(f"quick start in {out}", lambda: saved_cells(out))
    difficulty = {k: v for k, v in (("object_scale", object_scale), ("clutter", clutter)) if v is not None}
    result = run(QuickstartConfig(out=str(out), seed=seed, seeds=seeds, full=full,
                                  probe=ProbeParams(seed=seed, **difficulty)))
    console.print(f"report: {result.report.report}\nresults: {result.report.results}")
    exit_if_failed(result.run.failed, "a re-run of the quick start tries them again")
