"""Command line: ``fastdecode generate | bench | bench-batch | acceptance | quality | long-context | kernels | optimal-cost | spec-ceiling``.

``generate`` is the package's own command. The benchmarks are scripts of the repository, outside the package
(``bench/<script>.py``): each benchmark subcommand calls its script's ``main`` with the remaining arguments,
the same as ``python bench/<script>.py ...``, so it needs a source checkout (``bench/`` next to ``fastdecode/``).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .models import DEFAULT_PAIR

# ends inside a line: a prompt ending in a bare newline is out of distribution for BPE code models
DEFAULT_PROMPT = (
    'import os\n\n\ndef read_config(path):\n    """Read a simple key = value configuration file into a dict."""\n'
    '    config = {}\n    with open(path, encoding="utf-8") as f:\n        for line in f:\n'
    '            line = line.strip()\n            if not line or line.startswith("#"):\n                continue\n'
    '            key, _, value = line.partition("=")\n            config['
)

# subcommand: (script in bench/, help)
SUBCOMMANDS = {
    "bench": ("e2e", "end-to-end speed vs Hugging Face generate and assisted generation"),
    "bench-batch": ("batch", "batched speed (batch sizes 1, 4, 16, ...) vs Hugging Face batched generate"),
    "acceptance": ("acceptance", "acceptance rate of every verifier against the optimal-transport bound"),
    "quality": ("quality", "entropy-switch line-completion quality benchmark"),
    "long-context": ("long_context", "Lambda attention: perplexity, passkey and memory vs context length"),
    "kernels": ("kernels", "Triton kernels vs PyTorch references (GPU)"),
    "optimal-cost": ("optimal_cost", "per-step cost of the OT-optimal verifier's selection"),
    "spec-ceiling": ("spec_ceiling", "what chain speculation gains on this machine under i.i.d. acceptance (forward costs x alpha)"),
}


# The CLI is a demo: greedy by default, so that its text is reproducible and equals plain greedy decoding
# token for token (and speculative decoding pays off most there). The Python API samples at T = 1 by
# default, the model's own distribution, which is what the lossless guarantee is about.
CLI_TEMPERATURE = 0.0
TIMING_SPREAD_LIMIT = 0.25  # (max - min) / median above which --compare says its figures cannot be read

LEGEND = ("alpha = accepted / drafted tokens (acceptance rate); tau = tokens emitted per target forward pass "
          "(accepted drafts + the residual or bonus token)")
PROMPT_MARK = "[>>]"


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=str(DEFAULT_PAIR / "target"), help="target model folder or HF id")
    p.add_argument("--draft", default=str(DEFAULT_PAIR / "draft"), help="draft model folder or HF id ('none' for no draft)")
    p.add_argument("--prompt", default=None, help="prompt text")
    p.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=CLI_TEMPERATURE,
                   help="0 = greedy: reproducible demo output (the Python API's default is 1.0, plain sampling)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0, help="HF's min_p (sampling only; 0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="HF's repetition_penalty (1.0 = none); applied to the target and the draft alike")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="HF's no_repeat_ngram_size (0 = off)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop right after the token that completes TEXT (HF's stop_strings; repeatable; a literal "
                        "\\n or \\t in TEXT is a newline or a tab, so --stop '\\n\\n' stops at a blank line)")
    p.add_argument("--method", default="auto",
                   choices=["auto", "autoregressive", "speculative", "multi_draft", "entropy_switch",
                            "prompt_lookup"],
                   help="decoding method (auto: speculative with a draft, multi_draft when --num-drafts > 1; "
                        "prompt_lookup: drafts copied from the prompt and the generated text; the default "
                        "--draft is not loaded, an explicit one drafts the steps without an n-gram match)")
    p.add_argument("--draft-length", type=int, default=None, help="gamma, tokens drafted per step (default 4; entropy_switch: with --speculate-when-large)")
    p.add_argument("--num-drafts", type=int, default=1, help="k, the number of draft sequences (multi_draft)")
    p.add_argument("--adaptive-draft", action=argparse.BooleanOptionalAction, default=None,
                   help="adapt the draft length / tree depth to acceptance (default: on for speculative, off for multi_draft)")
    p.add_argument("--fallback", default=None, choices=["measured", "estimated", "off"],
                   help="plain steps when drafting does not pay (speculative, prompt_lookup): measured by timing "
                        "the steps (default), estimated from the models' sizes, or off")
    p.add_argument("--verifier", default=None, help="token | block (speculative, prompt_lookup); rrs | spectr | optimal | ... (multi_draft)")
    p.add_argument("--entropy-threshold", type=float, default=None, help="bits, for entropy_switch")
    p.add_argument("--entropy-window", type=int, default=None, help="rolling-mean window w, for entropy_switch")
    p.add_argument("--min-dwell", type=int, default=None, help="tokens between two switches, for entropy_switch")
    p.add_argument("--speculate-when-large", action="store_true",
                   help="entropy_switch: the large model verifies drafts of the small one (lossless segments)")
    p.add_argument("--speculative-length", type=int, default=None, dest="speculative_length",
                   help=argparse.SUPPRESS)  # deprecated alias of --draft-length for entropy_switch
    p.add_argument("--prompt-lookup-num-tokens", type=int, default=None,
                   help="prompt_lookup: the longest draft (default 10)")
    p.add_argument("--max-matching-ngram-size", type=int, default=None,
                   help="prompt_lookup: the longest n-gram looked up (default 2)")
    p.add_argument("--min-matching-ngram-size", type=int, default=None,
                   help="prompt_lookup: the shortest n-gram looked up (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (bfloat16 on a GPU)")
    p.add_argument("--cache-implementation", default="dynamic", choices=["dynamic", "static"],
                   help="static: preallocated caches and recorded forwards (fast on a GPU)")
    p.add_argument("--compile", default=None, choices=["eager", "cudagraphs", "inductor"],
                   help="static engine only; default: cudagraphs on CUDA, eager on the CPU; inductor (torch.compile, "
                        "recorded as CUDA graphs on CUDA) ran 2x faster on an H200 after 5-10 s of compilation per shape")
    p.add_argument("--pack-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="CPU, float32: linear layers on oneDNN-packed weight copies (default: when the copies "
                        "need at most a quarter of the available memory and --compile is not inductor)")
    p.add_argument("--stream", action="store_true",
                   help="print the generated text as it is committed (transformers' TextStreamer; the printing "
                        "counts in the timed run)")
    p.add_argument("--compare", action="store_true",
                   help="also time plain autoregressive decoding and HF generate and print the speed-ups")
    p.add_argument("--repeats", type=int, default=3,
                   help="with --compare: timed runs of each, after one warm-up; the median and min-max are printed")


def _method_kwargs(args) -> dict:
    """The method options given on the command line, as generate() keyword arguments (None: not given)."""
    kw = dict(draft_length=args.draft_length, adaptive_draft=args.adaptive_draft, verifier=args.verifier,
              compile=args.compile, fallback=args.fallback, pack_weights=args.pack_weights)
    kw = {k: v for k, v in kw.items() if v is not None}
    if args.cache_implementation != "dynamic":
        kw["cache_implementation"] = args.cache_implementation
    if args.num_drafts != 1:
        kw["num_drafts"] = args.num_drafts
    for name in ("entropy_threshold", "entropy_window", "min_dwell", "speculative_length",
                 "prompt_lookup_num_tokens", "max_matching_ngram_size", "min_matching_ngram_size"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.speculate_when_large:
        kw["speculate_when_large"] = True
    return kw


def _stop_strings(args) -> list[str] | None:
    """--stop's texts with a literal \\n / \\t turned into a newline / a tab (None: not given)."""
    if args.stop is None:
        return None
    return [s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop]


