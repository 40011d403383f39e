"""Offloaded target on the CPU: ``python bench/offload.py [--new 64] [--prompts 4] [--device-map disk]``.

The code pair's target is loaded with accelerate offloading (``device_map`` + ``offload_folder``: every
weight on disk by default, read back at each forward) and the draft normally. Greedy decoding, one run
per method and prompt: plain autoregressive decoding, speculative and multi-draft decoding, all through
``fastdecode.generate``, plus HF ``generate`` on the same offloaded target. Outputs of the lossless
methods are checked equal. Results: bench/results/offload.json (tokens/s, target calls, tau, speedup
over plain decoding).
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

import fastdecode  # noqa: E402
from bench.common import stdlib_prompts  # noqa: E402
from fastdecode.models import DEFAULT_PAIR, load_model  # noqa: E402

MAPS = {"disk": {"": "disk"}, "auto": "auto"}


def load_offloaded(path: Path, device_map: str, folder: str):
    from transformers import AutoModelForCausalLM

    kw = dict(max_memory={"cpu": "1MB"}) if device_map == "auto" else {}
    model = AutoModelForCausalLM.from_pretrained(str(path), device_map=MAPS[device_map], offload_folder=folder,
                                                 dtype=torch.float32, **kw)
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--device-map", choices=sorted(MAPS), default="disk")
    parser.add_argument("--out", default="bench/results/offload.json")
    args = parser.parse_args()

    draft, tok = load_model(DEFAULT_PAIR / "draft")
    folder = tempfile.mkdtemp(prefix="fastdecode_offload_")
    target = load_offloaded(DEFAULT_PAIR / "target", args.device_map, folder)
    prompts = stdlib_prompts(tok, n=args.prompts, prompt_tokens=args.prompt_tokens)
    runs = {
        "hf_generate": None,
        "autoregressive": dict(method="autoregressive"),
        "speculative": dict(method="speculative", draft=draft),
        "multi_draft_k2": dict(method="multi_draft", draft=draft, num_drafts=2, draft_length=4),
    }
    kw = dict(temperature=0, max_new_tokens=args.new, eos_token_id=[])
    fastdecode.generate(target, torch.tensor([prompts[0]]), draft=draft, **{**kw, "max_new_tokens": 4})  # warm-up
    results, outputs = {}, {}
    for name, opts in runs.items():
        tokens = calls = 0
        seqs = []
        t0 = time.perf_counter()
        for p in prompts:
            ids = torch.tensor([p])
            if opts is None:
                seq = target.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
                calls += args.new
            else:
                out = fastdecode.generate(target, ids, **opts, **kw)
                seq, calls = out.sequences, calls + out.stats.target_calls
            tokens += seq.shape[1] - ids.shape[1]
            seqs.append(seq)
        wall = time.perf_counter() - t0
        outputs[name] = seqs
        results[name] = dict(tokens=tokens, wall_s=round(wall, 3), tokens_per_s=round(tokens / wall, 2),
                             target_calls=calls, tau=round(tokens / max(calls, 1), 3))
        print(f"{name:16s} {results[name]['tokens_per_s']:8.2f} tok/s  tau {results[name]['tau']:.2f}", flush=True)
    base = results["autoregressive"]["tokens_per_s"]
    for r in results.values():
        r["speedup_vs_autoregressive"] = round(r["tokens_per_s"] / base, 2)
    same = all(all(torch.equal(a, b) for a, b in zip(outputs["autoregressive"], seqs)) for seqs in outputs.values())
    report = dict(device_map=args.device_map, new_tokens=args.new, prompts=args.prompts,
                  prompt_tokens=args.prompt_tokens, greedy_outputs_equal=same, runs=results,
                  machine=dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                               torch=torch.__version__), note="one run per method, no repeats")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
