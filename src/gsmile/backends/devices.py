"""Where a local model runs and in which precision: the ``device`` and ``dtype`` choices of
:class:`~gsmile.backends.local.HFCausalLM`, checked once here for the library, the CLI
(``--device``, ``--dtype``) and the server (``GSMILE_DEVICE``, ``GSMILE_DTYPE``).

device:
    ``auto`` (default): the first CUDA GPU when torch sees one, else Apple's ``mps`` when
    available, else ``cpu``; ``cpu``; ``cuda`` (= ``cuda:0``) or ``cuda:N``; ``mps``;
    ``auto-map``: the model's layers spread over every visible GPU (and the CPU when they
    do not hold it) by accelerate's ``device_map="auto"``, for a model larger than one GPU.
dtype:
    ``float32`` (default, on every device), ``bfloat16`` or ``float16``. ``float16`` is
    refused on the CPU: torch runs half precision there slowly and it overflows where
    bfloat16 does not; use bfloat16 (or float32) on a CPU.

Checking a name needs no torch (:func:`check_device`, :func:`check_dtype`); whether the
device is present does (:func:`resolve_device`), and is asked before any weights load.
"""

from __future__ import annotations

import re

from ..errors import InvalidInputError

#: Device names accepted (``cuda:N`` stands for any GPU index).
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps", "auto-map")
#: Precisions accepted; the first is the default.
DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_DEVICE = "auto"
DEFAULT_DTYPE = "float32"

_CUDA_N = re.compile(r"cuda:(\d+)")


def check_device(device: object) -> str:
    """``device`` as one of :data:`DEVICES` (``cuda`` stays ``cuda``; None is the default),
    or InvalidInputError listing the choices. Whether it is present is not checked."""
    if device is None:
        return DEFAULT_DEVICE
    name = device.strip().lower() if isinstance(device, str) else device
    if isinstance(name, str) and (name in DEVICES and name != "cuda:N" or _CUDA_N.fullmatch(name)):
        return name
    raise InvalidInputError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}", field="device")


def check_dtype(dtype: object) -> str:
    """``dtype`` as one of :data:`DTYPES` (None is the default), or InvalidInputError listing them."""
    if dtype is None:
        return DEFAULT_DTYPE
    name = dtype.strip().lower() if isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}", field="dtype")
    return name


def available_devices() -> list[str]:
    """The devices torch can use here: cpu, each CUDA GPU (cuda:N), mps."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available(torch):
        found.append("mps")
    return found


def resolve_device(device: object = None, dtype: object = None) -> tuple[str, str]:
    """(device, dtype) to load a model with: ``auto`` made concrete (``cuda:0``, ``mps`` or
    ``cpu``), ``cuda`` made ``cuda:0``, ``auto-map`` kept; InvalidInputError naming what is
    available when the device is not present, or when float16 is asked for on the CPU."""
    name, precision = check_device(device), check_dtype(dtype)
    here = available_devices()
    gpus = [d for d in here if d.startswith("cuda:")]
    if name == "auto":
        name = gpus[0] if gpus else "mps" if "mps" in here else "cpu"
    elif name == "cuda":
        name = "cuda:0"
    if (not gpus) if name == "auto-map" else name not in here:
        import torch

        build = "" if torch.version.cuda or name == "mps" else f" (torch {torch.__version__} is built without CUDA)"
        what = "needs a CUDA GPU, and none is" if name == "auto-map" else "is not"
        raise InvalidInputError(f"device {device!r} {what} available here{build}; available: {', '.join(['auto', *here])}",
                                field="device")
    if precision == "float16" and name == "cpu":
        chosen = " (auto chose it: no GPU here)" if check_device(device) == "auto" else ""
        raise InvalidInputError(f"dtype float16 is not supported on the cpu{chosen}: torch runs half precision there slowly "
                                "and it overflows where bfloat16 does not; use float32 or bfloat16 on a CPU", field="dtype")
    return name, precision


def cpu_has_fast_bfloat16() -> bool | None:
    """Whether this CPU has bfloat16 matrix instructions (AVX-512 BF16 or AMX), without which
    torch emulates bfloat16 and runs it slower than float32; None when torch cannot tell."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these queries
        return None


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