def _check_args(args, has_draft: bool) -> None:
    """Every argument check that needs no weights: run before any model is loaded."""
    import torch

    from .config import SamplingConfig, build_method_config
    from .kernels.cpu_linear import check_pack_weights
    from .models import check_model_path

    if args.prompt_file and not Path(args.prompt_file).is_file():
        raise ValueError(f"--prompt-file {args.prompt_file}: "
                         + ("a folder, not a file" if Path(args.prompt_file).is_dir() else "no such file"))
    try:
        torch.device(args.device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device {args.device}: not a device name torch knows (cpu, cuda, cuda:1, ...)") from e
    if torch.device(args.device).type == "meta":
        raise ValueError(f"--device {args.device}: the meta device holds no data, so nothing can be generated on it")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this torch build sees no CUDA device")
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    SamplingConfig(args.temperature, args.top_k, args.top_p, args.min_p)
    if not 0 < args.repetition_penalty < float("inf"):
        raise ValueError(f"--repetition-penalty must be a finite number > 0 (1.0: none), got {args.repetition_penalty}")
    if args.no_repeat_ngram_size < 0:
        raise ValueError(f"--no-repeat-ngram-size must be >= 0, got {args.no_repeat_ngram_size}")
    if args.stop is not None and not all(_stop_strings(args)):
        raise ValueError("--stop needs a non-empty TEXT")
    if args.num_drafts != 1 and not (args.method == "multi_draft" or (args.method == "auto" and has_draft)):
        raise ValueError(f"--num-drafts applies to --method multi_draft (or auto), not to {args.method}")
    engine = {k: _method_kwargs(args).pop(k, None) for k in ("cache_implementation", "compile", "pack_weights")}
    build_method_config(args.method, has_draft, **{k: v for k, v in _method_kwargs(args).items() if k not in engine})
    if engine["compile"] is not None and args.cache_implementation != "static":
        raise ValueError("--compile applies to --cache-implementation static")
    check_pack_weights(args.pack_weights, inductor=args.compile == "inductor")
    check_model_path(args.target)
    if has_draft and args.method != "autoregressive":
        check_model_path(args.draft)


def _spread(xs: list[float]) -> tuple[float, float, float]:
    import statistics

    return statistics.median(xs), min(xs), max(xs)


def _compare(args, target, draft, ids, kw, out) -> None:
    """Time the method, fastdecode autoregressive and HF generate (and HF assisted generation when the method is
    speculative or multi_draft with a draft model): one warm-up each, then --repeats interleaved runs."""
    import time

    import torch

    from . import generate

    def method_rate():
        return generate(target, ids, draft=draft, method=args.method, **kw).stats.tokens_per_s

    base_kw = {k: kw[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                                  "no_repeat_ngram_size", "stop_strings", "tokenizer", "seed", "cache_implementation",
                                  "compile", "pack_weights")
               if k in kw}  # the same engine and settings for the baseline

    def base_rate():
        return generate(target, ids, method="autoregressive", **base_kw).stats.tokens_per_s

    hf_kw = dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                 repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size)
    if kw.get("stop_strings"):
        hf_kw.update(stop_strings=kw["stop_strings"], tokenizer=kw["tokenizer"])
    if args.temperature > 0:
        hf_kw.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p or None)

    def hf_rate(n=args.max_new_tokens, assistant=None):
        extra = {} if assistant is None else {"assistant_model": assistant}
        t0 = time.perf_counter()
        with torch.inference_mode():
            hf = target.generate(ids, attention_mask=torch.ones_like(ids), **{**hf_kw, "max_new_tokens": n}, **extra)
        return (hf.shape[1] - ids.shape[1]) / (time.perf_counter() - t0)

    # HF's own speculative decoding (assisted generation, on its default cache) when the method is lossless
    # speculation with a draft model
    assisted = draft is not None and out.stats.method in ("speculative", "multi_draft")
    if assisted and kw.get("stop_strings"):   # (its assistant runs generate() with the strings but no tokenizer)
        assisted = False
        print("HF assisted generation is left out: with stop_strings it raises (it finds no tokenizer for its "
              "assistant's own generate() call)")
    generate(target, ids, method="autoregressive", **{**base_kw, "max_new_tokens": 4})  # warm-ups
    hf_rate(4)
    rates = {out.stats.method: [out.stats.tokens_per_s], "fastdecode autoregressive": [], "HF generate": []}
    if assisted:
        hf_rate(4, draft)
        rates["HF assisted"] = []
    for i in range(args.repeats):  # interleaved, so that a slow phase of the machine hits all alike
        if i:
            rates[out.stats.method].append(method_rate())
        rates["fastdecode autoregressive"].append(base_rate())
        rates["HF generate"].append(hf_rate())
        if assisted:
            rates["HF assisted"].append(hf_rate(assistant=draft))
    print(f"speed, median of {args.repeats} run(s) after a warm-up [min - max], same prompt and settings:")
    wide = []
    for name, xs in rates.items():
        med, lo, hi = _spread(xs)
        print(f"  {name:<28} {med:8.1f} tok/s  [{lo:.1f} - {hi:.1f}]")
        if med > 0 and (hi - lo) / med > TIMING_SPREAD_LIMIT:
            wide.append(name)
    m = _spread(rates[out.stats.method])
    parts = []
    for name in [n for n in ("fastdecode autoregressive", "HF generate", "HF assisted") if n in rates]:
        b = _spread(rates[name])
        parts.append(f"{m[0] / b[0]:.2f}x over {name} [{m[1] / b[2]:.2f} - {m[2] / b[1]:.2f}]")
    print(f"speed-up of {out.stats.method}: " + ", ".join(parts))
    if args.repeats < 2:
        print("one timed run each: no spread to judge the figures by; use --repeats 3 or more")
    elif wide:
        print(f"the runs of {', '.join(wide)} differ by more than {TIMING_SPREAD_LIMIT:.0%} of their median: the "
              "machine is busy or the run is too short, so these speed-ups cannot be read; raise --max-new-tokens "
              "or --repeats, or use `fastdecode bench`")


