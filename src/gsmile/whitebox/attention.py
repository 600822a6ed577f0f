"""Attention weights of a local causal LM as a *hint* at which units its response looked at.

* ``"attention"``: the last layer's attention weights from each position that predicts a
  response token to every token of the row, averaged over heads;
* ``"attention_rollout"`` (Abnar & Zuidema 2020): per layer the head-averaged attention ``A``,
  ``Â = (A + I) / 2`` with rows renormalized (the residual connection), multiplied through the
  layers (``R = Â_L ··· Â_1``), read at the predicting positions.

A unit's value is the sum over its tokens; ``coefficients`` average the response positions,
``token_coefficients`` keep one column per response token. Much of the mass usually goes to
the first template token (an "attention sink"): ``extras["outside_units"]`` says how much.

Not an attribution: attention weights say where information is mixed from, not how much it
changes the output; they ignore the value vectors, the output projections, the MLPs and the
normalizations, and different weights can give the same prediction (Jain & Wallace 2019,
"Attention is not Explanation"). The result carries that ``hint``.

Weights need the eager attention path (SDPA and flash attention never form them). The shared
model is not changed for that: a twin of it (new module objects and a config of its own with
``_attn_implementation = "eager"``, the same parameter tensors, so no memory is copied) is made
once per model and used in inference mode only.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref

from ..backends.local import require_local
from ..errors import InvalidInputError
from ._tokens import build_row, outside_units, to_units, token_table
from .gradients import WhiteBoxResult

METHODS = ("attention", "attention_rollout")
HINT = ("a hint, not an attribution: attention weights show where each layer mixes information from, "
        "not how much it changes the response; they ignore value vectors, output projections, MLPs and "
        "normalizations, and other weights can give the same output (Jain & Wallace 2019)")

_twins: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_twins_lock = threading.Lock()


def eager_twin(model):
    """A copy of ``model``'s modules that computes attention eagerly and shares its parameters
    and buffers (the shared model, its config and its modules are left as they are)."""
    with _twins_lock:
        twin = _twins.get(model)
        if twin is None:
            memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
            twin = copy.deepcopy(model, memo)
            twin.config._attn_implementation = "eager"
            for module in twin.modules():  # every module's config is the twin's (deepcopy kept them one object)
                cfg = getattr(module, "config", None)
                if cfg is not None and cfg is not twin.config and hasattr(cfg, "_attn_implementation"):
                    cfg._attn_implementation = "eager"
            twin.eval()
            _twins[model] = twin
        return twin


def attention_attribution(lm, text: str, spans, response_ids, *, method: str) -> WhiteBoxResult:
    """Attention of the response's predicting positions to the units (character ``spans`` of
    ``text``) of a local :class:`~gsmile.backends.local.HFCausalLM` ``lm``; ``method``:
    "attention" (last layer) or "attention_rollout". The result's ``hint`` says why this is not
    an attribution. Anything but a local model raises InvalidInputError."""
    import torch

    lm = require_local(lm, "attention methods need", one_device=True)
    if method not in METHODS:
        raise InvalidInputError(f"unknown attention method {method!r}; choose one of: {', '.join(METHODS)}", field="method")
    row = build_row(lm, text, spans, response_ids)
    began = time.perf_counter()
    twin = eager_twin(lm.model)
    with torch.inference_mode():
        ids = torch.tensor([row.ids], dtype=torch.long, device=lm.device_)
        out = twin(input_ids=ids, output_attentions=True, use_cache=False, logits_to_keep=1)
        layers = [a[0].double().mean(0).cpu() for a in out.attentions]  # (L, L) per layer, heads averaged
    if any(a is None for a in out.attentions):
        raise InvalidInputError("this model returned no attention weights", field="method")
    if method == "attention":
        weights = layers[-1]
    else:
        eye = torch.eye(len(row.ids), dtype=torch.float64)
        weights = eye
        for a in layers:
            a_hat = (a + eye) / 2
            a_hat = a_hat / a_hat.sum(-1, keepdim=True)
            weights = a_hat @ weights
    per_position = weights[row.predicting].numpy()  # (T, L)
    token_coefficients = to_units(per_position, row, len(spans)).T.copy()
    mean = per_position.mean(0)
    extras = {"method": method, "layers": len(layers) if method == "attention_rollout" else "last",
              "heads": "averaged", "response_positions": "averaged (token_coefficients: one column each)",
              "n_prompt_tokens": row.n_prompt, "n_response_tokens": row.n_response, "tokens": token_table(row),
              "outside_units": outside_units(mean, row), "first_token_share": float(mean[0]),
              "seconds": time.perf_counter() - began}
    return WhiteBoxResult(to_units(mean, row, len(spans)), token_coefficients, extras, hint=HINT)
