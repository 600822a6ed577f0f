"""``diffusers:PATH``: a diffusers text-to-image pipeline saved in a local directory.

Loaded with ``local_files_only=True`` (nothing is downloaded) on first use, once per
process and placement. Every prompt of a call gets its own ``torch.Generator`` seeded with
the same seed, so its image depends on its prompt and the seed only, never on the other
prompts of the batch. Generated images are kept on disk (:class:`~.images.ImageStore`) by
(pipeline directory, generation settings, prompt, seed) unless ``use_cache=False``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidInputError, ModelError
from .images import ImageStore, check_images


class DiffusersModel:
    """A diffusers pipeline as an :class:`~.protocols.ImageModel`.

    path: the pipeline's directory (``save_pretrained``; a ``model_index.json`` in it).
    device, dtype: where it runs (see :mod:`.devices`; default auto and float32).
    steps: denoising steps (None: the pipeline's default).
    guidance_scale: classifier-free guidance (None: the pipeline's default).
    size: ``(width, height)`` of the images (None: the pipeline's default).
    cache_dir, use_cache: where generated images are kept (default: gsmile's cache).
    """

    def __init__(self, path: str, *, device: str | None = None, dtype: str | None = None, steps: int | None = None,
                 guidance_scale: float | None = None, size: tuple[int, int] | None = None,
                 cache_dir: str | None = None, use_cache: bool = True):
        self.path = str(path)
        self.device, self.dtype = device, dtype
        self.steps, self.guidance_scale, self.size = steps, guidance_scale, size
        self.cache_dir, self.use_cache = cache_dir, use_cache
        self.model_id = f"diffusers:{self.path}"
        self._lock = threading.Lock()
        self._pipe = None
        self._store: ImageStore | None = None

    def validate(self) -> "DiffusersModel":
        """Refuse a directory that holds no pipeline (before anything is loaded)."""
        root = Path(self.path).expanduser()
        if not root.is_dir():
            raise InvalidInputError(f"--model diffusers:{self.path}: no such directory", field="model")
        if not (root / "model_index.json").is_file():
            raise InvalidInputError(f"--model diffusers:{self.path}: no diffusers pipeline there (model_index.json is missing; "
                                    "save one with pipeline.save_pretrained(PATH))", field="model")
        if self.steps is not None and (isinstance(self.steps, bool) or int(self.steps) < 1):
            raise InvalidInputError(f"image steps must be a positive integer; got {self.steps!r}", field="image_steps")
        return self

    def settings(self) -> dict[str, Any]:
        """The generation settings that determine an image (the disk cache key, the JSON)."""
        return {"steps": self.steps, "guidance_scale": self.guidance_scale,
                "size": list(self.size) if self.size else None, "dtype": self.dtype or "float32"}

    def load(self):
        with self._lock:
            if self._pipe is None:
                self.validate()
                from .devices import resolve_device

                try:
                    import torch
                    from diffusers import DiffusionPipeline
                    from diffusers.utils import logging as df_logging
                except ImportError:
                    raise InvalidInputError("--model diffusers:PATH needs the diffusers package: pip install 'gsmile[images]'", field="model") from None
                device, dtype = resolve_device(self.device, self.dtype)
                df_logging.set_verbosity_error()
                try:
                    pipe = DiffusionPipeline.from_pretrained(self.path, local_files_only=True, torch_dtype=getattr(torch, dtype))
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise ModelError(f"the diffusers pipeline in {self.path} could not be loaded: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
                if device != "auto-map":
                    pipe = pipe.to(device)
                pipe.set_progress_bar_config(disable=True)
                self._torch, self._device = torch, device if device != "auto-map" else "cpu"
                if self.use_cache:
                    from .cache import CallCache

                    self._store = ImageStore(CallCache(self.cache_dir), {"model": self.model_id, **self.settings()})
                self._pipe = pipe
        return self._pipe

    def _generate(self, prompts: list[str], seed: int) -> list:
        pipe, torch = self.load(), self._torch
        kwargs: dict[str, Any] = {"output_type": "pil"}
        if self.steps is not None:
            kwargs["num_inference_steps"] = int(self.steps)
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = float(self.guidance_scale)
        if self.size is not None:
            kwargs["width"], kwargs["height"] = int(self.size[0]), int(self.size[1])
        generators = [torch.Generator(device=self._device).manual_seed(int(seed)) for _ in prompts]
        try:
            with torch.inference_mode():
                out = pipe(prompt=list(prompts), generator=generators, **kwargs)
        except Exception as exc:
            from ..errors import is_out_of_memory

            if is_out_of_memory(exc):
                raise
            raise ModelError(f"the diffusers pipeline failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc
        return check_images(out.images, len(prompts), "the diffusers pipeline")

    def generate_images(self, prompts: Sequence[str], seed: int) -> list:
        prompts = list(prompts)
        self.load()
        if self._store is None:
            return self._generate(prompts, seed)
        images, _ = self._store.generate(prompts, seed, lambda todo: self._generate(todo, seed))
        return images

    def explanation_extras(self) -> dict[str, Any]:
        return {"generation": self.settings()}
