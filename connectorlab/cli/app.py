"""The typer app, its consoles and the commands that need no module of their own (`connectors`, `train`); the other
command modules register on this app."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build, train, evaluate and study MLLM connectors.")
console = Console()
errors = Console(stderr=True)
_debug = {"on": False}
_interrupted: dict = {}  # "what": the work under way, "saved": a callable saying what is kept (set by each command)
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def on_interrupt(what: str, saved, resume_flags: tuple[str, ...] = ()) -> None:
    """What a Ctrl-C during the rest of this command interrupts; `saved()` says what is on disk then. The command that
    resumes is this one, less --overwrite (which would discard the saved work), plus `resume_flags`."""
    _interrupted.update(what=what, saved=saved, flags=resume_flags)


class Interrupted(BaseException):
    """Ctrl-C, raised by connectorlab's own SIGINT handler: click turns a KeyboardInterrupt into a bare "Aborted!"
    before `main` could say what was saved, and lets this one through."""


def _on_sigint(signum, frame) -> None:
    raise Interrupted


def resume_command() -> str:
    import shlex

    args = [a for a in sys.argv[1:] if a != "--overwrite"]
    args += [f for f in _interrupted.get("flags", ()) if f not in args]
    return "connectorlab " + shlex.join(args)


def report_interrupt() -> None:
    if int(os.environ.get("RANK", "0")) != 0 or not _interrupted:
        return
    try:
        saved = _interrupted["saved"]()
    except Exception as err:  # noqa: BLE001 - the note must not hide the interrupt
        saved = f"(could not list what was saved: {err})"
    errors.print(f"interrupted: {_interrupted['what']}; saved: {saved}; resume with: {resume_command()}",
                 highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"connectorlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show the full traceback of an expected error (bad input, config)"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Options that apply to every command."""
    _debug["on"] = debug


def is_expected(err: BaseException) -> bool:
    """connectorlab's own user-facing errors, a malformed YAML file, and an operating-system error on a named path
    (permission denied, no such file): the user can fix these, so they get one line and exit code 2. Anything else
    (a stray ValueError from connectorlab's code, say) is a bug and keeps its traceback."""
    import yaml

    from ..errors import ConnectorlabError

    if isinstance(err, ConnectorlabError | yaml.YAMLError):
        return True
    return type(err) in (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError) \
        and getattr(err, "filename", None) is not None


@app.command()
def connectors(
    vision_dim: int = typer.Option(1024, help="vision tower width (CLIP ViT-L/14: 1024)"),
    llm_dim: int = typer.Option(4096, help="LLM width (Vicuna-7B: 4096)"),
    image_size: int = typer.Option(336, help="input resolution in pixels"),
    patch_size: int = typer.Option(14, help="vision patch size"),
    tokens: int = typer.Option(None, help="token budget for every connector that has one (default: each one's own)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list instead of a table"),
):
    """List the connector zoo: family, mechanism, output tokens, parameters and forward FLOPs per image."""
    from ..connectors.describe import describe_zoo
    from ..errors import InputError

    try:
        rows = describe_zoo(vision_dim, llm_dim, image_size, patch_size, tokens)
    except InputError as err:
        raise typer.BadParameter(str(err)) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"connectors at {image_size}px / patch {patch_size}: d_v={vision_dim}, d_l={llm_dim}")
    for col in ("name", "family", "mechanism", "tokens", "params (M)", "GFLOPs/image"):
        table.add_column(col, justify="right" if col[0] in "tpG" else "left", no_wrap=True)
    for r in rows:
        if r.get("error"):
            table.add_row(r["name"], r["family"], r["mechanism"], "-", "-", f"[red]{r['error']}[/red]")
        else:
            table.add_row(r["name"], r["family"], r["mechanism"], str(r["output_tokens"]),
                          f"{r['parameters'] / 1e6:.2f}", f"{r['flops'] / 1e9:.1f}")
    console.print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Path = typer.Option(..., exists=True, dir_okay=False, help="training YAML"),
    stage: str = typer.Option("both", help="pretrain | finetune | both"),
    resume: bool = typer.Option(False, help="continue from the newest complete checkpoint"),
    overwrite: bool = typer.Option(False, help="discard what an earlier run left in output_dir and start afresh"),
):
    """Train with LLaVA's two stages. Extra `key=value` arguments override the YAML (e.g. pretrain.lr=1e-4)."""
    from ..training.config import STAGES, TrainConfig
    from ..training.run_folder import STAGE_SUMMARY
    from ..training.trainer import train as run

    setup_logging()
    stages = list(STAGES) if stage == "both" else [stage]
    if any(s not in STAGES for s in stages):
        raise typer.BadParameter(f"--stage must be pretrain, finetune or both, got {stage!r}")
    cfg = TrainConfig.from_file(config, ctx.args)
    on_interrupt(f"training of {cfg.output_dir}", lambda: saved_checkpoints(cfg), ("--resume",))
    summaries = run(cfg, stages, resume=resume, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) != 0:  # one report per launch, from the main process
        return
    for name, result in summaries.items():
        summary = result.summary
        console.print(f"[bold]{name}[/bold]: {summary['steps']} steps in {summary['wall_clock_s']:.1f}s, "
                      f"loss {summary['first_loss']} -> {summary['final_loss']}; "
                      f"summary: {result.folder / STAGE_SUMMARY}; {result.artifact}")


def saved_checkpoints(cfg) -> str:
    from ..training.checkpoint import list_checkpoints
    from ..training.config import STAGES
    from ..training.run_folder import STAGE_SUMMARY

    parts = []
    for stage in STAGES:
        folder = Path(cfg.output_dir) / stage
        if (folder / STAGE_SUMMARY).is_file():
            parts.append(f"{stage} finished")
        elif list_checkpoints(folder / "checkpoints"):
            parts.append(f"{stage} checkpoint {list_checkpoints(folder / 'checkpoints')[-1]}")
    return ", ".join(parts) or "no checkpoint yet (the run starts from the beginning)"


def setup_logging() -> None:
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("transformers", "accelerate", "httpx", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
