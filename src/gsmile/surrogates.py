"""Surrogate models fitted on (masks, values, weights). Each has ``fit(Z, y, sample_weight)``
and exposes ``coef_``, ``intercept_`` and ``r2_`` (weighted R²) afterwards.

``y`` may be a vector (one explained value) or a matrix with one column per output
(for instance one per response token); all columns share one solve.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args, runtime_checkable

import numpy as np

from .errors import InvalidInputError


@runtime_checkable
class Surrogate(Protocol):
    """What a method's surrogate provides: ``validate()`` checks the parameters (raises
    InvalidInputError naming the option in ``field``); ``fit(Z, y, sample_weight)`` returns
    the fitted surrogate with ``coef_`` (units × outputs when ``y`` is a matrix),
    ``intercept_`` and ``r2_`` (attributes of the fitted object only)."""

    def validate(self) -> None: ...

    def fit(self, Z, y, sample_weight=None) -> "Surrogate": ...


@runtime_checkable
class SparseSurrogate(Protocol):
    """A surrogate that keeps only some units: after ``fit``, ``selected_`` holds their
    indices. Its degrees of freedom are about ``len(selected_)`` plus the intercept, which
    the reliability checks count as its parameters (a dense surrogate has one per unit)."""

    selected_: np.ndarray


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


class _LinearSurrogate:
    """What every surrogate here predicts once fitted: ``Z @ coef_ + intercept_``."""

    def predict(self, Z) -> np.ndarray:
        return np.asarray(Z, dtype=float) @ self.coef_ + self.intercept_


class WeightedLinearRegression(_LinearSurrogate):
    """Weighted least squares with an intercept, optionally ridge-penalized (``alpha``).

    The intercept is never penalized. With ``alpha=0`` a rank-deficient design gets the
    minimum-norm solution.
    """

    def __init__(self, alpha: float = 0.0, fit_intercept: bool = True):
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def validate(self) -> None:
        """Nothing to check: the method that builds it checks ``alpha``."""

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


def _anchor(Z: np.ndarray, y: np.ndarray, keep_all: bool) -> np.ndarray:
    """Mean value of the rows that keep every unit (``keep_all``) or drop every unit."""
    rows = Z.all(axis=1) if keep_all else ~Z.any(axis=1)
    if not rows.any():
        which = "keeps every unit (the original input)" if keep_all else "drops every unit (the empty input)"
        raise InvalidInputError(f"this surrogate needs a row that {which}")
    return y[rows].mean(axis=0)


class EfficientLinearRegression(_LinearSurrogate):
    """Weighted least squares under the efficiency constraint of Shapley values.

    The intercept is the value of the empty input and the coefficients sum to
    ``y(full) - y(empty)``; both anchor rows must be among the rows (their own weight is
    ignored: they are fitted exactly). The other rows are fitted by weighted least squares
    within the constraint: ``coef = (Δ/N)·1 + P u`` with ``P`` an orthonormal basis of the
    vectors summing to zero, ``u`` the minimum-norm solution, so units the data cannot tell
    apart share equally. With Shapley-kernel weights over every coalition the coefficients
    are the exact Shapley values.
    """

    def validate(self) -> None:
        """Nothing to check: it has no parameters."""

    def fit(self, Z, y, sample_weight=None) -> "EfficientLinearRegression":
        Z, y, _ = _check(Z, y, None)
        w = np.ones(len(Z)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if w.shape != (len(Z),) or np.any(w < 0):
            raise InvalidInputError("sample_weight must be non-negative, one per row")
        mask = Z > 0.5
        n_units = Z.shape[1]
        y_full = _anchor(mask, y, keep_all=True)
        y_empty = _anchor(mask, y, keep_all=False)
        delta = y_full - y_empty
        base = np.full(n_units, 1.0 / n_units)
        coef = np.outer(base, delta) if y.ndim == 2 else base * delta
        inner = ~(mask.all(axis=1) | ~mask.any(axis=1)) & (w > 0)
        if inner.any() and n_units > 1:
            # Orthonormal basis of {v : sum(v) = 0}: the last N-1 right singular vectors of 1ᵀ.
            P = np.linalg.svd(np.ones((1, n_units)))[2][1:].T
            Zi = Z[inner]
            residual = y[inner] - y_empty - Zi @ coef
            sw = np.sqrt(w[inner])
            A = (Zi @ P) * sw[:, None]
            b = residual * (sw[:, None] if y.ndim == 2 else sw)
            u, *_ = np.linalg.lstsq(A, b, rcond=None)
            coef = coef + P @ u
            self.r2_ = weighted_r2(y[inner], Zi @ coef + y_empty, w[inner])
        else:
            self.r2_ = np.full(y.shape[1], np.nan) if y.ndim == 2 else float("nan")
        self.coef_ = coef
        self.intercept_ = y_empty
        return self


class LeaveOutDifferences(_LinearSurrogate):
    """Occlusion's estimate: how much the value falls when a unit is left out.

    Every row that drops units ``D`` shares ``y(full) - y(row)`` equally among them
    (``/|D|``); a unit's coefficient is the (weighted) mean share over the rows that drop it
    (0 if none does). With leave-one-out rows this is exactly ``y(full) - y(without i)``.
    The intercept makes the prediction of the full input equal ``y(full)``; ``r2_`` is the
    fit of that additive prediction on the rows (1 by construction for leave-one-out: as
    many parameters as rows).
    """

    def validate(self) -> None:
        """Nothing to check: it has no parameters."""

    def fit(self, Z, y, sample_weight=None) -> "LeaveOutDifferences":
        Z, y, w = _check(Z, y, sample_weight)
        dropped = Z < 0.5
        y_full = _anchor(~dropped, y, keep_all=True)
        n_dropped = dropped.sum(axis=1)
        rows = (n_dropped > 0) & (w > 0)
        share = (y_full - y[rows]) / (n_dropped[rows][:, None] if y.ndim == 2 else n_dropped[rows])
        # weight of row r for unit i: w_r if r drops i
        W = dropped[rows] * w[rows][:, None]  # (rows, units)
        total = W.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            coef = (W.T @ share) / (total[:, None] if y.ndim == 2 else total)
        coef = np.where((total > 0)[:, None] if y.ndim == 2 else total > 0, coef, 0.0)
        self.coef_ = coef
        self.intercept_ = y_full - coef.sum(axis=0)
        self.r2_ = weighted_r2(y, self.predict(Z), w)
        return self


#: How :class:`SparseSelection` picks its features (the type of lime's ``feature_selection``).
Selection = Literal["forward", "highest_weights"]
SELECTIONS: tuple[str, ...] = get_args(Selection)


class SparseSelection(_LinearSurrogate):
    """Keep at most ``n_features`` units, fit ``estimator`` on them, the rest get 0.

    ``selection="forward"`` adds, one at a time, the unit that most lowers the weighted
    residual sum of squares; ``"highest_weights"`` fits on every unit once and keeps the
    largest |coefficients|. The choice is made on the first column of ``y`` (the explained
    value); every column is then fitted on the chosen units in one solve.
    """

    def __init__(self, n_features: int, selection: str = "forward", estimator_factory=WeightedLinearRegression):
        self.n_features = n_features
        self.selection = selection
        self.estimator_factory = estimator_factory

    def validate(self) -> None:
        k = self.n_features
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"num_features must be a positive integer, got {k!r}", field="method_options.num_features")
        if self.selection not in SELECTIONS:
            raise InvalidInputError(
                f"feature_selection must be one of: {', '.join(SELECTIONS)}; got {self.selection!r}",
                field="method_options.feature_selection",
            )

    def _select(self, Z, y0, w) -> list[int]:
        n_units = Z.shape[1]
        k = min(int(self.n_features), n_units)
        if k == n_units:
            return list(range(n_units))
        if self.selection == "highest_weights":
            coef = self.estimator_factory().fit(Z, y0, w).coef_
            return sorted(np.argsort(-np.abs(coef), kind="stable")[:k].tolist())
        chosen: list[int] = []
        for _ in range(k):
            best, best_rss = None, np.inf
            for j in range(n_units):
                if j in chosen:
                    continue
                cols = chosen + [j]
                model = self.estimator_factory().fit(Z[:, cols], y0, w)
                rss = float(np.sum(w * (y0 - model.predict(Z[:, cols])) ** 2))
                if rss < best_rss - 1e-15:
                    best, best_rss = j, rss
            chosen.append(best)
        return sorted(chosen)

    def fit(self, Z, y, sample_weight=None) -> "SparseSelection":
        self.validate()
        Z, y, w = _check(Z, y, sample_weight)
        y0 = y[:, 0] if y.ndim == 2 else y
        self.selected_ = self._select(Z, y0, w)
        model = self.estimator_factory().fit(Z[:, self.selected_], y, w)
        coef = np.zeros((Z.shape[1],) + y.shape[1:])
        coef[self.selected_] = model.coef_
        self.coef_, self.intercept_, self.r2_ = coef, model.intercept_, model.r2_
        return self


class LassoSurrogate(_LinearSurrogate):
    """Weighted L1-penalized least squares (scikit-learn's coordinate descent): sparse
    coefficients when there are many units, as in ContextCite. Any sampler and kernel can
    use it: ``SurrogateMethod(..., surrogate_factory=LassoSurrogate)``. Its degrees of freedom
    are about its number of nonzero coefficients, which the reliability checks count as its
    parameters.

    alpha: the L1 penalty on scikit-learn's scale (half the mean weighted squared error);
        None (default) picks it on the explained value (``y``, or its first column):
    max_units: with ``alpha=None``, the smallest penalty on a grid of 50 (from the one that
        keeps no unit down to 1/1000 of it) that keeps at most this many units (ContextCite's
        choice); None: the penalty with the best 5-fold cross-validated error (``LassoCV``).

    After ``fit``: ``coef_``, ``intercept_``, ``r2_`` (weighted, in-sample), ``alpha_`` and
    ``selected_`` (the units with a nonzero coefficient on the explained value).
    """

    def __init__(self, alpha: float | None = None, max_units: int | None = None):
        self.alpha = alpha
        self.max_units = max_units

    def validate(self) -> None:
        if self.alpha is not None and (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0):
            raise InvalidInputError(f"alpha must be a positive number or None, got {self.alpha!r}", field="alpha")
        if self.max_units is not None and (isinstance(self.max_units, bool) or not isinstance(self.max_units, int) or self.max_units < 1):
            raise InvalidInputError(f"max_units must be a positive integer or None, got {self.max_units!r}", field="max_units")

    def fit(self, Z, y, sample_weight=None) -> "LassoSurrogate":
        from sklearn.linear_model import Lasso

        self.validate()
        Z, y, w = _check(Z, y, sample_weight)
        explained = y if y.ndim == 1 else y[:, 0]
        self.alpha_ = float(self.alpha if self.alpha is not None else self._pick_alpha(Z, explained, w))
        model = Lasso(alpha=self.alpha_, max_iter=10_000).fit(Z, y, sample_weight=w)
        while self.alpha is None and self.max_units is not None and np.count_nonzero(np.atleast_2d(model.coef_)[0]) > self.max_units:
            self.alpha_ *= 1.2  # a fit from scratch may keep a unit the warm-started path dropped
            model = Lasso(alpha=self.alpha_, max_iter=10_000).fit(Z, y, sample_weight=w)
        self.coef_ = np.asarray(model.coef_, dtype=float).T  # units (x outputs)
        self.intercept_ = np.asarray(model.intercept_, dtype=float) if y.ndim == 2 else float(model.intercept_)
        self.r2_ = weighted_r2(y, self.predict(Z), w)
        self.selected_ = np.flatnonzero((self.coef_ if y.ndim == 1 else self.coef_[:, 0]) != 0)
        return self

    def _pick_alpha(self, Z: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
        from sklearn.linear_model import Lasso, LassoCV

        if self.max_units is None:
            return LassoCV(cv=int(min(5, len(Z))), max_iter=10_000).fit(Z, y, sample_weight=w).alpha_
        share = w / w.sum()
        top = float(np.max(np.abs((Z - share @ Z).T @ (share * (y - share @ y))))) or 1.0
        chosen, model = top, Lasso(alpha=top, warm_start=True, max_iter=10_000)
        for alpha in np.geomspace(top, top * 1e-3, 50):
            model.set_params(alpha=alpha).fit(Z, y, sample_weight=w)
            if np.count_nonzero(model.coef_) > self.max_units:
                break
            chosen = alpha
        return chosen


#: Surrogates a method given by name can be switched to (``Explainer(surrogate=...)``):
#: name -> factory taking ``max_units``.
SURROGATES = {
    "least_squares": None,  # the method's own (weighted least squares, or its constrained form)
    "lasso": lambda max_units=None: LassoSurrogate(max_units=max_units),
}
