"""Proximity kernels: weight each sampled mask by how close it is to the original input."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import InvalidInputError


@runtime_checkable
class Kernel(Protocol):
    """What a method's kernel provides: ``kernel(masks)`` gives one weight per mask;
    ``validate()`` checks the parameters (raises InvalidInputError naming the option in
    ``field``); ``width(n_units)`` is the Gaussian width reported as the explanation's
    ``sigma``, None for a kernel without one."""

    def __call__(self, masks: np.ndarray) -> np.ndarray: ...

    def validate(self) -> None: ...

    def width(self, n_units: int) -> float | None: ...


#: How :func:`default_sigma` chooses the width (recorded in an explanation's params).
DEFAULT_SIGMA_RULE = "max(0.5·sqrt(N), 0.7·dropout·N)"


def default_sigma(n_units: int, dropout: float | None = None) -> float:
    """The default kernel width: gSMILE's 0.5·sqrt(N), widened to 0.7·dropout·N when that is
    larger (N > 12 at the default dropout 0.2).

    A perturbation drops about dropout·N units, so with 0.5·sqrt(N) the typical sample's
    weight falls as exp(-(2·dropout)²·N): at 60 units almost every weight is below e^-9 and
    the fit rests on a handful of samples (effective sample size 8% of them; 1% at 300).
    Keeping the typical distance at about 1.4 widths, as gSMILE's own width does at 12
    units, holds the effective sample size at 45-90% of the samples from 5 to 500 units.
    Up to 12 units (the published recipe's prompts) the width is gSMILE's."""
    width = 0.5 * math.sqrt(n_units)
    if dropout is not None:
        width = max(width, 0.7 * dropout * n_units)
    return width


class GaussianKernel:
    """w = exp(-d^2 / sigma^2), d = Hamming distance to the all-kept mask (units dropped).

    ``sigma=None`` uses :func:`default_sigma` for masks that drop a share ``dropout`` of
    the units (None: gSMILE's 0.5·sqrt(N) whatever the share).
    """

    def __init__(self, sigma: float | None = None, dropout: float | None = None):
        self.sigma = sigma
        self.dropout = dropout

    def width(self, n_units: int) -> float:
        if self.sigma is None:
            return default_sigma(n_units, self.dropout)
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise InvalidInputError(f"sigma must be a positive number, got {self.sigma!r}", field="sigma")
        return float(self.sigma)

    def validate(self) -> None:
        self.width(1)  # raises on a bad sigma (None is fine)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        sigma = self.width(masks.shape[1])
        distance = (~masks).sum(axis=1).astype(float)
        return np.exp(-(distance**2) / sigma**2)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2."""
    weights = np.asarray(weights, dtype=float)
    denom = float(np.sum(weights**2))
    return float(np.sum(weights) ** 2 / denom) if denom > 0 else 0.0


class UniformKernel:
    """Every mask weighs 1 (occlusion, MuPAX)."""

    def validate(self) -> None:
        """Nothing to check: it has no parameters."""

    def width(self, n_units: int) -> None:
        return None

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        return np.ones(np.asarray(masks).shape[0])


def cosine_distance_to_full(masks: np.ndarray) -> np.ndarray:
    """Cosine distance between each mask (as a 0/1 vector) and the all-kept mask:
    ``1 - sqrt(kept / N)``; the empty mask, whose cosine is undefined, is at distance 1."""
    masks = np.asarray(masks, dtype=bool)
    return 1.0 - np.sqrt(masks.sum(axis=1) / masks.shape[1])


class ExponentialCosineKernel:
    """LIME's proximity: w = exp(-d^2 / width^2), d = :func:`cosine_distance_to_full`.

    The default width 0.25 equals LIME's text default (distances scaled by 100, width 25).
    """

    def __init__(self, kernel_width: float = 0.25):
        self.kernel_width = kernel_width

    def validate(self) -> None:
        w = self.kernel_width
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w > 0 and math.isfinite(w)):
            raise InvalidInputError(f"kernel_width must be a positive number, got {w!r}", field="method_options.kernel_width")

    def width(self, n_units: int) -> None:
        return None

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        self.validate()
        d = cosine_distance_to_full(masks)
        return np.exp(-(d**2) / float(self.kernel_width) ** 2)


def shapley_kernel_weight(n_units: int, n_kept: np.ndarray) -> np.ndarray:
    """The Shapley kernel ``(N-1) / (C(N,s) s (N-s))`` for coalitions of size ``s``;
    0 for the empty and the full coalition (their weight is infinite: they enter the
    fit as the efficiency constraint instead)."""
    s = np.asarray(n_kept, dtype=np.int64)
    out = np.zeros(s.shape, dtype=float)
    inner = (s > 0) & (s < n_units)
    comb = np.array([math.comb(n_units, int(k)) for k in s[inner]], dtype=float)
    out[inner] = (n_units - 1) / (comb * s[inner] * (n_units - s[inner]))
    return out


class ShapleyKernel:
    """Shapley-kernel weights per distinct coalition.

    Each distinct mask gets its Shapley-kernel weight once: a mask that appears ``m`` times
    gets ``weight / m`` on each row. So the fit is the Shapley-weighted regression over the
    distinct coalitions evaluated, which is exact (the Shapley values) when every coalition
    is there, and approaches it as more are sampled.
    """

    def validate(self) -> None:
        """Nothing to check: it has no parameters."""

    def width(self, n_units: int) -> None:
        return None

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        _, inverse, counts = np.unique(masks, axis=0, return_inverse=True, return_counts=True)
        multiplicity = counts[inverse.ravel()]
        return shapley_kernel_weight(masks.shape[1], masks.sum(axis=1)) / multiplicity
