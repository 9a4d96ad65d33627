"""The connector study: a plan file expanded into a grid of cells (connector x resolution x token budget x
seed), each a training configuration with a stable identity."""
from .plan import Cell, StudyPlan, expand

__all__ = ["Cell", "StudyPlan", "expand"]
