"""Gradient attributions of a local causal LM's response to the units of its prompt.

The explained value is gsmile's log-prob target: ``F = Σ_t log p(response_t | prompt,
response_<t)``, teacher-forced over the chat-formatted prompt (see
:class:`~gsmile.backends.local.HFCausalLM`); per response token, ``F_t = log p(response_t | ...)``.
Both are differentiated with respect to the model's *input embeddings* (the output of
``model.get_input_embeddings()``), with Captum as the engine:

* ``"gradient_x_input"``: Captum's ``InputXGradient`` on the embeddings: ``∂F/∂e_j · e_j`` per
  token ``j`` (summed over the hidden dimension). No baseline; local (first order) only.
* ``"integrated_gradients"``: Captum's ``IntegratedGradients`` on the embeddings (the same
  computation as ``LayerIntegratedGradients`` on the embedding layer, which takes its baseline
  as token ids and so could not express the zero embedding): ``(e_j - b_j) · ∫ ∂F/∂e_j(b + α(e -
  b)) dα``, Gauss-Legendre with ``steps`` points. Completeness: the attributions of all tokens
  sum to ``F(input) - F(baseline)``; the gap is reported in ``extras["completeness"]``.

The baseline replaces only the tokens of the user's text (template, system prompt, special
tokens and the fed response tokens keep their embeddings, so their IG attribution is exactly 0):

* ``"zero"``: the zero vector (no token at all, in embedding space; not an embedding any token has);
* ``"pad"``: the embedding of the tokenizer's pad token (its eos token when it has no pad token;
  for the embedded SmolLM2 that is ``<|im_end|>``): a real token the model has seen.

A unit's coefficient is the sum of its tokens' attributions (see :mod:`._tokens` for the token
to unit mapping and what is reported about tokens outside the units).

The shared model is never modified: no hooks, no parameter changes; gradients are taken with
``torch.autograd.grad`` with respect to the input embeddings only (nothing accumulates in a
parameter's ``.grad``), so explanations may run at the same time in several threads.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np

from ..backends.local import require_local
from ..errors import InvalidInputError, check_int
from ._tokens import build_row, outside_units, to_units, token_table

METHODS = ("gradient_x_input", "integrated_gradients")
BASELINES = ("zero", "pad")
#: Gauss-Legendre points of integrated gradients to start with (doubled while completeness is
#: off by more than COMPLETENESS_TARGET).
DEFAULT_STEPS = 64


@dataclass
class WhiteBoxResult:
    """coefficients: (n_units,) for the whole response's log p, summed over each unit's tokens.
    token_coefficients: (n_units, n_response_tokens), one column per response token's log p, or
        None when not computed.
    extras: the method's details (method, baseline, steps, completeness, tokens outside units...).
    hint: for attention methods, "a hint, not an attribution: <reason>"; None for attributions."""

    coefficients: np.ndarray
    token_coefficients: np.ndarray | None
    extras: dict = field(default_factory=dict)
    hint: str | None = None


def _logprob_function(model, response_ids: list[int]):
    """f(embeds (B, L, H)) -> (B, T + 1): log p of each response token at the row's last T
    positions, then their sum F (column T)."""
    import torch

    n = len(response_ids)
    resp = torch.tensor(response_ids, dtype=torch.long, device=model.get_input_embeddings().weight.device)
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def forward(embeds):
        options = {"logits_to_keep": n} if keep else {}
        logits = model(inputs_embeds=embeds, use_cache=False, **options).logits[:, -n:]
        logp = logits.float().log_softmax(-1)
        picked = logp.gather(-1, resp.expand(embeds.shape[0], n)[..., None])[..., 0]
        return torch.cat([picked, picked.sum(-1, keepdim=True)], dim=-1)

    return forward


#: Integrated gradients double their steps until completeness is within this share...
COMPLETENESS_TARGET = 0.01
#: ...or until this many steps.
DEFAULT_MAX_STEPS = 512


def gradient_attribution(lm, text: str, spans, response_ids, *, method: str, steps: int = DEFAULT_STEPS,
                         baseline: str = "zero", per_token: bool | None = None, max_steps: int | None = DEFAULT_MAX_STEPS) -> WhiteBoxResult:
    """Attribute the response's log-probability to the units (character ``spans`` of ``text``,
    the user turn the model sees) by gradients through the input embeddings of ``lm`` (a local
    :class:`~gsmile.backends.local.HFCausalLM`; anything else raises InvalidInputError).

    method: "gradient_x_input" or "integrated_gradients" (see the module's docstring).
    steps: integration points of integrated gradients (Gauss-Legendre); ignored otherwise.
        When the attributions miss completeness by more than :data:`COMPLETENESS_TARGET`, the
        integral is computed again with twice the points, up to ``max_steps`` (None or
        ``steps``: never); the steps used are in ``extras["steps"]``, each try in
        ``extras["step_tries"]``. On the embedded SmolLM2, 64 Gauss-Legendre points leave 1-18%
        on some prompts: the integrand turns sharply near the baseline, where the first
        RMSNorm's epsilon stops mattering.
    baseline: "zero" or "pad", for integrated gradients (see the module's docstring).
    per_token: also attribute each response token's log p (``token_coefficients``). None (the
        default): yes for gradient×input (one more backward pass per response token, batched),
        no for integrated gradients, where it costs ``n_response_tokens`` times the whole
        integration (``(T + 1) × steps`` forward and backward rows instead of ``steps``).

    The total (``coefficients``) is always computed with its own target (F), not as the sum of
    the per-token rows, so the two agree only as far as the method is linear in the target (both
    methods are: the rows sum to the total to float rounding)."""
    import torch

    lm = require_local(lm, "gradient methods need", one_device=True)
    if method not in METHODS:
        raise InvalidInputError(f"unknown gradient method {method!r}; choose one of: {', '.join(METHODS)}", field="method")
    if baseline not in BASELINES:
        raise InvalidInputError(f"unknown baseline {baseline!r}; choose one of: {', '.join(BASELINES)}", field="baseline")
    steps = check_int("steps", steps, 1, 10_000, field="steps")
    if per_token is None:
        per_token = method == "gradient_x_input"
    row = build_row(lm, text, spans, response_ids)
    n_units, n_resp, length = len(spans), row.n_response, len(row.ids)
    model = lm.model
    device = lm.device_
    began = time.perf_counter()
    targets = list(range(n_resp + 1)) if per_token else [n_resp]  # column n_resp is F
    forward = _logprob_function(model, [int(t) for t in response_ids])
    # Rows per forward/backward pass: about max_batch_tokens tokens.
    rows_per_pass = max(1, lm.max_batch_tokens // length)
    extras: dict = {"method": method, "target": "sum over response tokens of log p(response_t | prompt, response_<t), teacher-forced",
                    "per_token": bool(per_token), "n_prompt_tokens": row.n_prompt, "n_response_tokens": n_resp,
                    "n_text_tokens": int(row.text_mask.sum()), "tokens": token_table(row)}
    with torch.inference_mode(False), torch.enable_grad():
        ids = torch.tensor([row.ids], dtype=torch.long, device=device)
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids).detach().clone()
        if method == "gradient_x_input":
            from captum.attr import InputXGradient

            engine = InputXGradient(forward)
            parts = []
            for lo in range(0, len(targets), rows_per_pass):
                chunk = targets[lo : lo + rows_per_pass]
                attr = engine.attribute(embeds.expand(len(chunk), -1, -1).clone().requires_grad_(), target=chunk)
                parts.append(attr.detach().float().sum(-1).cpu())
            per_position = torch.cat(parts).numpy().astype(float)  # (len(targets), L)
            extras["baseline"] = None
            extras["baseline_note"] = "gradient × input has no baseline: ∂F/∂e_j · e_j at the input"
            extras["completeness"] = None
        else:
            from captum.attr import IntegratedGradients

            if baseline == "zero":
                fill = torch.zeros_like(embeds[0, 0])
            else:
                tok = lm.tokenizer
                pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
                with torch.no_grad():
                    fill = model.get_input_embeddings()(torch.tensor([pad], device=device))[0].detach()
                extras["baseline_token"] = lm.token_strings([pad])[0]
            base = embeds.clone()
            mask = torch.as_tensor(row.text_mask, device=device)
            base[0, mask] = fill.to(base.dtype)
            engine = IntegratedGradients(forward)
            with torch.no_grad():
                f_in = forward(embeds)[0].double().cpu().numpy()
                f_base = forward(base)[0].double().cpu().numpy()
            diffs = np.array([f_in[t] - f_base[t] for t in targets])

            def integrate(t: int, n: int):  # one integration; its points batched by ibs rows
                ibs = max(1, min(n, rows_per_pass))
                attr = engine.attribute(embeds, baselines=base, target=t, n_steps=n, method="gausslegendre", internal_batch_size=ibs)
                return attr.detach().double().sum(-1)[0].cpu()

            limit = steps if max_steps is None else max(steps, check_int("max_steps", max_steps, 1, 100_000, field="max_steps"))
            tries = []
            while True:  # the total first: more points until it is complete enough
                total_attr = integrate(n_resp, steps)
                gap = abs(float(total_attr.sum()) - diffs[-1]) / max(abs(diffs[-1]), 1e-12)
                tries.append({"steps": steps, "relative_error": gap})
                if gap <= COMPLETENESS_TARGET or steps * 2 > limit:
                    break
                steps *= 2
            ibs = max(1, min(steps, rows_per_pass))
            extras["step_tries"] = tries
            attrs = [integrate(t, steps) for t in targets[:-1]] + [total_attr]
            per_position = torch.stack(attrs).numpy().astype(float)  # (len(targets), L)
            sums = per_position.sum(axis=1)
            rel = np.abs(sums - diffs) / np.maximum(np.abs(diffs), 1e-12)
            extras["baseline"] = baseline
            extras["baseline_note"] = ("zero: the text's tokens' embeddings replaced by the zero vector" if baseline == "zero" else
                                       "pad: the text's tokens' embeddings replaced by the pad (else eos) token's embedding")
            extras["baseline_note"] += "; template, system prompt, special tokens and fed response tokens kept"
            extras["steps"] = steps
            extras["integration"] = "captum IntegratedGradients, Gauss-Legendre (method='gausslegendre'), on the input embeddings"
            extras["internal_batch_size"] = ibs
            extras["completeness"] = {"sum": float(sums[-1]), "difference": float(diffs[-1]), "relative_error": float(rel[-1]),
                                      "f_input": float(f_in[n_resp]), "f_baseline": float(f_base[n_resp])}
            if per_token:
                extras["completeness"]["per_token_max_relative_error"] = float(rel[:-1].max())
    total = per_position[-1]
    coefficients = to_units(total, row, n_units)
    token_coefficients = to_units(per_position[:-1], row, n_units).T.copy() if per_token else None
    extras["outside_units"] = outside_units(total, row)
    extras["seconds"] = time.perf_counter() - began
    return WhiteBoxResult(coefficients, token_coefficients, extras)
