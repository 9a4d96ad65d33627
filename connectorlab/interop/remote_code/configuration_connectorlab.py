"""Configuration of a connectorlab model exported for `trust_remote_code` (this folder is self-contained: it imports
transformers and torch, never connectorlab)."""
from transformers import AutoConfig, PretrainedConfig


class ConnectorlabConfig(PretrainedConfig):
    model_type = "connectorlab"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(self, vision_config=None, text_config=None, connector=None, connector_options=None, select_layer=-2,
                 level_layers=None, drop_cls=True, image_token_id=None, num_image_tokens=None, **kwargs):
        if isinstance(vision_config, dict):
            vision_config = AutoConfig.for_model(**vision_config)
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        self.vision_config, self.text_config = vision_config, text_config
        self.connector, self.connector_options = connector, dict(connector_options or {})
        self.select_layer, self.level_layers, self.drop_cls = select_layer, list(level_layers or []), drop_cls
        self.image_token_id, self.num_image_tokens = image_token_id, num_image_tokens
        super().__init__(**kwargs)
