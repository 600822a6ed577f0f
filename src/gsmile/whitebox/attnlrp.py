"""AttnLRP (Achtibat et al., ICML 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance
Propagation for Transformers") for local Llama models, in its efficient "gradient × input" form.

LRP rules that keep ``R_in = x ⊙ ∂̃F/∂x`` at every operation's input (``∂̃``: a modified
gradient) make the relevance of the input embeddings one backward pass: ``R_j = e_j · ∂̃F/∂e_j``
(summed over the hidden dimension). The modified gradients are those of lxt's efficient mode
(``stop_gradient``, ``divide_gradient``, ``identity_rule_implicit``):

* RMSNorm: the normalizing factor ``1/sqrt(mean(x²) + eps)`` is detached (a constant), so the
  norm is linear in ``x`` and passes relevance on unchanged (identity rule);
* SiLU (any elementwise activation of the MLP): identity rule (paper Eq. 9),
  ``y = x · (act(x)/x)`` with the ratio detached (``sigmoid(x)`` for SiLU), so ``R_in = R_out``;
* products of two activations (``q·kᵀ``, ``attention·v``, and the gated MLP's
  ``act(gate)·up``): the uniform rule (paper Eq. 7): each factor's gradient is halved, so each
  gets half of the product's relevance;
* softmax: the AttnLRP softmax rule (paper Proposition 3.1, a Taylor decomposition at the
  input with its bias term dropped) is ``R_in_i = x_i (R_out_i − s_i Σ_j R_out_j)``. With
  ``R_out_j = s_j g_j`` (``g``: the gradient reaching the softmax output), ``R_in_i = x_i ·
  s_i (g_i − Σ_j s_j g_j)``, which is ``x_i`` times softmax's ordinary gradient: so the softmax
  is left as it is (as lxt's efficient mode does). Masked scores get no gradient (``s = 0``);
* linear layers (projections, rotary embedding, the attention scaling, ``lm_head``): the plain
  gradient, i.e. the epsilon rule with ε → 0 (``R_in_i = Σ_j x_i W_ji R_j / z_j``); the causal
  mask and any bias absorb relevance.

The explained output: the sum over response tokens of the response token's **logit** at its
predicting position (teacher-forced, the same row as gsmile's log-prob target), not its log
probability: LRP explains a network output, and lxt explains the target logit; the log-softmax
over the vocabulary has no LRP rule of its own here. Per token, ``F_t`` = that token's logit.

Conservation: the rules above are conservative except the softmax (and the mask/biases), so
the sum of all input relevances (every position of the row, template tokens included) is close
to the explained output: ``extras["conservation"]["ratio"]`` = Σ relevance / Σ logits.

The shared model is neither changed nor run: a private functional forward (embedding → decoder
layers → final norm → ``lm_head``) reads its parameter tensors (detached, read-only), computes
its own rotary tables from its ``inv_freq`` buffer, and calls none of its modules (so no hook
and no patched class acts), and ``torch.autograd.grad`` differentiates with respect to the
input embeddings only (nothing accumulates in any ``.grad``). Other explanations may run on the
same model at the same time in other threads. Only Llama-architecture models
(``model_type == "llama"``, e.g. the embedded SmolLM2) are supported; others raise
InvalidInputError.
"""

from __future__ import annotations

import time

import numpy as np

from ..backends.local import require_local
from ..errors import InvalidInputError
from ._tokens import build_row, outside_units, to_units, token_table
from .gradients import WhiteBoxResult

TARGET = ("sum over response tokens of the response token's logit at its predicting position "
          "(teacher-forced; logits, not log p: LRP explains a network output, as lxt does)")
#: ROPE types whose tables are fixed (HF's dynamic types change inv_freq with the length).
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def _rules():
    """The autograd functions of the modified gradients (made once, on first use)."""
    import torch

    class DivideGradient(torch.autograd.Function):
        """Identity forward; gradient divided by ``factor`` (uniform rule)."""

        @staticmethod
        def forward(ctx, x, factor):
            ctx.factor = factor
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad / ctx.factor, None

    return DivideGradient


_DIVIDE = None


def _half(x, rules: bool):
    global _DIVIDE
    if not rules:
        return x
    if _DIVIDE is None:
        _DIVIDE = _rules()
    return _DIVIDE.apply(x, 2.0)


