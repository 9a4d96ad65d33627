"""Hugging Face interop on tiny models built from configs: the llava-hf export loads with stock classes and gives
connectorlab's logits, answers, token ids and pixels; import gives the source model's logits; export -> import is the
identity on weights; bad input is named."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from PIL import Image

from connectorlab.interop.llava_hf import NotExportable, export_llava_hf, from_llava_hf
from connectorlab.language.processor import IMAGE_TOKEN_ID
from connectorlab.model.config import ModelConfig
from connectorlab.model.mllm import MultimodalLM

QUESTION = "What colour is the thing?"
IMAGES = [Image.new("RGB", (32, 32), (200, 30, 40)), Image.new("RGB", (48, 20), (10, 200, 40))]  # square, padded


def cli(*args):
    return subprocess.run([sys.executable, "-m", "connectorlab", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    """connectorlab models (mlp with GELU, mlp with SiLU, linear) saved, and their llava-hf exports."""
    root = tmp_path_factory.mktemp("interop")
    out = {}
    for name, conn, options in (("mlp", "mlp", {}), ("mlp-silu", "mlp", {"activation": "silu"}), ("linear", "linear", {})):
        torch.manual_seed(0)
        model = MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"), connector=conn,
                                               connector_options=options, template="vicuna_v1")).eval()
        model.save_pretrained(root / name)
        out[name] = (model, export_llava_hf(root / name, root / f"{name}-hf"))
    return out


def stock(folder):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def hf_ids(model: MultimodalLM, image_id: int) -> list[int]:
    return [image_id if t == IMAGE_TOKEN_ID else t for t in model.processor.encode_prompt(f"<image>\n{QUESTION}", num_images=1)]


def last_logits(model: MultimodalLM, image: Image.Image) -> torch.Tensor:
    ids = torch.tensor([model.processor.encode_prompt(f"<image>\n{QUESTION}", num_images=1)])
    with torch.no_grad():
        return model.llm(inputs_embeds=model.embed(ids, model.image_transform(image)[None])).logits[0, -1]


@pytest.mark.parametrize("name", ["mlp", "mlp-silu", "linear"])
def test_stock_llava_gives_connectorlab_logits_answers_ids_and_pixels(exported, name):
    model, folder = exported[name]
    hf, processor = stock(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    for image in IMAGES:
        enc = processor(text=text, images=image, return_tensors="pt")
        expected = hf_ids(model, hf.config.image_token_index)
        assert enc["input_ids"][0].tolist() == expected  # the same prompt, `<image>` expanded to the same count
        assert torch.equal(enc["pixel_values"], model.image_transform(image)[None])  # pad, resize, normalise alike
        with torch.no_grad():
            logits = hf(**enc).logits[0, -1, :model.llm.config.vocab_size]
        torch.testing.assert_close(logits, last_logits(model, image), rtol=1e-5, atol=1e-5)
        ours = model.generate([model.processor.encode_prompt(f"<image>\n{QUESTION}", num_images=1)], enc["pixel_values"],
                              max_new_tokens=8)[0]
        theirs = hf.generate(**enc, max_new_tokens=8, do_sample=False)[0, len(expected):].tolist()
        stop = model.tokenizer.eos_token_id
        assert theirs[:len(ours)] == ours and (len(ours) == 8 or theirs[len(ours)] == stop)


def test_export_then_import_is_the_identity_on_weights(exported):
    for name, (model, folder) in exported.items():
        back = from_llava_hf(folder, template="vicuna_v1")
        assert back.config.connector == model.config.connector
        for part in ("connector", "vision"):
            a, b = getattr(model, part).state_dict(), getattr(back, part).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, part)
        a, b = model.llm.state_dict(), back.llm.state_dict()
        vocab = model.llm.config.vocab_size  # the export adds `<image>` and pads the vocabulary to 64 rows
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k][:vocab] if b[k].shape[0] > a[k].shape[0] else b[k])
                                            for k in a), name


def test_import_of_a_llava_hf_checkpoint_gives_its_logits(tiny_dir, tmp_path):
    """A llava-hf model made from configs (not by our export): imported, it computes the source's logits."""
    from transformers import AutoConfig, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tiny_dir / "llm")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    text = AutoConfig.from_pretrained(tiny_dir / "llm").to_dict()
    text["vocab_size"] = len(tok)
    config = LlavaConfig(vision_config=AutoConfig.from_pretrained(tiny_dir / "clip").to_dict(), text_config=text,
                         image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=16,
                         projector_hidden_act="gelu", vision_feature_layer=-2)
    config.vision_config.model_type = "clip_vision_model"
    torch.manual_seed(1)
    source = LlavaForConditionalGeneration(config).eval()
    source.save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    model = from_llava_hf(tmp_path / "src", template="vicuna_v1", image_mode="resize").eval()
    assert model.config.connector == "mlp" and model.connector.num_output_tokens == 16
    image = IMAGES[0]
    ids = hf_ids(model, config.image_token_index)
    with torch.no_grad():
        theirs = source(input_ids=torch.tensor([ids]), pixel_values=model.image_transform(image)[None]).logits[0, -1]
    torch.testing.assert_close(last_logits(model, image), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_an_imported_model_is_evaluated_end_to_end(exported, tmp_path):
    from connectorlab.probe.generate import ProbeParams, generate

    _, folder = exported["mlp"]
    res = cli("import", "llava-hf", str(folder), "--out", str(tmp_path / "imported"))
    assert res.returncode == 0, res.stderr[-2000:]
    generate(tmp_path / "probe", ProbeParams(image_size=32, n_train=2, n_test=2))
    res = cli("eval", "--model", str(tmp_path / "imported"), "--benchmark", "mmbench", "--data",
              str(tmp_path / "probe/test.tsv"), "--out", str(tmp_path / "eval"), "--max-new-tokens", "3")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "eval/results.json").read_text())["scores"]["questions"] == 22  # 11 questions per probe image


