"""The library entry points that are not a single existing function: the names `connectorlab` exports lazily point
here or at their own modules (see the package's `_API`). The CLI calls the same functions."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError

EXPORT_FORMATS = ("llava-hf", "hf-remote-code")


def load(path: str | Path):
    """A saved connectorlab model folder (a stage-2 `model/`, an import, a quick-start model)."""
    from .model.mllm import MultimodalLM

    return MultimodalLM.from_pretrained(path)


def plan_study(path: str | Path, out: str | Path | None = None):
    """The plan and its expanded, validated cells, without running anything (`connectorlab study plan`)."""
    from .study.plan import StudyPlan, expand

    plan = StudyPlan.from_file(path)
    return plan, expand(plan, out)


def export(model_dir: str | Path, out: str | Path, format: str = "llava-hf", overwrite: bool = False) -> Path:
    """A trained model in a layout plain transformers loads: `llava-hf` (LlavaForConditionalGeneration, for the
    connectors it can express) or `hf-remote-code` (any connector, loaded with trust_remote_code)."""
    if format not in EXPORT_FORMATS:
        raise InputError(f"export format {format!r}: one of {', '.join(EXPORT_FORMATS)}")
    if format == "hf-remote-code":
        from .interop.hf_remote import export_remote_code

        return export_remote_code(model_dir, out, overwrite)
    from .interop.llava_hf import export_llava_hf

    return export_llava_hf(model_dir, out, overwrite)
