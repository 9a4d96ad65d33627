"""`connectorlab` command line: a thin layer over the library API."""
from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build, train, evaluate and study MLLM connectors.")
console = Console()


@app.callback()
def _root() -> None:
    """Keeps `connectorlab` a command group even while it has one command."""


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
    from .connectors.describe import describe_zoo

    try:
        rows = describe_zoo(vision_dim, llm_dim, image_size, patch_size, tokens)
    except ValueError as err:
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


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
