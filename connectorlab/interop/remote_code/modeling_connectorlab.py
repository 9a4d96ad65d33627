"""A connectorlab model for `trust_remote_code`: vision tower -> connector -> causal LM. The connector's own module
sits beside this file, copied from connectorlab at export (`connector_class.py` names its class), so the network is
connectorlab's code, not a re-implementation."""
import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel

from .configuration_connectorlab import ConnectorlabConfig
from .connector_class import ConnectorClass


class ConnectorlabForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = ConnectorlabConfig
    base_model_prefix = ""
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: ConnectorlabConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.connector = self._new_connector()
        self.post_init()

    def _new_connector(self) -> nn.Module:
        cfg = self.config
        patch, size = cfg.vision_config.patch_size, cfg.vision_config.image_size
        return ConnectorClass(cfg.vision_config.hidden_size, cfg.text_config.hidden_size, (size // patch, size // patch),
                              **cfg.connector_options)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model._restore_computed_buffers()
        return model

    def _restore_computed_buffers(self) -> None:
        """Buffers a connector computes in its constructor (e.g. fixed 2-D positions) are not in the checkpoint, and
        transformers builds the model on the meta device and fills only what the checkpoint holds: recompute them."""
        with torch.device("cpu"):
            fresh = self._new_connector()
        device = next(self.connector.parameters()).device
        for name, buffer in fresh.named_buffers():
            owner, _, leaf = name.rpartition(".")
            target = self.connector.get_submodule(owner) if owner else self.connector
            if leaf in target._non_persistent_buffers_set:
                target._buffers[leaf] = buffer.to(device)

    def _init_weights(self, module):  # every weight comes from the checkpoint
        pass

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Connector outputs, [images, num_image_tokens, LM width]: the seam connectorlab's MultimodalLM also has."""
        cfg = self.config
        hidden = self.vision_tower(pixel_values=pixel_values.to(self.vision_tower.dtype), output_hidden_states=True)
        states = hidden.hidden_states
        start = 1 if cfg.drop_cls else 0
        features = states[cfg.select_layer][:, start:]
        levels = torch.cat([states[i][:, start:] for i in cfg.level_layers], dim=-1) if cfg.level_layers else None
        dtype = next(self.connector.parameters()).dtype
        return self.connector(features.to(dtype), None if levels is None else levels.to(dtype))

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            is_image = input_ids == self.config.image_token_id
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
            if pixel_values is not None and is_image.any():  # the first step of generation, not the cached ones
                features = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
                inputs_embeds = inputs_embeds.masked_scatter(is_image.unsqueeze(-1), features.reshape(-1, features.shape[-1]))
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
