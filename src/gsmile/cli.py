"""The ``gsmile`` command: a thin layer over the library.

Arguments are validated here, at the boundary; library errors (GsmileError) are turned
into one line on stderr and exit status 2 once, in :func:`main`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from . import __version__
from .errors import GsmileError, InvalidInputError, ModelError

EXAMPLE_PROMPT = "What is the capital of France and why is it historically significant?"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def _add_api_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a model behind an OpenAI-compatible API (explain and serve)."""
    from .backends.openai import PROMPT_TEMPLATES

    api = parser.add_argument_group("models behind an API (--model openai:NAME or openai-images:NAME)")
    api.add_argument("--base-url", metavar="URL", help="the API's base URL, e.g. http://127.0.0.1:8080/v1 (default: $OPENAI_BASE_URL or https://api.openai.com/v1)")
    api.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the API key (default: OPENAI_API_KEY; none sent when unset)")
    api.add_argument("--prompt-template", metavar="T", help=f"chat markup for the log-prob path: {', '.join(PROMPT_TEMPLATES)} or a text with {{prompt}} (default: chatml)")
    api.add_argument("--top-logprobs", type=int, default=5, metavar="K", help="alternatives per position asked for on the log-prob path (default: 5; OpenAI allows 5, vLLM 20)")
    api.add_argument("--concurrency", type=int, default=4, metavar="N", help="requests in flight at once (default: 4)")
    api.add_argument("--api-batch", type=int, default=1, metavar="N", help="prompts per log-prob request, for servers that accept a list of prompts (OpenAI, vLLM; not llama.cpp) (default: 1)")
    api.add_argument("--max-retries", type=int, default=6, metavar="N", help="retries of a call on 429, 5xx, timeouts and dropped connections (default: 6)")
    api.add_argument("--timeout", type=_positive_float, default=60.0, metavar="S", help="seconds to wait for one answer (default: 60)")
    api.add_argument("--cache-dir", metavar="DIR", help="where the call cache lives (default: <gsmile cache>/calls)")
    api.add_argument("--no-cache", action="store_true", help="neither read nor write the call cache")


def _image_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height)) if sep else None
    except ValueError:
        size = None
    if size is None or min(size) < 8 or max(size) > 8192:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 512x512; got {text!r}")
    return size


def _add_image_flags(parser: argparse.ArgumentParser, explanation: bool = True) -> None:
    """The flags of text-to-image models (--model diffusers:PATH, openai-images:NAME)."""
    from .targets.images import IMAGE_DISTANCE_SYNTAX

    group = parser.add_argument_group("text-to-image models (--model diffusers:PATH or openai-images:NAME)")
    if explanation:
        group.add_argument("--image-seeds", type=int, default=None, metavar="K",
                           help="images per prompt, from seeds 0..K-1, the same for every perturbed prompt (common random numbers); "
                                "K > 1 compares the two sets of images by the Wasserstein distance (default: 1)")
        group.add_argument("--embedder", default=None, metavar="|".join(IMAGE_DISTANCE_SYNTAX.values()),
                           help="how two images are compared: pixel (RMS difference at 64x64, no weights), clip:PATH (1 - cosine of "
                                "the image embeddings of a CLIP model saved in PATH) or lpips (the lpips package) (default: pixel)")
    group.add_argument("--image-steps", type=int, default=None, metavar="N", help="denoising steps (default: the pipeline's or server's)")
    group.add_argument("--image-size", type=_image_size, default=None, metavar="WxH", help="image size in pixels, e.g. 512x512 (default: the model's)")
    group.add_argument("--guidance-scale", type=float, default=None, metavar="X", help="classifier-free guidance (default: the model's)")


