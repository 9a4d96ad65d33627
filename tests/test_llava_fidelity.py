"""connectorlab against LLaVA's own code: ids, labels, prompts and pixels as LLaVA (llava-torch 1.2.2.post1, the
paper's codebase) makes them, from golden files it wrote (tools/llava_reference/make_golden.py regenerates them).

Where connectorlab is deliberately different, the test says so and checks what connectorlab does instead:
- an answer holding "</s>" as text: LLaVA reads it as the stop token and masks the whole sample ("tokenization
  mismatch"); connectorlab refuses the record (SpecialTokenText, counted as special_token_text);
- a question holding "USER: ... ASSISTANT:": LLaVA's round splitting masks the whole sample; connectorlab trains on the
  answer, with LLaVA's ids.
"""
from __future__ import annotations

import hashlib

import pytest

from connectorlab.data.llava import image_first
from connectorlab.evaluation.benchmarks.mme import llava_prompt
from connectorlab.language.processor import IGNORE_INDEX, MultimodalProcessor, SpecialTokenText
from connectorlab.language.templates import TEMPLATES, Bos, Image, Stop, Text
from connectorlab.language.tokenizer import load_tokenizer

from llava_golden import OUR_TEMPLATE, fixtures, golden, turns, write_tokenizer

LEGACY = (True, False)
DIFFERENT = {"answer_with_eos_text", "question_with_roles"}  # the module docstring says why


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp")
    return {legacy: load_tokenizer(write_tokenizer(root / f"legacy_{legacy}", legacy)) for legacy in LEGACY}


def processor(tok, template: str) -> MultimodalProcessor:
    return MultimodalProcessor(tok, OUR_TEMPLATE.get(template, template), num_image_tokens=1)


def train_cases():
    for legacy in LEGACY:
        for template, cases in golden("tokenization.json")["legacy"][str(legacy).lower()]["train"].items():
            for name in cases:
                yield pytest.param(legacy, template, name, id=f"legacy={legacy}-{template}-{name}")


@pytest.mark.parametrize(("legacy", "template", "name"), list(train_cases()))
def test_training_ids_and_labels_are_llavas(tokenizers, legacy, template, name):
    want = golden("tokenization.json")["legacy"][str(legacy).lower()]["train"][template][name]
    pairs, has_image = (fixtures.PLAIN if template == "plain" else fixtures.CONVERSATIONS)[name]
    conv = image_first(turns(pairs)) if has_image else turns(pairs)
    proc = processor(tokenizers[legacy], template)
    if name == "answer_with_eos_text":
        assert want["mismatch"]  # LLaVA: every label masked
        with pytest.raises(SpecialTokenText, match="'</s>'"):
            proc.encode(conv, num_images=int(has_image))
        return
    got = proc.encode(conv, num_images=int(has_image))
    assert got.input_ids == want["input_ids"]
    if name == "question_with_roles" and template == "vicuna_v1":  # its role markers split LLaVA's rounds
        assert want["mismatch"] and set(want["labels"]) == {IGNORE_INDEX}  # LLaVA: every label masked
        supervised = [t for t in got.labels if t != IGNORE_INDEX]
        assert supervised == got.input_ids[-len(supervised):]  # the answer and the stop, at the end
        assert proc.tokenizer.decode(supervised).strip() == "USER: hi ASSISTANT: hello</s>"
        return
    assert not want["mismatch"]
    assert got.labels == want["labels"]
    assert got.dropped_leading_turn == (name == "first_turn_from_gpt")


def prompt_cases():
    for legacy in LEGACY:
        for template in ("vicuna_v1", "llava_llama_2"):
            for name in fixtures.PROMPTS:
                yield pytest.param(legacy, template, name, id=f"legacy={legacy}-{template}-{name}")


@pytest.mark.parametrize(("legacy", "template", "name"), list(prompt_cases()))
def test_generation_prompt_ids_are_llavas(tokenizers, legacy, template, name):
    want = golden("tokenization.json")["legacy"][str(legacy).lower()]["prompt"][template][name]
    history, question = fixtures.PROMPTS[name]
    roles = {"human": "user", "gpt": "assistant"}
    proc = processor(tokenizers[legacy], template)
    assert proc.encode_prompt(question, [(roles[r], v) for r, v in history]) == want["input_ids"]
    assert text_of(proc.template.render([*((roles[r], v) for r, v in history), ("user", question)], True)) == want["prompt"]


