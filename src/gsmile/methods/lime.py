"""LIME for text: masks that remove a uniformly drawn number (1..N) of units, an exponential
kernel on the cosine distance between each mask and the original, a ridge surrogate, and
optionally a sparse choice of at most ``num_features`` units."""

from __future__ import annotations

from functools import partial

from ..errors import InvalidInputError
from ..kernels import ExponentialCosineKernel
from ..samplers import SubsetSizeSampler
from ..surrogates import SELECTIONS, Selection, SparseSelection, WeightedLinearRegression
from .base import SurrogateMethod


def lime(
    kernel_width: float = 0.25,
    num_features: int | None = None,
    feature_selection: Selection = "forward",
    alpha: float = 1.0,
    random_state=None,
) -> SurrogateMethod:
    """LIME: masks removing 1..N units, an exponential kernel on cosine distance, a ridge surrogate.

    Options:
        kernel_width: width of the exponential kernel on cosine distance, above 0 (LIME's text default 25/100)
        num_features: keep at most this many units, chosen by feature_selection (none: all)
        feature_selection: how num_features units are chosen: forward selection or the largest coefficients
        alpha: ridge penalty of the surrogate, 0 or more
    """
    ridge = partial(WeightedLinearRegression, alpha=alpha)
    if num_features is None:
        surrogate = ridge
    else:
        surrogate = partial(SparseSelection, num_features, feature_selection, ridge)
    return _LimeMethod(
        "lime",
        sampler=SubsetSizeSampler(min_drop=1, min_keep=0, random_state=random_state),
        kernel=ExponentialCosineKernel(kernel_width=kernel_width),
        surrogate_factory=surrogate,
        params={"kernel_width": kernel_width, "num_features": num_features, "feature_selection": feature_selection, "alpha": alpha},
        ess_hint="raise --kernel-width",
    )


class _LimeMethod(SurrogateMethod):
    def validate(self) -> None:
        alpha = self.params["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise InvalidInputError(f"alpha must be a non-negative number (the ridge penalty), got {alpha!r}", field="method_options.alpha")
        selection = self.params["feature_selection"]
        if self.params["num_features"] is None and selection not in SELECTIONS:
            raise InvalidInputError(
                f"feature_selection must be one of: {', '.join(SELECTIONS)}; got {selection!r}", field="method_options.feature_selection"
            )
        super().validate()


