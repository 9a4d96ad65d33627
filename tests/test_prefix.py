"""Prompts that share an image are prefilled from one copy of their common start: the same answers and the same
next-token scores as prefilling each prompt whole."""
import inspect

import pytest
import torch
from helpers import build_model as build
from transformers import DynamicCache

from connectorlab.language.processor import IMAGE_TOKEN_ID
from connectorlab.model.prefix import shared_prefix

QUESTIONS = ["<image>\nWhat is in the image?", "<image>\nIs it left?", "<image>\nWhat colour is the big one here?",
             "<image>\nCount.", "<image>\nIs it left?"]


def batch(model):
    prompts = [model.processor.encode_prompt(q) for q in QUESTIONS]
    pixels = torch.randn(2, 3, model.vision.image_size, model.vision.image_size, generator=torch.Generator().manual_seed(1))
    return prompts, pixels, [0, 1, 0, 1, 0]  # two images, asked several questions each


@pytest.mark.parametrize("connector,opts", [("mlp", {}), ("avgpool", {"num_tokens": 4})])
def test_shared_prefix_gives_the_answers_and_scores_of_whole_prompts(tiny_dir, connector, opts):
    model = build(tiny_dir, connector, connector_options=opts).eval()
    prompts, pixels, index = batch(model)
    plan = shared_prefix(prompts, index, model.connector.num_output_tokens)
    assert plan is not None and len(plan.ids) == 2 and plan.group == index  # really shared
    assert len({len(p) for p in plan.suffixes(prompts)}) > 1  # pads really sit between prefix and text
    with torch.no_grad():
        features = model.encode_images(pixels)
        kw = "cache" if "cache" in inspect.signature(model.decoder.forward).parameters else "past_key_values"
        whole, _, pos_whole = model._prefill_whole(prompts, features[index], DynamicCache(), kw)
        shared, _, pos_shared = model._prefill_shared(prompts, plan, features, DynamicCache(), kw)
    torch.testing.assert_close(shared.last_hidden_state[:, -1], whole.last_hidden_state[:, -1], rtol=1e-5, atol=1e-5)
    assert torch.equal(pos_shared[:, -1], pos_whole[:, -1])
    with torch.no_grad():
        on = model.generate(prompts, max_new_tokens=8, image_features=features, image_index=index)
        off = model.generate(prompts, max_new_tokens=8, image_features=features, image_index=index, share_prefix=False)
        single = [model.generate([p], pixels[i:i + 1], max_new_tokens=8)[0] for p, i in zip(prompts, index, strict=True)]
    assert on == off == single
    assert any(len(a) > 0 for a in on)


def test_prefix_is_shared_only_where_prompts_start_alike_up_to_one_image():
    img = [IMAGE_TOKEN_ID] * 2
    a, b = [1, 5, *img, 7, 8], [1, 5, *img, 9]
    assert shared_prefix([a, b], [0, 0], 2).ids == [[1, 5, *img]]
    assert shared_prefix([a, b], [0, 1], 2) is None  # two images, no two prompts alike: nothing saved
    assert shared_prefix([a, b], None, 2) is None  # images given per prompt
    assert shared_prefix([a, [1, *img, 9]], [0, 0], 2) is None  # the image at another offset
    assert shared_prefix([a, [1, 5, *img]], [0, 0], 2) is None  # a prompt that ends with its image
    assert shared_prefix([[1, 5, 7], [1, 5, 8]], [0, 0], 2) is None  # no image (the blind baseline)
    assert shared_prefix([a, b, [1, 6, *img, 9]], [0, 0, 0], 2).group == [0, 0, 1]  # other text before the image
