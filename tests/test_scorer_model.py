"""The faster local scorer and the faithfulness metrics on the real embedded model."""

import json

import numpy as np
import pytest

import gsmile
from gsmile.cli import main
from gsmile.faithfulness import evaluate

pytestmark = pytest.mark.model

PROMPTS = [
    "What is the capital of France and why is it historically significant?",
    "capital France why significant?",
    "What is the of and why is it?",
    "Hi",
    "{braces} and a 'quote' \"here\"",
]
RESPONSE = "The capital of France is Paris."


def plain_logprobs(lm, prompts, ids):
    """Log-probs through transformers' own forward (the fast path off)."""
    lm.fast_path = False
    try:
        return lm.logprobs(prompts, ids)
    finally:
        lm.fast_path = True


def long_context_prompts() -> list[str]:
    """Five prompts of about 330 tokens: a 24-sentence context, whole and without one of its
    sentences 23, 20, 3 and 0 (a late removal leaves a long start shared with the whole)."""
    sentences = [f"Room {i} on floor {i % 7} holds {i * 3} boxes of spare parts." for i in range(24)]
    contexts = [" ".join(sentences)] + [" ".join(sentences[:k] + sentences[k + 1:]) for k in (23, 20, 3, 0)]
    return [gsmile.inputs.user_turn("How many boxes are in room 12?", c) for c in contexts]


def spy_on_chains(monkeypatch) -> list:
    """A list that grows by one each time rows are scored one after another (``_chain_hidden``)."""
    from gsmile.backends import local

    chained = []
    chain = local.HFCausalLM._chain_hidden
    monkeypatch.setattr(local.HFCausalLM, "_chain_hidden", lambda self, *a: chained.append(1) or chain(self, *a))
    return chained


def test_fast_path_gives_the_plain_log_probs(lm):
    ids = lm.encode_response(RESPONSE)
    plain = plain_logprobs(lm, PROMPTS, ids)
    fast = lm.logprobs(PROMPTS, ids)
    assert lm._prefix is not None and len(lm._prefix[0]) > 10  # the template prefix was cached
    np.testing.assert_allclose(fast, plain, atol=1e-4)


@pytest.mark.parametrize("response", [RESPONSE, "Paris"])
def test_log_probs_are_those_of_one_plain_forward_pass(lm, response):
    import torch

    ids = lm.encode_response(response)
    prompt = lm.prompt_ids(PROMPTS[0])
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([prompt + ids])).logits[0]
    want = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(ids)], dim=-1).numpy()
    got = lm.logprobs([PROMPTS[0], PROMPTS[1]], ids)[0]
    assert got.shape == want.shape == (len(ids), logits.shape[-1])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_batch_sizes_1_2_3_agree_with_the_fast_path(lm):
    ids = lm.encode_response(RESPONSE)
    whole = lm.logprobs(PROMPTS, ids)
    for b in (1, 2, 3):
        parts = np.concatenate([lm.logprobs(PROMPTS[i : i + b], ids) for i in range(0, len(PROMPTS), b)])
        np.testing.assert_allclose(parts, whole, atol=1e-4)


def test_a_batch_sharing_its_first_words_matches_the_plain_path(lm):
    ids = lm.encode_response(RESPONSE)
    same_start = ["What is the capital of France?", "What is the capital of Spain and why?", "What is the capital city?"]
    rows = [lm.prompt_ids(p) + ids[:-1] for p in same_start]
    length, _ = lm._shared_prefix(rows, len(ids))
    assert length >= len(lm._prefix[0]) + 3  # the batch's own common start was cached too
    fast = lm.logprobs(same_start, ids)
    np.testing.assert_allclose(fast, plain_logprobs(lm, same_start, ids), atol=1e-4)
    single = np.concatenate([lm.logprobs([p], ids) for p in same_start])
    np.testing.assert_allclose(fast, single, atol=1e-4)


def test_long_rows_scored_one_after_another_match_the_plain_path(lm, monkeypatch):
    """Contexts of ~330 tokens (more than a token tree holds): each row reuses the start it
    shares with the row before it, in pieces of ROW_CHUNK tokens; the log-probs are those of
    transformers' forward over each whole row, and do not depend on the batch."""
    from gsmile.backends import local

    monkeypatch.setattr(local, "ROW_CHUNK", 128)  # three pieces per row
    prompts = long_context_prompts()
    assert len(lm.prompt_ids(prompts[0])) > local.TREE_NODES + 30  # stems longer than CHAIN_STEMS, and than a tree
    ids = lm.encode_response("Room 12 holds 36 boxes.")
    chained = spy_on_chains(monkeypatch)
    fast = lm.logprobs(prompts, ids)
    assert chained
    np.testing.assert_allclose(fast, plain_logprobs(lm, prompts, ids), atol=1e-4)
    one_by_one = np.concatenate([lm.logprobs([p], ids) for p in prompts[::-1]])[::-1]
    np.testing.assert_allclose(fast, one_by_one, atol=1e-4)