def _device(text: str) -> str:
    from .backends.devices import check_device

    try:
        return check_device(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_device_flags(parser: argparse.ArgumentParser, default: str = "") -> None:
    """``--device`` and ``--dtype``: where a local model (local, hf:PATH) runs and in which
    precision (explain, audit, evaluate, serve); see :mod:`gsmile.backends.devices`."""
    from .backends.devices import DEVICES, DTYPES

    group = parser.add_argument_group("local models (--model local or hf:PATH)")
    group.add_argument("--device", type=_device, default=None, metavar="DEVICE",
                       help=f"where the model runs: {', '.join(DEVICES)}; auto is the first CUDA GPU, else mps, else cpu; "
                            f"auto-map spreads a model too large for one GPU over all of them (accelerate) (default: {default}auto)")
    group.add_argument("--dtype", default=None, choices=DTYPES,
                       help=f"precision of the weights; float16 only on a GPU (default: {default}float32)")
    group.add_argument("--max-batch-tokens", type=int, default=None, metavar="N",
                       help=f"most tokens one scoring pass computes, which bounds its memory; never changes results "
                            f"(default: {default.replace('GSMILE_DEVICE / GSMILE_DTYPE', 'GSMILE_MAX_BATCH_TOKENS')}2048)")


#: argparse ``dest`` of a method option's flag (kept apart from the other flags' names).
_OPTION_DEST = "method_option_{}"

_METAVARS = {int: "N", float: "X", bool: "BOOL", str: "TEXT"}


def _option_owners() -> dict[str, list[tuple[str, object]]]:
    """Option name -> [(method, spec)] over every method, in registry order."""
    from .methods import METHODS, option_specs

    owners: dict[str, list] = {}
    for method in METHODS:
        for name, spec in option_specs(method).items():
            owners.setdefault(name, []).append((method, spec))
    return owners


def _add_method_option_flags(parser: argparse.ArgumentParser) -> None:
    """``-o NAME=VALUE`` and one ``--kebab-name`` flag per method option, all from the methods'
    option specs (values are parsed by :func:`gsmile.methods.parse_option` once the method is
    known)."""
    group = parser.add_argument_group("method options (each flag applies to the methods named in its help; see gsmile methods)")
    group.add_argument("-o", "--option", action="append", default=[], metavar="NAME=VALUE", dest="method_option_items",
                       help="set an option of the chosen method (repeatable), e.g. -o kernel_width=0.5; none for None")
    for name, owners in _option_owners().items():
        first = owners[0][1]
        if all(spec.help == first.help and spec.default == first.default for _, spec in owners):
            text = f"{', '.join(m for m, _ in owners)}: {first.help} (default: {_shown(first.default)})"
        else:
            text = "; ".join(f"{m}: {spec.help} (default: {_shown(spec.default)})" for m, spec in owners)
        metavar = "{" + ",".join(first.choices) + "}" if first.choices else _METAVARS[first.type]
        group.add_argument(first.flag, default=None, metavar=metavar, dest=_OPTION_DEST.format(name),
                           help=text.replace("%", "%%"))


def _shown(value) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _add_explanation_flags(p: argparse.ArgumentParser) -> None:
    """The flags that shape an explanation (explain and audit take the same)."""
    from .backends import MODELS
    from .explainer import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_ROUNDS, DEFAULT_SAMPLES
    from .methods import METHODS
    from .surrogates import SURROGATES
    from .targets import TARGETS, TEXT_TARGETS
    from .units import SEGMENTERS

    p.add_argument("--model", default="local", help=f"model: {', '.join(MODELS)} (the embedded SmolLM2), hf:PATH (a local Hugging Face model directory), openai:NAME (a model behind an OpenAI-compatible API; see --base-url), diffusers:PATH (a local diffusers text-to-image pipeline) or openai-images:NAME (an OpenAI-compatible images API) (default: local)")
    p.add_argument("--method", default="gsmile", choices=sorted(METHODS), help="attribution method (default: gsmile)")
    p.add_argument("--unit", default=None, choices=list(SEGMENTERS), help="unit of the explained text (default: word for the prompt, sentence for a context)")
    p.add_argument("--refine", default=None, choices=list(SEGMENTERS), metavar="UNIT",
                   help="coarse-to-fine: explain --unit units first, then split the most important ones into these finer units (e.g. --unit sentence --refine word); see docs/long-inputs.md")
    p.add_argument("--refine-top", type=int, default=3, metavar="N", help="coarse units refined with --refine (default: 3)")
    p.add_argument("--refine-share", type=float, default=0.5, metavar="F", help="share of the budget spent on the coarse level with --refine (default: 0.5)")
    p.add_argument("--surrogate", default=None, choices=list(SURROGATES),
                   help="lasso: a sparse fit that keeps few units (penalty by cross-validation), for more units than the samples pin down "
                        "(default: the method's least squares, or lasso when the budget is smaller than the units + 1)")
    p.add_argument("--max-units", type=int, default=None, metavar="N", help="with --surrogate lasso: keep at most N units (ContextCite's choice)")
    p.add_argument("--interactions", type=int, default=None, metavar="K",
                   help="pairwise interactions (k-SII, with shapiq) among the K most important units (2-20); exact up to 8 (2^K evaluations)")
    p.add_argument("--interaction-budget", type=int, default=None, metavar="N", help="model evaluations for --interactions (default: exact up to K=8, else 256)")
    p.add_argument("--target", default="wasserstein", choices=list(TARGETS) + list(TEXT_TARGETS), help="output shift measured; embedding regenerates each perturbation and compares texts (default: wasserstein)")
    p.add_argument("--contrast", default=None, metavar="TEXT",
                   help="why the response rather than TEXT: explain log p(response) - log p(TEXT) (needs log-probabilities; replaces --target)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N", help=f"perturbed prompts to draw (default: {DEFAULT_SAMPLES})")
    _add_method_option_flags(p)
    p.add_argument("--runs", type=int, default=1, metavar="R", help="repeat with seeds seed..seed+R-1 and report stability (default: 1)")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="top units compared across runs for stability (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same explanation (default: 0)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="prompts per forward pass; never changes results (default: chosen from the sequence length)")
    p.add_argument("--max-evals", type=int, default=None, metavar="N",
                   help="a budget of model evaluations instead of --samples: draw masks until their distinct ones fill it")
    p.add_argument("--until-stable", action="store_true", help="sample in rounds of --samples until the top units stop changing between rounds")
    p.add_argument("--max-rounds", type=int, default=DEFAULT_MAX_ROUNDS, metavar="N", help=f"most rounds of --until-stable (default: {DEFAULT_MAX_ROUNDS})")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N", help=f"length of the generated response (default: {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="most tokens of one model input (template and response included): a longer input is cut from its beginning, "
                        "context first, and the cut is recorded (default: refuse an input longer than the model's window)")
    _add_device_flags(p)
    _add_image_flags(p)
    _add_api_flags(p)


def build_parser() -> argparse.ArgumentParser:
    from .backends import MODELS
    from .methods import DOCS_COMMAND

    parser = _Parser(prog="gsmile", description="Explain which parts of a prompt drive a generative model's output.")
    parser.add_argument("--version", action="version", version=f"gsmile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    ex = sub.add_parser("explain", help="explain a prompt (and the model's response to it)",
                        description="Explain which units of PROMPT drive the model's response.")
    ex.add_argument("prompt", metavar="PROMPT", help="the prompt to explain")
    ex.add_argument("--response", help="explain this response instead of the model's greedy one")
    _add_explanation_flags(ex)
    ex.add_argument("--segments", metavar="JSON|PATH", help="your own units instead of --unit: a JSON list of strings that tile the explained text in order, or a file holding such a list (or one segment per line)")
    what = ex.add_mutually_exclusive_group()
    what.add_argument("--context", metavar="TEXT", help="explain this context (e.g. retrieved passages) instead of the prompt; the prompt stays fixed")
    what.add_argument("--context-file", metavar="PATH", help="read the context to explain from a UTF-8 text file")
    ex.add_argument("--json", metavar="PATH", help="write the explanation as JSON")
    ex.add_argument("--html", metavar="PATH", help="write an HTML report")
    ex.add_argument("--png", metavar="PATH", help="write a PNG bar chart")
    ex.add_argument("--quiet", action="store_true", help="no progress bar or status messages")
    ex.add_argument("--color", choices=["auto", "always", "never"], default="auto", help="colour the terminal output (default: auto)")

    sv = sub.add_parser("serve", help="start the HTTP API and web page",
                        description="Serve the HTTP API (/v1/explain, /v1/glad/causal-explainability/analyze, /v1/patch, "
                                    "/v1/jobs/ID, /healthz) and the web page (/). Settings come from GSMILE_* "
                                    "environment variables (GSMILE_API_KEY, GSMILE_XAI_MAXLEN, ...).")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8800, help="port (default: 8800)")
    sv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="allow cross-origin calls from ORIGIN (repeatable; default: no CORS)")
    sv.add_argument("--model", default=None, help=f"model: {', '.join(MODELS)}, hf:PATH, openai:NAME (with the API flags below), diffusers:PATH or openai-images:NAME (default: GSMILE_MODEL or local)")
    sv.add_argument("--jobs-db", metavar="PATH", help="SQLite file for jobs (default: GSMILE_JOBS_DB or jobs.sqlite3 in the cache)")
    sv.add_argument("--max-concurrent", type=int, default=None, metavar="N", help="explanations run at once (default: 1)")
    sv.add_argument("--quiet", action="store_true", help="no access log")
    _add_device_flags(sv, default="GSMILE_DEVICE / GSMILE_DTYPE or ")
    _add_api_flags(sv)

    au = sub.add_parser("audit", help="explain every prompt of a JSONL or CSV file and report across them",
                        description="Explain every case of INPUT (JSONL or CSV: prompt, optional id, response, context, group, "
                                    "template and slots, other columns kept as metadata) with the same options, streaming each "
                                    "case's explanations to DIR/explanations.jsonl; then write DIR/summary.json and "
                                    "DIR/report.html. Rerunning the same command resumes: finished cases are skipped. "
                                    "Exit status: 0 when every case was explained, 1 when some failed (the count is "
                                    "printed; their errors are in the results and the report), 2 for a usage mistake.")
    au.add_argument("input", metavar="INPUT", help="a .jsonl file (one JSON object per line) or a .csv file with a header")
    au.add_argument("--out", required=True, metavar="DIR", help="directory of the results and the report (created if missing)")
    au.add_argument("--slots", metavar="JSON|PATH", help="slot values for every template line without its own: a JSON object "
                    "such as {\"name\": {\"group A\": [\"Emily\"], \"group B\": [\"John\"]}}, or a file holding one")
    au.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes, each with its own model (default: 1, this process)")
    au.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="run the cases on Ray (pip install 'gsmile[ray]'): alone, a local Ray instance; with ADDRESS (auto, "
                         "ray://HOST:10001) a cluster; --workers actors, one model each")
    au.add_argument("--fresh", action="store_true", help="discard DIR's earlier results and start over (needed to change options)")
    au.add_argument("--retry-failed", action="store_true", help="explain again the cases that failed in an earlier run")
    _add_explanation_flags(au)
    au.add_argument("--quiet", action="store_true", help="no progress bar or status messages")

    rp = sub.add_parser("report", help="rebuild an audit's summary.json and report.html",
                        description="Aggregate DIR/explanations.jsonl (written by gsmile audit) into DIR/summary.json and "
                                    "DIR/report.html, and print the summary's headline.")
    rp.add_argument("directory", metavar="DIR", help="an audit directory")

    ms = sub.add_parser("methods", help="list the attribution methods and their options",
                        description="List every attribution method with its options, their types, defaults and descriptions.")
    ms.add_argument("--markdown", action="store_true", help=f"print docs/methods.md instead ({DOCS_COMMAND})")

    ev = sub.add_parser("evaluate", help="measure how faithful a saved explanation is",
                        description="Deletion/insertion curves (AOPC, with a random-order reference), ERASER "
                                    "comprehensiveness and sufficiency, fidelity and stability of a saved explanation.")
    ev.add_argument("explanation", metavar="EXPLANATION.json", help="an explanation written by gsmile explain --json")
    ev.add_argument("--model", default=None, help="model to score it with (default: the explanation's own, else local)")
    ev.add_argument("--fractions", default="0.1,0.2,0.5", metavar="F,F,...", help="shares of units for comprehensiveness and sufficiency (default: 0.1,0.2,0.5)")
    ev.add_argument("--random-orders", type=int, default=1, metavar="N", help="random orders averaged for the reference curve (default: 1)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the random orders (default: 0)")
    ev.add_argument("--batch-size", type=int, default=None, metavar="N", help="prompts per forward pass (default: chosen from the sequence length)")
    ev.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    ev.add_argument("--quiet", action="store_true", help="no progress bar or status messages")
    _add_device_flags(ev)
    _add_counterfactual_commands(sub)
    _add_patch_parser(sub)
    return parser


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidInputError(f"--fractions must be numbers separated by commas, got {text!r}") from None
    if not values or any(not (0 < v <= 1) for v in values):
        raise InvalidInputError(f"--fractions must be shares of units in (0, 1], got {text!r}")
    return values


