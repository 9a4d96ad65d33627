"""`connectorlab study ...`: the connector study from a plan file."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from . import app, console

study_app = typer.Typer(no_args_is_help=True, help="The connector study: a grid of cells from one plan file.")
app.add_typer(study_app, name="study")


@study_app.command("plan")
def study_plan(
    plan: Path = typer.Argument(..., exists=True, dir_okay=False, help="study plan YAML"),
    out: Path = typer.Option(None, help="study folder (default: the plan's output_dir)"),
    as_json: bool = typer.Option(False, "--json", help="print the cells as JSON instead of a table"),
):
    """Expand and validate a plan without running anything: cells, visual tokens (Q), connector parameters and
    forward FLOPs per image, and which cells share a stage-1 run."""
    from ..study.plan import StudyPlan, describe_cells, expand

    study = StudyPlan.from_file(plan)
    cells = expand(study, out)
    rows = describe_cells(study, cells)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{study.name}: {len(rows)} cells from {plan}")
    for col in ("cell", "Q", "params M", "GFLOP", "id", "stage 1"):
        table.add_column(col, justify="left" if col in ("cell", "id", "stage 1") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["cell"], str(r["visual_tokens"]), f"{r['parameters'] / 1e6:.2f}", f"{r['flops'] / 1e9:.2f}",
                      r["cell_id"][:6], r["pretrain_key"][:6])
    console.print(table)
    stage1 = len({r["pretrain_key"] for r in rows})
    fixed = sorted({c.connector for c in cells if c.tokens is None} & {e.name for e in study.grid.connectors
                                                                        if not e.takes_budget})
    console.print(f"{len(rows)} cells, {stage1} distinct stage-1 runs, {len(study.benchmarks)} benchmark(s) "
                  f"({', '.join(b.name + (' + blind' if b.blind else '') for b in study.benchmarks) or 'none'}), "
                  f"engine {study.execution.engine}", highlight=False)
    if fixed:
        console.print(f"the token axis does not apply to {', '.join(fixed)} (no num_tokens option): one cell per "
                      "resolution and seed", highlight=False)
