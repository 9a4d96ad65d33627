"""The `llava-hf` layout (transformers' stock `LlavaForConditionalGeneration` + `LlavaProcessor`), both ways.

Export fits the preserving connectors: LLaVA's projector is Linear -> activation -> Linear, so `mlp` (depth 2, GELU,
ReLU or SiLU) maps onto it weight for weight, and `linear` maps onto it exactly with the `linear` (identity)
activation and an identity second layer. A compressing connector has no stock class (the hf-remote-code export is
for those). The tokenizer gains an `<image>` token and the vocabulary is padded to a multiple of 64, as the
llava-hf conversion does; the new rows never win: their output rows are the mean of the others and generation
suppresses them (`generation_config.suppress_tokens`).

Import reads a llava-hf folder (or Hub id) back into a MultimodalLM with an `mlp` (or `linear`) connector, so that
`connectorlab eval` scores released models on the paper's task types.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch

from ..errors import InputError
from ..language.templates import IMAGE_LINE, IMAGE_PLACEHOLDER
from ..model.config import ModelConfig
from ..model.mllm import MultimodalLM
from ..utils.io import atomic_dir, check_output
from ..utils.weights import reading

IMAGE_TOKEN = IMAGE_PLACEHOLDER  # llava-hf names the same placeholder its image token
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu"}
PAD_VOCAB_TO = 64
IMAGE_MODES = {  # connectorlab's image mode -> the image processor settings that reproduce it
    "pad": {"do_pad": True, "do_center_crop": True},
    "resize": {"do_pad": False, "do_center_crop": False},
    "crop": {"do_pad": False, "do_center_crop": True},
}

log = logging.getLogger("connectorlab.interop")


class NotExportable(InputError):
    pass


def projector_of(model: MultimodalLM) -> tuple[str, dict[str, torch.Tensor]]:
    """(projector_hidden_act, linear_1/linear_2 weights) of a preserving connector, or the reason it has none."""
    name, options = model.config.connector, model.config.connector_options
    conn = model.connector
    if name == "linear":
        eye = torch.eye(conn.proj.out_features, dtype=conn.proj.weight.dtype)
        return "linear", {"linear_1.weight": conn.proj.weight, "linear_1.bias": conn.proj.bias,
                          "linear_2.weight": eye, "linear_2.bias": torch.zeros_like(conn.proj.bias)}
    if name == "mlp":
        depth, act = options.get("depth", 2), options.get("activation", "gelu")
        if depth != 2:
            raise NotExportable(f"connector mlp with depth {depth}: LlavaForConditionalGeneration's projector has exactly "
                                "two linear layers; use --format hf-remote-code")
        first, second = conn.mlp[0], conn.mlp[2]
        return ACTIVATIONS[act], {"linear_1.weight": first.weight, "linear_1.bias": first.bias,
                                  "linear_2.weight": second.weight, "linear_2.bias": second.bias}
    raise NotExportable(f"connector {name!r} is feature-compressing: LlavaForConditionalGeneration feeds every patch "
                        "token through a two-layer projector, so no stock class runs it; use --format hf-remote-code")


def image_processor_for(model: MultimodalLM):
    from transformers import LlavaImageProcessorPil

    t = model.image_transform
    return LlavaImageProcessorPil(size={"shortest_edge": t.size}, crop_size={"height": t.size, "width": t.size},
                                  image_mean=t.mean.tolist(), image_std=t.std.tolist(), resample=3,  # PIL bicubic
                                  do_convert_rgb=True, **IMAGE_MODES[t.mode])


def with_image_token(model: MultimodalLM):
    """The tokenizer with `<image>` added (once), and the vocabulary size padded to a multiple of 64."""
    tok = model.tokenizer
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    size = math.ceil(len(tok) / PAD_VOCAB_TO) * PAD_VOCAB_TO
    return tok, tok.convert_tokens_to_ids(IMAGE_TOKEN), size


def grow_vocabulary(llm, size: int) -> list[int]:
    """New rows (embedding and output) set to the mean of the existing ones; returns the new ids."""
    old = llm.get_input_embeddings().weight.shape[0]
    if size <= old:
        return []
    llm.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for table in {id(t): t for t in (llm.get_input_embeddings(), llm.get_output_embeddings())}.values():
            table.weight[old:] = table.weight[:old].mean(0)
    return list(range(old, size))


def export_llava_hf(model_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    out = check_output(out, "llava-hf export", overwrite, (model_dir,))  # before the model is loaded
    model = MultimodalLM.from_pretrained(model_dir)
    act, projector = projector_of(model)
    if model.vision.level_layers:
        raise NotExportable("the connector reads several tower levels; LlavaForConditionalGeneration reads one")
    tok, image_id, vocab = with_image_token(model)
    llm = model.llm
    new_ids = grow_vocabulary(llm, vocab)
    strategy = "default" if model.vision.has_cls else "full"
    config = LlavaConfig(vision_config=model.vision.model.config.to_dict(), text_config=llm.config.to_dict(),
                         image_token_index=image_id, image_seq_length=model.connector.num_output_tokens,
                         projector_hidden_act=act, vision_feature_select_strategy=strategy,
                         vision_feature_layer=model.config.select_layer, multimodal_projector_bias=True,
                         tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)))
    config.vision_config.model_type = model.vision.model.config.model_type
    llava = LlavaForConditionalGeneration(config).to(model.vision.dtype).eval()
    llava.model.vision_tower.load_state_dict(model.vision.model.state_dict())
    llava.model.multi_modal_projector.load_state_dict({k: v.detach().clone() for k, v in projector.items()})
    llava.model.language_model.load_state_dict(llm.get_decoder().state_dict())
    llava.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
    llava.generation_config.suppress_tokens = [image_id, *[i for i in new_ids if i != image_id]]
    processor = LlavaProcessor(image_processor=image_processor_for(model), tokenizer=tok,
                               patch_size=model.vision.patch_size, vision_feature_select_strategy=strategy,
                               image_token=IMAGE_TOKEN, num_additional_image_tokens=1 if model.vision.has_cls else 0,
                               chat_template=chat_template(model.processor.template.name, adds_bos(tok)))
    with atomic_dir(out, "llava-hf export", overwrite, (model_dir,)) as tmp:
        llava.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / EXPORT_INFO).write_text(json.dumps({
            "source": str(model_dir), "connector": model.config.connector, "options": model.config.connector_options,
            "template": model.processor.template.name, "image_mode": model.image_transform.mode}, indent=2))
    return Path(out)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front by itself (a Llama tokenizer does; then the template must not)."""
    return tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


