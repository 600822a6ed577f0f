"""The lean Llama body against transformers' own forward, on a small random Llama (fast; the
embedded model's check is in test_scorer_model.py)."""

import numpy as np
import pytest

import torch  # noqa: E402
import transformers  # noqa: E402

from body_spy import BodySpy  # noqa: E402
from threads import run_together  # noqa: E402
from gsmile.backends import llama_fast  # noqa: E402


def tiny_llama(**overrides):
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=1000.0, **overrides,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_supports_only_plain_llamas_in_float32_or_bfloat16():
    assert llama_fast.supports(tiny_llama())
    assert llama_fast.supports(tiny_llama().to(torch.bfloat16))
    assert not llama_fast.supports(tiny_llama().to(torch.float16))
    assert not llama_fast.supports(tiny_llama(mlp_bias=True))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    assert not llama_fast.supports(gpt2.eval())


@pytest.mark.parametrize("prefix", [0, 5])
def test_lean_body_matches_transformers_on_right_padded_rows(prefix):
    model = tiny_llama()
    rows = [[3, 14, 15, 92, 65, 35, 89, 79], [26, 53, 58], [9, 79, 32, 38, 46]]
    shared = [7, 1, 8, 2, 8][:prefix]
    width = max(map(len, rows))
    with torch.inference_mode():
        want = [model.model(input_ids=torch.tensor([shared + r])).last_hidden_state[0, prefix:] for r in rows]
        past = None
        if prefix:
            cache = model.model(input_ids=torch.tensor([shared]), use_cache=True).past_key_values
            past = [(layer.keys, layer.values) for layer in cache.layers]
        body = llama_fast.LlamaBody(model)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        got = body(ids, past, prefix)
        for b, r in enumerate(rows):  # the real positions; pads' own outputs are never read
            torch.testing.assert_close(got[b, : len(r)], want[b], rtol=0, atol=1e-5)
        # the stacked weights are the modules' own memory: transformers' forward is unchanged
        again = model.model(input_ids=torch.tensor([shared + rows[0]])).last_hidden_state[0, prefix:]
        torch.testing.assert_close(again, want[0], rtol=0, atol=0)
        attn = model.model.layers[0].self_attn
        assert attn.k_proj.weight.data_ptr() == attn.q_proj.weight.data_ptr() + attn.q_proj.weight.numel() * 4


def test_lean_body_in_bfloat16_is_transformers_in_bfloat16_to_rounding():
    """Same weights in bfloat16: the lean body against transformers' forward, both against
    float32. On this small model the two bfloat16 results are equal (measured gap 0.0; in
    general rounding may differ, so up to 0.1 is allowed, far from a wrong computation with
    hidden states of size ~1), while bfloat16 is 0.03 from float32."""
    model = tiny_llama()
    rows = [[3, 14, 15, 92, 65, 35, 89, 79], [26, 53, 58, 9, 79, 32, 38, 46]]
    with torch.inference_mode():
        wide = model.model(input_ids=torch.tensor(rows)).last_hidden_state
        model = model.to(torch.bfloat16)
        plain = model.model(input_ids=torch.tensor(rows)).last_hidden_state.float()
        lean = llama_fast.LlamaBody(model)(torch.tensor(rows))
    assert lean.dtype == torch.bfloat16
    lean = lean.float()
    gap, plain_gap = float((lean - plain).abs().max()), float((plain - wide).abs().max())
    assert plain_gap > 1e-3  # bfloat16 really was used
    assert gap < 0.1 and float((lean - wide).abs().max()) < 2 * plain_gap + 0.02, (gap, plain_gap)


def tree_scorer(model, prefix):
    """The local scorer around a small random Llama, its template prefix given."""
    import types

    from gsmile.backends.local import HFCausalLM

    lm = HFCausalLM("/nonexistent")
    lm._model = model
    lm._tokenizer = types.SimpleNamespace(pad_token_id=0)
    with torch.inference_mode():
        cache = model.model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
    lm._prefix = (prefix, [(layer.keys, layer.values) for layer in cache.layers])
    return lm


PREFIX = [5, 6, 7, 8]
TAIL = [90, 91, 40, 41, 42]  # the template's end, then the response tokens fed
STEMS = [
    [10, 11, 12, 13],
    [10, 11, 12, 14, 15],  # shares three tokens with the first
    [10, 11],
    [],  # everything dropped
    [20, 21, 22, 23, 24, 25, 26],
    [10, 11, 12, 13],  # a repeat
    [20, 30],
]


