"""LLaVA's original release layout (liuhaotian/llava-v1.5-7b and its kin) as a MultimodalLM.

That layout is one LM folder: a Llama checkpoint whose config.json adds the multimodal keys (`mm_vision_tower` naming
the CLIP tower, `mm_projector_type` such as `mlp2x_gelu`, `mm_vision_select_layer`, `mm_vision_select_feature`,
`image_aspect_ratio`) and whose weights add `model.mm_projector.*`; a stage-1 output is that config.json and an
`mm_projector.bin` alone, over the base LM it was trained on. Its vocabulary has no image token: the image is the
-200 sentinel, as in connectorlab, so the 32,000 rows are kept as they are (llava-hf grows them to 32,064).
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch

from ..errors import InputError, MissingPathError
from ..language.tokenizer import load_tokenizer
from ..model.config import ModelConfig
from ..model.mllm import MultimodalLM
from ..utils.weights import read_tensors

PROJECTOR = re.compile(r"^mlp(\d+)x_(gelu|relu|silu)$")
PREFIX = "model.mm_projector."
IMAGE_MODES = {"pad": "pad", "square": "resize", None: "crop", "anyres": None}


def connector_for(projector_type: str) -> tuple[str, dict]:
    if projector_type == "linear":
        return "linear", {}
    match = PROJECTOR.match(projector_type or "")
    if not match:
        raise InputError(f"mm_projector_type {projector_type!r}: connectorlab maps 'linear' and 'mlp<N>x_<act>'")
    return "mlp", {"depth": int(match.group(1)), "activation": match.group(2)}


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors")) or sorted(p for p in folder.glob("pytorch_model*.bin"))
    if not files:
        raise MissingPathError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for f in files:
        state.update(read_tensors(f))
    return state


def read_projector(folder: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full checkpoint's `model.mm_projector.*` weights, else a stage-1 output's mm_projector.bin."""
    projector = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not projector and (folder / "mm_projector.bin").is_file():
        projector = {k.split("mm_projector.", 1)[1]: v
                     for k, v in read_tensors(folder / "mm_projector.bin").items()}
    if not projector:
        raise InputError(f"{folder}: no projector weights (model.mm_projector.* in the weights, or mm_projector.bin)")
    return projector


def read_config(folder: Path) -> tuple[dict, str, tuple[str, dict]]:
    """The folder's config.json, its image mode and its connector, refusing what connectorlab cannot map."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise MissingPathError(f"{folder}: no config.json (not a LLaVA checkpoint folder)")
    data = json.loads(cfg_path.read_text())
    missing = [k for k in ("mm_vision_tower", "mm_projector_type") if k not in data]
    if missing:
        raise InputError(f"{folder}: not a LLaVA release (config.json lacks {', '.join(missing)})")
    if data.get("mm_use_im_start_end"):
        raise InputError(f"{folder}: mm_use_im_start_end = true (image start/end tokens) is not supported")
    mode = IMAGE_MODES.get(data.get("image_aspect_ratio"), "pad")
    if mode is None:
        raise InputError(f"{folder}: image_aspect_ratio {data['image_aspect_ratio']!r} (LLaVA-NeXT tiles) is not supported")
    if data.get("mm_vision_select_feature", "patch") != "patch":
        raise InputError(f"{folder}: mm_vision_select_feature {data['mm_vision_select_feature']!r}; connectorlab drops CLS")
    return data, mode, connector_for(data["mm_projector_type"])


def from_llava_original(folder: str | Path, vision: str | None = None, template: str = "vicuna_v1",
                        model_base: str | Path | None = None) -> MultimodalLM:
    """`vision` replaces `mm_vision_tower` (e.g. a local copy of openai/clip-vit-large-patch14-336). `model_base` is
    the LM a stage-1 output (config.json + mm_projector.bin) was trained on, as LLaVA's `load_pretrained_model`
    takes it: the LM's weights and tokenizer come from there, the projector and multimodal settings from `folder`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = Path(folder)
    data, mode, (connector, options) = read_config(folder)
    lm_folder = Path(model_base) if model_base is not None else folder
    if model_base is None and (folder / "mm_projector.bin").is_file() and not list(folder.glob("*.safetensors")) \
            and not list(folder.glob("pytorch_model*.bin")):
        raise InputError(f"{folder} is a stage-1 output (mm_projector.bin, no LM weights): pass --model-base, the LM "
                         "it was trained on, as LLaVA's load_pretrained_model takes it")
    state = read_weights(lm_folder)
    projector = read_projector(folder, {} if model_base is not None else state)
    lm_state = {k: v for k, v in state.items() if not k.startswith(("model.mm_projector.", "model.vision_tower."))}
    text = {k: v for k, v in data.items() if not k.startswith("mm_") and k not in ("architectures", "model_type")}
    with tempfile.TemporaryDirectory() as tmp:
        lm = AutoModelForCausalLM.from_config(LlamaConfig(**text))
        lm.load_state_dict(lm_state, strict=not getattr(lm.config, "tie_word_embeddings", False))
        lm.save_pretrained(Path(tmp) / "llm")
        load_tokenizer(lm_folder).save_pretrained(Path(tmp) / "llm")
        model = MultimodalLM.build(ModelConfig(vision=vision or data["mm_vision_tower"], llm=str(Path(tmp) / "llm"),
                                               connector=connector, connector_options=options,
                                               select_layer=data.get("mm_vision_select_layer", -2), template=template,
                                               image_mode=mode, max_length=data.get("tokenizer_model_max_length", 2048)))
    prefix = "proj." if connector == "linear" else "mlp."  # LLaVA's nn.Linear / nn.Sequential keys, under our module
    model.connector.load_state_dict({prefix + k: v.to(model.connector_dtype) for k, v in projector.items()})
    return model