def test_system_prompts_are_llavas():
    want = golden("tokenization.json")["legacy"]["true"]["system"]
    assert {ours: TEMPLATES[ours].system for ours in ("vicuna_v1", "llama_2")} == \
        {"vicuna_v1": want["vicuna_v1"], "llama_2": want["llava_llama_2"]}


def text_of(parts, stop: str = "</s>", bos: str = "<s>") -> str:
    """A rendered template as the string LLaVA's get_prompt writes (the opening BOS comes from the tokenizer)."""
    out = []
    for i, p in enumerate(parts):
        out.append(p.text if isinstance(p, Text) else "<image>" if isinstance(p, Image) else
                   stop if isinstance(p, Stop) else bos if isinstance(p, Bos) and i else "")
    return "".join(out)


def test_chatml_is_the_chat_template_engines_chatml(tmp_path):
    """ChatML has no LLaVA reference (LLaVA's chatml_direct drops the newlines); the golden is the format rendered by
    transformers' chat-template engine. Text and ids (a byte-level BPE with ChatML's special tokens) must agree."""
    from connectorlab.model.tiny import make_bpe_tokenizer

    want = golden("chatml.json")
    template = TEMPLATES["chatml"]
    assert template.system == want["system"]
    roles = {"human": "user", "gpt": "assistant"}
    tok = make_bpe_tokenizer(tmp_path / "bpe")
    proc = MultimodalProcessor(tok, "chatml", num_image_tokens=1)
    for name, text in want["train"].items():
        pairs, _ = fixtures.CONVERSATIONS[name]
        assert text_of(template.render([(roles[r], v) for r, v in pairs]), "<|im_end|>") == text, name
    for name, text in want["prompt"].items():
        history, question = fixtures.PROMPTS[name]
        parts = template.render([*((roles[r], v) for r, v in history), ("user", question)], True)
        assert text_of(parts, "<|im_end|>") == text, name
        if "<image>" not in text:
            assert proc.encode_prompt(question, [(roles[r], v) for r, v in history]) == \
                tok(text, add_special_tokens=False).input_ids, name


def test_mme_prompts_are_llavas_for_every_question(tokenizers):
    """All 2,374 prompts LLaVA's model_vqa_loader builds from its MME question file, against connectorlab's prompt
    from MME's own ground-truth question (with its " Please answer yes or no." and double spaces)."""
    from llava_golden import ROOT

    want = golden("mme_prompts.json")
    truth = ROOT.parent / "shared" / "data" / "mme" / "ground_truth"
    if not truth.is_dir():
        pytest.skip(f"MME ground truth not found at {truth}")
    template = TEMPLATES["vicuna_v1"]
    ours = []
    for txt in sorted(truth.glob("*.txt")):
        for line in txt.read_text(encoding="utf-8").splitlines():
            if line.strip():
                prompt = text_of(template.render([("user", llava_prompt(line.split("\t")[1]))], True))
                ours.append(hashlib.sha256(prompt.encode()).hexdigest()[:16])
    assert len(ours) == want["count"]
    assert sorted(ours) == sorted(want["sha256_each"])
    proc = processor(tokenizers[False], "vicuna_v1")
    for item in want["first"]:
        question = item["prompt"].split("USER: <image>\n", 1)[1].rsplit(" ASSISTANT:", 1)[0]
        assert proc.encode_prompt("<image>\n" + question) == item["input_ids"]