def _run_generate(args) -> int:
    import torch

    from . import generate
    from .models import check_pair, load_model

    if args.prompt is None and args.prompt_file is None:
        args.prompt = DEFAULT_PROMPT
    has_draft = bool(args.draft) and args.draft.lower() != "none"
    if args.method == "prompt_lookup" and args.draft == str(DEFAULT_PAIR / "draft"):
        has_draft = False  # the default draft is not loaded; an explicit --draft drafts the steps without a match
    _check_args(args, has_draft)  # before any weights are loaded
    text = Path(args.prompt_file).read_text() if args.prompt_file else args.prompt
    if not text:
        raise ValueError("the prompt is empty: give --prompt text or a non-empty --prompt-file")
    dtype = getattr(torch, args.dtype)
    target, tok = load_model(args.target, args.device, dtype)
    draft = None
    if has_draft and args.method != "autoregressive":
        draft, dtok = load_model(args.draft, args.device, dtype)
        check_pair(target, draft, tok, dtok)
    ids = tok(text, return_tensors="pt").input_ids.to(args.device)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
              no_repeat_ngram_size=args.no_repeat_ngram_size, seed=args.seed, **_method_kwargs(args))
    if args.stop:
        kw.update(stop_strings=_stop_strings(args), tokenizer=tok)
    with torch.inference_mode():
        # warm-up run so the timing below does not include one-off start-up costs
        generate(target, ids, draft=draft, method=args.method, **{**kw, "max_new_tokens": 4})
        streamer = None
        if args.stream:
            from transformers import TextStreamer

            print(f"--- the prompt ({ids.shape[1]} tokens), then {PROMPT_MARK} and the generated tokens as they come ---")
            print(text + PROMPT_MARK, end="", flush=True)
            streamer = TextStreamer(tok, skip_prompt=True)
        out = generate(target, ids, draft=draft, method=args.method, streamer=streamer, **kw)
    if not args.stream:
        n_new = out.sequences.shape[1] - ids.shape[1]
        print(f"--- the prompt ({ids.shape[1]} tokens), then {PROMPT_MARK} and the {n_new} generated tokens ---")
        print(text + PROMPT_MARK + tok.decode(out.sequences[0, ids.shape[1]:]))
    print("-" * 60)
    print(out.stats.summary())
    if out.stats.drafted_tokens:
        print(LEGEND)
    if args.compare and out.stats.new_tokens == 0:
        print("--compare: nothing was generated (max_new_tokens = 0 or an immediate EOS), no speed to compare")
    elif args.compare:
        _compare(args, target, draft, ids, kw, out)
    return 0


