"""`connectorlab export` and `connectorlab import`: models to and from the Hugging Face ecosystem's layouts."""
from __future__ import annotations

from pathlib import Path

import typer

from ..api import EXPORT_FORMATS
from ..api import export as export_model
from .app import app, console

OVERWRITE = typer.Option(False, help="replace a non-empty --out that is not an earlier output of this command")
import_app = typer.Typer(no_args_is_help=True, help="Bring a released checkpoint into connectorlab's layout.")
app.add_typer(import_app, name="import")


@app.command("export")
def export(
    model: Path = typer.Argument(..., exists=True, file_okay=False, help="a saved MultimodalLM folder"),
    format: str = typer.Option("llava-hf", "--format", help=f"one of: {', '.join(EXPORT_FORMATS)}"),
    out: Path = typer.Option(..., help="folder to write (a model and its processor)"),
    overwrite: bool = OVERWRITE,
):
    """Write a trained model in a layout that plain transformers (and lmms-eval, vLLM) load."""
    if format not in EXPORT_FORMATS:
        raise typer.BadParameter(f"--format {format!r}: one of {', '.join(EXPORT_FORMATS)}")
    folder = export_model(model, out, format, overwrite)
    if format == "hf-remote-code":
        console.print(f"remote-code model and processor (load it with trust_remote_code enabled): {folder}")
    else:
        console.print(f"llava-hf model and processor: {folder}")


@import_app.command("llava-hf")
def import_llava_hf(
    src: str = typer.Argument(..., help="a llava-hf folder or Hub id (e.g. llava-hf/llava-1.5-7b-hf, from the cache)"),
    out: Path = typer.Option(..., help="folder for the connectorlab model (`connectorlab eval --model OUT`)"),
    template: str = typer.Option(None, help="conversation template the checkpoint was trained with (default: a "
                                            "connectorlab export's own, else the one its chat template renders, else "
                                            "vicuna_v1)"),
    image_mode: str = typer.Option(None, help="pad | resize | crop (default: pad when the processor pads)"),
    overwrite: bool = OVERWRITE,
):
    """A llava-hf checkpoint as a connectorlab model (its projector an `mlp` connector), e.g. to score it on the
    paper's task types with `connectorlab eval`."""
    from ..interop import from_llava_hf
    from ..model.mllm import MODEL_KIND
    from ..utils.io import check_output

    sources = (src,) if Path(src).exists() else ()
    check_output(out, MODEL_KIND, overwrite, sources)  # before the checkpoint is read
    model = from_llava_hf(src, template, image_mode)
    model.save_pretrained(out, overwrite=overwrite, sources=sources)
    console.print(f"connectorlab model ({model.config.connector}, {model.connector.num_output_tokens} visual tokens, "
                  f"template {model.config.template}): {out}")


@import_app.command("llava")
def import_llava(
    src: Path = typer.Argument(..., exists=True, file_okay=False, help="a LLaVA release folder (e.g. llava-v1.5-7b)"),
    out: Path = typer.Option(..., help="folder for the connectorlab model"),
    vision: str = typer.Option(None, help="the CLIP tower (default: the folder's mm_vision_tower; a local copy offline)"),
    template: str = typer.Option("vicuna_v1", help="conversation template the checkpoint was trained with"),
    model_base: Path = typer.Option(None, "--model-base", exists=True, file_okay=False,
                                    help="for a stage-1 output (config.json + mm_projector.bin): the LM it was trained on"),
    overwrite: bool = OVERWRITE,
):
    """LLaVA's original layout (an LM folder with mm_projector weights and mm_* config keys, or a stage-1 output
    with --model-base, as LLaVA's load_pretrained_model takes it) as a connectorlab model."""
    from ..interop.llava_original import from_llava_original
    from ..model.mllm import MODEL_KIND
    from ..utils.io import check_output

    sources = tuple(p for p in (src, model_base, vision) if p is not None and Path(p).exists())
    check_output(out, MODEL_KIND, overwrite, sources)  # before the checkpoint is read
    model = from_llava_original(src, vision, template, model_base)
    model.save_pretrained(out, overwrite=overwrite, sources=sources)
    console.print(f"connectorlab model ({model.config.connector}, {model.connector.num_output_tokens} visual tokens): {out}")
