"""Golden files from LLaVA's own code (llava-torch 1.2.2.post1), for tests/test_llava_fidelity.py.

Run it in the reference environment (`tools/llava_reference/setup.sh`), never in connectorlab's:
    .venv-llava/bin/python tools/llava_reference/make_golden.py [OUT]   (default tests/golden/llava)

What it records, each from the LLaVA function that makes it in training or evaluation:
- tokenization.json: `preprocess` (preprocess_multimodal + preprocess_v1 / preprocess_plain / preprocess_llama_2) ids
  and labels of fixed conversations, and `conv_templates[...].get_prompt()` + `tokenizer_image_token` generation
  prompts, under a `legacy=True` and a `legacy=False` slow SentencePiece tokenizer;
- chatml.json: ChatML prompts rendered by transformers' chat-template engine (the format's reference renderer);
- mme_prompts.json: every prompt LLaVA's `model_vqa_loader` builds from its MME question file;
- pixels.json: `process_images` on real MMBench images and synthetic ones ('pad' and CLIP's own crop);
- model.json: a tiny LLaVA model saved in LLaVA's layouts (full, and stage-1 `mm_projector.bin` + a base LM), and
  the answers LLaVA's `model_vqa_mmbench` / `model_vqa_loader` scripts give with it.
LLaVA's scripts run in fp16 on CUDA; here they run on the CPU in fp32 (the weights are fp16 values, so only the
arithmetic precision differs) with generation capped at fixtures.MAX_NEW_TOKENS.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import llava.conversation as conversation_lib  # noqa: E402
import transformers  # noqa: E402
from llava import mm_utils  # noqa: E402
from llava.eval import model_vqa_loader, model_vqa_mmbench  # noqa: E402
from llava.model import (  # noqa: E402
    LlavaConfig,
    LlavaLlamaForCausalLM,
    builder,  # noqa: E402
)
from llava.train import train as llava_train  # noqa: E402

import fixtures  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def tokenizer_folder(root: Path, legacy: bool) -> Path:
    import mistral_common

    folder = root / f"tokenizer_legacy_{legacy}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(mistral_common.__file__).parent / "data" / fixtures.TOKENIZER_FILE, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(fixtures.tokenizer_config(legacy)))
    return folder


def load_tokenizer(folder: Path):
    """As LLaVA's train() loads it: the slow tokenizer, right padding, pad = unk (the v1 setting)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), model_max_length=2048, padding_side="right",
                                                     use_fast=False)
    tok.pad_token = tok.unk_token
    return tok


def run_preprocess(tok, template: str, turns, has_image: bool) -> dict:
    conversation_lib.default_conversation = conversation_lib.conv_templates[template]
    sources = [[{"from": r, "value": v} for r, v in turns]]
    if has_image:
        args = llava_train.DataArguments(is_multimodal=True)
        args.mm_use_im_start_end = False
        sources = llava_train.preprocess_multimodal(copy.deepcopy(sources), args)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        out = llava_train.preprocess(sources, tok, has_image=has_image)
    ids, labels = out["input_ids"][0], out["labels"][0]
    return {"input_ids": ids.tolist(), "labels": labels.tolist(), "mismatch": "tokenization mismatch" in printed.getvalue()}


def run_prompt(tok, template: str, history, question: str) -> dict:
    conv = conversation_lib.conv_templates[template].copy()
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    for role, text in history:
        conv.append_message(roles[role], text)
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    return {"prompt": prompt, "input_ids": mm_utils.tokenizer_image_token(prompt, tok)}


def tokenization(root: Path) -> dict:
    out = {"transformers": transformers.__version__, "llava": "1.2.2.post1", "legacy": {}}
    for legacy in (True, False):
        tok = load_tokenizer(tokenizer_folder(root, legacy))
        assert tok.legacy is legacy and not tok.is_fast
        entry = {"train": {}, "prompt": {}}
        for template in ("vicuna_v1", "llava_llama_2"):
            entry["train"][template] = {name: run_preprocess(tok, template, turns, img)
                                        for name, (turns, img) in fixtures.CONVERSATIONS.items()}
            entry["prompt"][template] = {name: run_prompt(tok, template, hist, q)
                                         for name, (hist, q) in fixtures.PROMPTS.items()}
        entry["train"]["plain"] = {name: run_preprocess(tok, "plain", turns, img)
                                   for name, (turns, img) in fixtures.PLAIN.items()}
        entry["system"] = {t: conversation_lib.conv_templates[t].system for t in ("vicuna_v1", "llava_llama_2")}
        out["legacy"][str(legacy).lower()] = entry
    return out