@pytest.mark.parametrize("tree_nodes, row_chunk, batch_tokens", [
    (256, 512, 2048),  # one tree
    (7, 512, 2048),  # several trees (the longest stem fills one)
    (256, 512, 40),  # more rows than max_batch_tokens holds: the batch in three parts
    (4, 512, 2048),  # stems longer than a tree: rows one after another, each from the start shared with the last
    (4, 3, 2048),  # the same, each row computed three tokens per pass
])
def test_token_tree_scoring_matches_a_plain_pass_per_row(monkeypatch, tree_nodes, row_chunk, batch_tokens):
    from gsmile.backends import local

    monkeypatch.setattr(local, "TREE_NODES", tree_nodes)
    monkeypatch.setattr(local, "CHAIN_STEMS", tree_nodes)
    monkeypatch.setattr(local, "ROW_CHUNK", row_chunk)
    chained = []
    chain = local.HFCausalLM._chain_hidden
    monkeypatch.setattr(local.HFCausalLM, "_chain_hidden", lambda self, *a: chained.append(1) or chain(self, *a))
    model = tiny_llama()
    lm = tree_scorer(model, PREFIX)
    lm.max_batch_tokens = batch_tokens
    passes = []
    tree = local.HFCausalLM._tree_hidden
    monkeypatch.setattr(local.HFCausalLM, "_tree_hidden", lambda self, body, rows, n: passes.append(len(rows)) or tree(self, body, rows, n))
    rows = [PREFIX + s + TAIL for s in STEMS]
    n_resp = 3
    body = lm._fast_body()
    with torch.inference_mode():
        picked = lm._tree_hidden(body, rows, n_resp)
        assert picked.shape == (len(rows), n_resp, 48)
        for b, row in enumerate(rows):
            want = model.model(input_ids=torch.tensor([row])).last_hidden_state[0, -n_resp:]
            torch.testing.assert_close(picked[b], want, rtol=0, atol=1e-5)
    assert bool(chained) == (tree_nodes < max(map(len, STEMS)))
    assert passes[1:] == ([2, 2, 2, 1] if batch_tokens == 40 else [])  # 7 rows of at most 16 tokens: 2 per 40 tokens
    fast = lm._score_rows(rows, n_resp, fast=True)
    plain = lm._score_rows(rows, n_resp, fast=False)
    np.testing.assert_allclose(fast, plain, atol=1e-5)


@pytest.mark.parametrize("tree_nodes, row_chunk", [(7, 512), (4, 3)])  # several trees; rows one after another in pieces
def test_token_tree_in_bfloat16_matches_transformers_in_bfloat16(monkeypatch, tree_nodes, row_chunk):
    from gsmile.backends import local

    monkeypatch.setattr(local, "TREE_NODES", tree_nodes)
    monkeypatch.setattr(local, "CHAIN_STEMS", tree_nodes)
    monkeypatch.setattr(local, "ROW_CHUNK", row_chunk)
    lm = tree_scorer(tiny_llama().to(torch.bfloat16), PREFIX)
    rows = [PREFIX + s + TAIL for s in STEMS]
    fast, plain = lm._score_rows(rows, 3, fast=True), lm._score_rows(rows, 3, fast=False)
    assert fast.dtype == np.float32 and lm._fast_body() is not None
    np.testing.assert_allclose(fast, plain, atol=0.01)  # measured 0.002-0.0025 (bfloat16 to float32: 0.003)


def test_a_lone_long_row_is_computed_in_pieces(monkeypatch):
    """One row shares everything with itself: its "tail" is capped at a piece, so the rest goes
    through pieces too, and the values are a plain pass's."""
    from gsmile.backends import local

    monkeypatch.setattr(local, "ROW_CHUNK", 6)
    monkeypatch.setattr(local, "TREE_NODES", 4)
    monkeypatch.setattr(local, "CHAIN_STEMS", 4)
    model = tiny_llama()
    lm = tree_scorer(model, PREFIX)
    body = lm._fast_body()
    row = PREFIX + list(range(10, 30)) + TAIL
    spy = BodySpy(body)
    with torch.inference_mode():
        picked = lm._tree_hidden(spy, [row], 3)
        want = model.model(input_ids=torch.tensor([row])).last_hidden_state[0, -3:]
    torch.testing.assert_close(picked[0], want, rtol=0, atol=1e-5)
    assert spy.widths and max(spy.widths) <= 6 and sum(spy.widths) == len(row) - len(PREFIX)


def test_token_tree_is_skipped_when_a_row_lacks_the_prefix():
    model = tiny_llama()
    lm = tree_scorer(model, PREFIX)
    rows = [PREFIX + [10, 11] + TAIL, [1, 2, 3, 4, 10] + TAIL]
    with torch.inference_mode():
        assert lm._tree_hidden(lm._fast_body(), rows, 3) is None
    np.testing.assert_allclose(lm._score_rows(rows, 3, fast=True), lm._score_rows(rows, 3, fast=False), atol=1e-5)


def test_rows_scored_row_after_row_from_several_threads_at_once_match_one_by_one(monkeypatch):
    """The shared backend keeps nothing of a batch between rows: threads scoring different long
    stems at the same moment get what each gets alone."""
    from gsmile.backends import local

    monkeypatch.setattr(local, "CHAIN_STEMS", 4)
    monkeypatch.setattr(local, "ROW_CHUNK", 5)
    lm = tree_scorer(tiny_llama(), PREFIX)
    batches = [[PREFIX + [10 + (i * 7 + j) % 80 for j in range(12 + k)] + TAIL for k in range(4)] for i in range(4)]
    alone = [lm._score_rows(rows, 3) for rows in batches]

    def score(rows):
        return [lm._score_rows(rows, 3) for _ in range(3)]

    together = [runs for runs, _, _ in run_together([lambda rows=rows: score(rows) for rows in batches])]
    for got, want in ((g, w) for runs, w in zip(together, alone) for g in runs):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