@pytest.mark.parametrize("size", [336, 32])
@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_pixels_are_llavas(size, mode):
    """`process_images` (CLIP's processor behind LLaVA's pad-to-square, or CLIP's own crop) bit for bit."""
    import base64
    import io

    import pandas as pd
    from PIL import Image as PILImage

    from connectorlab.vision.transforms import ImageTransform

    from llava_golden import ROOT

    want = golden("pixels.json")
    images = {f"synthetic_{i}": fixtures.synthetic_image(i) for i in range(6)}
    sample = ROOT.parent / "shared" / "data" / "mmbench" / "mmbench_dev_20230712_sample.tsv"
    if sample.is_file():
        for _, row in pd.read_table(sample).head(4).iterrows():
            images[f"mmbench_{row['index']}"] = PILImage.open(io.BytesIO(base64.b64decode(row["image"]))).convert("RGB")
    transform = ImageTransform(size, mode)
    for name, image in images.items():
        got = transform(image).contiguous()
        entry = want[f"{size}/{mode}/{name}"]
        assert list(got.shape) == entry["shape"]
        assert hashlib.sha256(got.numpy().tobytes()).hexdigest() == entry["sha256"], \
            (name, got.flatten()[:8].tolist(), entry["first"])


def test_a_fast_tokenizer_that_splits_spaces_otherwise_gives_way_to_sentencepiece(tokenizers, tmp_path):
    """transformers 5 converts tokenizer.model to a BPE that splits "?  ASSISTANT" as ['▁▁', 'ASS']; LLaVA's
    SentencePiece says ['▁', '▁ASS']. load_tokenizer checks parity and loads SentencePiece's, which survives a save."""
    from transformers import AutoTokenizer

    want = golden("tokenization.json")["legacy"]["false"]["prompt"]["vicuna_v1"]["spaces"]
    text = want["prompt"].split("<image>")[1]
    ids = want["input_ids"][want["input_ids"].index(-200) + 1:]
    folder = write_tokenizer(tmp_path / "tok", legacy=False)
    assert AutoTokenizer.from_pretrained(folder)(text).input_ids[1:] != ids  # the converted BPE disagrees
    tok = tokenizers[False]
    assert not tok.is_fast and tok(text).input_ids[1:] == ids
    tok.save_pretrained(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert not again.is_fast and again.legacy is False and again(text).input_ids == tok(text).input_ids


def test_a_missing_sentencepiece_is_named_with_its_fix(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_sentencepiece(name, *args, **kwargs):
        if name == "sentencepiece":
            raise ImportError("No module named 'sentencepiece'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sentencepiece)
    with pytest.raises(ImportError, match="pip install sentencepiece protobuf"):
        load_tokenizer(write_tokenizer(tmp_path / "tok", legacy=True))


def test_training_records_put_the_image_first_and_count_a_dropped_leading_turn(tokenizers, tmp_path):
    """The data loader applies LLaVA's preprocess_multimodal to records with an image and reports what it changed."""
    import json

    from PIL import Image as PILImage

    from connectorlab.data.llava import load_samples
    from connectorlab.data.skips import SkipReport

    PILImage.new("RGB", (8, 8)).save(tmp_path / "a.png")
    records = [{"id": "late", "image": "a.png", "conversations": turns(fixtures.CONVERSATIONS["image_last"][0])},
               {"id": "gpt_first", "image": "a.png", "conversations": turns(fixtures.CONVERSATIONS["first_turn_from_gpt"][0])},
               {"id": "eos", "conversations": turns(fixtures.CONVERSATIONS["answer_with_eos_text"][0])}]
    (tmp_path / "data.json").write_text(json.dumps(records))
    report = SkipReport()
    samples = load_samples(tmp_path / "data.json", tmp_path, processor(tokenizers[False], "vicuna_v1"), report)
    want = golden("tokenization.json")["legacy"]["false"]["train"]["vicuna_v1"]
    assert [s.id for s in samples] == ["late", "gpt_first"]
    assert [s.input_ids for s in samples] == [want["image_last"]["input_ids"], want["first_turn_from_gpt"]["input_ids"]]
    assert report.counts == {"special_token_text": 1} and report.adjusted == {"leading_assistant_turn_dropped": 1}
    assert "kept 1 changed" in report.summary()


def test_the_sentencepiece_tokenizer_pickles(tokenizers):
    """Worker processes receive it by pickle (spawned DataLoader and study workers)."""
    import pickle

    tok = tokenizers[False]
    again = pickle.loads(pickle.dumps(tok))
    assert again("</s>USER:  two").input_ids == tok("</s>USER:  two").input_ids