# ChatML as its spec writes it (a turn is <|im_start|>role\ncontent<|im_end|>\n), rendered by transformers' engine.
CHATML_JINJA = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chatml(root: Path) -> dict:
    tok = load_tokenizer(tokenizer_folder(root, True))
    tok.chat_template = CHATML_JINJA
    system = {"role": "system", "content": "You are a helpful assistant."}
    role = {"human": "user", "gpt": "assistant"}
    out = {"template": CHATML_JINJA, "system": system["content"], "train": {}, "prompt": {}}
    for name, (turns, _) in fixtures.CONVERSATIONS.items():
        if turns[0][0] != "human":
            continue
        msgs = [system] + [{"role": role[r], "content": v} for r, v in turns]
        out["train"][name] = tok.apply_chat_template(msgs, tokenize=False)
    for name, (hist, q) in fixtures.PROMPTS.items():
        msgs = [system] + [{"role": role[r], "content": v} for r, v in hist] + [{"role": "user", "content": q}]
        out["prompt"][name] = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return out


def digest(t: torch.Tensor) -> dict:
    t = t.contiguous().float()
    return {"shape": list(t.shape), "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest(),
            "channel_mean": [float(c) for c in t.mean(dim=(1, 2))], "first": [float(v) for v in t.flatten()[:8]]}


def clip_processor(size: int):
    """openai/clip-vit-large-patch14-336's preprocessor settings at `size` px."""
    return transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                           do_center_crop=True, do_resize=True, resample=3, do_normalize=True,
                                           image_mean=[0.48145466, 0.4578275, 0.40821073],
                                           image_std=[0.26862954, 0.26130258, 0.27577711], do_convert_rgb=True)


def pixels() -> dict:
    import pandas as pd

    rows = pd.read_table(DATA / "mmbench" / "mmbench_dev_20230712_sample.tsv").head(4)
    images = {f"mmbench_{r['index']}": mm_utils.load_image_from_base64(r["image"]) for _, r in rows.iterrows()}
    images.update({f"synthetic_{i}": fixtures.synthetic_image(i) for i in range(6)})
    out = {}
    for size in (336, 32):
        proc = clip_processor(size)
        for mode in ("pad", None):
            cfg = argparse.Namespace(image_aspect_ratio=mode)
            for name, im in images.items():
                out[f"{size}/{mode or 'crop'}/{name}"] = digest(mm_utils.process_images([im], proc, cfg)[0])
    return out


# ---- the tiny model ---------------------------------------------------------------------------------------------
def tiny_configs(vision_path: str) -> tuple[dict, dict]:
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                           image_size=32, patch_size=8, projection_dim=32)
    llava = LlavaConfig(vocab_size=32000, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                        pad_token_id=0, tie_word_embeddings=False, mm_vision_tower=vision_path, mm_hidden_size=32,
                        mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                        mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad",
                        tokenizer_model_max_length=2048, tokenizer_padding_side="right", use_cache=True)
    return vision.to_dict(), llava.to_dict()


def shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.named_parameters()}