def scored_as_on_a_gpu(lm):
    """A twin of ``lm`` on the same weights that scores short rows the way a GPU (or a model
    that is not a plain Llama) does: transformers' forward from the template's key/value
    cache, extended over a batch's common start; the lean body is never used. (Long rows it
    scores one after another, as on the CPU, unless ``_chains_without_body`` says no.)"""
    from gsmile.backends.local import HFCausalLM

    twin = HFCausalLM(lm.path, model_id=lm.model_id)
    twin._model, twin._tokenizer, twin._body = lm._model, lm._tokenizer, False
    return twin


def test_the_scorer_gpus_run_gives_the_plain_log_probs(lm, monkeypatch):
    """The path every GPU, float16 or non-Llama model takes had no test of its own (the
    embedded model always took the lean body): its log-probs, whole and reduced, batched or
    row by row, equal transformers' forward over each whole row, and the template cache and
    the batch's common start were really used."""
    from transformers import DynamicCache

    twin = scored_as_on_a_gpu(lm)
    assert twin._fast_body() is None and "not a plain Llama" in twin._no_fast_path_reason()
    same_start = ["What is the capital of France?", "What is the capital of Spain and why?", "What is the capital city?"]
    ids = lm.encode_response(RESPONSE)
    cached = []
    init = DynamicCache.__init__
    monkeypatch.setattr(DynamicCache, "__init__", lambda self, *a, **k: cached.append(1) or init(self, *a, **k))
    for prompts in (PROMPTS, same_start):
        plain = plain_logprobs(lm, prompts, ids)
        cached.clear()
        got = twin.logprobs(prompts, ids)
        assert cached  # the scoring started from a cache, not from the first token
        np.testing.assert_allclose(got, plain, atol=1e-4)
        one_by_one = np.concatenate([twin.logprobs([p], ids) for p in prompts])
        np.testing.assert_allclose(one_by_one, plain, atol=1e-4)
        picked = twin.reduced_logprobs(prompts, ids, lambda lp: lp[:, np.arange(len(ids)), ids].sum(axis=1))
        np.testing.assert_allclose(picked, plain[:, np.arange(len(ids)), ids].sum(axis=1), atol=1e-3)
    rows = [lm.prompt_ids(p) + ids[:-1] for p in same_start]
    assert twin._shared_prefix(rows, len(ids))[0] >= len(twin._prefix[0]) + 3  # the common start was extended


def test_long_rows_without_the_lean_body_reuse_their_shared_starts_on_the_cpu(lm, monkeypatch):
    """A model the lean body does not run (another architecture) still scores long
    rows one after another on the CPU, each from the start it shares with the row before it,
    in pieces: the log-probs are those of transformers' forward over each whole row, and the
    model is fed fewer tokens. Where that is not done (a GPU), it scores whole rows."""
    from gsmile.backends import local

    monkeypatch.setattr(local, "ROW_CHUNK", 128)
    twin = scored_as_on_a_gpu(lm)
    prompts = long_context_prompts()
    ids = lm.encode_response("Room 12 holds 36 boxes.")
    fed = []
    forward = twin.model.model.forward
    monkeypatch.setattr(twin.model.model, "forward", lambda *a, **k: fed.append(k["input_ids"].numel()) or forward(*a, **k))
    chained = twin.logprobs(prompts, ids)
    chained_tokens = sum(fed)
    plain = plain_logprobs(lm, prompts, ids)
    np.testing.assert_allclose(chained, plain, atol=1e-4)
    one_by_one = np.concatenate([twin.logprobs([p], ids) for p in prompts[::-1]])[::-1]
    np.testing.assert_allclose(chained, one_by_one, atol=1e-4)
    whole_rows = sum(len(r) for r in twin._rows(prompts, ids)) - len(prompts) * len(twin._prefix[0])
    assert chained_tokens < 0.75 * whole_rows, (chained_tokens, whole_rows)  # 4 of 5 rows share a long start
    assert twin.suggest_batch_size(len(twin._rows(prompts, ids)[0])) == local.CHAIN_BATCH
    monkeypatch.setattr(local.HFCausalLM, "_chains_without_body", lambda self: False)  # as on a GPU
    fed.clear()
    np.testing.assert_allclose(twin.logprobs(prompts, ids), plain, atol=1e-4)
    assert sum(fed) >= whole_rows


