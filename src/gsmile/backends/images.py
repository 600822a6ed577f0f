"""Text-to-image models: how gsmile reaches them and scores one explanation's prompts.

A text-to-image model is an :class:`~.protocols.ImageModel`: ``generate_images(prompts,
seed)`` gives one PIL image per prompt, all from the same seed. Three are built in:

* :class:`ImageFunction`: any Python function ``list[str] -> list[PIL.Image]``; when it has a
  parameter named ``seed``, gsmile passes each image seed to it (otherwise it must be
  deterministic, and only one image per prompt can be asked of it);
* ``diffusers:PATH`` (:class:`~.diffusion.DiffusersModel`): a diffusers text-to-image
  pipeline saved in a local directory;
* ``openai-images:NAME`` (:class:`~.images_api.ImagesAPIBackend`): an OpenAI-compatible
  ``/v1/images/generations`` endpoint.

:class:`ImageDistanceModel` is one explanation's view of a shared image model, as
:class:`~.text.TextModel` is for a text model: a scalar black box whose value for a prompt
is minus the distance (:class:`~gsmile.targets.images.ImageTarget`) between that prompt's
images and the original prompt's, generated from the same seeds (common random numbers),
so the original prompt scores 0 and the distance measures the prompt's effect, not noise.

Generated images can be kept on disk by (model, generation settings, prompt, seed)
(:class:`ImageStore`), so a rerun or a resumed run generates nothing twice.
"""

from __future__ import annotations

import base64
import copy
import inspect
import io
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InvalidInputError, ModelError
from .protocols import ImageModel, ReportsExtras, ScalarModel


