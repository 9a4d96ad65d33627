"""What tests need to read the goldens that LLaVA's own code wrote (tools/llava_reference/make_golden.py): the file
paths, the shared fixtures module and the real SentencePiece model, and the tokenizer folders as LLaVA's checkpoints
ship them."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "llava"
sys.path.insert(0, str(ROOT / "tools" / "llava_reference"))
import fixtures  # noqa: E402

OUR_TEMPLATE = {"vicuna_v1": "vicuna_v1", "llava_llama_2": "llama_2", "plain": "plain"}  # LLaVA's key -> ours


@cache
def golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text())


def sentencepiece_model() -> Path:
    """mistral-common's Llama-style SentencePiece model (a test dependency), found without importing the package."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the LLaVA goldens need the mistral-common package (pip install -e '.[test]')")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / fixtures.TOKENIZER_FILE


def write_tokenizer(folder: Path, legacy: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(sentencepiece_model(), folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(fixtures.tokenizer_config(legacy)))
    return folder


def turns(pairs) -> list[dict]:
    return [{"from": role, "value": value} for role, value in pairs]