@pytest.mark.slow
def test_bad_input_is_named(exported, tiny_dir, tmp_path):
    torch.manual_seed(0)
    pooled = MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"), connector="avgpool",
                                            connector_options={"num_tokens": 4}))
    pooled.save_pretrained(tmp_path / "pooled")
    with pytest.raises(NotExportable, match="feature-compressing.*hf-remote-code"):
        export_llava_hf(tmp_path / "pooled", tmp_path / "out")
    res = cli("export", str(tmp_path / "pooled"), "--format", "llava-hf", "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "feature-compressing" in res.stderr
    res = cli("export", str(exported["mlp"][1].parent / "mlp"), "--format", "onnx", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "one of llava-hf, hf-remote-code" in res.stderr
    res = cli("import", "llava-hf", str(tiny_dir / "llm"), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "not a llava-hf checkpoint" in res.stderr and "'llama'" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("separate_projector", [False, True], ids=["projector-in-weights", "mm_projector.bin"])
def test_import_of_the_original_llava_layout_gives_the_same_model(tiny_dir, tmp_path, separate_projector):
    """A LLaVA-release folder made from the tiny LM: config.json with the mm_* keys, the projector inside the weights
    (a fine-tuned release) or in mm_projector.bin (a pre-training output)."""
    import shutil

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    reference = MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"), connector="mlp",
                                               template="vicuna_v1")).eval()
    src = tmp_path / "llava-v1.5-tiny"
    lm = AutoModelForCausalLM.from_pretrained(tiny_dir / "llm")
    lm.save_pretrained(src)
    for f in [*(tiny_dir / "llm").glob("tokenizer*"), *(tiny_dir / "llm").glob("special_tokens_map.json")]:
        shutil.copy(f, src / f.name)
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=["LlavaLlamaForCausalLM"], model_type="llava_llama",
                  mm_vision_tower="openai/clip-vit-large-patch14-336", mm_projector_type="mlp2x_gelu", mm_hidden_size=32,
                  mm_vision_select_layer=-2, mm_vision_select_feature="patch", image_aspect_ratio="pad",
                  mm_use_im_start_end=False)
    (src / "config.json").write_text(json.dumps(config))
    projector = {f"model.mm_projector.{k}": v.detach().clone() for k, v in reference.connector.mlp.state_dict().items()}
    if separate_projector:
        torch.save(projector, src / "mm_projector.bin")
    else:
        weights = {k: v.contiguous() for k, v in lm.state_dict().items()}
        (src / "model.safetensors").unlink()
        save_file({**weights, **projector}, str(src / "model.safetensors"))
    res = cli("import", "llava", str(src), "--vision", str(tiny_dir / "clip"), "--out", str(tmp_path / "imported"))
    assert res.returncode == 0, res.stderr[-2000:]
    imported = MultimodalLM.from_pretrained(tmp_path / "imported").eval()
    assert (imported.config.connector, imported.config.select_layer, imported.image_transform.mode) == ("mlp", -2, "pad")
    for image in IMAGES:
        torch.testing.assert_close(last_logits(imported, image), last_logits(reference, image), rtol=0, atol=0)


