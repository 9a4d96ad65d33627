import pytest
import torch
import torch.nn.functional as F
from helpers import build_model as build
from PIL import Image

from connectorlab.language.processor import IGNORE_INDEX
from connectorlab.model.config import ModelConfig
from connectorlab.model.mllm import MultimodalLM

CONV = [{"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": "A red circle."}]


def batch_of(model, n=2):
    encs = [model.processor.encode(CONV) for _ in range(n)]
    ids = torch.tensor([e.input_ids for e in encs])
    labels = torch.tensor([e.labels for e in encs])
    return ids, torch.ones_like(ids), labels, torch.randn(n, 3, model.vision.image_size, model.vision.image_size)


def test_loss_equals_full_vocabulary_loss(tiny_dir):
    model = build(tiny_dir)
    ids, mask, labels, pixels = batch_of(model)
    out = model(ids, mask, labels, pixel_values=pixels)
    embeds = model.embed(ids, pixels)
    full = model.llm(inputs_embeds=embeds, attention_mask=mask).logits
    ref = F.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-5)
    assert out.logits.shape[0] == out.num_supervised == int((labels[:, 1:] != IGNORE_INDEX).sum())


def test_image_feature_count_mismatch_raises(tiny_dir):
    model = build(tiny_dir)
    ids, mask, labels, pixels = batch_of(model)
    with pytest.raises(ValueError, match="image positions"):
        model(ids, mask, labels, pixel_values=pixels[:1])


@pytest.mark.parametrize("connector,opts", [("mlp", {}), ("avgpool", {"num_tokens": 4}), ("tokenpacker", {})])
def test_generation_batch_equals_batch_of_one(tiny_dir, connector, opts):
    model = build(tiny_dir, connector, connector_options=opts).eval()
    questions = ["<image>\nWhat is in the image?", "<image>\nIs it left?", "<image>\nWhat colour is the big one here?",
                 "<image>\nCount."]
    prompts = [model.processor.encode_prompt(q) for q in questions]
    assert len({len(p) for p in prompts}) > 1  # left padding is really exercised
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batched = model.generate(prompts, pixels, max_new_tokens=8)
    single = [model.generate([p], pixels[i:i + 1], max_new_tokens=8)[0] for i, p in enumerate(prompts)]
    assert batched == single
    assert any(len(a) > 0 for a in batched)


def test_save_load_round_trip_gives_identical_logits(tiny_dir, tmp_path):
    model = build(tiny_dir, "c_abstractor", connector_options={"num_tokens": 4, "hidden": 16, "depth": 1}, image_size=48)
    model.eval()
    ids, mask, labels, _ = batch_of(model)
    pixels = torch.randn(2, 3, 48, 48)
    before = model(ids, mask, labels, pixel_values=pixels).logits
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "connector.safetensors").exists()
    again = MultimodalLM.from_pretrained(tmp_path / "m").eval()
    assert again.vision.image_size == 48 and again.connector.num_output_tokens == 4
    assert torch.equal(before, again(ids, mask, labels, pixel_values=pixels).logits)


def test_connector_weights_seed_another_model(tiny_dir, tmp_path):
    a = build(tiny_dir)
    a.save_connector(tmp_path / "c.safetensors")
    torch.manual_seed(99)
    b = build(tiny_dir)
    b.load_connector(tmp_path / "c.safetensors")
    for (n, p), (_, q) in zip(a.connector.named_parameters(), b.connector.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    c = build(tiny_dir, "avgpool", connector_options={"num_tokens": 4})
    c.load_connector(tmp_path / "c.safetensors")  # same parameter names and shapes: allowed
    d = build(tiny_dir, "linear")
    with pytest.raises(ValueError, match="do not fit"):
        d.load_connector(tmp_path / "c.safetensors")


def test_freeze_flags(tiny_dir):
    model = build(tiny_dir, freeze_llm=True)
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert all(p.requires_grad for p in model.connector.parameters())
    assert not any(p.requires_grad for p in model.vision.parameters())
    model.set_trainable(vision=True, connector=False, llm=True)
    assert all(p.requires_grad for p in model.vision.parameters())
    assert not any(p.requires_grad for p in model.connector.parameters())
    ids, mask, labels, pixels = batch_of(model)
    model(ids, mask, labels, pixel_values=pixels).loss.backward()
    assert model.vision.model.get_input_embeddings().weight.grad is not None


def test_answer_helper_decodes_text(tiny_dir):
    model = build(tiny_dir).eval()
    out = model.answer(["<image>\nWhat?"], [Image.new("RGB", (40, 30), (0, 255, 0))], max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)


def test_siglip_and_chatml(tiny_dir):
    torch.manual_seed(0)
    model = MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "siglip"), llm=str(tiny_dir / "llm"), connector="linear",
                                           template="chatml"))
    ids, mask, labels, pixels = batch_of(model)
    assert torch.isfinite(model(ids, mask, labels, pixel_values=pixels).loss)


def test_get_image_features_is_what_the_lm_receives(tiny_dir):
    """transformers' seam name: [batch, the connector's token count, the LM's width], the tokens `<image>` expands to."""
    model = build(tiny_dir, "avgpool", connector_options={"num_tokens": 4}).eval()
    pixels = torch.randn(2, 3, model.vision.image_size, model.vision.image_size)
    with torch.no_grad():
        features = model.get_image_features(pixels)
        assert features.shape == (2, 4, model.lm_head.weight.shape[1])
        assert torch.equal(features, model.encode_images(pixels))
