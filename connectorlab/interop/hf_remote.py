"""`--format hf-remote-code`: any connector of the zoo as a folder that `AutoModelForImageTextToText.from_pretrained`
and `AutoProcessor` load with `trust_remote_code` enabled, without connectorlab installed (connectorlab itself never
enables it: it writes this code, it does not run other people's).

The folder carries connectorlab's own connector module (copied, with the `base.py` and `layers.py` it imports), a
small model class (`remote_code/modeling_connectorlab.py`: tower -> connector -> LM, with `get_image_features`), and
a stock `LlavaProcessor` set to insert exactly the connector's number of visual tokens per `<image>` (one "patch"
of the whole image plus Q - 1 "additional" tokens: LlavaProcessor's own arithmetic, so no custom processor code).

Stock classes exist for some connectors elsewhere in transformers (e.g. Idefics3's pixel shuffle), but each is tied
to its own tower, LM and prompt format; the export does not target them, so that every connector loads one way.
"""
from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..connectors import CONNECTORS
from ..model.mllm import MultimodalLM
from ..utils.io import atomic_dir, check_output
from .llava_hf import IMAGE_TOKEN, adds_bos, chat_template, grow_vocabulary, image_processor_for, with_image_token

REMOTE = Path(__file__).with_name("remote_code")
SHARED = ("base.py", "layers.py")  # what every connector module imports (relative imports, resolved by transformers)
AUTO_MAP = {"AutoConfig": "configuration_connectorlab.ConnectorlabConfig",
            "AutoModelForImageTextToText": "modeling_connectorlab.ConnectorlabForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_connectorlab.ConnectorlabForConditionalGeneration",
            "AutoModel": "modeling_connectorlab.ConnectorlabForConditionalGeneration"}  # lmms-eval's fallback class


def export_remote_code(model_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    from transformers import GenerationConfig, LlavaProcessor

    out = check_output(out, "hf-remote-code export", overwrite, (model_dir,))  # before the model is loaded
    model = MultimodalLM.from_pretrained(model_dir)
    cls = CONNECTORS[model.config.connector]
    source = Path(inspect.getfile(cls))
    tok, image_id, vocab = with_image_token(model)
    new_ids = grow_vocabulary(model.llm, vocab)
    q = model.connector.num_output_tokens
    vision_cfg, text_cfg = model.vision.model.config.to_dict(), model.llm.config.to_dict()
    vision_cfg["image_size"] = model.vision.image_size  # the resolution trained at (position table resized to it)
    config = {"model_type": "connectorlab", "architectures": ["ConnectorlabForConditionalGeneration"], "auto_map": AUTO_MAP,
              "vision_config": vision_cfg, "text_config": text_cfg, "connector": model.config.connector,
              "connector_options": model.config.connector_options, "select_layer": model.config.select_layer,
              "level_layers": model.vision.level_layers, "drop_cls": model.vision.has_cls, "image_token_id": image_id,
              "num_image_tokens": q, "dtype": str(model.vision.dtype).removeprefix("torch."),
              "tie_word_embeddings": bool(getattr(model.llm.config, "tie_word_embeddings", False))}
    weights = {**{f"vision_tower.{k}": v for k, v in model.vision.model.state_dict().items()},
               **{f"connector.{k}": v for k, v in model.connector.state_dict().items()},
               **{f"language_model.{k}": v for k, v in model.llm.state_dict().items()}}
    weights = {k: v.detach().contiguous().clone() for k, v in weights.items()}  # tied tables become two files' rows
    generation = GenerationConfig.from_model_config(model.llm.config)
    generation.suppress_tokens = [image_id, *[i for i in new_ids if i != image_id]]
    processor = LlavaProcessor(image_processor=image_processor_for(model), tokenizer=tok, patch_size=model.vision.image_size,
                               vision_feature_select_strategy="full", image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=q - 1,
                               chat_template=chat_template(model.processor.template.name, adds_bos(tok)))
    with atomic_dir(out, "hf-remote-code export", overwrite, (model_dir,)) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        generation.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name in ("configuration_connectorlab.py", "modeling_connectorlab.py"):
            shutil.copy(REMOTE / name, tmp / name)
        for name in {*SHARED, source.name}:
            shutil.copy(source.parent / name, tmp / name)
        (tmp / "connector_class.py").write_text(f"from .{source.stem} import {cls.__name__} as ConnectorClass  # noqa: F401\n")
        (tmp / "connectorlab_export.json").write_text(json.dumps({
            "source": str(model_dir), "format": "hf-remote-code", "connector": model.config.connector,
            "options": model.config.connector_options, "visual_tokens": q, "torch": torch.__version__}, indent=2))
    return Path(out)
