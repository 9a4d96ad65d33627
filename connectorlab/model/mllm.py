"""The LLaVA-style multimodal LM: vision tower -> connector -> causal LM.

Two choices carry most of the speed and correctness:
- the LM head runs only where a label exists; full-vocabulary logits at hundreds of visual
  positions cost about 1.7x in stage-2 step time and are thrown away by the loss;
- generation left-pads and passes explicit position ids, so a batch gives exactly the answers of
  batch size 1 (right-padded batched generation is why toolkits disagree with themselves).
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.utils import ModelOutput

from ..connectors import CONNECTORS, Connector, build_connector
from ..errors import InputError, MissingPathError
from ..language.processor import IGNORE_INDEX, IMAGE_TOKEN_ID, MultimodalProcessor
from ..language.tokenizer import load_tokenizer
from ..reduction import Reduction
from ..utils.io import atomic_dir, atomic_write_json
from ..utils.weights import read_tensors, reading
from ..vision.tower import VisionTower
from ..vision.transforms import ImageTransform, normalisation_for
from .config import DTYPES, ModelConfig
from .prefix import SharedPrefix, expand_cache, shared_prefix

CONFIG_NAME, CONNECTOR_WEIGHTS = "connectorlab_config.json", "connector.safetensors"


@dataclass
class LMOutput(ModelOutput):
    """A ModelOutput (a dict) so that DDP can trace which parameters the loss used."""

    loss: torch.Tensor | None = None  # sum or mean over supervised tokens (see `reduction`)
    logits: torch.Tensor | None = None  # [num_supervised, vocab]: logits only where a label exists
    num_supervised: int | None = None


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def build_vision(config: ModelConfig) -> VisionTower:
    """The tower alone, as `MultimodalLM.build` makes it (e.g. for a feature cache shared by several models)."""
    levels = CONNECTORS[config.connector].extra_feature_levels
    return VisionTower.from_pretrained(config.vision, config.image_size, config.select_layer, levels,
                                       frozen=config.freeze_vision, dtype=DTYPES[config.dtype])


def image_transform_for(config: ModelConfig, vision: VisionTower) -> ImageTransform:
    mean, std = normalisation_for(config.vision, vision.model.config.model_type)
    return ImageTransform(vision.image_size, config.image_mode, mean, std)


MODEL_KIND = "connectorlab model"


class MultimodalLM(nn.Module):
    def __init__(self, config: ModelConfig, vision: VisionTower, connector: Connector, llm: nn.Module, tokenizer):
        super().__init__()
        self.config, self.vision, self.connector, self.llm, self.tokenizer = config, vision, connector, llm, tokenizer
        if connector.vision_dim != vision.hidden_size or connector.llm_dim != llm.get_input_embeddings().embedding_dim:
            raise InputError("connector widths do not match the vision tower and LM")
        self.processor = MultimodalProcessor(tokenizer, config.template, connector.num_output_tokens, config.max_length)
        self.image_transform = image_transform_for(config, vision)
        self.set_trainable(vision=not config.freeze_vision, connector=not config.freeze_connector, llm=not config.freeze_llm)
        self.pretrained_path: Path | None = None  # the folder it was loaded from, if any
        self.reduction: Reduction | None = None  # training-free token reduction at inference (set_reduction)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, config: ModelConfig) -> MultimodalLM:
        dtype = DTYPES[config.dtype]
        vision = build_vision(config)
        try:
            with reading(config.llm, "the language model"):
                llm = AutoModelForCausalLM.from_pretrained(config.llm, dtype=dtype,
                                                           attn_implementation=config.attn_implementation)
        except ImportError as err:  # flash_attention_2 without the flash-attn package (or without a GPU)
            raise InputError(f"model.attn_implementation = {config.attn_implementation!r}: {err}") from None
        tokenizer = load_tokenizer(config.llm)
        connector = build_connector(config.connector, vision.hidden_size, llm.get_input_embeddings().embedding_dim,
                                    vision.grid, **config.connector_options).to(dtype)
        return cls(config, vision, connector, llm, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> MultimodalLM:
        path = Path(path)
        expected = [CONFIG_NAME, CONNECTOR_WEIGHTS, "vision/config.json", "llm/config.json"]
        missing = [name for name in expected if not (path / name).is_file()]
        if missing:
            raise MissingPathError(f"{path} is not a saved connectorlab model: missing {', '.join(missing)} "
                                    "(a training run's model is <output_dir>/finetune/model)")
        data = json.loads((path / CONFIG_NAME).read_text())
        config = ModelConfig.from_dict({**data, "vision": str(path / "vision"), "llm": str(path / "llm")})
        model = cls.build(config)
        model.load_connector(path / CONNECTOR_WEIGHTS)
        model.pretrained_path = path  # evaluation fingerprints its files to tell a retrained model apart
        return model

    def save_pretrained(self, path: str | Path, source_config: ModelConfig | None = None, overwrite: bool = False,
                        sources: tuple[str | Path, ...] = ()) -> None:
        """Vision tower and LM in their own HF folders, the connector on its own (it seeds stage 2). A folder that is
        not an earlier saved model is replaced only with `overwrite`; `sources` (what the model was made from) never."""
        with atomic_dir(path, MODEL_KIND, overwrite, sources) as tmp:
            self.vision.model.save_pretrained(tmp / "vision")
            llm = self.llm.merge_and_unload() if hasattr(self.llm, "merge_and_unload") else self.llm
            llm.save_pretrained(tmp / "llm")
            self.tokenizer.save_pretrained(tmp / "llm")
            self.save_connector(tmp / CONNECTOR_WEIGHTS)
            atomic_write_json(tmp / "vision" / "preprocessor_config.json",
                              {"image_mean": self.image_transform.mean.tolist(), "image_std": self.image_transform.std.tolist()})
            cfg = (source_config or self.config).to_dict()
            cfg["image_size"] = self.vision.image_size
            atomic_write_json(tmp / CONFIG_NAME, cfg)

    def save_connector(self, path: str | Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in self.connector.state_dict().items()}
        # One metadata key: safetensors keeps metadata in a hash map whose order changes from process to process,
        # so two keys would make identical weights differ byte for byte.
        info = json.dumps({"connector": self.config.connector, "options": self.config.connector_options}, sort_keys=True)
        save_file(state, str(path), metadata={"connectorlab": info})

    def load_connector(self, path: str | Path) -> None:
        state = read_tensors(path)
        missing, unexpected = self.connector.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InputError(f"{path}: connector weights do not fit {self.config.connector!r} "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")

    def set_trainable(self, vision: bool, connector: bool, llm: bool) -> None:
        self.vision.set_frozen(not vision)
        self.connector.requires_grad_(connector)
        self.llm.requires_grad_(llm)

    # ---- forward --------------------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        return self.llm.get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def encode_images(self, pixel_values: torch.Tensor | None = None,
                      vision_features: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
        """Connector outputs from pixels, or from tower outputs computed earlier (a frozen-feature cache)."""
        features, levels = vision_features if vision_features is not None else self.vision(pixel_values)
        out = self.connector(features.to(self.connector_dtype), None if levels is None else levels.to(self.connector_dtype))
        if self.reduction is None:
            return out
        attention = None
        if self.reduction.method == "cls_attention":
            if pixel_values is None:
                raise InputError("cls_attention reduction needs the images (not cached tower features)")
            attention = self.vision.patch_attention(pixel_values)
        return self.reduction(out, self.connector.grid, attention)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The visual tokens the LM receives, [batch, num_output_tokens, llm_dim]: transformers' name for the seam
        (LlavaForConditionalGeneration.get_image_features), so that probing code written for it reads ours."""
        return self.encode_images(pixel_values)

    def set_reduction(self, reduction: Reduction | None) -> None:
        """Training-free token reduction of a preserving connector's output at inference (`connectorlab.reduction`);
        None removes it. `<image>` then expands to the reduced count."""
        if reduction is not None:
            reduction.check(self.connector.grid, self.connector.family)
            if reduction.method == "cls_attention":
                self.vision.model.set_attn_implementation("eager")  # sdpa returns no attention weights
        self.reduction = reduction
        self.processor.num_image_tokens = reduction.tokens if reduction else self.connector.num_output_tokens

    @property
    def connector_dtype(self) -> torch.dtype:
        return next(self.connector.parameters()).dtype

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_features: torch.Tensor | None = None, vision_features=None) -> torch.Tensor:
        """Token embeddings with connector outputs spliced in at the image sentinel positions."""
        is_image = input_ids == IMAGE_TOKEN_ID
        embeds = self.llm.get_input_embeddings()(input_ids.clamp(min=0))
        n_slots = int(is_image.sum())
        if image_features is None and (pixel_values is not None or vision_features is not None):
            image_features = self.encode_images(pixel_values, vision_features)
        n_given = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if n_slots != n_given:
            raise InputError(f"{n_slots} image positions in the input but {n_given} image features "
                             f"({0 if image_features is None else image_features.shape[0]} images x "
                             f"{self.connector.num_output_tokens} tokens)")
        if n_slots:
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), image_features.to(embeds.dtype))
        return embeds

    def forward(self, input_ids, attention_mask, labels, pixel_values=None, image_features=None, vision_features=None,
                reduction: str = "mean") -> LMOutput:
        embeds = self.embed(input_ids, pixel_values, image_features, vision_features)
        hidden = self.decoder(inputs_embeds=embeds, attention_mask=attention_mask,
                              position_ids=positions_from_mask(attention_mask), use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[:, :-1][keep])
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        n = int(keep.sum())
        if reduction == "mean":
            loss = loss / max(n, 1)
        return LMOutput(loss=loss, logits=logits, num_supervised=n)

    # ---- generation -----------------------------------------------------------------------------
    def pad_left(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.processor.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
        return ids, mask

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], pixel_values: torch.Tensor | None = None,
                 max_new_tokens: int = 32, image_features: torch.Tensor | None = None,
                 image_index: list[int] | None = None, share_prefix: bool = True) -> list[list[int]]:
        """Greedy decoding of a left-padded batch; returns the new ids of each prompt up to its stop token.
        `image_features` (connector outputs) replace `pixel_values` when the caller encoded the images itself; with
        `image_index` they hold each distinct image once and `image_index[i]` is prompt i's row. Prompts that start
        alike up to the same image are then prefilled once (`model.prefix`) unless `share_prefix` is off."""
        device = self.lm_head.weight.device
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values.to(device))
        plan = shared_prefix(prompts, image_index, self.processor.num_image_tokens) if share_prefix else None
        if image_features is not None and image_index is not None and plan is None:
            image_features = image_features[torch.as_tensor(image_index, device=image_features.device)]
        cache_kw = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"
        cache = DynamicCache()
        out, mask, positions = (self._prefill_whole(prompts, image_features, cache, cache_kw) if plan is None
                                else self._prefill_shared(prompts, plan, image_features, cache, cache_kw))
        stop = self.processor.stop_id
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        new: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            token = self.lm_head(out.last_hidden_state[:, -1]).float().argmax(-1)
            token = torch.where(done, torch.full_like(token, stop), token)
            new.append(token)
            done |= token == stop
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            out = self.decoder(inputs_embeds=self.llm.get_input_embeddings()(token[:, None]), attention_mask=mask,
                               position_ids=positions, use_cache=True, **{cache_kw: cache})
        result = []
        for row in torch.stack(new, 1).tolist() if new else [[] for _ in prompts]:
            result.append(row[: row.index(stop)] if stop in row else row)
        return result

    def _prefill_whole(self, prompts, image_features, cache, cache_kw):
        ids, mask = (t.to(self.lm_head.weight.device) for t in self.pad_left(prompts))
        positions = positions_from_mask(mask)
        out = self.decoder(inputs_embeds=self.embed(ids, image_features=image_features), attention_mask=mask,
                           position_ids=positions, use_cache=True, **{cache_kw: cache})
        return out, mask, positions

    def _prefill_shared(self, prompts, plan: SharedPrefix, image_features, cache, cache_kw):
        """Each distinct prefix prefilled once and its cache copied to its rows; then the left-padded rest of every
        prompt, whose pads sit between the prefix and the text and are masked out, at the positions it has whole."""
        device = self.lm_head.weight.device
        ids = torch.tensor(plan.ids, dtype=torch.long, device=device)
        features = image_features[torch.tensor(plan.image_rows, device=image_features.device)]
        ones = torch.ones_like(ids)
        self.decoder(inputs_embeds=self.embed(ids, image_features=features), attention_mask=ones,
                     position_ids=positions_from_mask(ones), use_cache=True, **{cache_kw: cache})
        expand_cache(cache, plan.group)
        rest, rest_mask = (t.to(device) for t in self.pad_left(plan.suffixes(prompts)))
        mask = torch.cat([torch.ones(len(prompts), plan.length, dtype=rest_mask.dtype, device=device), rest_mask], 1)
        positions = positions_from_mask(mask)[:, plan.length:]
        out = self.decoder(inputs_embeds=self.llm.get_input_embeddings()(rest), attention_mask=mask,
                           position_ids=positions, use_cache=True, **{cache_kw: cache})
        return out, mask, positions

    def answer(self, questions: list[str], images: list | None = None, max_new_tokens: int = 32) -> list[str]:
        """Convenience for notebooks: PIL images + questions (with `<image>`) -> decoded answers."""
        prompts = [self.processor.encode_prompt(q) for q in questions]
        pixels = torch.stack([self.image_transform(im) for im in images]) if images else None
        return [self.processor.decode(ids) for ids in self.generate(prompts, pixels, max_new_tokens)]