def build_layouts(root: Path) -> dict:
    """The tiny model in LLaVA's layouts: a CLIP tower folder, a full checkpoint (`llava-tiny`), and a stage-1 output
    (`llava-tiny-pretrain`: config.json + mm_projector.bin) over a base LM (`base-lm`)."""
    vision_dir = root / "clip-tiny"
    vcfg, lcfg = tiny_configs(str(vision_dir))
    tower = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vcfg))
    tower_shapes = shapes(tower)
    tower.load_state_dict({k: v.float() for k, v in fixtures.fill(tower_shapes, fixtures.SEED).items()}, strict=False)
    tower.save_pretrained(str(vision_dir))
    clip_processor(32).save_pretrained(str(vision_dir))
    model = LlavaLlamaForCausalLM(LlavaConfig(**lcfg))
    model_shapes = shapes(model)
    model.load_state_dict({k: v.float() for k, v in fixtures.fill(model_shapes, fixtures.SEED + 1).items()})
    tok = load_tokenizer(tokenizer_folder(root, False))
    full = root / "llava-tiny"
    model.half().save_pretrained(str(full), safe_serialization=False)
    tok.save_pretrained(str(full))
    base = root / "base-lm"
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{k: v for k, v in lcfg.items()
                                                                   if not k.startswith("mm_") and k != "architectures"}))
    lm.load_state_dict({k: v for k, v in model.state_dict().items() if "mm_projector" not in k})
    lm.half().save_pretrained(str(base), safe_serialization=False)
    tok.save_pretrained(str(base))
    pretrain = root / "llava-tiny-pretrain"
    pretrain.mkdir()
    model.config.save_pretrained(str(pretrain))
    projector = {k: v for k, v in fixtures.fill(model_shapes, fixtures.SEED + 2).items() if "mm_projector" in k}
    torch.save(projector, pretrain / "mm_projector.bin")
    # recorded with the tower named by its folder name, so that the goldens do not depend on this run's temp folder
    files = {name: {f.name: f.read_text().replace(str(vision_dir), vision_dir.name)
                    for f in sorted((root / name).glob("*.json"))}
             for name in ("clip-tiny", "llava-tiny", "base-lm", "llava-tiny-pretrain")}
    return {"vision_shapes": tower_shapes, "model_shapes": model_shapes, "seeds": {"vision": fixtures.SEED,
            "model": fixtures.SEED + 1, "pretrain_projector": fixtures.SEED + 2}, "json_files": files}


@contextlib.contextmanager
def on_cpu_fp32():
    """LLaVA's scripts, unchanged, on the CPU in fp32: .cuda() stays put, fp16 casts keep fp32, the loaded model is
    cast to fp32 and its generation capped at MAX_NEW_TOKENS."""
    saved = (torch.Tensor.cuda, torch.Tensor.half, torch.Tensor.to, builder.load_pretrained_model)
    original_to = torch.Tensor.to

    def to(self, *args, **kw):
        args = tuple("cpu" if a == "cuda" else a for a in args if a is not torch.float16)
        if kw.get("device") == "cuda":
            kw["device"] = "cpu"
        if kw.get("dtype") is torch.float16:
            kw.pop("dtype")
        return original_to(self, *args, **kw)

    def load(model_path, model_base, model_name, **kw):
        tok, model, proc, ctx = saved[3](model_path, model_base, model_name, device="cpu")
        model.float()
        model.get_vision_tower().float()
        generate = model.generate
        model.generate = lambda *a, **k: generate(*a, **{**k, "max_new_tokens": min(k.get("max_new_tokens", 10 ** 6),
                                                                                     fixtures.MAX_NEW_TOKENS)})
        return tok, model, proc, ctx

    torch.Tensor.cuda, torch.Tensor.half, torch.Tensor.to = (lambda self, *a, **k: self), (lambda self, *a, **k: self), to
    model_vqa_mmbench.load_pretrained_model = model_vqa_loader.load_pretrained_model = load
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.half, torch.Tensor.to = saved[:3]
        model_vqa_mmbench.load_pretrained_model = model_vqa_loader.load_pretrained_model = saved[3]


@contextlib.contextmanager
def recording(module):
    """The prompt strings and ids the script passes to tokenizer_image_token, in order."""
    seen = []
    original = module.tokenizer_image_token

    def record(prompt, tokenizer, *a, **k):
        out = original(prompt, tokenizer, *a, **k)
        seen.append({"prompt": prompt, "input_ids": [int(x) for x in out]})
        return out

    module.tokenizer_image_token = record
    try:
        yield seen
    finally:
        module.tokenizer_image_token = original


def answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mmbench_answers(root: Path, model_dir: Path, model_base: Path | None = None) -> list[dict]:
    out = root / f"mmbench_{model_dir.name}.jsonl"
    args = argparse.Namespace(model_path=str(model_dir), model_base=None if model_base is None else str(model_base),
                              question_file=str(DATA / "mmbench" /
                              "mmbench_dev_20230712_sample.tsv"), answers_file=str(out), conv_mode="vicuna_v1",
                              num_chunks=1, chunk_idx=0, temperature=0.0, top_p=None, num_beams=1, all_rounds=False,
                              single_pred_prompt=True, lang="en")
    with on_cpu_fp32(), recording(model_vqa_mmbench) as seen:
        model_vqa_mmbench.eval_model(args)
    return [{"index": int(a["question_id"]), "text": a["text"], **p} for a, p in zip(answers(out), seen, strict=True)]


