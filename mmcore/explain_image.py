"""Image attributions (DESIGN section 6): Grad-CAM, Integrated Gradients, SmoothGrad and Occlusion over a forward
function, and the attribution of the similarity of two image embeddings (why a retrieved case is similar).

Every algorithm returns a (B, H, W) map in [0, 1] at the input's resolution, 1 where it matters most. Captum hooks
modules of a shared model, so `attribute_image` and `similarity_maps` hold a per-model lock (see `explaining`).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency
from torch import nn
from torchvision.transforms.v2 import functional as TF

from mmcore.image_encoders import ImageSpec
from mmcore.model import MultimodalModel

IMAGE_METHODS = ("gradcam", "ig", "smoothgrad", "occlusion")
ImageForward = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) -> (B, C) logits or (B,) scores
Target = int | Sequence[int] | torch.Tensor | None

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The one lock of `model` that every explanation on it holds (re-entrant, created on first use)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Hold the model's lock, in eval mode, with autograd on even inside a caller's inference_mode.

    Captum registers forward hooks on the model's own modules: two threads attributing on one model see each
    other's activations (in a probe, 131 of 200 concurrent Grad-CAM calls on a shared model failed). A forward of
    the same model in another thread also fires the hooks, which is why the Predictor explains on its own copy.
    """
    with model_lock(model):
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                yield
        finally:
            if was_training:
                model.train()


# --- what is explained ------------------------------------------------------------------------------------------


def image_forward(model: MultimodalModel, note_features: torch.Tensor | None = None) -> ImageForward:
    """Images -> the image-only logits, or the fused logits beside one fixed note (its (1, F) features)."""
    if note_features is None:
        return lambda images: model.forward_features(image_features=model.image_encoder(images)).image_logits

    def fused(images: torch.Tensor) -> torch.Tensor:
        features = model.image_encoder(images)  # (B, F_img)
        return model.forward_features(features, note_features.expand(len(features), -1)).fused_logits  # (B, C)

    return fused


def similarity_forward(model: MultimodalModel, other_embeds: torch.Tensor) -> ImageForward:
    """Images -> (B,) cosine similarity of their shared embedding with one fixed embedding (D,) or (1, D)."""
    other = F.normalize(other_embeds.detach().reshape(1, -1), dim=-1)  # (1, D)

    def similarity(images: torch.Tensor) -> torch.Tensor:
        embeds = model.forward_features(image_features=model.image_encoder(images)).image_embeds  # (B, D)
        return (embeds * other).sum(-1)  # (B,)

    return similarity


def image_baseline(images: torch.Tensor, kind: str, spec: ImageSpec) -> torch.Tensor:
    """The reference input of path methods: "black" pixels or a heavily "blur"red copy, in normalised space."""
    if kind == "black":
        mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return ((0.0 - mean) / std).expand_as(images).contiguous()  # (B, 3, H, W)
    if kind == "blur":
        sigma = max(images.shape[-1] / 16, 1.0)
        kernel = min(2 * int(3 * sigma) + 1, 2 * (min(images.shape[-2:]) // 2) - 1)
        return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    raise ValueError(f"baseline must be 'black' or 'blur', got {kind!r}")


# --- the algorithms: one function each ----------------------------------------------------------------------------


def gradcam(forward: ImageForward, layer: nn.Module, images: torch.Tensor, target: Target = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.): ReLU of the gradient-weighted activation map of `layer`, upsampled bilinearly."""
    cam = LayerGradCam(forward, layer).attribute(images, target=target, relu_attributions=True)  # (B, 1, h, w)
    cam = LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")  # (B, 1, H, W)
    return _unit(cam[:, 0].clamp(min=0))


def integrated_gradients(
    forward: ImageForward,
    images: torch.Tensor,
    baselines: torch.Tensor,
    target: Target = None,
    n_steps: int = 32,
    internal_batch_size: int = 16,
) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al.) from `baselines`, the path evaluated in batches."""
    attr = IntegratedGradients(forward).attribute(
        images, baselines=baselines, target=target, n_steps=n_steps, internal_batch_size=internal_batch_size
    )  # (B, 3, H, W)
    return _pixel_map(attr)


def smoothgrad(
    forward: ImageForward,
    images: torch.Tensor,
    target: Target = None,
    nt_samples: int = 16,
    stdev: float = 0.15,
    batch_size: int = 8,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al.): |gradient| averaged over noisy copies, noise sd = `stdev` x the input range."""
    sigma = stdev * float(images.amax() - images.amin())
    attr = NoiseTunnel(Saliency(forward)).attribute(
        images,
        nt_type="smoothgrad",
        nt_samples=nt_samples,
        nt_samples_batch_size=batch_size,
        stdevs=sigma,
        target=target,
        abs=True,
    )  # (B, 3, H, W)
    return _pixel_map(attr)


def occlusion(
    forward: ImageForward,
    images: torch.Tensor,
    target: Target = None,
    window: int = 0,
    stride: int = 0,
    batch_size: int = 16,
) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus): the drop in score when a window is set to the mean colour (0 once normalised)."""
    window = window or max(2, images.shape[-1] // 7)  # 32 px at 224
    stride = stride or max(1, window // 2)
    attr = Occlusion(forward).attribute(
        images,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=0.0,
        target=target,
        perturbations_per_eval=batch_size,
    )  # (B, 3, H, W), the same value in every channel
    return _unit(attr.mean(1).clamp(min=0))


def _unit(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) non-negative -> divided by each map's maximum (all zeros stay zeros)."""
    top = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / top).detach()


def _pixel_map(attr: torch.Tensor, quantile: float = 0.995) -> torch.Tensor:
    """(B, 3, H, W) pixel attributions -> (B, H, W) in [0, 1]: |.| summed over channels, lightly smoothed, clipped
    at a high quantile so that a few extreme pixels do not wash out the map."""
    maps = attr.detach().abs().sum(1, keepdim=True)  # (B, 1, H, W)
    sigma = max(maps.shape[-1] / 112, 1.0)  # 2 px at 224: gradient maps are speckled at pixel scale
    kernel = 2 * int(3 * sigma) + 1
    maps = TF.gaussian_blur(maps, [kernel, kernel], [sigma, sigma])[:, 0]  # (B, H, W)
    top = torch.quantile(maps.flatten(1).float(), quantile, dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / top).clamp(0, 1)


# --- entry points -------------------------------------------------------------------------------------------------


def attribute_image(
    model: MultimodalModel,
    images: torch.Tensor,
    method: str = "gradcam",
    target: Target = None,
    note_features: torch.Tensor | None = None,
    baseline: str = "blur",
    n_steps: int = 32,
    nt_samples: int = 16,
    batch_size: int = 16,
) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, H, W) maps in [0, 1] for class `target` (None: the top class).

    Explains the image-only logits, or the fused logits when `note_features` (1, F_txt) of a note are given.
    """
    if method not in IMAGE_METHODS:
        raise ValueError(f"unknown image explanation {method!r}; choose one of {', '.join(IMAGE_METHODS)}")
    with explaining(model):
        images = images.detach().clone()  # a normal tensor even if made under inference_mode
        forward = image_forward(model, None if note_features is None else note_features.detach().clone())
        if target is None:
            with torch.no_grad():
                target = forward(images).argmax(-1).tolist()
        if method == "gradcam":
            return gradcam(forward, model.image_encoder.gradcam_layer, images, target)
        if method == "ig":
            baselines = image_baseline(images, baseline, model.image_spec)
            return integrated_gradients(forward, images, baselines, target, n_steps, batch_size)
        if method == "smoothgrad":
            return smoothgrad(forward, images, target, nt_samples, batch_size=max(1, batch_size // 2))
        return occlusion(forward, images, target, batch_size=batch_size)


def similarity_maps(
    model: MultimodalModel,
    images: torch.Tensor,
    other_embeds: torch.Tensor,
    method: str = "gradcam",
    baseline: str = "blur",
    n_steps: int = 32,
) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, H, W) maps of what drives the cosine similarity of each with `other_embeds` (D,).

    Explains a retrieval: call it once per side (query image vs the case's embedding, case image vs the query's).
    """
    if method not in ("gradcam", "ig"):
        raise ValueError(f"similarity maps support gradcam and ig, got {method!r}")
    with explaining(model):
        images = images.detach().clone()
        forward = similarity_forward(model, other_embeds.detach().clone())
        if method == "gradcam":
            return gradcam(forward, model.image_encoder.gradcam_layer, images)
        baselines = image_baseline(images, baseline, model.image_spec)
        return integrated_gradients(forward, images, baselines, None, n_steps)