def format_metrics(metrics: dict) -> str:
    """The metrics of :func:`gsmile.faithfulness.evaluate` as a few lines of text."""

    def num(x):
        return "n/a" if x is None else f"{x:.4f}"

    lines = [
        f"units: {metrics['n_units']}  target: {metrics['target']}  model calls: {metrics['model_calls']}",
        f"deletion AOPC:  {num(metrics['deletion_aopc'])}  (random order: {num(metrics['random_deletion_aopc'])}; higher is better)",
        f"insertion AOPC: {num(metrics['insertion_aopc'])}  (random order: {num(metrics['random_insertion_aopc'])}; higher is better)",
        "comprehensiveness: " + ", ".join(f"{k}: {num(v)}" for k, v in metrics["comprehensiveness"].items())
        + f"  (mean {num(metrics['comprehensiveness_mean'])}; higher is better)",
        "sufficiency:       " + ", ".join(f"{k}: {num(v)}" for k, v in metrics["sufficiency"].items())
        + f"  (mean {num(metrics['sufficiency_mean'])}; lower is better)",
        f"fidelity R²: {num(metrics['fidelity_r2'])}  top-k Jaccard across runs: {num(metrics['topk_jaccard'])}",
        "deletion curve:  " + " ".join(f"{v:.3f}" for v in metrics["deletion"]),
        "insertion curve: " + " ".join(f"{v:.3f}" for v in metrics["insertion"]),
    ]
    return "\n".join(lines)