def bench_dir() -> Path | None:
    """The repository's ``bench/`` folder next to the package (a source checkout), or None (an installed package)."""
    d = Path(__file__).resolve().parent.parent / "bench"
    return d if (d / "common.py").is_file() else None


def run_benchmark(command: str, argv: list[str]) -> int:
    """``fastdecode <command> ARGS`` = ``python bench/<script>.py ARGS``: the script's ``main(ARGS)``, in this
    process (imported as ``bench.<script>``, so that quality's worker processes can import what they run)."""
    script = SUBCOMMANDS[command][0]
    folder = bench_dir()
    if folder is None or not (folder / f"{script}.py").is_file():
        print(f"fastdecode {command}: the benchmarks are scripts of the fastdecode repository (bench/{script}.py), "
              f"not part of the installed package: run it from a source checkout", file=sys.stderr)
        return 2
    if str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))
    saved = sys.argv
    sys.argv = [f"fastdecode {command}", *argv]  # the script's argparse names itself after sys.argv[0]
    try:
        module = importlib.import_module(f"bench.{script}")
        if Path(module.__file__).resolve().parent != folder.resolve():
            print(f"fastdecode {command}: `import bench` finds {module.__file__}, not {folder}", file=sys.stderr)
            return 2
        return int(module.main(argv) or 0)
    except SystemExit as e:  # argparse's --help and usage errors, or a script's own exit
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(f"fastdecode {command}: {e.code}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:  # a benchmark whose optional dependency is missing
        print(f"fastdecode {command}: unavailable ({e})", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:  # user mistakes: bad values, missing files or models
        print(f"fastdecode {command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:  # the benchmark script parses (and documents, --help) its own arguments
        return run_benchmark(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="fastdecode", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text with a target (and draft) model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _generate_args(g)
    for name, (script, help_) in SUBCOMMANDS.items():  # listed in --help; run by run_benchmark above
        sub.add_parser(name, help=f"{help_} (bench/{script}.py; a source checkout)")
    args = parser.parse_args(argv)
    try:
        return _run_generate(args)
    except (ValueError, OSError) as e:  # user mistakes: bad values, missing files or models
        print(f"fastdecode {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
