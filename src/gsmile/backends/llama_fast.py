"""A leaner forward pass through a Llama-architecture body (the embedded SmolLM2 is one), used
by :class:`~gsmile.backends.local.HFCausalLM` to score batches of perturbed prompts.

It computes what transformers' ``LlamaModel`` computes, from the same weights, with less
work around the matrix products, which are most of the time on a CPU:

- the query, key and value projections are one matrix product, and so are the gate and up
  projections (their weights are stacked once; the modules' own weights become views of the
  stacked ones, so nothing is held twice and transformers' forward still works);
- the rotary embedding is applied to queries and keys together, in place;
- no padding mask: rows are right-padded, and in a causal model a real position never
  attends to a later one, so the pads cannot change it (their own outputs are never read);
- the residual stream is updated in place, and RMSNorm is a norm and two products.

Only the model's last hidden states come out (after the final norm); the caller applies
the output layer at the positions it needs. ``tests/test_llama_fast.py`` (a small random
Llama) and ``tests/test_scorer_model.py`` (the embedded model) check the result against
transformers' forward; they differ only by float rounding (the products and norms are
grouped differently).
"""

from __future__ import annotations

#: The precisions the lean body runs in (on the CPU): float32, and bfloat16, whose products
#: CPUs with AMX or AVX-512 BF16 run 2-3 times as fast (as transformers does, its norms are
#: computed in float32 and its residual stream is kept in bfloat16).
DTYPES = ("float32", "bfloat16")


def supports(model) -> bool:
    """Whether ``model`` is a plain Llama body on the CPU in float32 or bfloat16 that this pass
    reproduces (to float rounding). On a GPU, or in float16, the caller scores with
    transformers' forward (the lean body's inputs and the caller's token tree are built on
    the CPU)."""
    import torch

    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "llama" or model.training:
        return False
    body = getattr(model, "model", None)
    if body is None or not hasattr(body, "rotary_emb") or not hasattr(body, "layers"):
        return False
    plain = (
        getattr(config, "hidden_act", None) == "silu"
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "pretraining_tp", 1) == 1
    )
    dtypes = tuple(getattr(torch, d) for d in DTYPES)
    params = list(body.parameters())
    return (plain and bool(params) and params[0].dtype in dtypes
            and all(p.dtype == params[0].dtype and p.device.type == "cpu" for p in params))


