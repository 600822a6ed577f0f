"""White-box methods: attributions read from inside a local model.

Gradient × input and integrated gradients go through the input embeddings (Captum is the
engine), and attention is read from the attention weights. Each sums its values over a
unit's tokens (see :mod:`gsmile.whitebox`). They need a local model (``local``,
``hf:PATH``), and they make the same :class:`~gsmile.explanation.Explanation` as the
perturbation methods: units × coefficients, and units × response tokens. They fit no
surrogate, so their reliability is their own check:

* integrated gradients: completeness. The attributions must add up to F(input) −
  F(baseline); when they miss it by more than :data:`COMPLETENESS_TOLERANCE`, the
  explanation is unreliable and more steps are needed.
* gradient × input: a first-order (local linear) reading of the model, with no check of
  its own. It is flagged as such, and ``gsmile evaluate`` measures how faithful it is.
* attention: a hint, not an attribution, so it is always flagged (see ``hint``).
* attnlrp (AttnLRP, Achtibat et al. 2024): relevance conservation. Its relevances of the
  whole row should add up to a share of the explained logits in
  :data:`CONSERVATION_RANGE` (AttnLRP's softmax rule is not conservative: measured 0.34-0.41
  on the embedded SmolLM2, 0.50-0.53 on the tiny test Llama); outside it, the explanation is
  flagged.

The options come from the factories' signatures, like every method's, so the CLI, the HTTP
schema and ``docs/methods.md`` list them.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

#: Integrated gradients whose completeness error is above this share are unreliable.
COMPLETENESS_TOLERANCE = 0.05
#: AttnLRP explanations whose Σ relevance / explained logits falls outside this range are unreliable.
CONSERVATION_RANGE = (0.2, 1.5)


class WhiteBoxMethod:
    """A method that reads a local model's internals: ``attribute(lm, text, spans,
    response_ids)`` returns a :class:`gsmile.whitebox.WhiteBoxResult`. It samples
    nothing and fits no surrogate.

    name: the method's name; function: ``(lm, text, spans, response_ids, **params)``;
    params: its options (recorded in the explanation).
    """

    ess_hint = None

    def __init__(self, name: str, function: Callable[..., Any], params: dict[str, Any] | None = None, explains: str = "logprob"):
        self.name = name
        self.function = function
        self.params = dict(params or {})
        #: what it attributes: "logprob" (Σ log p of the response) or "logit" (Σ the response's logits)
        self.explains = explains

    def validate(self) -> None:
        from ..errors import InvalidInputError, check_int

        if "steps" in self.params:
            check_int("steps", self.params["steps"], 2, 4096)
            check_int("max_steps", self.params["max_steps"], 2, 100_000)
        if self.params.get("baseline", "zero") not in ("zero", "pad"):
            raise InvalidInputError(f"baseline must be zero or pad, got {self.params['baseline']!r}", field="method_options.baseline")

    def with_random_state(self, seed) -> "WhiteBoxMethod":
        return self  # nothing random

    def attribute(self, lm, text: str, spans: list[tuple[int, int]], response_ids: list[int]):
        return self.function(lm, text, spans, response_ids, **self.params)

    def issues(self, result) -> list[str]:
        """What speaks against trusting ``result`` (empty: nothing does)."""
        if result.hint:
            return [result.hint]
        completeness = result.extras.get("completeness")
        if completeness is not None:
            error = float(completeness.get("relative_error", float("nan")))
            if not error <= COMPLETENESS_TOLERANCE:
                return [f"integrated gradients miss completeness by {error:.1%} (above {COMPLETENESS_TOLERANCE:.0%}): "
                        "the path integral is not converged; raise steps"]
        conservation = result.extras.get("conservation")
        if conservation is not None:
            ratio = float(conservation.get("ratio", float("nan")))
            lo, hi = CONSERVATION_RANGE
            if not lo <= ratio <= hi:
                return [f"AttnLRP's relevances add up to {ratio:.0%} of the explained logits (outside {lo:.0%}-{hi:.0%}): "
                        "most of the output is absorbed by its non-conservative rules (softmax, mask, biases), not attributed"]
        return []


def _gradients(lm, text, spans, response_ids, **params):
    from ..whitebox.gradients import gradient_attribution

    return gradient_attribution(lm, text, spans, response_ids, **params)


def _attention(lm, text, spans, response_ids, **params):
    from ..whitebox.attention import attention_attribution

    return attention_attribution(lm, text, spans, response_ids, **params)


def _attnlrp(lm, text, spans, response_ids, **params):
    from ..whitebox.attnlrp import attnlrp_attribution

    return attnlrp_attribution(lm, text, spans, response_ids, **params)


def attnlrp(per_token: bool = True, random_state=None) -> WhiteBoxMethod:
    """AttnLRP (Achtibat et al. 2024) relevance of the response's logits, through a private functional forward (local Llama models), summed over each unit's tokens.

    Options:
        per_token: also attribute each response token's logit (units × response tokens)
    """
    return WhiteBoxMethod("attnlrp", _attnlrp, {"per_token": per_token}, explains="logit")


def gradient_x_input(per_token: bool = True, random_state=None) -> WhiteBoxMethod:
    """Gradient × input over the input embeddings (local models; Captum), summed over each unit's tokens.

    Options:
        per_token: also attribute each response token's log-probability (units × response tokens)
    """
    return WhiteBoxMethod("gradient_x_input", _gradients, {"method": "gradient_x_input", "per_token": per_token})


def integrated_gradients(steps: int = 64, max_steps: int = 512, baseline: Literal["zero", "pad"] = "zero", per_token: bool = False,
                         random_state=None) -> WhiteBoxMethod:
    """Integrated gradients over the input embeddings (local models; Captum's IntegratedGradients), summed over each unit's tokens.

    Options:
        steps: Gauss-Legendre points on the path from the baseline to the input
        max_steps: the points are doubled, up to this many, until the attributions sum to F(input) - F(baseline) within 1%
        baseline: the explained text's tokens at the path's start: zero (zero embeddings) or pad (the pad token's embedding)
        per_token: also attribute each response token's log-probability (steps x response tokens passes)
    """
    return WhiteBoxMethod("integrated_gradients", _gradients, {"method": "integrated_gradients", "steps": steps, "max_steps": max_steps,
                                                               "baseline": baseline, "per_token": per_token})


def attention(random_state=None) -> WhiteBoxMethod:
    """Last-layer attention from the response to each unit (local models): a hint, not an attribution."""
    return WhiteBoxMethod("attention", _attention, {"method": "attention"})


def attention_rollout(random_state=None) -> WhiteBoxMethod:
    """Attention rollout through every layer (Abnar & Zuidema 2020; local models): a hint, not an attribution."""
    return WhiteBoxMethod("attention_rollout", _attention, {"method": "attention_rollout"})


#: white-box method names -> factories (part of gsmile.methods.METHODS).
WHITEBOX_METHODS: dict[str, Callable[..., WhiteBoxMethod]] = {
    "gradient_x_input": gradient_x_input,
    "integrated_gradients": integrated_gradients,
    "attention": attention,
    "attention_rollout": attention_rollout,
    "attnlrp": attnlrp,
}
