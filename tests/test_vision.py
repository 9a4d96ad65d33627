import pytest
import torch
from PIL import Image

from connectorlab.vision.tower import VisionTower
from connectorlab.vision.transforms import ImageTransform


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("size", [32, 48, 64])
def test_tower_runs_at_three_resolutions(tiny_dir, kind, size):
    tower = VisionTower.from_pretrained(tiny_dir / kind, image_size=size)
    g = size // 8
    assert tower.grid == (g, g)
    feats, levels = tower(torch.randn(2, 3, size, size))
    assert feats.shape == (2, g * g, 32)  # CLS dropped for CLIP; SigLIP has none
    assert levels is None
    assert not any(p.requires_grad for p in tower.parameters())


def test_default_layer_is_second_to_last_without_cls(tiny_dir):
    tower = VisionTower.from_pretrained(tiny_dir / "clip")
    x = torch.randn(1, 3, 32, 32)
    feats, _ = tower(x)
    ref = tower.model(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(feats, ref)


def test_resized_tower_matches_transformers_interpolation(tiny_dir):
    """Resizing the table once equals transformers' on-the-fly bicubic interpolation."""
    native = VisionTower.from_pretrained(tiny_dir / "siglip")
    resized = VisionTower.from_pretrained(tiny_dir / "siglip", image_size=48)
    x = torch.randn(1, 3, 48, 48)
    ref = native.model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states[-2]
    torch.testing.assert_close(resized(x)[0], ref, rtol=1e-4, atol=1e-4)


def test_resized_tower_saves_and_reloads_at_new_size(tiny_dir, tmp_path):
    tower = VisionTower.from_pretrained(tiny_dir / "clip", image_size=48)
    tower.model.save_pretrained(tmp_path / "t")
    again = VisionTower.from_pretrained(tmp_path / "t")
    assert again.image_size == 48
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(tower(x)[0], again(x)[0])


def test_size_not_multiple_of_patch_raises(tiny_dir):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        VisionTower.from_pretrained(tiny_dir / "clip", image_size=50)


def test_wrong_image_size_raises(tiny_dir):
    tower = VisionTower.from_pretrained(tiny_dir / "clip")
    with pytest.raises(ValueError, match="expects 32x32"):
        tower(torch.randn(1, 3, 48, 48))


def test_multi_level_features(tiny_dir):
    tower = VisionTower.from_pretrained(tiny_dir / "clip", feature_levels=4)
    assert tower.level_layers == [2, 3, 4, 4]  # 1/2, 2/3, 11/12, 23/24 of 4 layers, rounded
    feats, levels = tower(torch.randn(1, 3, 32, 32))
    assert levels.shape == (1, 16, 4 * 32)


def test_unfrozen_tower_gets_gradients(tiny_dir):
    tower = VisionTower.from_pretrained(tiny_dir / "clip", frozen=False)
    tower(torch.randn(1, 3, 32, 32))[0].sum().backward()
    assert tower.model.get_input_embeddings().weight.grad is not None


@pytest.mark.parametrize("mode", ["pad", "resize", "crop"])
def test_image_transform_modes(mode):
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    out = ImageTransform(32, mode)(image)
    assert out.shape == (3, 32, 32)
    red = (1.0 - 0.48145466) / 0.26862954
    if mode == "pad":  # LLaVA pads with the mean colour: zero after normalisation
        assert abs(out[0, 0, 0].item()) < 0.02 and abs(out[0, 16, 16].item() - red) < 1e-3
    else:
        assert abs(out[0, 0, 0].item() - red) < 1e-3
