"""Each cell's size before anything trains: visual tokens, connector parameters and forward FLOPs per image, counted
on the meta device from the connector's own shape (no weights, no data)."""
from __future__ import annotations

from ..errors import ConfigError
from ..model.config import ModelConfig
from ..model.shape import ModelShape
from .folder import CellSize
from .plan import Cell, StudyPlan


def describe_cells(plan: StudyPlan, cells: list[Cell]) -> list[CellSize]:
    """Visual tokens, connector parameters and forward FLOPs per image of each cell, measured on the meta device."""
    from ..connectors.describe import describe

    rows = []
    for cell in cells:
        model: ModelConfig = cell.config.model
        shape = plan.shape or ModelShape.read(model)
        try:
            info = describe(cell.connector, shape.vision_dim, shape.llm_dim, shape.grid(model), **cell.options)
            for reduction in cell.reductions:
                reduction.check(shape.grid(model), info["family"])
        except ValueError as err:
            raise ConfigError(f"{plan.source}: cell {cell.label}: {err}") from None
        rows.append(CellSize(cell.label, cell.cell_id[:12], cell.connector, info["family"],
                             model.image_size or shape.native_image_size, cell.tokens, cell.compression, cell.seed,
                             cell.variant, info["output_tokens"], info["parameters"], info["flops"],
                             cell.pretrain_key[:12], cell.options))
    return rows
