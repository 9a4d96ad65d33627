import pytest
from transformers import AutoTokenizer

from connectorlab.language.processor import IGNORE_INDEX, IMAGE_TOKEN_ID, MultimodalProcessor, OverLength, TokenizationMismatch
from connectorlab.language.templates import LLAMA2_SYSTEM, TEMPLATES, VICUNA_SYSTEM, Stop, Template, Text

CONV = [
    {"from": "human", "value": "<image>\nWhat is in the image?"},
    {"from": "gpt", "value": "A red circle."},
    {"from": "human", "value": "Is it left?"},
    {"from": "gpt", "value": "Yes"},
]

GOLDEN = {
    "vicuna_v1": (
        f"<s>{VICUNA_SYSTEM} USER: <IMG>\nWhat is in the image? ASSISTANT:[ A red circle.</s>]"
        "USER: Is it left? ASSISTANT:[ Yes</s>]"
    ),
    "llama_2": (
        f"<s>[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n<IMG>\nWhat is in the image? [/INST][ A red circle. </s>]"
        "<s>[INST] Is it left? [/INST][ Yes </s>]"
    ),
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<IMG>\nWhat is in the image?"
        "<|im_end|>\n<|im_start|>assistant\n[A red circle.<|im_end|>]\n<|im_start|>user\nIs it left?<|im_end|>\n"
        "<|im_start|>assistant\n[Yes<|im_end|>]\n"
    ),
}


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")