@pytest.mark.slow
def test_a_folder_that_is_not_a_llava_release_is_named(tiny_dir, tmp_path):
    res = cli("import", "llava", str(tiny_dir / "llm"), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "not a LLaVA release (config.json lacks mm_vision_tower, mm_projector_type)" in res.stderr


# ---- hf-remote-code: every connector of the zoo, loaded where connectorlab cannot be imported -----------------------

CHILD = r'''
import json, sys
sys.modules["connectorlab"] = None  # any import of connectorlab now fails: the folders must stand alone
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sys.argv[1]}]}]
for folder in sys.argv[3:]:
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    enc = processor(text=text, images=Image.open(sys.argv[2]), return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, -1]
    answer = model.generate(**enc, max_new_tokens=6, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
    print(json.dumps({"folder": folder, "ids": enc["input_ids"][0].tolist(), "logits": logits.tolist(), "answer": answer}))
'''


@pytest.fixture(scope="module")
def remote(tiny_dir, tmp_path_factory):
    import inspect

    from connectorlab.connectors import CONNECTORS
    from connectorlab.interop.hf_remote import export_remote_code

    root = tmp_path_factory.mktemp("remote")
    models, folders = {}, []
    for name, cls in CONNECTORS.items():
        options = dict(cls.tiny_options)
        if "num_tokens" in inspect.signature(cls.__init__).parameters:
            options.setdefault("num_tokens", 4)
        torch.manual_seed(0)
        model = MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"), connector=name,
                                               connector_options=options, template="vicuna_v1")).eval()
        model.save_pretrained(root / name)
        folders.append(export_remote_code(root / name, root / f"{name}-remote"))
        models[str(folders[-1])] = (name, model)
    IMAGES[1].save(root / "image.png")
    res = subprocess.run([sys.executable, "-c", CHILD, QUESTION, str(root / "image.png"), *map(str, folders)],
                         capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    results = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return {models[r["folder"]][0]: (models[r["folder"]][1], r) for r in results}


@pytest.mark.slow
def test_every_connector_exports_with_remote_code(remote):
    from connectorlab.connectors import CONNECTORS

    assert sorted(remote) == sorted(CONNECTORS.names())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear", "mlp", "avgpool", "qformer", "perceiver", "cross_attn", "c_abstractor",
                                  "d_abstractor", "ldp", "ldpv2", "pixel_shuffle", "tokenpacker"])
def test_the_remote_code_export_answers_like_connectorlab(remote, name):
    model, theirs = remote[name]
    image_id = json.loads((Path(theirs["folder"]) / "config.json").read_text())["image_token_id"]
    prompt = model.processor.encode_prompt(f"<image>\n{QUESTION}", num_images=1)
    assert theirs["ids"] == [image_id if t == IMAGE_TOKEN_ID else t for t in prompt]  # exactly Q image tokens
    vocab = model.llm.config.vocab_size
    torch.testing.assert_close(torch.tensor(theirs["logits"][:vocab]), last_logits(model, IMAGES[1]), rtol=1e-5, atol=1e-5)
    ours = model.generate([prompt], model.image_transform(IMAGES[1])[None], max_new_tokens=6)[0]
    assert theirs["answer"][:len(ours)] == ours


@pytest.mark.parametrize("template", ["vicuna_v1", "llama_2", "chatml"])
def test_the_exported_chat_template_renders_connectorlab_prompts(tiny_dir, tmp_path, template):
    """Two turns and a question, through the processor's chat template, give encode_prompt's ids (images expanded)."""
    torch.manual_seed(0)
    model = MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"), connector="mlp",
                                           template=template))
    model.save_pretrained(tmp_path / "model")
    hf, processor = stock(export_llava_hf(tmp_path / "model", tmp_path / "hf"))
    history = [("user", "<image>\nWhat colour is it?"), ("assistant", "red")]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                {"role": "user", "content": [{"type": "text", "text": "And its shape?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    enc = processor(text=text, images=IMAGES[0], return_tensors="pt")
    ours = model.processor.encode_prompt("And its shape?", history, num_images=1)
    assert enc["input_ids"][0].tolist() == [hf.config.image_token_index if t == IMAGE_TOKEN_ID else t for t in ours]
