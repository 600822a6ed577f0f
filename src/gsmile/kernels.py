"""Proximity kernels: weight each sampled mask by how close it is to the original input."""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidInputError


def default_sigma(n_units: int) -> float:
    """gSMILE's default kernel width, 0.5 * sqrt(N)."""
    return 0.5 * math.sqrt(n_units)


class GaussianKernel:
    """w = exp(-d^2 / sigma^2), d = Hamming distance to the all-kept mask (units dropped).

    ``sigma=None`` uses :func:`default_sigma`.
    """

    name = "gaussian"

    def __init__(self, sigma: float | None = None):
        self.sigma = sigma

    def width(self, n_units: int) -> float:
        if self.sigma is None:
            return default_sigma(n_units)
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise InvalidInputError(f"sigma must be a positive number, got {self.sigma!r}")
        return float(self.sigma)

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
