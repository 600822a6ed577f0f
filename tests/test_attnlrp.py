"""AttnLRP (gsmile.whitebox.attnlrp): its private functional forward reproduces the HF model's
logits (and, without the rules, its gradients), its rules conserve relevance where they should,
it ranks the deciding word of the tiny trained Llama first, it runs beside other work on the
same shared model without touching it, and it refuses models that are not local Llamas."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tiny_trained_llama as tiny
from threads import run_together  # noqa: E402
from tiny_trained_llama import word_spans  # noqa: E402

from gsmile.errors import InvalidInputError  # noqa: E402
from gsmile.methods.whitebox import CONSERVATION_RANGE, WHITEBOX_METHODS  # noqa: E402
from gsmile.whitebox.attnlrp import attnlrp_attribution, functional_logits  # noqa: E402

PROMPTS = ["f3 f1 v2 f5 f0 f7", "v1 f6 f6 f2 f4 f0", "f0 f2 f4 f6 f1 v3", "f5 f5 f3 v0 f1 f2"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _relevance_sum(model, ids, token, softmax):
    """Σ e · ∂̃logit/∂e over the whole row, and the logit (last position, ``token``)."""
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.nn.functional.embedding(ids, model.get_input_embeddings().weight.detach()).clone().requires_grad_(True)
        out = functional_logits(model, x, softmax=softmax, positions=1)[0, -1, token]
        (grad,) = torch.autograd.grad(out, x)
    return float((grad * x).detach().sum()), float(out.detach())


def _check_forward(lm, texts, atol):
    model = lm.model
    for text in texts:
        ids = torch.tensor([lm.prompt_ids(text)])
        with torch.no_grad():
            ref = model(input_ids=ids, use_cache=False).logits
            embeds = model.get_input_embeddings()(ids)
            for rules in (False, True):  # the rules change gradients only
                torch.testing.assert_close(functional_logits(model, embeds, rules=rules), ref, atol=atol, rtol=1e-5)
            torch.testing.assert_close(functional_logits(model, embeds, positions=2), ref[:, -2:], atol=atol, rtol=1e-5)


def test_the_functional_forward_reproduces_the_tiny_models_logits_and_gradients(tiny_lm):
    """Measured: logits within 3e-7; without the rules, its gradient w.r.t. the embeddings is
    the HF model's (7e-8 off on gradients of about 0.1)."""
    _check_forward(tiny_lm, PROMPTS, atol=1e-5)
    model = tiny_lm.model
    ids = torch.tensor([tiny_lm.prompt_ids(PROMPTS[0])])
    with torch.inference_mode(False), torch.enable_grad():
        x = model.get_input_embeddings()(ids).detach().clone().requires_grad_(True)
        (ours,) = torch.autograd.grad(functional_logits(model, x, rules=False)[0, -1, 15], x)
        (theirs,) = torch.autograd.grad(model(inputs_embeds=x, use_cache=False).logits[0, -1, 15], x)
        (ruled,) = torch.autograd.grad(functional_logits(model, x, rules=True)[0, -1, 15], x)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)
    assert (ruled - theirs).abs().max() > 1e-3  # the rules do change the backward pass


def test_conservation_on_the_tiny_model(tiny_lm):
    """With the softmax detached (CP-LRP) every rule left is conservative on this bias-free model,
    so Σ relevance = the logit to float rounding: a check that the identity, uniform and
    stop-gradient rules are implemented right. With AttnLRP's softmax rule (not conservative),
    measured: 0.50-0.53 of the explained logit on the four prompts."""
    model = tiny_lm.model
    for text in PROMPTS:
        ids = torch.tensor([tiny_lm.prompt_ids(text)])
        answer = tiny_lm.encode_response(tiny.answer(text.split()))[0]
        cp_sum, logit = _relevance_sum(model, ids, answer, "cp")
        assert cp_sum == pytest.approx(logit, rel=1e-4, abs=1e-5)
        res = attnlrp_attribution(tiny_lm, text, word_spans(text), [answer])
        cons = res.extras["conservation"]
        assert cons["output"] == pytest.approx(logit, rel=1e-5)
        assert 0.45 <= cons["ratio"] <= 0.6, cons
        assert cons["per_token_ratio"] == [pytest.approx(cons["ratio"])]
        assert WHITEBOX_METHODS["attnlrp"]().issues(res) == []


def test_attnlrp_ranks_the_deciding_word_first(tiny_lm):
    """Measured: the value word gets 1.55-1.75, every filler |value| <= 0.005."""
    for text in PROMPTS:
        words = text.split()
        response = tiny_lm.encode_response(tiny.answer(words))
        res = attnlrp_attribution(tiny_lm, text, word_spans(text), response)
        value_at = next(i for i, w in enumerate(words) if w in tiny.VALUES)
        assert int(np.argmax(np.abs(res.coefficients))) == value_at, (text, res.coefficients)
        assert res.coefficients[value_at] > 10 * np.delete(np.abs(res.coefficients), value_at).max()
        assert res.extras["outside_units"]["text_tokens"] == []
        assert res.token_coefficients.shape == (6, 1)