def encode_png(image, max_side: int | None = None) -> str:
    """A PIL image as base64 PNG (lossless: the decoded pixels are the same), shrunk to
    ``max_side`` pixels on its longer side when given."""
    from PIL import Image

    image = image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str):
    """A PIL image (RGB) from base64 image data (PNG, JPEG, ...)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
    except (ValueError, UnidentifiedImageError, OSError) as exc:
        raise ModelError(f"an image could not be decoded ({type(exc).__name__})") from None
    return image.convert("RGB")


def check_images(out, n: int, who: str = "the image model") -> list:
    """``out`` as a list of ``n`` PIL images, or a ModelError saying what is wrong."""
    from PIL import Image

    if isinstance(out, Image.Image):
        out = [out]
    try:
        out = list(out)
    except TypeError:
        raise ModelError(f"{who} must return a list of PIL images, one per prompt; got {type(out).__name__}") from None
    if len(out) != n:
        raise ModelError(f"{who} returned {len(out)} images for {n} prompts")
    bad = [type(im).__name__ for im in out if not isinstance(im, Image.Image)]
    if bad:
        raise ModelError(f"{who} must return PIL images; got {bad[0]}")
    return out


def takes_seed(func: Callable) -> bool:
    """Whether ``func`` declares a parameter named ``seed`` (then gsmile passes the seed)."""
    try:
        return "seed" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


class ImageFunction:
    """A Python function as a text-to-image model: ``func(prompts)`` or ``func(prompts,
    seed=S)`` returning one PIL image per prompt. Stateless: safe to share when ``func`` is."""

    def __init__(self, func: Callable[..., Sequence[Any]], model_id: str | None = None):
        self.func = func
        self.model_id = model_id or f"callable:{getattr(func, '__qualname__', type(func).__name__)}"
        self.seeded = takes_seed(func)

    def generate_images(self, prompts: Sequence[str], seed: int) -> list:
        try:
            out = self.func(list(prompts), seed=int(seed)) if self.seeded else self.func(list(prompts))
        except ModelError:
            raise
        except Exception as exc:  # the user's function failed; say so without our traceback
            raise ModelError(f"the image function raised {type(exc).__name__}: {exc}") from exc
        return check_images(out, len(prompts), "the image function")


class ImageStore:
    """Images on disk by (model, generation settings, prompt, seed): a
    :class:`~.cache.CallCache` whose answers are base64 PNG. Written as each image arrives,
    so a killed run keeps every image generated before it died."""

    def __init__(self, cache, model_key: dict[str, Any]):
        self.cache = cache
        self.model_key = dict(model_key)

    def key(self, prompt: str, seed: int) -> str:
        from .cache import call_key

        return call_key({"kind": "image", **self.model_key, "prompt": prompt, "seed": int(seed)})

    def get(self, prompt: str, seed: int):
        answer = self.cache.get(self.key(prompt, seed))
        return None if answer is None else decode_png(answer["png"])

    def put(self, prompt: str, seed: int, image) -> None:
        self.cache.put(self.key(prompt, seed), {"png": encode_png(image)})

    def generate(self, prompts: Sequence[str], seed: int, make: Callable[[list[str]], list]) -> tuple[list, int]:
        """Images of ``prompts`` from the store, ``make`` called on the missing ones (each kept
        as soon as the call returns); also how many were generated."""
        out: list = [self.get(p, seed) for p in prompts]
        todo = [i for i, im in enumerate(out) if im is None]
        if todo:
            made = make([prompts[i] for i in todo])
            for i, image in zip(todo, made):
                self.put(prompts[i], seed, image)
                out[i] = image
        return out, len(todo)


class ImageDistanceModel(ScalarModel):
    """One explanation's view of a shared :class:`ImageModel`: the value of a prompt is minus
    the distance of its images from the original prompt's (same seeds).

    source: the image model (shared; never changed).
    target: an :class:`~gsmile.targets.images.ImageTarget` (this object's own copy is prepared).
    seeds: the image seeds; K seeds give K images per prompt (a distribution).
    """

    default_batch_size = 4
    progress_unit = "image"

    def __init__(self, source: ImageModel, target, seeds: Sequence[int]):
        super().__init__(source.generate_images, model_id=source.model_id)
        self.source = source
        self.target = target
        self.seeds = [int(s) for s in seeds]
        self.outputs_per_input = len(self.seeds)
        self.target_name = target.name

    def images(self, prompts: Sequence[str]) -> list[list]:
        """Each prompt's images, one per seed (in seed order)."""
        prompts = list(prompts)
        per_seed = [check_images(self.source.generate_images(prompts, seed), len(prompts)) for seed in self.seeds]
        return [[per_seed[s][i] for s in range(len(self.seeds))] for i in range(len(prompts))]

    def with_reference(self, prompt: str) -> "ImageDistanceModel":
        """A copy bound to the original prompt: its images (``reference_images_``) and a
        target prepared on them."""
        bound = copy.copy(self)
        bound.reference_images_ = self.images([prompt])[0]
        bound.target = copy.copy(self.target).prepare(bound.reference_images_)
        bound.prompt_ = prompt
        return bound

    def _call(self, prompts: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "reference_images_"):
            raise ModelError("ImageDistanceModel.with_reference must be called before scoring")
        return -self.target.shift(self.images(prompts))

    def explanation_extras(self) -> dict:
        return self.source.explanation_extras() if isinstance(self.source, ReportsExtras) else {}


def image_route_model(source: ImageModel, prompt: str, *, image_seeds: int = 1, embedder=None) -> ImageDistanceModel:
    """The per-explanation model of ``source`` for ``prompt``: K = ``image_seeds`` images per
    prompt from seeds 0..K-1, compared with ``embedder`` (see :mod:`gsmile.targets.images`)."""
    from ..targets.images import ImageTarget, make_image_distance

    k = check_image_seeds(image_seeds)
    if k > 1 and isinstance(source, ImageFunction) and not source.seeded:
        raise InvalidInputError(f"image_seeds={k} needs an image function that takes a seed (def f(prompts, seed)); "
                                "this one does not, so it can give only one image per prompt", field="image_seeds")
    target = ImageTarget(make_image_distance(embedder))
    return ImageDistanceModel(source, target, range(k)).with_reference(prompt)


#: most images per prompt (--image-seeds): each one is a generation for every perturbation.
MAX_IMAGE_SEEDS = 64


def check_image_seeds(image_seeds) -> int:
    if isinstance(image_seeds, bool) or not isinstance(image_seeds, (int, np.integer)) or not 1 <= int(image_seeds) <= MAX_IMAGE_SEEDS:
        raise InvalidInputError(f"image_seeds must be an integer from 1 to {MAX_IMAGE_SEEDS}; got {image_seeds!r}", field="image_seeds")
    return int(image_seeds)
