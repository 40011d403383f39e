"""``fastdecode.generate``: validates arguments, picks the method, returns sequences and statistics."""
from __future__ import annotations

import contextlib
import importlib
import time

import torch

from .checks import check_call, eval_mode
from .config import MultiDraftConfig, SamplingConfig, SpeculativeConfig
from .decoding import cache as kv
from .decoding.common import TokenStream
from .defaults import eos_from_model, resolve
from .models import check_pair, shared_vocab
from .stats import DecodeStats, GenerationResult

METHODS = ("autoregressive", "speculative", "multi_draft", "entropy_switch")


def _eos_ids(target, eos_token_id) -> set[int]:
    if eos_token_id is None:
        eos_token_id = eos_from_model(target)  # as HF: generation_config.eos_token_id only
    if eos_token_id is None:
        return set()
    try:  # an int, a list of ints, a tensor or a numpy array of them
        ids = torch.as_tensor(eos_token_id).flatten()
    except (TypeError, ValueError, RuntimeError):
        ids = None
    if ids is not None and ids.numel() == 0:
        return set()
    if ids is None or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"eos_token_id must be an int, a list of ints or None, got {eos_token_id!r}")
    return {int(e) for e in ids.tolist()}


def _check_rollback(cfg, method_cfg) -> None:
    """Lambda attention keeps max_rollback tokens beyond its window so that rejected drafts can be rolled
    back: it must cover the longest draft the method can make (checked here, not mid-generation).
    method_cfg: the method's SpeculativeConfig, MultiDraftConfig or EntropySwitchConfig (None: no drafts)."""
    from .attention import LambdaAttention

    if not isinstance(cfg, LambdaAttention):
        raise ValueError(f"lambda_attention must be a fastdecode.LambdaAttention, got {type(cfg).__name__}")
    if hasattr(method_cfg, "speculate_when_large"):  # entropy switch: drafts only when the large model verifies
        longest, what = (method_cfg.speculative_length if method_cfg.speculate_when_large else 0), "speculative_length"
    elif method_cfg is not None:
        longest, what = ((method_cfg.max_draft_length, "max_draft_length") if method_cfg.adaptive
                         else (method_cfg.draft_length, "draft_length"))
    else:
        return
    if cfg.max_rollback < longest:
        raise ValueError(f"LambdaAttention.max_rollback = {cfg.max_rollback} is below the longest draft ({what} = "
                         f"{longest}): rejected drafts could not be rolled back; raise max_rollback or lower {what}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_input_ids(input_ids) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be an integer tensor [batch, prompt_len], got {type(input_ids).__name__}"
                         + (f" of dtype {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else ""))
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [batch, prompt_len], got {tuple(input_ids.shape)}")
    if input_ids.shape[0] != 1:
        raise ValueError(f"fastdecode.generate supports batch size 1 for now, got batch {input_ids.shape[0]}")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: input_ids must hold at least one token")


def generate(
    target,
    input_ids: torch.Tensor,
    draft=None,
    method: str = "auto",
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    draft_length: int = 4,
    eos_token_id=None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    *,
    adaptive_draft: bool | None = None,
    max_draft_length: int | None = None,
    confidence_threshold: float = 0.4,
    verifier: str | None = None,
    num_drafts: int = 1,
    lambda_attention=None,
    progress: bool = False,
    **method_options,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens after ``input_ids`` [1, prompt_len].

    method: "autoregressive", "speculative" (single draft), "multi_draft" (k draft sequences verified
    as a tree), "entropy_switch" (lossy: small model while confident); "auto" = speculative when a
    draft is given (multi_draft when num_drafts > 1), else autoregressive. See the README for every
    method's guarantees.
    max_new_tokens, temperature, top_k, top_p: None = the target's ``generation_config`` (do_sample=False
    means temperature 0), else 128, 1.0, 0, 1.0 (see ``fastdecode.defaults``).
    adaptive_draft: None = the method's default (on for "speculative", off for "multi_draft").
    max_draft_length: the adaptive length's upper bound; None = max(16, draft_length).
    """
    if not isinstance(method, str):
        raise ValueError(f"method must be a string, got {method!r}")
    if method == "auto":
        method = ("multi_draft" if _is_int(num_drafts) and num_drafts > 1 else "speculative") if draft is not None \
            else "autoregressive"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {('auto',) + METHODS}")
    _check_input_ids(input_ids)
    max_new_tokens, temperature, top_k, top_p = resolve(target, input_ids.shape[1], max_new_tokens, temperature,
                                                        top_k, top_p)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    sampling = SamplingConfig(temperature, top_k, top_p)
    if adaptive_draft is not None and not isinstance(adaptive_draft, bool):
        raise ValueError(f"adaptive_draft must be True, False or None (the method's default), got {adaptive_draft!r}")
    if not _is_int(draft_length) or draft_length < 1:
        raise ValueError(f"draft_length must be an int >= 1, got {draft_length!r}")
    if max_draft_length is None:
        max_draft_length = max(16, draft_length)
    elif not _is_int(max_draft_length) or max_draft_length < draft_length:
        raise ValueError(f"max_draft_length must be an int >= draft_length ({draft_length}), got {max_draft_length!r}")
    if not isinstance(confidence_threshold, (int, float)) or isinstance(confidence_threshold, bool):
        raise ValueError(f"confidence_threshold must be a number in [0, 1), got {confidence_threshold!r}")
    if method != "multi_draft" and num_drafts != 1:
        raise ValueError(f"num_drafts={num_drafts!r} applies to method='multi_draft' (or 'auto'), not to {method!r}")
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if method != "autoregressive":
        if draft is None:
            raise ValueError(f"method {method!r} needs a draft model (draft=...)")
        check_pair(target, draft)
    if method_options and method != "entropy_switch":
        raise ValueError(f"unexpected arguments for method {method!r}: {sorted(method_options)}")
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator(device=kv.device(target)).manual_seed(int(seed))

    check_call(target, draft, method, input_ids, max_new_tokens)
    device = kv.device(target)
    input_ids = input_ids.to(device)
    stream = TokenStream(input_ids, max_new_tokens, _eos_ids(target, eos_token_id))
    stats = DecodeStats(method=method)

    method_cfg = None  # the method's own configuration
    if method == "speculative":
        spec = method_cfg = SpeculativeConfig(draft_length, adaptive_draft is not False, max_draft_length,
                                 confidence_threshold, verifier or "token")
    elif method == "multi_draft":
        md = method_cfg = MultiDraftConfig(num_drafts=num_drafts, draft_length=draft_length, verifier=verifier or "rrs",
                              adaptive=bool(adaptive_draft), max_draft_length=max_draft_length)
    elif method == "entropy_switch":
        es_mod = importlib.import_module(".decoding.entropy_switch", __package__)
        try:
            es = method_cfg = es_mod.EntropySwitchConfig(**method_options)
        except TypeError as e:
            raise ValueError(f"bad entropy_switch option: {e}") from None
    elif verifier is not None:
        raise ValueError(f"verifier= applies to speculative and multi_draft decoding, not to {method!r}")
    if lambda_attention is not None:
        _check_rollback(lambda_attention, method_cfg)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_new_tokens, desc=method, unit="tok")

    with contextlib.ExitStack() as stack, torch.inference_mode():
        stack.enter_context(eval_mode(target, draft if method != "autoregressive" else None))
        if method != "autoregressive":
            stack.enter_context(shared_vocab(target, draft))
        if lambda_attention is not None:
            from .attention import lambda_attention as lambda_ctx
            for m in (target, draft) if draft is not None else (target,):
                stack.enter_context(lambda_ctx(m, lambda_attention))
        t0 = time.perf_counter()
        if method == "autoregressive":
            from .decoding import autoregressive
            autoregressive.decode(target, stream, sampling, generator, stats, bar)
        elif method == "speculative":
            from .decoding import speculative
            speculative.decode(target, draft, stream, sampling, spec, generator, stats, bar)
        elif method == "multi_draft":
            from .decoding import multi_draft
            multi_draft.decode(target, draft, stream, sampling, md, generator, stats, bar)
        else:
            es_mod.decode(target, draft, stream, sampling, es, generator, stats, bar)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats.wall_time_s = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    stats.new_tokens = stream.new_tokens
    return GenerationResult(sequences=stream.as_tensor(device), stats=stats)
