"""Plain decoding of a 1.1B Llama-shaped model (random weights, bf16) against the memory-bandwidth floor.

A batch-1 decode step reads every weight once, so no implementation can beat
    floor tokens/s = measured copy bandwidth (bytes read + written per second) / weight bytes.
This script measures that bandwidth (a large device-to-device copy), then HF `generate` (eager),
HF with a static cache (+ torch.compile on CUDA, transformers' own auto-compilation) and fastdecode's
autoregressive decoding on the dynamic and static engines (CUDA graphs of the eager forward, and
``compile=True``: inductor), greedy, same prompt, same run, and reports
each as a fraction of the floor.

Usage: python bench/bandwidth_floor.py [--new-tokens 128] [--repeats 3] [--smoke] [--out FILE.json]
(--smoke: a tiny model of the same shape family, for a CPU check of the script itself).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import fastdecode


def build(device, dtype, smoke: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = (dict(num_hidden_layers=2, hidden_size=64, intermediate_size=176, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512) if smoke else
             dict(num_hidden_layers=22, hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                  num_key_value_heads=4, vocab_size=32000))
    cfg = LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=False,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def copy_bandwidth(device, nbytes: int) -> float:
    """Bytes read + written per second by a device-to-device copy (median of 10 after warm-up)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    if device.type == "cuda":
        from triton.testing import do_bench
        ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
        return 2 * nbytes / (ms / 1e3)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times[2:])


def timed(fn, device, repeats: int) -> tuple[float, list[float]]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rates = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        n = fn()
        sync()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(device, dtype, args.smoke)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(device, 256 * 2**20 if args.smoke or device.type != "cuda" else 2 * 2**30)
    floor = bw / weight_bytes
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    new = args.new_tokens

    def hf(**kw):
        def run():
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **kw)
            return out.shape[1] - ids.shape[1]
        return run

    def fd(**kw):
        def run():
            return fastdecode.generate(model, ids, method="autoregressive", temperature=0, max_new_tokens=new,
                                       eos_token_id=[], **kw).stats.new_tokens
        return run

    cases = [("HF generate (eager)", hf()),
             ("HF static cache" + (" + compile" if device.type == "cuda" else ""), hf(cache_implementation="static")),
             ("fastdecode autoregressive (dynamic)", fd()),
             ("fastdecode autoregressive (static)", fd(cache_implementation="static")),
             ("fastdecode autoregressive (static, compile=True)", fd(cache_implementation="static", compile=True))]
    rows = []
    for name, fn in cases:
        try:
            t0 = time.perf_counter()
            fn()  # warm-up: allocations, recordings, compilation
            warm = time.perf_counter() - t0
            med, rates = timed(fn, device, args.repeats)
        except Exception as e:  # report and go on
            rows.append(dict(name=name, error=f"{type(e).__name__}: {e}"))
            print(f"{name}: failed: {rows[-1]['error']}", flush=True)
            continue
        rows.append(dict(name=name, tokens_per_s=med, all=rates, fraction_of_floor=med / floor, warmup_s=warm))
        print(f"{name}: {med:.1f} tok/s ({med / floor:.0%} of the floor), warm-up {warm:.1f} s", flush=True)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{machine}, {'smoke model' if args.smoke else '1.1B Llama shape'} {weight_bytes / 1e9:.2f} GB of weights, "
          f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write): floor {floor:.0f} tok/s; {new} new tokens, "
          f"median of {args.repeats}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(machine=machine, weight_bytes=weight_bytes, copy_bandwidth=bw,
                                                  floor_tokens_per_s=floor, new_tokens=new, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