def test_per_token_rows_sum_to_the_total(tiny_lm):
    text = PROMPTS[0]
    response = tiny_lm.encode_response("a2 <end>")
    assert len(response) == 2
    res = attnlrp_attribution(tiny_lm, text, word_spans(text), response)
    assert res.token_coefficients.shape == (6, 2)
    np.testing.assert_allclose(res.token_coefficients.sum(axis=1), res.coefficients, rtol=1e-4, atol=1e-6)
    total = attnlrp_attribution(tiny_lm, text, word_spans(text), response, per_token=False)
    assert total.token_coefficients is None
    np.testing.assert_allclose(total.coefficients, res.coefficients, rtol=1e-5, atol=1e-7)


def test_beside_other_work_on_the_shared_model(tiny_lm):
    """AttnLRP in one thread while black-box scoring (lm.logprobs) and integrated gradients
    (through transformers' own forward) run in others: each gives what it gives alone; the
    shared model's parameters, requires_grad, .grad, hooks and config are as they were."""
    from gsmile.whitebox.gradients import gradient_attribution

    model = tiny_lm.model
    text, other = PROMPTS[1], PROMPTS[2]
    resp = tiny_lm.encode_response(tiny.answer(text.split()))
    jobs = {"lrp": lambda: attnlrp_attribution(tiny_lm, text, word_spans(text), resp).coefficients,
            "black": lambda: tiny_lm.logprobs([text, other, "f0 f0 f0 v1 f0 f0"] * 4, resp),
            "ig": lambda: gradient_attribution(tiny_lm, other, word_spans(other), resp, method="integrated_gradients",
                                               steps=8, max_steps=8).coefficients}
    alone = {k: job() for k, job in jobs.items()}
    # (after the black-box scoring: its lean body sets requires_grad=False once on weights it stacks)
    before = {n: (p.requires_grad, p.grad, p.detach().clone()) for n, p in model.named_parameters()}
    attn = model.config._attn_implementation
    for _ in range(3):
        ten = [lambda job=job: [job() for _ in range(10)] for job in jobs.values()]
        together = dict(zip(jobs, (result for result, _, _ in run_together(ten))))
        for key in jobs:
            for value in together[key]:
                np.testing.assert_allclose(value, alone[key], rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        requires_grad, grad, value = before[n]
        assert p.requires_grad == requires_grad and p.grad is grad and torch.equal(p.detach(), value), n
    assert model.config._attn_implementation == attn
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def test_only_local_llamas_are_accepted(tiny_lm):
    from gsmile.backends import resolve_model
    from gsmile.backends.openai import OpenAIBackend

    scalar = resolve_model(lambda texts: [0.0 for _ in texts])
    api = OpenAIBackend("some-model", base_url="http://127.0.0.1:9/v1", api_key="x")
    for model in (scalar, api, "local"):
        with pytest.raises(InvalidInputError, match=r"^attnlrp methods need a local model \(local, hf:PATH\) whose internals gsmile can read; .* is not one$"):
            attnlrp_attribution(model, "a b", [(0, 1)], [1])

    class NotLlama:
        config = type("Config", (), {"model_type": "gpt2"})()

    with pytest.raises(InvalidInputError, match="Llama-architecture models only; this one is 'gpt2'"):
        functional_logits(NotLlama(), torch.zeros(1, 2, 4))
    with pytest.raises(InvalidInputError, match="response is empty"):
        attnlrp_attribution(tiny_lm, PROMPTS[0], word_spans(PROMPTS[0]), [])


def test_issues_flag_poor_conservation():
    from gsmile.whitebox.gradients import WhiteBoxResult

    method = WHITEBOX_METHODS["attnlrp"]()
    lo, hi = CONSERVATION_RANGE
    for ratio, flagged in ((0.37, False), (lo / 2, True), (hi * 2, True), (float("nan"), True)):
        res = WhiteBoxResult(np.zeros(2), None, {"conservation": {"ratio": ratio}})
        assert bool(method.issues(res)) == flagged, ratio


# ------------------------------------------------------------------ the embedded SmolLM2
@pytest.mark.model
def test_the_functional_forward_reproduces_the_embedded_models_logits(lm):
    """Measured: 5.8e-5 off on logits up to 38 (float32; transformers runs SDPA attention)."""
    _check_forward(lm, ["What is the capital of France?"], atol=1e-4)


@pytest.mark.model
def test_conservation_and_ranking_on_the_embedded_model(lm):
    """CP-LRP: Σ relevance = the logit (SmolLM2 has no biases). AttnLRP: measured 0.34-0.41 of the
    explained logits on seven prompts (0.367 here); "France?" gets the most relevance of the
    units (0.70; the template's tokens get 86% of |relevance|)."""
    text = "What is the capital of France?"
    response = lm.encode_response("Paris")
    ids = torch.tensor([lm.prompt_ids(text)])
    cp_sum, logit = _relevance_sum(lm.model, ids, response[0], "cp")
    assert cp_sum == pytest.approx(logit, rel=1e-3)
    res = attnlrp_attribution(lm, text, word_spans(text), response)
    cons = res.extras["conservation"]
    assert cons["output"] == pytest.approx(logit, rel=1e-4)
    assert 0.3 <= cons["ratio"] <= 0.45, cons
    assert int(np.argmax(res.coefficients)) == 5, res.coefficients
    assert WHITEBOX_METHODS["attnlrp"]().issues(res) == []
