"""A model saved in LLaVA's own layouts answers in connectorlab as it answers in LLaVA's scripts.

tools/llava_reference/make_golden.py built a tiny LLaVA (CLIP tower, Llama LM with the real SentencePiece vocabulary,
mlp2x_gelu projector) with LLaVA's classes, saved it as LLaVA saves a fine-tuned model (`llava-tiny`) and a stage-1
output (`llava-tiny-pretrain`: config.json + mm_projector.bin over `base-lm`), and recorded what LLaVA's
model_vqa_loader (MME questions) and model_vqa_mmbench (the MMBench sample) answered with them. Here the same folders
are rebuilt from the recorded configs and the seeded weights, imported with `connectorlab import llava`, and asked
the same questions through `answer()` and `connectorlab eval`.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from connectorlab.language.processor import IMAGE_TOKEN_ID
from connectorlab.model.mllm import MultimodalLM

from llava_golden import ROOT, fixtures, golden, sentencepiece_model

MMBENCH = ROOT.parent / "shared" / "data" / "mmbench" / "mmbench_dev_20230712_sample.tsv"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "connectorlab", *args], cwd=ROOT, capture_output=True, text=True)


def one_image_id(ids: list[int]) -> list[int]:
    """connectorlab's ids with the image's run of sentinels as the one sentinel LLaVA's tokenizer_image_token puts."""
    return [t for i, t in enumerate(ids) if t != IMAGE_TOKEN_ID or not i or ids[i - 1] != IMAGE_TOKEN_ID]


def write_folder(folder, name: str, weights: dict | None = None, bin_name: str = "pytorch_model.bin"):
    folder.mkdir(parents=True)
    for file, text in golden("model.json")["json_files"][name].items():
        (folder / file).write_text(text)
    if weights is not None:
        torch.save(weights, folder / bin_name)
    return folder


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    g = golden("model.json")
    root = tmp_path_factory.mktemp("llava_layouts")
    vision = write_folder(root / "clip-tiny", "clip-tiny")
    save_file({k: v.float() for k, v in fixtures.fill(g["vision_shapes"], g["seeds"]["vision"]).items()},
              str(vision / "model.safetensors"))
    model = fixtures.fill(g["model_shapes"], g["seeds"]["model"])
    projector = {k: v for k, v in fixtures.fill(g["model_shapes"], g["seeds"]["pretrain_projector"]).items()
                 if "mm_projector" in k}
    full = write_folder(root / "llava-tiny", "llava-tiny", model)
    base = write_folder(root / "base-lm", "base-lm", {k: v for k, v in model.items() if "mm_projector" not in k})
    pretrain = write_folder(root / "llava-tiny-pretrain", "llava-tiny-pretrain", projector, "mm_projector.bin")
    for folder in (full, base):
        (folder / "tokenizer.model").write_bytes(sentencepiece_model().read_bytes())
    out = {"vision": vision, "full": full, "base": base, "pretrain": pretrain}
    for name, extra in (("full", []), ("pretrain", ["--model-base", str(base)])):
        res = cli("import", "llava", str(out[name]), "--vision", str(vision), "--out", str(root / f"imported_{name}"),
                  *extra)
        assert res.returncode == 0, res.stderr[-3000:]
        out[f"imported_{name}"] = root / f"imported_{name}"
    return out


@pytest.mark.parametrize(("folder", "entry"), [("full", "mme_full"), ("pretrain", "mme_pretrain_with_base")])
def test_imported_llava_answers_as_llava_does(layouts, folder, entry):
    """LLaVA's model_vqa_loader answers (greedy, MME questions, padded images) through `answer()`."""
    want = golden("model.json")[entry]
    model = MultimodalLM.from_pretrained(layouts[f"imported_{folder}"]).eval()
    images = {name: fixtures.synthetic_image(i) for i, name in enumerate(dict.fromkeys(w["image"] for w in want))}
    questions = ["<image>\n" + w["text_question"] for w in want]
    assert [one_image_id(model.processor.encode_prompt(q)) for q in questions] == [w["input_ids"] for w in want]
    got = model.answer(questions, [images[w["image"]] for w in want], max_new_tokens=golden("model.json")["max_new_tokens"])
    assert got == [w["text"] for w in want]


@pytest.mark.slow
def test_a_stage1_output_without_its_base_is_refused_with_the_fix(layouts, tmp_path):
    res = cli("import", "llava", str(layouts["pretrain"]), "--vision", str(layouts["vision"]), "--out", str(tmp_path / "x"))
    assert res.returncode != 0 and "--model-base" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("folder", "entry"), [("full", "mmbench"), ("pretrain", "mmbench_pretrain_with_base")])
def test_connectorlab_eval_answers_mmbench_as_llavas_script(layouts, tmp_path, folder, entry):
    """LLaVA's model_vqa_mmbench (--single-pred-prompt, greedy) on the real MMBench rows, against `connectorlab eval`."""
    if not MMBENCH.is_file():
        pytest.skip(f"MMBench sample not found at {MMBENCH}")
    g = golden("model.json")
    res = cli("eval", "--model", str(layouts[f"imported_{folder}"]), "--benchmark", "mmbench", "--data", str(MMBENCH),
              "--out", str(tmp_path / "eval"), "--max-new-tokens", str(g["max_new_tokens"]), "--batch-size", "4",
              "--allow-incomplete")
    assert res.returncode == 0, res.stderr[-3000:]
    records = {r["key"]: r for r in map(json.loads, (tmp_path / "eval" / "records.jsonl").read_text().splitlines())}
    want = {str(w["index"]): w for w in g[entry]}
    assert set(records) == set(want)
    prompts_differ = [k for k in want if "<image>\n" + want[k]["prompt"].split("USER: <image>\n", 1)[1].rsplit(
        " ASSISTANT:", 1)[0] != records[k]["prompt"]]
    assert not prompts_differ
    assert {k: r["prediction"] for k, r in records.items()} == {k: w["text"] for k, w in want.items()}


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.slow
@pytest.mark.parametrize(("folder", "file"), [("pretrain", "mm_projector.bin"), ("full", "pytorch_model.bin")])
def test_a_pickle_that_holds_more_than_tensors_is_refused_in_one_line(layouts, tmp_path, folder, file):
    import pickle
    import shutil

    src = shutil.copytree(layouts[folder], tmp_path / "src")
    (src / file).write_bytes(pickle.dumps({"model.mm_projector.0.weight": Payload()}))
    extra = ["--model-base", str(layouts["base"])] if folder == "pretrain" else []
    res = cli("import", "llava", str(src), "--vision", str(layouts["vision"]), "--out", str(tmp_path / "out"), *extra)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "pickled code ran" not in res.stdout
    assert f"{file}: cannot read tensors: it holds objects other than tensors" in res.stderr, res.stderr
