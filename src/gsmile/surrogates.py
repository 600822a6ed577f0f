"""Surrogate models fitted on (masks, values, weights). Each has ``fit(Z, y, sample_weight)``
and exposes ``coef_``, ``intercept_`` and ``r2_`` (weighted R²) afterwards.

``y`` may be a vector (one explained value) or a matrix with one column per output
(for instance one per response token); all columns share one solve.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError


def weighted_r2(y: np.ndarray, y_hat: np.ndarray, w: np.ndarray) -> np.ndarray | float:
    """Weighted coefficient of determination, per column; NaN where y is constant."""
    y = np.asarray(y, dtype=float)
    y_hat = np.asarray(y_hat, dtype=float)
    w = np.asarray(w, dtype=float)
    wcol = w[:, None] if y.ndim == 2 else w
    mean = np.sum(wcol * y, axis=0) / np.sum(w)
    ss_res = np.sum(wcol * (y - y_hat) ** 2, axis=0)
    ss_tot = np.sum(wcol * (y - mean) ** 2, axis=0)
    scale = np.maximum(np.sum(wcol * y**2, axis=0), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 1e-12 * scale, 1.0 - ss_res / ss_tot, np.nan)
    return float(r2) if np.ndim(r2) == 0 else r2


def _check(Z, y, sample_weight):
    Z = np.asarray(Z, dtype=float)
    y = np.asarray(y, dtype=float)
    if Z.ndim != 2 or y.shape[:1] != Z.shape[:1]:
        raise InvalidInputError(f"Z has shape {Z.shape} but y has shape {y.shape}")
    w = np.ones(len(Z)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if w.shape != (len(Z),) or np.any(w < 0) or not np.any(w > 0):
        raise InvalidInputError("sample_weight must be non-negative, one per row, not all zero")
    return Z, y, w


class WeightedLinearRegression:
    """Weighted least squares with an intercept, optionally ridge-penalized (``alpha``).

    The intercept is never penalized. With ``alpha=0`` a rank-deficient design gets the
    minimum-norm solution.
    """

    name = "wls"

    def __init__(self, alpha: float = 0.0, fit_intercept: bool = True):
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def fit(self, Z, y, sample_weight=None) -> "WeightedLinearRegression":
        Z, y, w = _check(Z, y, sample_weight)
        n, p = Z.shape
        X = np.hstack([np.ones((n, 1)), Z]) if self.fit_intercept else Z
        sw = np.sqrt(w)
        A = X * sw[:, None]
        b = y * (sw[:, None] if y.ndim == 2 else sw)
        if self.alpha > 0:
            penalty = np.sqrt(self.alpha) * np.eye(X.shape[1])
            if self.fit_intercept:
                penalty = penalty[1:]
            A = np.vstack([A, penalty])
            b = np.concatenate([b, np.zeros((penalty.shape[0],) + b.shape[1:])])
        beta, *_ = np.linalg.lstsq(A, b, rcond=None)
        if self.fit_intercept:
            self.intercept_, self.coef_ = beta[0], beta[1:]
            # A constant output has nothing to attribute: exact zeros, not rounding noise.
            constant = np.ptp(y, axis=0) <= 1e-12 * np.maximum(np.abs(y).max(axis=0), 1.0)
            if np.any(constant):
                self.coef_ = np.where(constant, 0.0, self.coef_)
                self.intercept_ = np.where(constant, y[0], self.intercept_)
                if np.ndim(self.intercept_) == 0:
                    self.intercept_ = float(self.intercept_)
        else:
            self.intercept_, self.coef_ = np.zeros(beta.shape[1:]) if beta.ndim == 2 else 0.0, beta
        self.r2_ = weighted_r2(y, self.predict(Z), w)
        return self

    def predict(self, Z) -> np.ndarray:
        return np.asarray(Z, dtype=float) @ self.coef_ + self.intercept_