def chat_template(name: str, tokenizer_adds_bos: bool) -> str:
    """A Jinja chat template that renders connectorlab's template of that name (user text with `<image>` where the
    image goes; the generation prompt ends where the answer starts). The tests hold each against `encode_prompt`."""
    from ..language.templates import TEMPLATES, VICUNA_ROLES

    system = TEMPLATES[name].system
    user = ("{% for c in m['content'] %}{% if c['type'] == 'image' %}" + IMAGE_LINE + "{% elif c['type'] == 'text' %}"
            "{{ c['text'] }}{% endif %}{% endfor %}")
    answer = "{{ m['content'] if m['content'] is string else m['content'][0]['text'] }}"
    bos = "{% if not loop.first %}{{ bos_token }}{% endif %}" if tokenizer_adds_bos else "{{ bos_token }}"
    if name in ("vicuna_v1", "plain_v1"):
        return (("" if tokenizer_adds_bos else "{{ bos_token }}") + system + " {% for m in messages %}"
                "{% if m['role'] == 'user' %}" + VICUNA_ROLES[0] + " " + user + " " + VICUNA_ROLES[1]
                + "{% else %} " + answer + "{{ eos_token }}"
                "{% endif %}{% endfor %}")
    if name == "llama_2":
        return ("{% for m in messages %}{% if m['role'] == 'user' %}" + bos + "{% if loop.first %}[INST] <<SYS>>\n"
                + system + "\n<</SYS>>\n\n{% else %}[INST] {% endif %}" + user + " [/INST]{% else %} " + answer
                + " {{ eos_token }}{% endif %}{% endfor %}")
    if name == "chatml":
        return ("<|im_start|>system\n" + system + "<|im_end|>\n{% for m in messages %}{% if m['role'] == 'user' %}"
                "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n{% else %}" + answer
                + "<|im_end|>\n{% endif %}{% endfor %}")
    raise NotExportable(f"template {name!r}: no chat template is written for it (vicuna_v1, plain_v1, llama_2, chatml)")


EXPORT_INFO = "connectorlab_export.json"
DEFAULT_TEMPLATE = "vicuna_v1"  # LLaVA-1.5's, for a release that names none