MME_SUBSET = 2  # questions per MME sub-task in the end-to-end golden (one image, both its questions)


def mme_questions(root: Path, subset: bool) -> tuple[Path, Path]:
    lines = [json.loads(x) for x in (DATA / "mme" / "llava_mme_questions.jsonl").read_text().splitlines()]
    if subset:
        by_task: dict[str, list] = {}
        for q in lines:
            by_task.setdefault(q["category"], []).append(q)
        lines = [q for qs in by_task.values() for q in qs[:MME_SUBSET]]
    folder = root / ("mme_images_subset" if subset else "mme_images")
    for i, image in enumerate(dict.fromkeys(q["image"] for q in lines)):
        (folder / image).parent.mkdir(parents=True, exist_ok=True)
        fixtures.synthetic_image(i).save(folder / image, format="PNG")
    qfile = root / f"mme_questions_{'subset' if subset else 'all'}.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in lines))
    return qfile, folder


def mme_prompts(root: Path) -> dict:
    """Every prompt of LLaVA's MME question file, as model_vqa_loader's dataset builds it (no model needed)."""
    qfile, folder = mme_questions(root, subset=False)
    questions = answers(qfile)
    tok = load_tokenizer(tokenizer_folder(root, False))
    model_vqa_loader.args = argparse.Namespace(conv_mode="vicuna_v1")  # the script's dataset reads its global args
    cfg = argparse.Namespace(mm_use_im_start_end=False, image_aspect_ratio="pad")
    with recording(model_vqa_loader) as seen:
        dataset = model_vqa_loader.CustomDataset(questions, str(folder), tok, clip_processor(32), cfg)
        for i in range(len(dataset)):
            dataset[i]
    prompts = [s["prompt"] for s in seen]
    return {"count": len(prompts), "sha256_each": [hashlib.sha256(p.encode()).hexdigest()[:16] for p in prompts],
            "first": [{"question_id": q["question_id"], **s} for q, s in zip(questions[:30], seen[:30], strict=True)]}


def mme_answers(root: Path, model_dir: Path, model_base: Path | None) -> list[dict]:
    qfile, folder = mme_questions(root, subset=True)
    out = root / f"mme_{model_dir.name}.jsonl"
    args = argparse.Namespace(model_path=str(model_dir), model_base=None if model_base is None else str(model_base),
                              image_folder=str(folder), question_file=str(qfile), answers_file=str(out),
                              conv_mode="vicuna_v1", num_chunks=1, chunk_idx=0, temperature=0.0, top_p=None, num_beams=1,
                              max_new_tokens=fixtures.MAX_NEW_TOKENS)
    model_vqa_loader.args = args
    loader = model_vqa_loader.create_data_loader  # in this process, so that the recording sees the prompts
    model_vqa_loader.create_data_loader = lambda *a, **k: loader(*a, **{**k, "num_workers": 0})
    try:
        with on_cpu_fp32(), recording(model_vqa_loader) as seen:
            model_vqa_loader.eval_model(args)
    finally:
        model_vqa_loader.create_data_loader = loader
    return [{"question_id": a["question_id"], "image": q["image"], "text_question": q["text"], "text": a["text"], **p}
            for a, q, p in zip(answers(out), answers(qfile), seen, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "tests" / "golden" / "llava"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {"tokenization.json": tokenization(root), "chatml.json": chatml(root), "pixels.json": pixels(),
                   "mme_prompts.json": mme_prompts(root)}
        layouts = build_layouts(root)
        layouts["max_new_tokens"] = fixtures.MAX_NEW_TOKENS
        layouts["mmbench"] = mmbench_answers(root, root / "llava-tiny")
        layouts["mmbench_pretrain_with_base"] = mmbench_answers(root, root / "llava-tiny-pretrain", root / "base-lm")
        layouts["mme_full"] = mme_answers(root, root / "llava-tiny", None)
        layouts["mme_pretrain_with_base"] = mme_answers(root, root / "llava-tiny-pretrain", root / "base-lm")
        results["model.json"] = layouts
    for name, data in results.items():
        (out / name).write_text(json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
