"""Command line: ``fastdecode generate | bench | acceptance | quality | long-context | kernels | optimal-cost``.

Each benchmark subcommand lives in ``fastdecode.benchmarks.<module>``, which exposes
``add_arguments(parser)`` and ``run(args)``; this file only wires them up.
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

SUBCOMMANDS = {
    "bench": ("e2e", "end-to-end speed vs Hugging Face generate and assisted generation"),
    "acceptance": ("acceptance", "acceptance rate of every verifier against the optimal-transport bound"),
    "quality": ("quality", "entropy-switch line-completion quality benchmark"),
    "long-context": ("long_context", "Lambda attention: perplexity, passkey and memory vs context length"),
    "kernels": ("kernels", "Triton kernels vs PyTorch references (GPU)"),
    "optimal-cost": ("optimal_cost", "per-step cost of the OT-optimal verifier's selection"),
}


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=str(DEFAULT_PAIR / "target"), help="target model folder or HF id")
    p.add_argument("--draft", default=str(DEFAULT_PAIR / "draft"), help="draft model folder or HF id ('none' for no draft)")
    p.add_argument("--prompt", default=None, help="prompt text")
    p.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the Python API's default is 1.0)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--method", default="auto",
                   choices=["auto", "autoregressive", "speculative", "multi_draft", "entropy_switch"],
                   help="decoding method (auto: speculative with a draft, multi_draft when --num-drafts > 1)")
    p.add_argument("--draft-length", type=int, default=4)
    p.add_argument("--num-drafts", type=int, default=1, help="k, the number of draft sequences (multi_draft)")
    p.add_argument("--adaptive-draft", action=argparse.BooleanOptionalAction, default=None,
                   help="adapt the draft length / tree depth to acceptance (default: on for speculative, off for multi_draft)")
    p.add_argument("--verifier", default=None, help="token | block (speculative); rrs | spectr | optimal | ... (multi_draft)")
    p.add_argument("--entropy-threshold", type=float, default=None, help="bits, for entropy_switch")
    p.add_argument("--entropy-window", type=int, default=None, help="rolling-mean window w, for entropy_switch")
    p.add_argument("--min-dwell", type=int, default=None, help="tokens between two switches, for entropy_switch")
    p.add_argument("--speculate-when-large", action="store_true",
                   help="entropy_switch: the large model verifies drafts of the small one (lossless segments)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compare", action="store_true", help="also run plain autoregressive decoding and print the speed-up")


def _run_generate(args) -> int:
    import torch

    from . import generate
    from .models import check_pair, load_model

    if args.prompt is None and args.prompt_file is None:
        args.prompt = DEFAULT_PROMPT
    if args.prompt_file and not Path(args.prompt_file).is_file():
        raise ValueError(f"--prompt-file {args.prompt_file}: no such file")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this torch build sees no CUDA device")
    for flag, path in (("--target", args.target), ("--draft", args.draft)):
        if path and path.lower() != "none" and (path.startswith((".", "/", "~")) or Path(path).exists()) \
                and not Path(path).expanduser().is_dir():
            raise ValueError(f"{flag} {path}: no such model folder")
    # sampling and method arguments are checked before any weights are loaded
    from .config import MultiDraftConfig, SamplingConfig, SpeculativeConfig
    SamplingConfig(args.temperature, args.top_k, args.top_p)
    if args.method == "multi_draft" or (args.method == "auto" and args.num_drafts > 1):
        MultiDraftConfig(args.num_drafts, args.draft_length, args.verifier or "rrs")
    elif args.num_drafts != 1:
        raise ValueError(f"--num-drafts applies to --method multi_draft (or auto), not to {args.method}")
    elif args.method == "speculative" or (args.method == "auto" and args.verifier):
        SpeculativeConfig(args.draft_length, max_draft_length=max(16, args.draft_length), verifier=args.verifier or "token")
    text = Path(args.prompt_file).read_text() if args.prompt_file else args.prompt
    if not text:
        raise ValueError("the prompt is empty: give --prompt text or a non-empty --prompt-file")
    target, tok = load_model(args.target, args.device)
    draft = None
    if args.draft and args.draft.lower() != "none" and args.method != "autoregressive":
        draft, dtok = load_model(args.draft, args.device)
        check_pair(target, draft, tok, dtok)
    ids = tok(text, return_tensors="pt").input_ids.to(args.device)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, draft_length=args.draft_length, seed=args.seed)
    if args.num_drafts != 1:
        kw.update(num_drafts=args.num_drafts)
    if args.adaptive_draft is not None:
        kw["adaptive_draft"] = args.adaptive_draft
    if args.verifier:
        kw["verifier"] = args.verifier
    if args.method == "entropy_switch":
        if args.entropy_threshold is not None:
            kw["entropy_threshold"] = args.entropy_threshold
        kw.update({k: v for k, v in (("entropy_window", args.entropy_window), ("min_dwell", args.min_dwell)) if v is not None})
        if args.speculate_when_large:
            kw["speculate_when_large"] = True
    with torch.inference_mode():
        # warm-up run so the timing below does not include one-off start-up costs
        generate(target, ids, draft=draft, method=args.method, **{**kw, "max_new_tokens": 4})
        out = generate(target, ids, draft=draft, method=args.method, **kw)
    print(text + tok.decode(out.sequences[0, ids.shape[1]:]))
    print("-" * 60)
    print(out.stats.summary())
    if args.compare and out.stats.new_tokens == 0:
        print("--compare: nothing was generated (max_new_tokens = 0 or an immediate EOS), no speed to compare")
    elif args.compare:
        import time

        base_kw = {k: kw[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}
        base = generate(target, ids, method="autoregressive", **base_kw)
        hf_kw = dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0)
        if args.temperature > 0:
            hf_kw.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        t0 = time.perf_counter()
        with torch.inference_mode():
            hf = target.generate(ids, **hf_kw)
        hf_rate = (hf.shape[1] - ids.shape[1]) / (time.perf_counter() - t0)
        print(f"fastdecode autoregressive: {base.stats.tokens_per_s:.1f} tok/s; HF generate: {hf_rate:.1f} tok/s")
        print(f"speed-up of {out.stats.method}: {out.stats.tokens_per_s / base.stats.tokens_per_s:.2f}x over "
              f"autoregressive, {out.stats.tokens_per_s / hf_rate:.2f}x over HF generate (one run, same prompt)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdecode", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text with a target (and draft) model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _generate_args(g)
    for name, (module, help_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        try:
            mod = importlib.import_module(f".benchmarks.{module}", __package__)
        except ModuleNotFoundError as e:  # a benchmark whose optional dependency is missing
            sp.set_defaults(_missing=str(e))
            continue
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"fastdecode {args.command}: unavailable ({args._missing})", file=sys.stderr)
        return 2
    try:
        return _run_generate(args) if args.command == "generate" else int(args._run(args) or 0)
    except (ValueError, OSError) as e:  # user mistakes: bad values, missing files or models
        print(f"fastdecode {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