def render_with_labels(tok, enc):
    """Decode ids back to text with supervised spans in [brackets] and the image run as <IMG>."""
    out, i, ids, labels = [], 0, enc.input_ids, enc.labels
    while i < len(ids):
        if ids[i] == IMAGE_TOKEN_ID:
            while i < len(ids) and ids[i] == IMAGE_TOKEN_ID:
                assert labels[i] == IGNORE_INDEX
                i += 1
            out.append("<IMG>")
            continue
        sup = labels[i] != IGNORE_INDEX
        j = i
        while j < len(ids) and ids[j] != IMAGE_TOKEN_ID and (labels[j] != IGNORE_INDEX) == sup:
            if sup:
                assert labels[j] == ids[j]
            j += 1
        text = tok.decode(ids[i:j], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out.append(f"[{text}]" if sup else text)
        i = j
    return "".join(out)


@pytest.mark.parametrize("name", ["vicuna_v1", "llama_2", "chatml"])
def test_golden_label_masks(tok, name):
    proc = MultimodalProcessor(tok, name, num_image_tokens=5)
    enc = proc.encode(CONV, num_images=1)
    assert enc.input_ids.count(IMAGE_TOKEN_ID) == 5
    assert render_with_labels(tok, enc) == GOLDEN[name]


@pytest.mark.parametrize("name", ["vicuna_v1", "llama_2", "chatml"])
def test_generation_prompt_is_training_prefix(tok, name):
    """The prompt at inference is exactly the unsupervised prefix seen in training."""
    proc = MultimodalProcessor(tok, name, num_image_tokens=3)
    enc = proc.encode(CONV[:2], num_images=1)
    prompt = proc.encode_prompt(CONV[0]["value"], num_images=1)
    first_sup = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    assert prompt == enc.input_ids[:first_sup]


def test_image_expands_to_connector_tokens(tok):
    for q in (1, 64, 144):
        enc = MultimodalProcessor(tok, "vicuna_v1", num_image_tokens=q).encode(CONV[:2])
        assert enc.input_ids.count(IMAGE_TOKEN_ID) == q


def test_text_only_record(tok):
    enc = MultimodalProcessor(tok, "vicuna_v1", 5).encode([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
                                                          num_images=0)
    assert IMAGE_TOKEN_ID not in enc.input_ids and enc.num_supervised > 0


def test_image_count_mismatch_raises(tok):
    proc = MultimodalProcessor(tok, "vicuna_v1", 5)
    with pytest.raises(TokenizationMismatch, match="1 '<image>' placeholder"):
        proc.encode(CONV, num_images=0)
    with pytest.raises(TokenizationMismatch, match="one image per conversation"):
        proc.encode([{"from": "human", "value": "<image><image>x"}, {"from": "gpt", "value": "y"}])


def test_straddling_token_raises(tok):
    """A template whose answer boundary falls inside a word must raise, not mislabel."""
    class Glued(Template):
        def _render(self, turns, add_generation_prompt):
            return [Text("USER: " + turns[0][1] + " ASSISTANT: assis"), Text("tant", supervised=True), Stop(True)]

    proc = MultimodalProcessor(tok, Glued("glued", "", None), 1)
    assert len(tok(" assistant", add_special_tokens=False).input_ids) == 1  # one token across the boundary
    with pytest.raises(TokenizationMismatch, match="straddles"):
        proc.encode([("user", "x"), ("assistant", "tant")])


def test_missing_stop_token_raises(tok, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>")
    with pytest.raises(TokenizationMismatch, match="EOS"):
        MultimodalProcessor(fast, "vicuna_v1", 1)
    with pytest.raises(TokenizationMismatch, match="<\\|im_end\\|>"):
        MultimodalProcessor(fast, "chatml", 1)


def test_malformed_conversations_raise(tok):
    proc = MultimodalProcessor(tok, "vicuna_v1", 1)
    with pytest.raises(ValueError, match="alternate"):
        proc.encode([{"from": "gpt", "value": "x"}])
    with pytest.raises(ValueError, match="unknown role"):
        proc.encode([{"from": "robot", "value": "x"}])
    with pytest.raises(ValueError, match="'from' and 'value'"):
        proc.encode([{"from": "human"}])


def test_over_length_raises_counting_visual_tokens(tok):
    proc = MultimodalProcessor(tok, "vicuna_v1", num_image_tokens=100, max_length=120)
    with pytest.raises(OverLength, match="100 visual"):
        proc.encode(CONV)


@pytest.mark.parametrize("name", ["vicuna_v1", "llama_2", "chatml"])
def test_batch_encoding_gives_each_item_its_own_encoding_or_error(tok, name):
    """One tokenizer call for many records must give what one call per record gives, and a bad record its own error
    in its own place, leaving its neighbours encoded."""
    limit = len(MultimodalProcessor(tok, name, num_image_tokens=4).encode(CONV, 1).input_ids)
    proc = MultimodalProcessor(tok, name, num_image_tokens=4, max_length=limit)
    long = [{"from": "human", "value": "<image>\n" + "word " * limit}, {"from": "gpt", "value": "x"}]
    convs = [CONV, [{"from": "robot", "value": "x"}], CONV[:2], long, CONV[2:]]
    images = [1, 1, 1, 1, 0]
    out = proc.encode_many(convs, images)
    assert out[0] == proc.encode(CONV, 1) and out[2] == proc.encode(CONV[:2], 1) and out[4] == proc.encode(CONV[2:], 0)
    assert isinstance(out[1], ValueError) and "unknown role" in str(out[1])
    assert isinstance(out[3], OverLength)
    questions = [CONV[0]["value"], "Is it left?", "<image>\n" + "word " * limit]
    prompts = proc.encode_prompts(questions, num_images=None)
    assert prompts[:2] == [proc.encode_prompt(q) for q in questions[:2]] and isinstance(prompts[2], OverLength)


def test_registry_lists_templates():
    assert {"vicuna_v1", "llama_2", "chatml"} <= set(TEMPLATES.names())
    with pytest.raises(KeyError, match="valid names"):
        TEMPLATES["vicuna"]


def test_a_word_tokenizer_keeps_each_role_marker_one_id(tmp_path):
    from connectorlab.language.templates import VICUNA_ROLES
    from connectorlab.model.tiny import make_word_tokenizer

    words = ["What", "is", "it", "?", "red", "USER", ":", "ASSISTANT"]
    split, whole = (make_word_tokenizer(tmp_path / name, words, **kw) for name, kw in
                    (("split", {}), ("whole", {"whole": VICUNA_ROLES})))
    conv = [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "red"}]
    a, b = (MultimodalProcessor(t, "plain_v1", num_image_tokens=4).encode(conv) for t in (split, whole))
    assert len(a.input_ids) - len(b.input_ids) == 2  # "USER" ":" and "ASSISTANT" ":" each one id
    assert [whole.convert_ids_to_tokens(i) for i in b.input_ids if whole.convert_ids_to_tokens(i) in VICUNA_ROLES] \
        == list(VICUNA_ROLES)
    assert [t for t, lab in zip(b.input_ids, b.labels, strict=True) if lab != IGNORE_INDEX] == \
        [t for t, lab in zip(a.input_ids, a.labels, strict=True) if lab != IGNORE_INDEX]  # the answer as before
    assert whole.decode(whole("red is it", add_special_tokens=False).input_ids) == "red is it"
