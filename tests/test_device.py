"""Devices and precision of local models: names checked at the boundary (one-line errors,
exit status 2), a backend per (name, device, dtype), and bfloat16 on the CPU close to float32
on the embedded model, with the device, dtype and scorer recorded in the explanation."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from body_spy import BodySpy
from gsmile.backends import resolve_model
from gsmile.backends.devices import DEVICES, check_device, check_dtype, resolve_device
from gsmile.cli import main
from gsmile.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "What is the capital of France and why?"
RESPONSE = "The capital of France is Paris."  # 7 tokens
#: bfloat16 against float32 on the CPU, the 7-token response above. Measured: |Δ summed log p|
#: 0.15 and 0.16 nats (two prompts), at most 0.17 at one token; occlusion coefficients (logprob
#: target, in nats) within 0.19 of 4.97, the largest (3.8%), the same top 3 (the 3rd and 4th
#: are 0.02 apart in float32, so only the top 2 are asserted). The tolerances leave a 3x margin
#: or more.
BF16_SUM_LOGP = 0.5
BF16_TOKEN_LOGP = 0.5
BF16_COEF = 0.15  # of the largest |coefficient|


def _gpu_here() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------- names and errors
def test_names_are_checked_without_torch_and_listed():
    assert check_device(None) == "auto" and check_device(" CUDA:1 ") == "cuda:1" and check_device("auto-map") == "auto-map"
    assert check_dtype(None) == "float32" and check_dtype("BFloat16") == "bfloat16"
    for bad in ("tpu", "cuda:x", "cuda:N", 3, ""):
        with pytest.raises(InvalidInputError, match="unknown device") as info:
            check_device(bad)
        assert info.value.field == "device" and all(d in str(info.value) for d in DEVICES)
    with pytest.raises(InvalidInputError, match="unknown dtype 'fp8'; choose one of: float32, bfloat16, float16"):
        check_dtype("fp8")


@pytest.mark.skipif("_gpu_here()")
def test_missing_devices_and_cpu_float16_are_refused():
    assert resolve_device("auto", None) == ("cpu", "float32")
    assert resolve_device("cpu", "bfloat16") == ("cpu", "bfloat16")
    for device in ("cuda", "cuda:1", "auto-map"):
        with pytest.raises(InvalidInputError, match=f"device '{device}'.*available here.*available: auto, cpu"):
            resolve_device(device)
    with pytest.raises(InvalidInputError, match="float16 is not supported on the cpu") as info:
        resolve_device("cpu", "float16")
    assert info.value.field == "dtype"
    with pytest.raises(InvalidInputError, match="auto chose it"):
        resolve_device(None, "float16")


@pytest.mark.skipif("_gpu_here()")
@pytest.mark.parametrize("command", [["explain", PROMPT], ["audit", "cases.jsonl", "--out", "out"], ["evaluate", "exp.json"]])
def test_cli_device_without_gpu_is_one_line_exit_2(command, capsys):
    code = main([*command, "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("gsmile: error: device 'cuda' is not available here") and "available: auto, cpu" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", PROMPT, "--device", "tpu"], "argument --device: unknown device 'tpu'; choose one of: auto, cpu, cuda, cuda:N, mps, auto-map"),
        (["explain", PROMPT, "--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
        (["serve", "--dtype", "half"], "argument --dtype: invalid choice: 'half'"),
        (["evaluate", "exp.json", "--device", "gpu"], "unknown device 'gpu'"),
    ],
)
def test_cli_unknown_names_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_device_applies_to_local_models_only(capsys):
    code = main(["explain", PROMPT, "--model", "openai:some-model", "--dtype", "bfloat16", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "dtype applies only to a local model given by name" in err
    with pytest.raises(InvalidInputError, match="appl(y|ies) only to a local model"):
        resolve_model(lambda texts: [0.0] * len(texts), device="cpu")


def test_server_settings_check_device_and_dtype():
    from gsmile.server.settings import Settings

    settings = Settings.from_env({"GSMILE_DEVICE": "CPU", "GSMILE_DTYPE": "bfloat16"})
    assert (settings.device, settings.dtype) == ("cpu", "bfloat16")
    assert Settings.from_env({}).device is None  # unset: the library's default (auto, float32)
    with pytest.raises(InvalidInputError, match="GSMILE_DTYPE: unknown dtype 'fp4'") as info:
        Settings.from_env({"GSMILE_DTYPE": "fp4"})
    assert info.value.field == "dtype"


def test_gpu_check_without_gpu_says_so_and_exits_0():
    if _gpu_here():
        pytest.skip("a GPU is here: bench/gpu_check.py runs the real check")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gpu_check: no CUDA GPU here") and len(done.stdout.strip().splitlines()) == 1


# ----------------------------------------------------------------- the embedded model
@pytest.fixture(scope="module")
def bf16():
    return resolve_model("local", device="cpu", dtype="bfloat16").load()


@pytest.mark.model
def test_loaded_cache_is_per_device_and_dtype(lm, bf16):
    import torch

    assert resolve_model("local") is lm and resolve_model("smollm2", dtype="float32") is lm
    if not _gpu_here():
        assert resolve_model("local", device="auto") is lm and resolve_model("local", device="cpu") is lm
    assert bf16 is not lm and resolve_model("local", dtype="bfloat16") is bf16
    assert (bf16.device, bf16.dtype, bf16.model.dtype) == ("cpu", "bfloat16", torch.bfloat16)
    assert lm.model.dtype == torch.float32 and bf16.device_ == torch.device("cpu")


@pytest.mark.model
def test_bfloat16_log_probs_agree_with_float32(lm, bf16):
    prompts = [PROMPT, "What is the capital of Spain?"]
    ids = lm.encode_response(RESPONSE)
    picked = [m.logprobs(prompts, ids)[:, np.arange(len(ids)), ids] for m in (lm, bf16)]
    token_gap = np.abs(picked[0] - picked[1])
    sum_gap = np.abs(picked[0].sum(axis=1) - picked[1].sum(axis=1))
    assert sum_gap.max() < BF16_SUM_LOGP and token_gap.max() < BF16_TOKEN_LOGP
    assert sum_gap.max() > 1e-4  # the bfloat16 weights are really used


@pytest.mark.model
def test_bfloat16_explanation_agrees_and_records_its_scorer(lm, bf16):
    import gsmile

    exps = [gsmile.Explainer(m, method="occlusion", target="logprob").explain(PROMPT, RESPONSE) for m in (lm, bf16)]
    coefs = [np.asarray(e.coefficients) for e in exps]
    assert np.abs(coefs[0] - coefs[1]).max() < BF16_COEF * np.abs(coefs[0]).max()
    assert [a.index for a in exps[0].top(2)] == [a.index for a in exps[1].top(2)]
    assert {k: exps[0].extras[k] for k in ("device", "dtype", "fast_path")} == {"device": "cpu", "dtype": "float32", "fast_path": True}
    extras = exps[1].extras
    assert (extras["device"], extras["dtype"], extras["fast_path"]) == ("cpu", "bfloat16", True)  # the lean body, in bfloat16
    assert "fast_path_reason" not in extras
    assert gsmile.Explanation.from_json(exps[1].to_json()).extras["dtype"] == "bfloat16"
    from gsmile.cli import _extra_lines

    assert "Model ran on cpu in bfloat16; scored by the lean Llama body" in _extra_lines(exps[1])
    assert extras["bfloat16_hardware"] in (True, False, None) and "bfloat16_hardware" not in exps[0].extras
    emulated = gsmile.Explanation.from_json(exps[1].to_json())
    emulated.extras["bfloat16_hardware"] = False  # as on a CPU without AVX-512 BF16 or AMX
    assert any("torch emulates them, slower than float32" in line for line in _extra_lines(emulated))
    if extras["bfloat16_hardware"] is not False:
        assert not any("emulates" in line for line in _extra_lines(exps[1]))
    assert not any(line.startswith("Model ran") for line in _extra_lines(exps[0]))


@pytest.mark.model
def test_bfloat16_lean_body_is_as_close_to_float32_as_transformers_forward(lm, bf16):
    """The lean body in bfloat16 (norms in float32, as transformers') against transformers'
    forward on the same bfloat16 weights, both against float32, over 10 prompts and a
    16-token response. Measured: mean |Δ summed log p| against float32 0.27 nats (lean) and
    0.28 (transformers), per token at most 0.18 between the two: rounding of the same size,
    not a different model."""
    from gsmile.backends.local import HFCausalLM

    twin = HFCausalLM(bf16.path, model_id=bf16.model_id, dtype="bfloat16")
    twin._model, twin._tokenizer, twin.fast_path = bf16._model, bf16._tokenizer, False
    prompts = ["Explain in one sentence why the sky is blue.", "Name three fruits that are rich in vitamin C.",
               "Who wrote the novel Pride and Prejudice, and when was it published?", PROMPT, "Give me a recipe for pancakes.",
               "Why do cats purr?", "What is 12 times 7?", "Describe the water cycle briefly.",
               "Translate 'good morning' into French.", "What causes earthquakes?"]
    ids = lm.encode_response("Here is a short answer that explains the main idea clearly and simply for you.")
    lean, plain, wide = (m.logprobs(prompts, ids)[:, np.arange(len(ids)), ids] for m in (bf16, twin, lm))
    assert bf16._no_fast_path_reason() is None and twin._no_fast_path_reason() is not None
    assert np.abs(lean - plain).max() < BF16_TOKEN_LOGP
    lean_gap, plain_gap = (float(np.abs(x.sum(1) - wide.sum(1)).mean()) for x in (lean, plain))
    assert lean_gap <= 1.5 * plain_gap + 0.05, (lean_gap, plain_gap)
    assert np.abs(lean - plain).max() > 1e-4  # two computations, not one


@pytest.mark.model
def test_server_places_its_model_from_settings(bf16, tmp_path):
    from gsmile.server import Settings, create_app

    app = create_app(Settings(device="cpu", dtype="bfloat16", jobs_path=tmp_path / "jobs.sqlite3"))
    assert app.state.holder.get() is bf16


def test_audit_resumes_on_another_device_but_not_in_another_dtype():
    from gsmile.audit import _settings

    a, b, c = (_settings("local", options, {}, None) for options in ({"device": "cpu"}, {"device": "cuda:0"}, {"dtype": "bfloat16"}))
    assert a == b and a != c


def test_max_batch_tokens_bounds_the_batch_and_the_pieces_never_the_results(monkeypatch):
    """max_batch_tokens reaches the backend from the library and the CLI; it sets the batch size
    picked for short rows and the pieces long rows are computed in; bad values are refused."""
    from gsmile import backends
    from gsmile.backends import local
    from gsmile.cli import _model, build_parser

    monkeypatch.setattr(backends, "_loaded", dict(backends._loaded))  # the extra backend goes when the test ends
    small = resolve_model("local", max_batch_tokens=64)
    assert small is resolve_model("local", max_batch_tokens=64) and small is not resolve_model("local")
    assert small.max_batch_tokens == 64 and resolve_model("local").max_batch_tokens == local.TOKENS_PER_BATCH
    assert small.suggest_batch_size(64) == 1 and resolve_model("local").suggest_batch_size(64) == 32
    args = build_parser().parse_args(["explain", "a prompt here", "--max-batch-tokens", "64"])
    assert _model(args, "local", max_batch_tokens=args.max_batch_tokens) is small
    with pytest.raises(InvalidInputError, match="max_batch_tokens must be an integer from 64"):
        resolve_model("local", max_batch_tokens=8)
    with pytest.raises(InvalidInputError, match="appl(y|ies) only to a local model") as err:
        resolve_model(lambda texts: [0.0] * len(texts), max_batch_tokens=512)
    assert err.value.field == "max_batch_tokens"
    # Long rows are computed in pieces of at most max_batch_tokens: the same log-probs.
    spies = []
    chain = local.HFCausalLM._chain_hidden
    monkeypatch.setattr(local, "CHAIN_STEMS", 16)
    monkeypatch.setattr(local.HFCausalLM, "_chain_hidden",
                        lambda self, body, *rest: chain(self, spies.append(BodySpy(body)) or spies[-1], *rest))
    prompts = ["The library opens at nine in the morning and closes at six in the evening, every day of the week "
               "but Sunday, when it opens at noon and closes at five in the afternoon. " * 2,
               "The library opens at nine in the morning and closes at six every day."]
    ids = small.encode_response("At nine.")
    got = small.logprobs(prompts, ids)
    pieces = [w for spy in spies for w in spy.widths]
    assert pieces and max(pieces) == 64
    np.testing.assert_allclose(got, resolve_model("local").logprobs(prompts, ids), atol=1e-4)


def test_server_setting_max_batch_tokens():
    from gsmile.server.settings import Settings

    assert Settings.from_env({"GSMILE_MAX_BATCH_TOKENS": "512"}).max_batch_tokens == 512
    assert Settings.from_env({}).max_batch_tokens is None  # unset: the library's default
    with pytest.raises(InvalidInputError, match=r"GSMILE_MAX_BATCH_TOKENS\) must be an integer of at least 64, got 32"):
        Settings.from_env({"GSMILE_MAX_BATCH_TOKENS": "32"})


def test_bfloat16_hardware_is_known_or_said_unknown(monkeypatch):
    import torch

    from gsmile.backends.devices import cpu_has_fast_bfloat16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_has_fast_bfloat16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_has_fast_bfloat16() is True
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert cpu_has_fast_bfloat16() is None  # a torch without the query: unknown, never an error


@pytest.mark.model
def test_the_gpu_check_runs_its_comparisons_with_the_cpu_in_the_gpus_place(lm, bf16, monkeypatch, capsys):
    """bench/gpu_check.py has never had a GPU; --device cpu runs its own logic here: float32
    against itself (exactly equal) and bfloat16 within its tolerances; with a tolerance no
    bfloat16 run can meet, the same run fails with exit status 1."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    argv = ["--device", "cpu", "--prompts", "1", "--samples", "16", "--max-new-tokens", "8"]
    assert gpu_check.main(argv) == 0
    out = capsys.readouterr().out
    assert "cpu/float32 (again) prompt 0: |Δ log p| 0.0000 nats" in out and "max |Δ coef| 0.0000" in out
    assert "cpu/bfloat16" in out and "recorded device cpu, dtype bfloat16, fast path True" in out
    assert out.rstrip().endswith("every configuration within its tolerances")
    monkeypatch.setattr(gpu_check, "BF16_COEF", 1e-9)
    assert gpu_check.main(argv) == 1
    assert "cpu/bfloat16 prompt 0" in capsys.readouterr().out.splitlines()[-1]


def test_auto_map_loads_through_accelerate_and_scores_like_the_plain_load(tiny_lm, monkeypatch):
    """auto-map needs a GPU and is refused here, so its loading path (accelerate's
    ``device_map="auto"``) would never run in CI; with the refusal lifted, accelerate puts the
    tiny Llama on the CPU, its one device, the explanation records it, and the log-probs are
    those of the model loaded without a device map."""
    from transformers import AutoModelForCausalLM

    from gsmile.backends import devices
    from gsmile.backends.local import HFCausalLM

    real = devices.resolve_device
    monkeypatch.setattr(devices, "resolve_device", lambda d=None, t=None: ("auto-map", "float32") if d == "auto-map" else real(d, t))
    asked = []
    load = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: asked.append(k) or load(*a, **k))
    spread = HFCausalLM.from_path(str(tiny_lm.path), device="auto-map").load()
    assert asked[-1]["device_map"] == "auto"
    assert spread.device == "auto-map" and spread.model is not tiny_lm.model
    assert spread.explanation_extras()["device"] == "auto-map: cpu"
    prompts = ["f1 f2 v3 f4 f5 f6", "v0 f1 f1 f1 f1 f1"]
    ids = tiny_lm.encode_response("a3")
    np.testing.assert_allclose(spread.logprobs(prompts, ids), tiny_lm.logprobs(prompts, ids), atol=1e-5)