class LlamaBody:
    """``body(input_ids, past, start)`` → last hidden states ``(rows, width, hidden)``.

    ``past`` is a per-layer list of (keys, values) of a prefix every row shares, each of shape
    ``(1, kv_heads, start, head_dim)`` as transformers caches them (keys after the rotary
    embedding), or None with ``start`` 0. ``input_ids`` continue that prefix at position
    ``start``; rows may be right-padded.

    For a past that differs by row (a token tree, see ``HFCausalLM._tree_hidden``) give
    ``positions`` ``(rows, width)`` (each token's position, for the rotary embedding), ``mask``
    ``(rows, 1, width, past + width)`` (True where a token may attend) and per-row past
    tensors ``(rows, kv_heads, past, head_dim)``. ``kv_only=True`` returns each layer's
    (keys, values) of ``input_ids`` instead of hidden states, and skips the work only the
    hidden states need (the last layer's attention and MLP). ``keep_kv=True`` returns
    ``(hidden, kv)``: the hidden states and each layer's (keys, values) of the prefix and
    ``input_ids`` together, ``(rows, kv_heads, start + width, head_dim)``, to continue from."""

    def __init__(self, model):
        import torch

        config = model.config
        self.body = model.model
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.eps = config.rms_norm_eps
        self.layers = []
        for layer in self.body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = _stack(torch, attn.q_proj, attn.k_proj, attn.v_proj)
            gate_up = _stack(torch, mlp.gate_proj, mlp.up_proj)
            self.layers.append((layer.input_layernorm.weight, qkv, attn.o_proj.weight,
                                layer.post_attention_layernorm.weight, gate_up, mlp.down_proj.weight))

    def __call__(self, input_ids, past=None, start: int = 0, positions=None, mask=None, kv_only: bool = False,
                 keep_kv: bool = False):
        import torch
        import torch.nn.functional as F

        n, width = input_ids.shape
        heads, kv, dim = self.n_heads, self.n_kv, self.head_dim
        half = dim // 2
        x = self.body.embed_tokens(input_ids)
        hidden = x.shape[-1]
        if positions is None:
            positions = torch.arange(start, start + width)[None]
        cos, sin = self.body.rotary_emb(x, positions)  # (1 or rows, width, dim)
        # Broadcast over heads: (1 or rows, width, 1, half) for each half of the head dimension.
        cos1, cos2 = cos[:, :, None, :half], cos[:, :, None, half:]
        sin1, sin2 = sin[:, :, None, :half], sin[:, :, None, half:]
        if mask is None:
            # Causal over the prefix and the rows' own tokens: position i sees keys up to start + i.
            mask = torch.ones((width, start + width), dtype=torch.bool).tril(diagonal=start)
        kept = []
        last = len(self.layers) - 1
        for layer_index, (norm1, qkv_w, o_w, norm2, gate_up_w, down_w) in enumerate(self.layers):
            h = _rms_norm(torch, x, norm1, self.eps)
            qkv = F.linear(h, qkv_w).view(n, width, heads + 2 * kv, dim)
            # Rotary embedding on queries and keys at once, in place:
            # (x1, x2) -> (x1 cos1 - x2 sin1, x2 cos2 + x1 sin2), as transformers' rotate_half.
            x1, x2 = qkv[:, :, : heads + kv, :half], qkv[:, :, : heads + kv, half:]
            a, b = x2 * sin1, x1 * sin2
            x1.mul_(cos1).sub_(a)
            x2.mul_(cos2).add_(b)
            q = qkv[:, :, :heads].transpose(1, 2)
            k = qkv[:, :, heads : heads + kv].transpose(1, 2)
            v = qkv[:, :, heads + kv :].transpose(1, 2)
            if kv_only:
                kept.append((k, v))
                if layer_index == last:
                    return kept
            if past is not None:
                pk, pv = past[layer_index]
                k = torch.cat((pk.expand(n, -1, -1, -1), k), dim=2)
                v = torch.cat((pv.expand(n, -1, -1, -1), v), dim=2)
            if keep_kv:
                kept.append((k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            x.add_(F.linear(out.transpose(1, 2).reshape(n, width, heads * dim), o_w))
            h = _rms_norm(torch, x, norm2, self.eps)
            gate_up = F.linear(h, gate_up_w)
            inner = gate_up.shape[-1] // 2
            act = F.silu(gate_up[..., :inner])
            act.mul_(gate_up[..., inner:])
            x.add_(F.linear(act, down_w))
        hidden = _rms_norm(torch, x, self.body.norm.weight, self.eps)
        return (hidden, kept) if keep_kv else hidden


def _rms_norm(torch, x, weight, eps: float):
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dimension, in three passes over
    ``x`` (a norm, two products); torch's ``rms_norm`` on CPU took 0.64 ms where this takes
    0.39 for a batch's (23, 88, 576). In bfloat16 the normalization is computed in float32 and
    rounded before the weight, as transformers' ``LlamaRMSNorm`` does."""
    if x.dtype != torch.float32:
        wide = x.float()
        scale = torch.linalg.vector_norm(wide, dim=-1, keepdim=True)
        scale.mul_(x.shape[-1] ** -0.5).pow_(2).add_(eps).rsqrt_()
        return wide.mul_(scale).to(x.dtype).mul_(weight)
    scale = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    scale.mul_(x.shape[-1] ** -0.5).pow_(2).add_(eps).rsqrt_()
    return torch.mul(x, scale).mul_(weight)


def _stack(torch, *linears):
    """One weight matrix for several bias-free linear layers on the same input; each layer's
    weight becomes a view of its rows (contiguous), so the stack costs no extra memory."""
    stacked = torch.cat([lin.weight.detach() for lin in linears]).contiguous()
    lo = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(stacked[lo : lo + rows], requires_grad=False)
        lo += rows
    return stacked