def _evaluate(args) -> int:
    import json
    from pathlib import Path

    from ._io import check_writable, write_atomic
    from .explanation import Explanation
    from .faithfulness import evaluate

    placed = _placement(args)
    if placed:
        from .backends.devices import resolve_device
        from .backends.local import check_batch_tokens

        resolve_device(args.device, args.dtype)  # a device that is not here: refused before anything is read
        if args.max_batch_tokens is not None:
            check_batch_tokens(args.max_batch_tokens)
    out = check_writable(args.json, "JSON") if args.json else None
    fractions = _fractions(args.fractions)
    if args.random_orders < 0:
        raise InvalidInputError(f"--random-orders must be 0 or more, got {args.random_orders}")
    if args.batch_size is not None and args.batch_size < 1:
        raise InvalidInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    exp = Explanation.from_json(_read_text(str(Path(args.explanation).expanduser()), "explanation"))
    model = args.model
    if placed:
        from .backends import resolve_model
        from .scoring import explanation_model

        model = resolve_model(model or explanation_model(exp), **placed)
    metrics = evaluate(exp, model, fractions=fractions, random_state=args.seed, n_random=args.random_orders,
                       batch_size=args.batch_size, progress=not args.quiet)
    print(format_metrics(metrics))
    if out is not None:
        write_atomic(out, json.dumps(metrics, indent=2) + "\n")
        if not args.quiet:
            print(f"Wrote JSON to {out}", file=sys.stderr)
    return 0


def _placement(args) -> dict:
    """The local-model flags given (--device, --dtype, --max-batch-tokens)."""
    return {name: getattr(args, name) for name in ("device", "dtype", "max_batch_tokens") if getattr(args, name) is not None}


def _image_options(args) -> dict:
    """The generation settings of a text-to-image model from the image flags."""
    return {name: value for name in ("image_steps", "image_size", "guidance_scale")
            if (value := getattr(args, name, None)) is not None}


