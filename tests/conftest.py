import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from connectorlab.model.tiny import make_bpe_tokenizer, make_llm, make_vision  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny CLIP tower, SigLIP tower and Llama LM saved as HF checkpoints (built from configs, offline)."""
    root = tmp_path_factory.mktemp("tiny")
    tok = make_bpe_tokenizer(root / "tokenizer")
    make_vision(root / "clip", "clip", image_size=32, patch_size=8, hidden=32, layers=4)
    make_vision(root / "siglip", "siglip", image_size=32, patch_size=8, hidden=32, layers=2)
    make_llm(root / "llm", tok, hidden=64, layers=2)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA
