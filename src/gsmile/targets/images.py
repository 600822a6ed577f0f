"""Distances between images, and between the image distributions of two prompts.

An :class:`ImageDistance` turns images into features (:meth:`~ImageDistance.features`) and
gives the cost between two sets of features (:meth:`~ImageDistance.cost`, a matrix). It is
stateless once loaded, so one object serves every explanation at once.

:class:`ImageTarget` holds one explanation's reference: the original prompt's images, one
per seed. A perturbed prompt's images (generated from the same seeds) are compared with
them: with one seed, the plain distance between the two images; with K seeds, the
Wasserstein-1 distance between the two empirical distributions of K images, the exact
optimal transport on the K × K cost matrix (POT's ``emd2``), which is gSMILE's own
definition of how far an output distribution moves.

Distances (``embedder=``):

* ``pixel``: root-mean-square difference of the images resized to 64 × 64 RGB, in [0, 1].
  Needs no weights: the fallback when no embedding model is at hand. It measures how the
  picture changed, not what it shows.
* ``clip:PATH``: ``1 − cos`` between CLIP image embeddings, in [0, 2], from a CLIP model
  saved in a local directory (transformers' ``CLIPModel``; never downloaded).
* ``lpips``: the LPIPS perceptual distance (the ``lpips`` package, AlexNet), when that
  package and its weights are installed.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InvalidInputError, ModelError

#: Side of the square the pixel distance compares images at.
PIXEL_SIDE = 64


class ImageDistance:
    """Features of images and the cost between two sets of them."""

    name = "image"
    #: The range of one distance, for the docs and the insights.
    scale = "[0, 1]"

    def features(self, images: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    def cost(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(len(a), len(b))`` distances between the rows of two feature arrays."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def _rgb(image, side: int | None = None) -> np.ndarray:
    """An image as float RGB in [0, 1], resized to ``side`` × ``side`` when given."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise ModelError(f"the image model returned {type(image).__name__} where a PIL image was expected")
    image = image.convert("RGB")
    if side is not None and image.size != (side, side):
        image = image.resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float64) / 255.0


class PixelDistance(ImageDistance):
    """Root-mean-square difference of the images at 64 × 64 RGB, in [0, 1]."""

    name = "pixel"

    def features(self, images):
        return np.stack([_rgb(im, PIXEL_SIDE).reshape(-1) for im in images])

    def cost(self, a, b):
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        # Directly, not through |a|² + |b|² − 2ab: identical images are at distance 0 exactly.
        return np.sqrt(np.array([[np.mean((x - y) ** 2) for y in b] for x in a]))


class CLIPDistance(ImageDistance):
    """``1 − cos`` between the CLIP image embeddings of a local CLIP model, in [0, 2]."""

    name = "clip"
    scale = "[0, 2]"

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._model = None

    def describe(self) -> str:
        return f"clip:{self.path}"

    def load(self):
        with self._lock:
            if self._model is None:
                from pathlib import Path

                if not Path(self.path).expanduser().is_dir():
                    raise InvalidInputError(f"--embedder clip:{self.path}: no such directory (give a CLIP model saved with save_pretrained)", field="embedder")
                try:
                    import torch
                    from transformers import CLIPImageProcessorPil, CLIPModel
                    from transformers.utils import logging as hf_logging

                    hf_logging.set_verbosity_error()
                    model = CLIPModel.from_pretrained(self.path, local_files_only=True).eval()
                    try:
                        processor = CLIPImageProcessorPil.from_pretrained(self.path, local_files_only=True)
                    except (OSError, ValueError):
                        side = int(model.config.vision_config.image_size)
                        processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
                except (OSError, ValueError, KeyError) as exc:
                    raise InvalidInputError(f"--embedder clip:{self.path}: cannot load a CLIP model there ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                                            field="embedder") from None
                self._torch, self._processor, self._model = torch, processor, model
        return self._model

    def features(self, images):
        model = self.load()
        torch = self._torch
        for im in images:
            _rgb(im, 1)  # the type check
        rows = []
        # One image per forward pass: in a batch, an image's embedding depends on the batch's
        # size in its last bits (about 1e-7 in float32), so the same image would not be at
        # distance 0 from itself, and the batch size would change the explanation.
        for im in images:
            pixels = self._processor(images=[im.convert("RGB")], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                out = model.get_image_features(pixel_values=pixels.to(model.dtype))
                emb = out if isinstance(out, torch.Tensor) else out.pooler_output
            rows.append(emb.double().numpy()[0])
        emb = np.stack(rows)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def cost(self, a, b):
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        # |x − y|² / 2 = 1 − cos for unit vectors, computed directly (not as 1 − x·y, which
        # leaves ~1e-16 between a vector and itself): identical images are at distance 0 exactly.
        return np.clip(0.5 * np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1), 0.0, 2.0)


class LPIPSDistance(ImageDistance):
    """The LPIPS perceptual distance (``lpips`` package, AlexNet backbone), pairwise."""

    name = "lpips"
    scale = "[0, ~1]"

    def __init__(self):
        self._lock = threading.Lock()
        self._net = None

    def load(self):
        with self._lock:
            if self._net is None:
                try:
                    import lpips  # noqa: F401  (optional; needs torchvision and its AlexNet weights)
                    import torch

                    net = lpips.LPIPS(net="alex", verbose=False).eval()
                except Exception as exc:  # not installed, or its weights cannot be read offline
                    raise InvalidInputError(
                        "--embedder lpips needs the lpips package and torchvision with AlexNet's weights already in the torch "
                        f"cache (nothing is downloaded); it could not be loaded: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}. "
                        "Use --embedder pixel or --embedder clip:PATH", field="embedder") from None
                self._torch, self._net = torch, net
        return self._net

    def features(self, images):
        self.load()
        return np.stack([_rgb(im, PIXEL_SIDE) for im in images])

    def cost(self, a, b):
        net, torch = self.load(), self._torch

        def tensor(x):
            return torch.from_numpy(np.asarray(x, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1

        ta, tb = tensor(a), tensor(b)
        out = np.zeros((len(ta), len(tb)))
        with torch.inference_mode():
            for i in range(len(ta)):
                out[i] = net(ta[i : i + 1].expand(len(tb), -1, -1, -1), tb).reshape(-1).double().numpy()
        return out


_clip_models: dict[str, CLIPDistance] = {}
_clip_lock = threading.Lock()

#: distance names -> factory of the argument after "name:" (None when none is given).
IMAGE_DISTANCES: dict[str, Callable[[str | None], ImageDistance]] = {
    "pixel": lambda arg: PixelDistance(),
    "clip": lambda arg: _clip(arg),
    "lpips": lambda arg: LPIPSDistance(),
}
#: how each is written on the command line (help and errors).
IMAGE_DISTANCE_SYNTAX = {"pixel": "pixel", "clip": "clip:PATH", "lpips": "lpips"}
DEFAULT_IMAGE_DISTANCE = "pixel"


def _clip(path: str | None) -> CLIPDistance:
    if not path:
        raise InvalidInputError("--embedder clip needs the CLIP model's directory: clip:PATH", field="embedder")
    with _clip_lock:  # one loaded CLIP model per path and process
        if path not in _clip_models:
            _clip_models[path] = CLIPDistance(path)
        return _clip_models[path]


def make_image_distance(spec: str | ImageDistance | None) -> ImageDistance:
    """An image distance from its name ("pixel", "clip:PATH", "lpips"), or a given object."""
    if isinstance(spec, ImageDistance):
        return spec
    spec = DEFAULT_IMAGE_DISTANCE if spec is None else str(spec)
    name, _, arg = spec.partition(":")
    if name not in IMAGE_DISTANCES:
        raise InvalidInputError(f"unknown embedder {spec!r}; choose {', '.join(IMAGE_DISTANCE_SYNTAX.values())}", field="embedder")
    if name != "clip" and arg:
        raise InvalidInputError(f"embedder {name!r} takes no argument; got {spec!r}", field="embedder")
    return IMAGE_DISTANCES[name](arg or None)


def wasserstein_between_sets(cost: np.ndarray) -> float:
    """W1 between two uniform empirical distributions given their cost matrix (exact OT)."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.shape == (1, 1):
        return float(cost[0, 0])
    import ot

    a = np.full(cost.shape[0], 1.0 / cost.shape[0])
    b = np.full(cost.shape[1], 1.0 / cost.shape[1])
    return float(ot.emd2(a, b, np.ascontiguousarray(cost)))


class ImageTarget:
    """One explanation's image reference and the distance of other prompts' images from it.

    distance: an :class:`ImageDistance` (shared; holds no reference).
    :meth:`prepare` records the original prompt's images (one per seed, in seed order);
    :meth:`shift` compares a prompt's images (same seeds) with them: the plain distance for
    one seed, the Wasserstein-1 distance between the two sets of K images otherwise.
    """

    def __init__(self, distance: ImageDistance):
        self.distance = distance

    @property
    def name(self) -> str:
        return f"image-{self.distance.name}"

    def prepare(self, images: Sequence[Any]) -> "ImageTarget":
        self.reference_ = self.distance.features(list(images))
        self.n_images_ = len(images)
        return self

    def shift(self, image_sets: Sequence[Sequence[Any]]) -> np.ndarray:
        """One distance per prompt, given each prompt's images (one per seed)."""
        flat = [im for images in image_sets for im in images]
        if not flat:
            return np.zeros(0)
        feats = self.distance.features(flat)
        out, k = np.zeros(len(image_sets)), self.n_images_
        for i in range(len(image_sets)):
            out[i] = wasserstein_between_sets(self.distance.cost(feats[i * k : (i + 1) * k], self.reference_))
        return out

    def describe(self) -> str:
        return self.distance.describe()