def _model(args, name: str, **placement):
    """The model ``name``: an API backend built from the API flags when it is openai:NAME (or
    openai-images:NAME), a text-to-image model with the image flags, a local model placed as
    ``placement`` says (device, dtype, max_batch_tokens) when any is given, else the name."""
    image = _image_options(args)
    from .backends import IMAGE_MODEL_PREFIXES

    is_image = name.startswith(IMAGE_MODEL_PREFIXES)
    if image and not is_image:
        flags = ", ".join("--" + k.replace("_", "-") for k in image)
        raise InvalidInputError(f"{flags} apply only to text-to-image models (--model diffusers:PATH or openai-images:NAME)")
    if not is_image:
        for flag, value in (("--image-seeds", getattr(args, "image_seeds", None)), ("--embedder", getattr(args, "embedder", None))):
            if value is not None:
                raise InvalidInputError(f"{flag} applies only to text-to-image models (--model diffusers:PATH or openai-images:NAME)")
    if is_image:
        from .backends import resolve_model

        options = {"steps": image.get("image_steps"), "size": image.get("image_size"), "guidance_scale": image.get("guidance_scale")}
        if name.startswith("openai-images:"):
            if args.prompt_template is not None:
                raise InvalidInputError("--prompt-template applies only to text models behind an API (openai:NAME)")
            return resolve_model(name, **placement, image_options=options, **_api_options(args))
        given = [flag for flag, value in (("--base-url", args.base_url), ("--api-key-env", args.api_key_env)) if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to models behind an API (openai:NAME, openai-images:NAME)")
        options.update(cache_dir=args.cache_dir, use_cache=False if args.no_cache else None)
        return resolve_model(name, **placement, image_options=options)
    if not name.startswith("openai:"):
        given = [flag for flag, value in (("--base-url", args.base_url), ("--api-key-env", args.api_key_env), ("--prompt-template", args.prompt_template), ("--cache-dir", args.cache_dir)) if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to --model openai:NAME")
        if not any(v is not None for v in placement.values()):
            return args.model
    from .backends import resolve_model

    if not name.startswith("openai:"):
        return resolve_model(name, **placement)
    return resolve_model(name, **placement, **_api_options(args))


def _explain(args) -> int:
    from ._io import check_writable, write_atomic
    from .explainer import Explainer, GsmileWarning
    from .render import render_html, render_png, render_terminal

    outputs = {kind: check_writable(path, kind.upper()) for kind in ("json", "html", "png") if (path := getattr(args, kind))}
    if not args.prompt.strip():
        raise InvalidInputError("the prompt is empty; give a prompt with at least two words")
    context = args.context if args.context_file is None else _read_text(args.context_file, "context file")
    if args.segments is not None and args.unit is not None:
        raise InvalidInputError("--segments and --unit cannot be combined: the segments are the units")
    segments = _segments(args.segments) if args.segments is not None else None
    options = _explanation_options(args)
    if context is not None:
        options["unit"] = "word"
    Explainer(None, **options).validate()  # fail on bad options before the model is looked at
    explainer = Explainer(_model(args, args.model, **_placement(args)), progress=not args.quiet, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GsmileWarning)  # the report below lists them
        exp = explainer.explain(args.prompt, args.response, context=context, segments=segments)

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(render_terminal(exp, color=color))
    for line in _extra_lines(exp):
        print(line)
    renderers = {"json": lambda e: e.to_json() + "\n", "html": render_html, "png": render_png}
    for kind, path in outputs.items():
        write_atomic(path, renderers[kind](exp))
        if not args.quiet:
            print(f"Wrote {kind.upper()} to {path}", file=sys.stderr)
    return 0


def _explanation_options(args) -> dict:
    """The Explainer's options from the flags of :func:`_add_explanation_flags` (the
    coarse-to-fine ones only with --refine, the surrogate's only when set, so settings recorded
    without them stay as they were)."""
    if args.refine is None and (args.refine_top != 3 or args.refine_share != 0.5):
        raise InvalidInputError("--refine-top and --refine-share apply to coarse-to-fine attribution; add --refine UNIT")
    refine = {} if args.refine is None else dict(refine=args.refine, refine_top=args.refine_top, refine_share=args.refine_share)
    sparse = {} if args.surrogate is None and args.max_units is None else dict(surrogate=args.surrogate,
                                                                                           max_units=args.max_units)
    given = {name: getattr(args, name) for name in ("interactions", "interaction_budget", "max_length", "image_seeds", "embedder", "contrast")
             if getattr(args, name) is not None}
    return dict(
        **refine,
        **sparse,
        **given,
        method=args.method,
        unit=args.unit or "word",
        context_unit=args.unit or "sentence",
        method_options=_method_options(args),
        runs=args.runs,
        top_k=args.top_k,
        target=args.target,
        n_samples=args.samples,
        batch_size=args.batch_size,
        until_stable=args.until_stable,
        max_evals=args.max_evals,
        max_rounds=args.max_rounds,
        max_new_tokens=args.max_new_tokens,
        random_state=args.seed,
    )


def _api_options(args) -> dict:
    """The options of an ``openai:NAME`` model from the API flags (see :func:`_model`)."""
    return dict(
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        prompt_template=args.prompt_template or "chatml",
        top_logprobs=args.top_logprobs,
        concurrency=args.concurrency,
        batch_prompts=args.api_batch,
        max_retries=args.max_retries,
        timeout=args.timeout,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        random_state=getattr(args, "seed", None),
    )


def _audit(args) -> int:
    from .audit import audit

    slots = _json_object(args.slots, "--slots") if args.slots is not None else None
    options = _explanation_options(args)
    placed = _placement(args)
    if _image_options(args):
        raise InvalidInputError("--image-steps, --image-size and --guidance-scale are not taken by audit yet: audit a text-to-image "
                                "model with its own generation defaults, or explain its prompts one by one with gsmile explain")
    _model(args, args.model, **placed)  # API flags without an API model, a device not here: refused here
    model_options = _api_options(args) if args.model.startswith(("openai:", "openai-images:")) else placed
    result = audit(args.input, args.out, model=args.model, model_options=model_options, slots=slots, workers=args.workers,
                   ray=args.ray, fresh=args.fresh, retry_failed=args.retry_failed, progress=not args.quiet, **options)
    for line in result.summary.get("headline", []):
        print(line)
    ok = result.cases - result.failed
    print(f"{result.cases} cases: {ok} explained, {result.failed} failed ({result.explained} now, {result.skipped} from an "
          f"earlier run); report: {result.directory / 'report.html'}")
    if result.failed:
        print(f"gsmile: {result.failed} case(s) failed; their errors are in {result.directory / 'explanations.jsonl'} "
              f"and the report; fix them and rerun with --retry-failed", file=sys.stderr)
        return 1
    return 0


def _report(args) -> int:
    from .audit import write_report

    summary = write_report(args.directory)
    for line in summary.get("headline", []):
        print(line)
    print(f"Wrote {args.directory}/summary.json and {args.directory}/report.html")
    return 0


def _json_object(value: str, flag: str) -> dict:
    """A JSON object given inline or in a file."""
    import json
    import os

    text = value if value.lstrip().startswith("{") or not os.path.isfile(value) else _read_text(value, f"{flag} file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{flag}: not a JSON object nor a file holding one ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{flag} must be a JSON object")
    return data


def _serve(args) -> int:
    try:
        import uvicorn

        from .server import Settings, create_app
    except ImportError as exc:
        raise InvalidInputError(f"gsmile serve needs the serve extra ({exc.name} is missing): pip install 'gsmile[serve]'") from None
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be from 1 to 65535, got {args.port}")
    settings = Settings.from_env(
        cors_origins=args.cors_origin or None, model=args.model, jobs_path=args.jobs_db, max_concurrent=args.max_concurrent,
        device=args.device, dtype=args.dtype, max_batch_tokens=args.max_batch_tokens,
    )
    if settings.model.startswith("diffusers:"):
        model = None  # the server resolves it with its placement and GSMILE_IMAGE_* settings
    elif settings.model.startswith("openai-images:"):
        from .backends import resolve_model

        model = resolve_model(settings.model, image_options=settings.image_options(), **_api_options(args))
    else:
        model = _model(args, settings.model, device=settings.device, dtype=settings.dtype, max_batch_tokens=settings.max_batch_tokens)
    app = create_app(settings, model=None if isinstance(model, str) else model)
    if not args.quiet:
        print(f"gsmile: serving on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
        if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
            print("gsmile: warning: listening beyond this machine without GSMILE_API_KEY", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                access_log=not args.quiet)
    return 0


def _method_options(args) -> dict:
    """The chosen method's options from its flags and ``-o NAME=VALUE``, parsed by the
    method's option specs; a flag or name the method does not take is an error."""
    from .methods import option_specs, parse_option

    specs = option_specs(args.method)
    options, given = {}, {}
    for name, owners in _option_owners().items():
        text = getattr(args, _OPTION_DEST.format(name))
        if text is None:
            continue
        flag = owners[0][1].flag
        if name not in specs:
            own = [spec.flag for spec in specs.values()]
            takes = f"its options: {', '.join(own)}" if own else "it takes no options"
            raise InvalidInputError(f"{flag} does not apply to method {args.method!r} ({takes})", field=f"method_options.{name}")
        options[name], given[name] = parse_option(args.method, name, text), flag
    for item in args.method_option_items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InvalidInputError(f"-o takes NAME=VALUE (e.g. -o kernel_width=0.5), got {item!r}", field="method_options")
        if key in given:
            raise InvalidInputError(f"option {key} is set twice ({given[key]} and -o {item}); set it once", field=f"method_options.{key}")
        options[key], given[key] = parse_option(args.method, key, text), f"-o {item}"
    return options


def format_methods() -> str:
    """What ``gsmile methods`` prints: each method, then its options with type, default and help."""
    from .methods import METHODS, method_summary, option_specs

    lines = []
    for method in METHODS:
        lines += [method, f"  {method_summary(method)}"]
        specs = option_specs(method).values()
        for spec in specs:
            value = _METAVARS[spec.type]
            lines.append(f"  {spec.flag} {value} | -o {spec.name}={value}  ({spec.type_name}; default: {_shown(spec.default)})")
            lines.append(f"      {spec.help}")
        if not specs:
            lines.append("  (no options)")
    return "\n".join(lines)


def _methods(args) -> int:
    from .methods import options_markdown

    sys.stdout.write(options_markdown() if args.markdown else format_methods() + "\n")
    return 0


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            reason = "not UTF-8 text"
        else:
            reason = exc.strerror or type(exc).__name__
        raise InvalidInputError(f"cannot read {what} {path!r}: {reason}") from None


def _segments(value: str) -> list[str]:
    """A JSON list of strings, or a file with such a list or one segment per line."""
    import json
    import os

    text = value
    if not value.lstrip().startswith("[") and os.path.isfile(value):
        text = _read_text(value, "segments file")
        if not text.lstrip().startswith("["):
            return [line for line in text.splitlines() if line.strip()]
    try:
        segments = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--segments: not a JSON list of strings nor a file ({exc.msg})") from None
    if not isinstance(segments, list) or not all(isinstance(s, str) for s in segments):
        raise InvalidInputError("--segments must be a JSON list of strings")
    return segments


def _extra_lines(exp) -> list[str]:
    """Lines for what the terminal renderer does not show: stability, MuPAX's summary, where a
    local model ran (when not in float32 on the CPU), API calls."""
    from .render.terminal import one_line

    lines = []
    report = exp.extras.get("stability")
    if report:
        jaccard = report.get("topk_jaccard")
        unstable = [one_line(exp.units[i].text) for i in report.get("unstable", [])]
        lines.append(
            f"Stability over {report['runs']} runs: top-{report['top_k']} Jaccard "
            f"{'n/a' if jaccard is None else f'{jaccard:.2f}'}; unstable units: {', '.join(unstable) if unstable else 'none'}"
        )
    selected = exp.extras.get("selected_units")
    if selected is not None and exp.params.get("surrogate") == "lasso":
        kept = ", ".join(one_line(exp.units[i].text) for i in selected[:10]) + (", ..." if len(selected) > 10 else "")
        lines.append(f"Sparse surrogate (lasso): kept {len(selected)} of {len(exp.units)} units: {kept or 'none'}")
    from .render.terminal import interaction_lines

    lines.extend(interaction_lines(exp))
    mupax = exp.extras.get("mupax")
    if mupax:
        lines.append(
            f"MuPAX: accepted {mupax['n_accepted']} of {mupax['n_total']} samples "
            f"(distance ≤ W = {mupax['threshold_W']:.3g}, percentile {mupax['threshold_percentile']:g})"
        )
    device, dtype = exp.extras.get("device"), exp.extras.get("dtype")
    if device not in (None, "cpu") or dtype not in (None, "float32"):  # a local model placed with --device/--dtype
        scorer = "the lean Llama body" if exp.extras.get("fast_path") else "transformers' forward"
        note = ("; this CPU has no bfloat16 instructions (AVX-512 BF16, AMX): torch emulates them, slower than float32"
                if exp.extras.get("bfloat16_hardware") is False else "")
        lines.append(f"Model ran on {device} in {dtype}; scored by {scorer}{note}")
    calls = exp.extras.get("calls")
    if calls:
        lines.append(
            f"API: {exp.extras.get('path')} path ({exp.extras.get('path_reason')}); calls made: {calls['calls']}, "
            f"cache hits: {calls['cache_hits']}, retries: {calls['retries']}, tokens used: {calls['tokens']}"
        )
    return lines


COMMANDS = {"explain": _explain, "evaluate": _evaluate, "serve": _serve, "methods": _methods, "audit": _audit,
            "report": _report}


# --------------------------------------------------------------------------- counterfactual and anchor
# (gsmile counterfactual / gsmile anchor; see gsmile.counterfactual and gsmile.anchors)


def _add_counterfactual_commands(sub) -> None:
    from .backends import MODELS
    from .counterfactual import COMPARES, CRITERIA, DEFAULT_MAX_CALLS, DEFAULT_MAX_NEW_TOKENS
    from .units import SEGMENTERS

    def common(p):
        p.add_argument("prompt", metavar="PROMPT", help="the prompt")
        p.add_argument("--model", default="local", help=f"model: {', '.join(MODELS)} (the embedded SmolLM2), hf:PATH or openai:NAME (default: local)")
        p.add_argument("--unit", default="word", choices=list(SEGMENTERS), help="units of the prompt (default: word)")
        p.add_argument("--threshold", type=float, default=None, metavar="X",
                       help="compare values instead of answers: the change of the target shift a language model's output must reach")
        p.add_argument("--criterion", default=None, choices=list(CRITERIA), help="with --threshold: cross the level or change by it (default: change for a language model)")
        p.add_argument("--compare", default="exact", choices=list(COMPARES), help="answers differ: exact (after strip) or by their first sentence (default: exact)")
        p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N", help=f"length of the greedy answers compared (default: {DEFAULT_MAX_NEW_TOKENS})")
        p.add_argument("--max-calls", type=int, default=DEFAULT_MAX_CALLS, metavar="N", help=f"most model calls, the attribution run's included (default: {DEFAULT_MAX_CALLS})")
        p.add_argument("--batch-size", type=int, default=None, metavar="N", help="prompts per forward pass; never changes results")
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        p.add_argument("--json", metavar="PATH", help="write the result as JSON")

    cf = sub.add_parser("counterfactual", help="the smallest edits of a prompt that change the model's answer",
                        description="Find the smallest sets of unit removals (and, with --replace, replacements) that change the "
                                    "model's greedy answer, searched best-first by occlusion attribution, fewest edits first.")
    common(cf)
    cf.add_argument("--max-size", type=int, default=3, metavar="N", help="most edits in one counterfactual (default: 3)")
    cf.add_argument("--replace", nargs="+", default=None, metavar="WORD", help="words a unit may also be replaced by")
    cf.add_argument("--k", type=int, default=3, metavar="N", help="counterfactuals to find (default: 3)")
    an = sub.add_parser("anchor", help="the fewest units that, kept, preserve the model's answer",
                        description="Find the smallest set of units that, kept while every other unit is removed with probability "
                                    "--p-remove, preserves the answer with precision at least --precision (KL lower bound at --delta).")
    common(an)
    an.add_argument("--precision", type=float, default=0.95, metavar="TAU", help="precision the anchor must reach (default: 0.95)")
    an.add_argument("--delta", type=float, default=0.05, metavar="D", help="confidence parameter of the bound (default: 0.05)")
    an.add_argument("--p-remove", type=float, default=0.5, metavar="P", help="chance each other unit is removed (default: 0.5)")
    an.add_argument("--beam-size", type=int, default=2, metavar="B", help="candidates extended at each size (default: 2)")


def _search_options(args) -> dict:
    return dict(unit=args.unit, threshold=args.threshold, criterion=args.criterion, compare=args.compare,
                max_new_tokens=args.max_new_tokens, max_calls=args.max_calls, batch_size=args.batch_size, random_state=args.seed)


def _write_result(result, out) -> None:
    from ._io import write_atomic

    for line in result.lines():
        print(line)
    if out is not None:
        write_atomic(out, result.to_json() + "\n")
        print(f"Wrote JSON to {out}", file=sys.stderr)


def _counterfactual(args) -> int:
    from ._io import check_writable
    from .counterfactual import counterfactuals

    out = check_writable(args.json, "JSON") if args.json else None
    result = counterfactuals(args.prompt, args.model, max_size=args.max_size, replacements=args.replace, k=args.k,
                             **_search_options(args))
    _write_result(result, out)
    return 0


def _anchor(args) -> int:
    from ._io import check_writable
    from .anchors import anchor

    out = check_writable(args.json, "JSON") if args.json else None
    result = anchor(args.prompt, args.model, precision=args.precision, delta=args.delta, p_remove=args.p_remove,
                    beam_size=args.beam_size, **_search_options(args))
    _write_result(result, out)
    return 0


COMMANDS.update(counterfactual=_counterfactual, anchor=_anchor)


# ---------------------------------------------------------------- gsmile patch (activation patching)
def _add_patch_parser(sub) -> None:
    from .whitebox.patching import COMPONENTS

    pt = sub.add_parser("patch", help="activation patching: which layer and position carry the clean prompt's answer",
                        description="Run the model on CORRUPTED with one activation (a layer's residual stream, attention or "
                                    "MLP output at one position) taken from the run on CLEAN, for every layer and position, "
                                    "and print the share of the clean answer's log p each patch restores: (log p patched - "
                                    "log p corrupted) / (log p clean - log p corrupted). The prompts go through the chat "
                                    "template and must have the same token length (swap one-token words).")
    pt.add_argument("clean", metavar="CLEAN", help="the clean prompt, e.g. 'The capital of France is'")
    pt.add_argument("corrupted", metavar="CORRUPTED", help="the corrupted prompt, e.g. 'The capital of Italy is'")
    pt.add_argument("--answer", metavar="TEXT", help="the answer whose log p is measured, over all its tokens "
                                                     "(default: the clean prompt's greedy next token)")
    pt.add_argument("--components", default="resid", metavar=",".join(COMPONENTS),
                    help="what to patch, comma-separated: resid (residual stream after each layer), attn (attention "
                         "output), mlp (MLP output) (default: resid)")
    pt.add_argument("--model", default="local", help="a local model: local (the embedded SmolLM2) or hf:PATH (default: local)")
    pt.add_argument("--json", metavar="PATH", help="write the result as JSON")
    pt.add_argument("--html", metavar="PATH", help="write an HTML heatmap")
    pt.add_argument("--quiet", action="store_true", help="no progress bar or status messages")
    _add_device_flags(pt)


def _patch(args) -> int:
    from ._io import check_writable, write_atomic
    from .render.patching import render_patching_html, render_patching_text
    from .whitebox.patching import activation_patching, check_components, local_model

    outputs = {kind: check_writable(path, kind.upper()) for kind in ("json", "html") if (path := getattr(args, kind))}
    components = check_components(args.components)
    if args.model.startswith("hf:") or args.model in ("local", "smollm2"):
        from .backends import resolve_model

        lm = resolve_model(args.model, **_placement(args))
    else:
        lm = local_model(args.model)  # refuses it with one line
    result = activation_patching(lm, args.clean, args.corrupted, answer=args.answer, components=components, progress=not args.quiet)
    print(render_patching_text(result))
    renderers = {"json": lambda r: r.to_json() + "\n", "html": render_patching_html}
    for kind, path in outputs.items():
        write_atomic(path, renderers[kind](result))
        if not args.quiet:
            print(f"Wrote {kind.upper()} to {path}", file=sys.stderr)
    return 0


COMMANDS["patch"] = _patch
# ---------------------------------------------------------------- end of gsmile patch


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "quiet", False):
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except ModelError as exc:
        print(f"gsmile: model error: {exc}", file=sys.stderr)
        return 1
    except GsmileError as exc:
        print(f"gsmile: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gsmile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