def test_long_rows_without_the_lean_body_scored_at_once_in_two_threads_are_those_scored_alone(lm, monkeypatch):
    """The row-after-row path of transformers' forward keeps its keys and values per call:
    two threads scoring different long inputs on one shared backend at the same moment get
    what each gets alone."""
    from threads import run_together

    from gsmile.backends import local

    monkeypatch.setattr(local, "ROW_CHUNK", 128)
    twin = scored_as_on_a_gpu(lm)
    prompts = long_context_prompts()
    ids = lm.encode_response("Room 12 holds 36 boxes.")
    batches = [prompts[:3], prompts[2:]]
    alone = [twin.logprobs(b, ids) for b in batches]
    together = [r for r, _, _ in run_together([lambda b=b: twin.logprobs(b, ids) for b in batches])]
    for got, want in zip(together, alone):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_qwen(lm, tmp_path_factory):
    """A real other architecture: a tiny Qwen2 (biased q/k/v projections, so the lean body
    does not run it) with random weights large enough that positions and context move its
    log-probs, and the embedded model's tokenizer and chat template."""
    import torch
    import transformers

    from gsmile.backends.local import HFCausalLM

    path = tmp_path_factory.mktemp("tiny_qwen")
    config = transformers.Qwen2Config(vocab_size=len(lm.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                      initializer_range=0.5, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).eval().save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return HFCausalLM.from_path(str(path)).load()


def test_another_architecture_scores_long_rows_from_their_shared_starts(tiny_qwen, monkeypatch):
    from gsmile.backends import local

    monkeypatch.setattr(local, "ROW_CHUNK", 128)
    assert tiny_qwen.model.config.model_type == "qwen2" and tiny_qwen._fast_body() is None
    prompts = long_context_prompts()
    ids = tiny_qwen.encode_response("Room 12 holds 36 boxes.")
    chained = spy_on_chains(monkeypatch)
    got = tiny_qwen.logprobs(prompts, ids)
    assert chained
    plain = plain_logprobs(tiny_qwen, prompts, ids)
    np.testing.assert_allclose(got, plain, atol=1e-4)
    assert np.abs(plain[0] - plain[1]).max() > 1e-2  # the context moves the log-probs: a wrong reuse would show


def test_an_explanation_scored_as_on_a_gpu_matches_the_lean_body_and_says_how_it_was_scored(lm):
    twin = scored_as_on_a_gpu(lm)
    exps = [gsmile.Explainer(m, method="occlusion", target="logprob").explain(PROMPTS[0], RESPONSE) for m in (lm, twin)]
    np.testing.assert_allclose(exps[1].coefficients, exps[0].coefficients, atol=1e-3)
    assert exps[0].extras["fast_path"] is True and exps[1].extras["fast_path"] is False
    assert exps[1].extras["fast_path_reason"] == ("not a plain Llama-architecture model: transformers' forward scores (from the "
                                                  "shared template cache; long inputs row after row, each from the start it shares "
                                                  "with the row before)")


def test_prefix_is_not_used_when_a_row_does_not_start_with_it(lm):
    ids = lm.encode_response(RESPONSE)
    rows = [[1, 2, 3] + lm.prompt_ids("Hi")[3:] + ids[:-1]]  # a different start: no cache
    assert lm._shared_prefix(rows, len(ids)) == (0, None)


def test_evaluate_on_the_real_model(lm, tmp_path, capsys):
    exp = gsmile.explain("Name the capital city of France please.", "Paris.", model=lm, n_samples=20,
                         target="logprob", random_state=0)
    m = evaluate(exp, lm, n_random=1)
    n = len(exp.units)
    assert len(m["deletion"]) == len(m["insertion"]) == n + 1
    assert m["deletion"][0] == 0.0 and m["insertion"][-1] == 0.0
    # the empty prompt is both the end of deletion and the start of insertion
    assert m["deletion"][-1] == pytest.approx(m["insertion"][0])
    assert m["model_calls"] <= 4 * n
    # the explanation's ranking removes log p faster than a random order
    assert m["deletion_aopc"] > m["random_deletion_aopc"]

    path = tmp_path / "exp.json"
    path.write_text(exp.to_json())
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(path), "--json", str(out), "--quiet", "--random-orders", "0"]) == 0
    printed = capsys.readouterr().out
    assert "deletion AOPC" in printed
    saved = json.loads(out.read_text())
    assert saved["deletion_aopc"] == pytest.approx(m["deletion_aopc"], abs=1e-4)


def test_reduced_log_probs_stream_chunks_of_rows_to_reduce(lm, monkeypatch):
    from gsmile.backends import local

    ids = lm.encode_response(RESPONSE)
    whole = lm.logprobs(PROMPTS, ids)
    monkeypatch.setattr(local, "HEAD_POSITIONS", 2 * len(ids))  # two rows per product
    sizes = []

    def reduce(lp):
        sizes.append(len(lp))
        return lp[:, :, :5].copy()  # a reduce keeps nothing it is given

    got = lm.reduced_logprobs(PROMPTS, ids, reduce)
    assert sizes == [2, 2, 1]
    np.testing.assert_allclose(got, whole[:, :, :5], atol=1e-4)
    np.testing.assert_allclose(lm.logprobs(PROMPTS, ids), whole, atol=1e-4)  # the plain result, in chunks too


def test_threads_scoring_at_once_do_not_share_scratch(lm):
    from concurrent.futures import ThreadPoolExecutor

    ids = lm.encode_response(RESPONSE)
    jobs = [PROMPTS[:3], PROMPTS[2:]]
    alone = [lm.reduced_logprobs(p, ids, lambda lp: lp[:, :, :50].copy()) for p in jobs]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda p: lm.reduced_logprobs(p, ids, lambda lp: lp[:, :, :50].copy()), jobs * 2))
    for got, want in zip(together, alone * 2):
        np.testing.assert_allclose(got, want, atol=1e-4)