def template_of(source: str | Path, processor) -> tuple[str, str]:
    """The template a checkpoint was trained with, and where that was read: a connectorlab export's own metadata, else
    the chat template it carries when it is one that connectorlab writes, else LLaVA-1.5's."""
    info = Path(source) / EXPORT_INFO
    if info.is_file():
        name = json.loads(info.read_text()).get("template")
        if name:
            return name, str(info)
    carried = getattr(processor, "chat_template", None) or getattr(getattr(processor, "tokenizer", None),
                                                                    "chat_template", None)
    if carried and processor is not None:
        from ..language.templates import TEMPLATES

        tok = getattr(processor, "tokenizer", processor)
        matches = [n for n in TEMPLATES if _renders(n, adds_bos(tok)) == carried]
        if len(matches) == 1:
            return matches[0], "its chat template"
    return DEFAULT_TEMPLATE, "the default (LLaVA-1.5's)"


def _renders(name: str, bos: bool) -> str | None:
    try:
        return chat_template(name, bos)
    except NotExportable:
        return None


def from_llava_hf(path_or_id: str | Path, template: str | None = None, image_mode: str | None = None) -> MultimodalLM:
    """A llava-hf checkpoint as a MultimodalLM (`mlp` connector, or `linear` for an identity second layer). The
    template is the checkpoint's own (`template_of`) unless `template` names another."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    with reading(path_or_id, "the llava-hf config"):
        config = AutoConfig.from_pretrained(str(path_or_id))
    if getattr(config, "model_type", None) != "llava":
        raise InputError(f"{path_or_id}: not a llava-hf checkpoint (config.json model_type is "
                         f"{getattr(config, 'model_type', None)!r}, expected 'llava')")
    with reading(path_or_id, "the llava-hf weights (do config.json's sizes, e.g. hidden_size and vocab_size, match them?)"):
        llava = LlavaForConditionalGeneration.from_pretrained(str(path_or_id))
    return llava_to_multimodal(llava, config, path_or_id, template, image_mode)


def llava_to_multimodal(llava, config, source, template: str | None, image_mode: str | None) -> MultimodalLM:
    import tempfile

    from transformers import AutoProcessor

    from ..language.tokenizer import SP_MODEL, load_tokenizer

    proj = llava.model.multi_modal_projector
    act = config.projector_hidden_act
    layer = config.vision_feature_layer
    if isinstance(layer, list):
        raise InputError(f"{source}: vision_feature_layer {layer} reads several layers; connectorlab's towers read one")
    identity = act == "linear" and torch.equal(proj.linear_2.weight, torch.eye(proj.linear_2.weight.shape[0],
                                                                                  dtype=proj.linear_2.weight.dtype))
    if act not in ("linear", *ACTIVATIONS):
        raise InputError(f"{source}: projector_hidden_act {act!r} has no connectorlab counterpart")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        llava.model.vision_tower.save_pretrained(tmp / "vision")
        lm = rebuild_lm(llava, config)
        lm.save_pretrained(tmp / "llm")
        try:
            processor = AutoProcessor.from_pretrained(str(source))
            tokenizer, mean, std = processor.tokenizer, processor.image_processor.image_mean, processor.image_processor.image_std
            mode = image_mode or ("pad" if getattr(processor.image_processor, "do_pad", False) else "crop")
        except (OSError, ValueError):
            processor = None
            tokenizer, mean, std, mode = load_tokenizer(source), None, None, image_mode or "pad"
        if template is None:
            template, origin = template_of(source, processor or tokenizer)
            log.info("%s: template %s, from %s", source, template, origin)
        tokenizer.save_pretrained(tmp / "llm")
        if (Path(source) / SP_MODEL).is_file():  # so that loading checks the fast tokenizer against SentencePiece
            shutil.copy(Path(source) / SP_MODEL, tmp / "llm" / SP_MODEL)
        if mean is not None:
            (tmp / "vision/preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
        connector = "linear" if identity else "mlp"
        options = {} if identity else {"depth": 2, "activation": act}
        mcfg = ModelConfig(vision=str(tmp / "vision"), llm=str(tmp / "llm"), connector=connector, connector_options=options,
                           select_layer=layer, template=template, image_mode=mode)
        model = MultimodalLM.build(mcfg)
    state = ({"proj.weight": proj.linear_1.weight, "proj.bias": proj.linear_1.bias} if identity else
             {"mlp.0.weight": proj.linear_1.weight, "mlp.0.bias": proj.linear_1.bias,
              "mlp.2.weight": proj.linear_2.weight, "mlp.2.bias": proj.linear_2.bias})
    model.connector.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return model


def rebuild_lm(llava, config):
    """The causal LM as its own class (e.g. LlamaForCausalLM): the decoder and the head of the llava model."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(config.text_config)
    lm.get_decoder().load_state_dict(llava.model.language_model.state_dict())
    lm.get_output_embeddings().load_state_dict(llava.lm_head.state_dict())
    return lm.to(llava.lm_head.weight.dtype)