def check_llama(model) -> None:
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama" or not hasattr(model, "lm_head") or not hasattr(getattr(model, "model", None), "layers"):
        raise InvalidInputError(f"attnlrp supports Llama-architecture models only; this one is {getattr(cfg, 'model_type', type(model).__name__)!r}",
                                field="model")
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in _STATIC_ROPE:
        raise InvalidInputError(f"attnlrp does not support rope type {rope!r}", field="model")
    if getattr(cfg, "pretraining_tp", 1) not in (1, None):
        raise InvalidInputError("attnlrp does not support pretraining_tp > 1", field="model")


def _rms_norm(x, weight, eps, rules: bool):
    import torch

    dtype = x.dtype
    h = x.to(torch.float32)
    scale = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if rules:
        scale = scale.detach()  # identity rule: the normalizer is a constant
    return weight * (h * scale).to(dtype)


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def functional_logits(model, embeds, *, rules: bool = True, positions: int | None = None, softmax: str = "attnlrp"):
    """Llama's forward on ``embeds`` (B, L, H) with the model's weights, computed here (no module
    of ``model`` is called). ``rules``: AttnLRP's modified gradients (the values are the same
    either way). ``positions``: logits of the last ``positions`` positions only (None: all).
    ``softmax`` (with ``rules``): "attnlrp" (its rule, above) or "cp" (CP-LRP, Ali et al. 2022:
    the attention weights detached and ``attention·v`` linear in ``v``; every rule is then
    conservative, so Σ relevance equals the output exactly, bias-free models: a check of the
    rules' implementation). Returns logits (B, positions or L, vocab)."""
    import torch
    import torch.nn.functional as F
    from transformers.activations import ACT2FN

    check_llama(model)
    if softmax not in ("attnlrp", "cp"):
        raise InvalidInputError(f"unknown softmax rule {softmax!r}", field="softmax")
    cfg = model.config
    base = model.model
    n_heads = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    groups = n_heads // n_kv
    scaling = head_dim ** -0.5
    act = ACT2FN[cfg.hidden_act]  # a new instance, not the model's module

    def w(t):
        return None if t is None else t.detach()

    def linear(x, layer):
        return F.linear(x, w(layer.weight), w(layer.bias))

    def activation(x):
        y = act(x)
        if not rules:
            return y
        ratio = torch.where(x == 0, torch.zeros_like(y), y / torch.where(x == 0, torch.ones_like(x), x))
        return x * ratio.detach()  # identity rule

    bsz, length, _ = embeds.shape
    dtype = embeds.dtype
    device = embeds.device
    rotary = base.rotary_emb
    with torch.no_grad():
        pos = torch.arange(length, device=device, dtype=torch.float32)
        freqs = pos[:, None] * rotary.inv_freq.detach().to(device=device, dtype=torch.float32)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * rotary.attention_scaling).to(dtype)[None, None]
        sin = (emb.sin() * rotary.attention_scaling).to(dtype)[None, None]
        mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)[None, None]

    h = embeds
    for layer in base.layers[: cfg.num_hidden_layers]:
        attn = layer.self_attn
        x = _rms_norm(h, w(layer.input_layernorm.weight), layer.input_layernorm.variance_epsilon, rules)
        q = linear(x, attn.q_proj).view(bsz, length, n_heads, head_dim).transpose(1, 2)
        k = linear(x, attn.k_proj).view(bsz, length, n_kv, head_dim).transpose(1, 2)
        v = linear(x, attn.v_proj).view(bsz, length, n_kv, head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if groups > 1:  # repeat_kv
            k = k[:, :, None].expand(bsz, n_kv, groups, length, head_dim).reshape(bsz, n_heads, length, head_dim)
            v = v[:, :, None].expand(bsz, n_kv, groups, length, head_dim).reshape(bsz, n_heads, length, head_dim)
        scores = torch.matmul(_half(q, rules), _half(k, rules).transpose(2, 3)) * scaling + mask
        weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # AttnLRP's softmax rule: its own gradient
        if rules and softmax == "cp":
            out = torch.matmul(weights.detach(), v)
        else:
            out = torch.matmul(_half(weights, rules), _half(v, rules))
        out = out.transpose(1, 2).reshape(bsz, length, n_heads * head_dim)
        h = h + linear(out, attn.o_proj)
        x = _rms_norm(h, w(layer.post_attention_layernorm.weight), layer.post_attention_layernorm.variance_epsilon, rules)
        mlp = layer.mlp
        gated = _half(activation(linear(x, mlp.gate_proj)), rules) * _half(linear(x, mlp.up_proj), rules)
        h = h + linear(gated, mlp.down_proj)
    h = _rms_norm(h, w(base.norm.weight), base.norm.variance_epsilon, rules)
    if positions is not None:
        h = h[:, -positions:]
    return linear(h, model.lm_head)


def attnlrp_attribution(lm, text: str, spans, response_ids, *, per_token: bool | None = None) -> WhiteBoxResult:
    """AttnLRP relevance of the units (character ``spans`` of ``text``) for the response of a
    local Llama :class:`~gsmile.backends.local.HFCausalLM` ``lm`` (anything else raises
    InvalidInputError). The explained output is the sum of the response tokens' logits (see the
    module's docstring); ``per_token`` (None: yes) also explains each response token's logit
    (``token_coefficients``, one batched backward row per token). Conservation (Σ relevance over
    the whole row / the explained output) is in ``extras["conservation"]``."""
    import torch

    lm = require_local(lm, "attnlrp methods need", one_device=True)
    model = lm.model
    check_llama(model)
    if per_token is None:
        per_token = True
    row = build_row(lm, text, spans, response_ids)
    n_units, n_resp, length = len(spans), row.n_response, len(row.ids)
    device = lm.device_
    began = time.perf_counter()
    targets = list(range(n_resp + 1)) if per_token else [n_resp]  # column n_resp: the sum
    resp = torch.tensor([int(t) for t in response_ids], dtype=torch.long, device=device)
    rows_per_pass = max(1, lm.max_batch_tokens // length)
    parts, outputs = [], []
    with torch.inference_mode(False), torch.enable_grad():
        ids = torch.tensor([row.ids], dtype=torch.long, device=device)
        with torch.no_grad():
            embeds = torch.nn.functional.embedding(ids, model.get_input_embeddings().weight.detach()).clone()
        for lo in range(0, len(targets), rows_per_pass):
            chunk = targets[lo: lo + rows_per_pass]
            x = embeds.expand(len(chunk), -1, -1).clone().requires_grad_(True)
            logits = functional_logits(model, x, rules=True, positions=n_resp)  # (B, T, V)
            picked = logits.float().gather(-1, resp.expand(len(chunk), n_resp)[..., None])[..., 0]  # (B, T)
            values = torch.cat([picked, picked.sum(-1, keepdim=True)], dim=-1)  # (B, T + 1)
            chosen = values[torch.arange(len(chunk), device=device), torch.tensor(chunk, device=device)]
            (grad,) = torch.autograd.grad(chosen.sum(), x)
            parts.append((grad * x).detach().float().sum(-1).cpu())
            outputs.append(chosen.detach().double().cpu())
    per_position = torch.cat(parts).double().numpy()  # (len(targets), L)
    explained = torch.cat(outputs).numpy()
    sums = per_position.sum(axis=1)
    ratio = sums / np.where(explained == 0, np.nan, explained)
    total = per_position[-1]
    conservation = {"relevance_sum": float(sums[-1]), "output": float(explained[-1]), "ratio": float(ratio[-1]),
                    "note": "Σ relevance over every position of the row (template tokens included) / Σ response logits; "
                            "AttnLRP's softmax rule, the causal mask and biases are not conservative, so it is near, not at, 1"}
    if per_token:
        conservation["per_token_ratio"] = [float(r) for r in ratio[:-1]]
    extras = {"method": "attnlrp", "target": TARGET, "per_token": bool(per_token), "n_prompt_tokens": row.n_prompt,
              "n_response_tokens": n_resp, "n_text_tokens": int(row.text_mask.sum()), "tokens": token_table(row),
              "rules": {"rms_norm": "identity (normalizer detached)", "activation": "identity (act(x)/x detached)",
                        "bilinear": "uniform (q·kᵀ, attention·v, act(gate)·up: half the gradient to each factor)",
                        "softmax": "AttnLRP softmax rule x_i(R_i − s_i Σ_j R_j) (its own gradient × input)",
                        "linear": "epsilon rule, ε → 0 (plain gradient)"},
              "baseline": None, "completeness": None, "conservation": conservation,
              "outside_units": outside_units(total, row), "seconds": time.perf_counter() - began}
    coefficients = to_units(total, row, n_units)
    token_coefficients = to_units(per_position[:-1], row, n_units).T.copy() if per_token else None
    return WhiteBoxResult(coefficients, token_coefficients, extras)
