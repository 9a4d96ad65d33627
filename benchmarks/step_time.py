"""Stage-2 training step: connectorlab's MultimodalLM (mlp) vs transformers' LlavaForConditionalGeneration.

Both are built from the same CLIP vision and Llama text configs (a realistic shape in miniature:
224 px / patch 14 = 256 visual tokens, widths 256 x 4 layers, LLaMA's 32,000-token vocabulary, 32 text
tokens, batch 8), both train connector + LM with the tower frozen, with AdamW, on the same batch.
Runs alternate so that machine noise hits both alike; the median per-step time ratio is printed and
saved as JSON.

    python benchmarks/step_time.py [--rounds 5] [--steps 3] [--out benchmarks/results/step_time.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from connectorlab.language.processor import IGNORE_INDEX, IMAGE_TOKEN_ID  # noqa: E402
from connectorlab.model.config import ModelConfig  # noqa: E402
from connectorlab.model.mllm import MultimodalLM  # noqa: E402
from connectorlab.model.tiny import make_bpe_tokenizer  # noqa: E402
from connectorlab.utils.io import atomic_write_json  # noqa: E402

VOCAB, IMAGE, PATCH, WIDTH, LAYERS, HEADS, TEXT, BATCH = 32000, 224, 14, 256, 4, 4, 32, 8
PRE, SUPERVISED = 8, 16  # text tokens before the image; answer tokens at the end


def configs():
    vision = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                              num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=1024,
                       tie_word_embeddings=False)
    return vision, text


def build_ours(root: Path):
    from transformers import CLIPVisionModel, LlamaForCausalLM

    vision, text = configs()
    CLIPVisionModel(vision).save_pretrained(root / "vision")
    LlamaForCausalLM(text).save_pretrained(root / "llm")
    make_bpe_tokenizer(root / "llm")
    return MultimodalLM.build(ModelConfig(vision=str(root / "vision"), llm=str(root / "llm"), connector="mlp"))


def build_hf():
    vision, text = configs()
    grid = (IMAGE // PATCH) ** 2
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=VOCAB - 1, image_seq_length=grid,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg)
    model.model.vision_tower.requires_grad_(False)
    return model


def batch(gen: torch.Generator, grid: int, image_id: int):
    text = torch.randint(10, VOCAB - 2, (BATCH, TEXT), generator=gen)
    ids = torch.cat([text[:, :PRE], torch.full((BATCH, grid), image_id), text[:, PRE:]], 1)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -SUPERVISED:] = ids[:, -SUPERVISED:]
    return ids, labels, torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen)


def timed_steps(step, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_time.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    grid = (IMAGE // PATCH) ** 2
    with tempfile.TemporaryDirectory() as tmp:
        ours = build_ours(Path(tmp)).train()
    hf = build_hf().train()
    gen = torch.Generator().manual_seed(0)
    ids, labels, pixels = batch(gen, grid, IMAGE_TOKEN_ID)
    hf_ids = torch.where(ids == IMAGE_TOKEN_ID, torch.full_like(ids, VOCAB - 1), ids)
    mask = torch.ones_like(ids)
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5)
    opt_hf = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-5)
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_hf = sum(p.numel() for p in hf.parameters() if p.requires_grad)

    def step_ours():
        opt_ours.zero_grad(set_to_none=True)
        ours(ids, mask, labels, pixel_values=pixels).loss.backward()
        opt_ours.step()

    def step_hf():
        opt_hf.zero_grad(set_to_none=True)
        hf(input_ids=hf_ids, attention_mask=mask, labels=labels, pixel_values=pixels).loss.backward()
        opt_hf.step()

    step_ours(), step_hf()  # warm-up
    t_ours, t_hf = [], []
    for r in range(args.rounds):
        first, second = (step_ours, step_hf) if r % 2 == 0 else (step_hf, step_ours)
        a, b = timed_steps(first, args.steps), timed_steps(second, args.steps)
        (t_ours, t_hf)[0 if first is step_ours else 1].extend(a)
        (t_ours, t_hf)[1 if first is step_ours else 0].extend(b)
        print(f"round {r + 1}/{args.rounds}: ours {statistics.median(t_ours):.3f}s  hf {statistics.median(t_hf):.3f}s")
    result = {
        "benchmark": "stage-2 step (forward, backward, AdamW), connector mlp, vision frozen",
        "shape": {"image": IMAGE, "patch": PATCH, "visual_tokens": grid, "width": WIDTH, "layers": LAYERS,
                  "vocab": VOCAB, "text_tokens": TEXT, "supervised_tokens": SUPERVISED, "batch": BATCH},
        "trainable_parameters": {"connectorlab": n_ours, "transformers_llava": n_hf},
        "median_step_s": {"connectorlab": statistics.median(t_ours), "transformers_llava": statistics.median(t_hf)},
        "ratio": statistics.median(t_ours) / statistics.median(t_hf),
        "steps_each": len(t_ours),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    print(f"connectorlab / LlavaForConditionalGeneration step time: {result['ratio']:.2f}x")


if __name__ == "__main__":
    main()
