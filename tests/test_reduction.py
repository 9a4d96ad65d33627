"""Training-free token reduction of a preserving connector's output: each method keeps exactly the budget, is
deterministic, and gives the same answers whatever the batch."""
import pytest
import torch
from PIL import Image

from connectorlab.evaluation.benchmarks.mmbench import load_mmbench
from connectorlab.evaluation.runner import evaluate
from connectorlab.model.config import ModelConfig
from connectorlab.model.mllm import MultimodalLM
from connectorlab.reduction import METHODS, Reduction, parse


@pytest.fixture(scope="module")
def model(tiny_dir):
    torch.manual_seed(0)
    return MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"), connector="mlp",
                                          template="vicuna_v1")).eval()


IMAGES = [Image.new("RGB", (32, 32), c) for c in ((200, 30, 40), (10, 200, 40), (30, 40, 220))]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_keeps_the_budget_and_is_batch_invariant_and_deterministic(model, method):
    model.set_reduction(Reduction(method, 4))
    try:
        pixels = torch.stack([model.image_transform(im) for im in IMAGES])
        with torch.no_grad():
            together = model.encode_images(pixels)
            alone = torch.cat([model.encode_images(pixels[i:i + 1]) for i in range(len(IMAGES))])
            again = model.encode_images(pixels)
        assert together.shape == (3, 4, model.connector.llm_dim)
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
        assert torch.equal(together, again)
        prompt = model.processor.encode_prompt("<image>\nWhat colour is it?", num_images=1)
        assert prompt.count(-200) == 4  # the prompt holds exactly the reduced count
        batch = model.generate([prompt] * 3, pixels, max_new_tokens=4)
        single = [model.generate([prompt], pixels[i:i + 1], max_new_tokens=4)[0] for i in range(3)]
        assert batch == single
    finally:
        model.set_reduction(None)
    assert model.processor.encode_prompt("<image>\nx", num_images=1).count(-200) == model.connector.num_output_tokens


def test_the_methods_keep_what_they_say(model):
    tokens = torch.arange(16.0).reshape(1, 16, 1).expand(2, 16, 3)
    pooled = Reduction("avgpool", 4)(tokens, (4, 4))
    assert pooled[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]  # means of the four 2x2 windows
    attention = torch.zeros(2, 16)
    attention[0, [3, 9, 1, 14]] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    attention[1, [0, 5, 6, 7]] = 1.0
    kept = Reduction("cls_attention", 4)(tokens, (4, 4), attention)
    assert kept[0, :, 0].tolist() == [1, 3, 9, 14] and kept[1, :, 0].tolist() == [0, 5, 6, 7]  # per image, in order
    picked = Reduction("random", 5, seed=3)(tokens, (4, 4))[0, :, 0].tolist()
    other = Reduction("random", 5, seed=4)(tokens, (4, 4))[0, :, 0].tolist()
    assert picked == sorted(picked) and len(set(picked)) == 5 and picked != other


def test_reduced_evaluation_is_its_own_run(model, tmp_path, toy):
    bench = load_mmbench(toy / "probe/test.tsv", mapping_section="probe")
    evaluate(model, bench, tmp_path / "ev", batch_size=8, max_new_tokens=2, show_progress=False)
    model.set_reduction(Reduction("random", 4))
    try:
        with pytest.raises(ValueError, match="reduction"):  # the full model's predictions are not reused
            evaluate(model, bench, tmp_path / "ev", batch_size=8, max_new_tokens=2, show_progress=False)
        result = evaluate(model, bench, tmp_path / "reduced", batch_size=8, max_new_tokens=2, show_progress=False)
        assert result.identity["reduction"] == "random-4"
    finally:
        model.set_reduction(None)


@pytest.mark.parametrize("spec,message", [("topk:4", "one of random, avgpool, cls_attention"),
                                          ("avgpool:5", "square number"), ("random:16", "between 1 and 15"),
                                          ("random", "METHOD:TOKENS")])
def test_bad_reductions_are_named(model, spec, message):
    with pytest.raises(ValueError, match=message):
        model.set_reduction(parse(spec))


def test_reduction_needs_a_preserving_connector(tiny_dir):
    pooled = MultimodalLM.build(ModelConfig(vision=str(tiny_dir / "clip"), llm=str(tiny_dir / "llm"), connector="avgpool",
                                            connector_options={"num_tokens": 4}))
    with pytest.raises(ValueError, match="feature-preserving"):
        pooled.set_reduction(Reduction("random", 2))
