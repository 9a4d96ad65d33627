"""Files copied verbatim into `--format hf-remote-code` exports (they import only torch and transformers)."""
