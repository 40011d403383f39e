"""``fastdecode.generate``: validates arguments, picks the method, returns sequences and statistics."""
from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings

import torch

from .checks import batch_rows_alone, check_call, check_models, eval_mode, static_mask_problem
from .config import METHODS, SamplingConfig, build_method_config  # noqa: F401 (METHODS re-exported)
from .hf_options import hf_aliases
from .decoding import DYNAMIC, STATIC, batched
from .decoding.batched_rows import decode_rows
from .decoding import hf_cache as kv
from .decoding.processors import Processors
from .decoding.scores import generated_scores
from .decoding.stream import TokenStream, budget_of_criteria, check_stopping_criteria, eos_of_criteria, stops_for
from .defaults import not_applied, resolve, resolve_processors, resolve_warpers, takes_generation_config
from .inputs import check_input_ids, check_streamer, check_token_type_ids, eos_ids_of, unpack_encoding
from .kernels.cpu_linear import check_pack_weights, packed_linears, should_pack
from .models import check_pair, shared_vocab
from .stats import DecodeStats, GenerationResult


def _check_rollback(cfg, method_cfg, static: bool = False) -> None:
    """Lambda attention keeps max_rollback tokens beyond its window so that rejected drafts can be rolled
    back: it must cover the longest draft the method can make (checked here, not mid-generation).
    method_cfg: the method's SpeculativeConfig, MultiDraftConfig or EntropySwitchConfig (None: no drafts).
    static: the static engine's ring cache never rolls back (it sizes itself by the longest forward), so
    only the config's type is checked."""
    from .attention import LambdaAttention

    if not isinstance(cfg, LambdaAttention):
        raise ValueError(f"lambda_attention must be a fastdecode.LambdaAttention, got {type(cfg).__name__}")
    if static:
        return
    if hasattr(method_cfg, "speculate_when_large"):  # entropy switch: drafts only when the large model verifies
        longest, what = (method_cfg.draft_length if method_cfg.speculate_when_large else 0), "draft_length"
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


CACHE_IMPLEMENTATIONS = ("dynamic", "static")


def _static_mode(cache_implementation, compile, method, target, draft, lambda_attention) -> str | None:
    """The static engine's compile mode ("eager", "cudagraphs" or "inductor"), or None for the dynamic engine."""
    from .decoding.static_cache import COMPILE_MODES, offloaded, static_support_problem

    if cache_implementation not in CACHE_IMPLEMENTATIONS:
        raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, got {cache_implementation!r}")
    if compile is not None and not isinstance(compile, bool) and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be None, True, False or one of {COMPILE_MODES}, got {compile!r}")
    if cache_implementation == "dynamic":
        if compile not in (None, False):
            raise ValueError("compile= needs cache_implementation='static' (recorded forwards need fixed-size caches)")
        return None
    roles = ((target, "target"), (draft, "draft")) if draft is not None and method != "autoregressive" else \
        ((target, "target"),)
    for m, role in roles:
        problem = static_support_problem(m) or static_mask_problem(m, role)
        if problem:
            raise ValueError(f"cache_implementation='static': {problem}")
    cuda = kv.device(target).type == "cuda"
    moved = [role for m, role in roles if offloaded(m)]
    if moved and compile not in (None, False, "eager"):
        raise ValueError(f"cache_implementation='static' with compile={compile!r}: the {moved[0]} is offloaded "
                         "(device_map with 'cpu' or 'disk'), and accelerate moves its weights in at each forward, "
                         "which a recorded or compiled forward cannot replay; use compile=None (plain forwards)")
    if compile is None:
        mode = "cudagraphs" if cuda and not moved else "eager"
    elif isinstance(compile, bool):
        mode = "inductor" if compile else "eager"
    else:
        mode = compile
    if mode == "cudagraphs" and not cuda:
        raise ValueError("compile='cudagraphs' needs a model on a CUDA device (on the CPU use compile=True: inductor)")
    return mode


@takes_generation_config
def generate(
    target,
    input_ids: torch.Tensor | None = None,
    draft=None,
    method: str = "auto",
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    draft_length: int | None = None,
    eos_token_id=None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    *,
    do_sample: bool | None = None,
    min_p: float | None = None,
    typical_p: float | None = None,
    epsilon_cutoff: float | None = None,
    eta_cutoff: float | None = None,
    top_h: float | None = None,
    repetition_penalty: float | None = None,
    min_new_tokens: int | None = None,
    min_length: int | None = None,
    no_repeat_ngram_size: int | None = None,
    bad_words_ids: list | None = None,
    suppress_tokens: list | None = None,
    begin_suppress_tokens: list | None = None,
    sequence_bias=None,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id=None,
    exponential_decay_length_penalty=None,
    logits_processor=None,
    prefix_allowed_tokens_fn=None,
    stop_strings=None,
    tokenizer=None,
    stopping_criteria=None,
    max_time: float | None = None,
    output_scores: bool | None = None,
    output_logits: bool | None = None,
    renormalize_logits: bool | None = None,
    max_length: int | None = None,
    num_return_sequences: int | None = None,
    adaptive_draft: bool | None = None,
    max_draft_length: int | None = None,
    confidence_threshold: float | None = None,
    fallback: str | None = None,
    verifier: str | None = None,
    num_drafts: int = 1,
    lambda_attention=None,
    cache_implementation: str | None = "dynamic",
    compile=None,
    pack_weights: bool | None = None,
    progress: bool = False,
    streamer=None,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
    **method_options,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens after ``input_ids`` [batch, prompt_len] (or a tokenizer's
    output passed whole, ``tok(prompts, return_tensors="pt")``: its input_ids and attention_mask).

    Batches (batch > 1): left padding only, ``attention_mask`` [batch, prompt_len] (1 = real token, 0 =
    padding; None = all ones) and a ``pad_token_id`` (None: the target's generation_config / config) for
    rows that end early; methods "autoregressive", "speculative", "prompt_lookup" and "multi_draft" in one
    batched loop, on the dynamic engine or the static one (eager forwards, or recorded ones with compile=True
    / "cudagraphs": the batch and step widths padded to powers of two; compile=None runs a batch eagerly); entropy
    switching and Lambda attention: the rows one after another, each as alone
    (:mod:`fastdecode.decoding.batched_rows`) (see
    :mod:`fastdecode.decoding.batched` and :mod:`fastdecode.decoding.batched_tree`). Batch size 1 runs the single-row
    engines (a left-padded row is decoded without its padding, which is put back in the output).

    method: "autoregressive", "speculative" (single draft), "multi_draft" (k draft sequences verified
    as a tree), "entropy_switch" (lossy: small model while confident), "prompt_lookup" (drafts copied
    from the prompt and the generated text; options prompt_lookup_num_tokens=10,
    max_matching_ngram_size=2, min_matching_ngram_size=1; a draft= model, if given, drafts the steps
    without a match); "auto" = speculative when a draft is given (multi_draft when num_drafts > 1),
    else autoregressive. See the README for every method's guarantees.
    max_new_tokens, temperature, top_k, top_p, min_p: None = the target's ``generation_config``
    (do_sample=False means temperature 0), else 128, 1.0, 0, 1.0, 0.0 (see ``fastdecode.defaults``). min_p (HF's):
    after top-k and top-p, tokens less probable than min_p times the most probable one are dropped (sampling only);
    typical_p, epsilon_cutoff, eta_cutoff: HF's warpers, after min_p in that order; top_h: HF's, before top-k
    (sampling only); None = the generation config's, else off.
    max_length: HF's length limit, prompt included (the padded prompt width in a batch): max_new_tokens =
    max_length - prompt_len; with max_new_tokens too, max_new_tokens wins (a warning), as in HF.
    num_return_sequences: n sampled continuations of each prompt, as HF returns them (rows [B * n, ...], the
    n rows of a prompt next to each other; a batch of B * n rows, see Batches); greedy decoding raises.
    do_sample: HF's switch, for code written for HF ``generate``: False = greedy (temperature 0), True =
    sampling (the temperature given, else the generation config's, else 1.0); a temperature that contradicts
    it is a ValueError; None = decided by the temperature.
    stop_strings (with tokenizer=, as in HF): generation stops right after a token that completes one of the
    strings, as after EOS (transformers' own StopStringCriteria decides); None = the generation config's.
    stopping_criteria: the caller's (HF's ``StoppingCriteriaList`` or any callables (input_ids, scores) -> bool
    tensor [rows]), checked after each committed token with that row's own text as input_ids [1, length] (a
    batch's rows each alone, without padding) and scores None; generation stops right after a token for which
    one is true, as after EOS. max_time: seconds from the call's start after which generation stops (checked
    after each committed token, as HF's MaxTimeCriteria); None = the generation config's.
    output_scores / output_logits: also return HF's ``scores`` (the processed and warped logits) / ``logits``
    (raw) of the target for every generated token, as the result's ``.scores`` / ``.logits``: a tuple with one
    [batch, V] float32 tensor per generated column (zeros after a row's end), so that HF's
    ``target.compute_transition_scores(out.sequences, out.scores)`` works on them; computed after decoding by one
    forward of the target over each row's text (see :mod:`fastdecode.decoding.scores`). renormalize_logits:
    HF's, the scores as log-probabilities (log-softmax after the warpers); None = the generation config's.
    generation_config (HF's): a ``GenerationConfig`` whose set fields override the target's generation config for
    this call (every argument left None reads them). assistant_model (HF's name) is taken as draft=; a
    tokenizer's token_type_ids (``**tok(...)``) pass when all zeros for a model that does not read them.
    repetition_penalty, min_new_tokens, min_length, no_repeat_ngram_size, bad_words_ids, suppress_tokens,
    begin_suppress_tokens, sequence_bias, forced_bos_token_id, forced_eos_token_id,
    exponential_decay_length_penalty: HF's logits processors, applied as HF applies them to every row of logits with its own
    prefix, target and draft alike, on every method, engine and batch (the output keeps the processed target's
    law; see :mod:`fastdecode.decoding.processors`); None = the generation config's, else none.
    logits_processor: the caller's processors (HF's ``LogitsProcessorList`` or any callables (input_ids, scores)
    -> scores), after HF's own, called on every row with that row's own text as input_ids [1, length]; they
    must be functions of those two (a row may belong to a draft that is then rejected). prefix_allowed_tokens_fn:
    HF's constraint (batch_id, input_ids 1-D) -> allowed token ids, called the same way. Other options
    of HF ``generate`` that fastdecode does not take (num_beams, guidance_scale, watermarking_config, ...) are a
    ValueError that says what to do instead (given as None or as the value that changes nothing, such as num_beams=1, they are accepted); the
    same settings in ``target.generation_config``, which HF generate would apply, give a UserWarning naming them.
    draft_length: gamma, tokens drafted per step; None = 4.
    adaptive_draft: None = the method's default (on for "speculative", off for "multi_draft").
    max_draft_length: the adaptive length's upper bound; None = max(16, draft_length).
    confidence_threshold: early stop of an adaptive single draft; None = 0.4.
    fallback: plain steps when drafting does not pay (speculative and prompt_lookup, adaptive length):
    "measured" (steps timed: drafting only while it gives more tokens per second), "estimated" (a cost
    ratio from the models' sizes; deterministic), "off"; None = "measured", except "estimated" when
    sampling with a seed or generator, so that the seed fixes the output.
    cache_implementation: "dynamic" (transformers' DynamicCache, cropped after rejections) or "static"
    (preallocated caches, rejected slots overwritten, fixed-shape forwards replayed; autoregressive,
    speculative, prompt_lookup and multi_draft; with ``lambda_attention`` a fixed-size ring of
    num_global + window + longest-forward slots per layer, for all of them). compile (static only): None = "cudagraphs" on CUDA,
    "eager" on the CPU; True = "inductor" (torch.compile, each compiled forward recorded as a CUDA graph on
    CUDA: about 2x the default's speed on an H200, after 5-10 s of compilation per forward shape in the first
    call; a model whose forward does not compile as one graph gets a ValueError); False = "eager"; or one of
    those names.
    pack_weights (CPU, float32): run the models' ``nn.Linear`` layers on oneDNN-packed copies of their weights
    (see :mod:`fastdecode.kernels.cpu_linear`; kept for the layers between calls, as much memory as the
    weights they copy); None = on when the copies need at most a quarter of the available memory and the engine is not
    compiled with inductor.
    streamer (batch 1): transformers' streamer interface (``TextStreamer``, ``TextIteratorStreamer``, or any
    object with ``put`` and ``end``): ``put`` gets the prompt [1, L], then the tokens of each step as they are
    committed ([1, n]: a speculative step commits several at once), and ``end`` is called when generation
    stops (also when it fails, so that a thread reading a ``TextIteratorStreamer`` is not left waiting).
    Options that do not apply to the method raise ValueError (see
    :func:`fastdecode.config.build_method_config`).
    """
    if method_options.get("assistant_model") is not None:   # HF's name for the draft model
        if draft is not None:
            raise ValueError("draft= and assistant_model= both given: they name the same model (the draft); pass one")
        draft = method_options.pop("assistant_model")
    method_options.pop("assistant_model", None)
    token_type_ids = method_options.pop("token_type_ids", None)   # (a tokenizer's output passed as **inputs)
    check_models(target, draft)
    gc = getattr(target, "generation_config", None)
    renormalize_logits, output_scores, output_logits = (   # None: the generation config's, else False (as HF)
        bool(getattr(gc, name, None)) if value is None else value
        for name, value in (("renormalize_logits", renormalize_logits), ("output_scores", output_scores),
                            ("output_logits", output_logits)))
    if cache_implementation is None:   # (HF's default; the generation config's "static" is not read)
        cache_implementation = "dynamic"
    for name, flag in (("output_scores", output_scores), ("output_logits", output_logits),
                       ("renormalize_logits", renormalize_logits)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    aliased = hf_aliases(method_options, dict(draft_length=draft_length, adaptive_draft=adaptive_draft,
                                              confidence_threshold=confidence_threshold))
    draft_length = aliased.get("draft_length", draft_length)
    adaptive_draft = aliased.get("adaptive_draft", adaptive_draft)
    confidence_threshold = aliased.get("confidence_threshold", confidence_threshold)
    method, method_cfg = build_method_config(
        method, draft is not None, num_drafts=num_drafts, verifier=verifier, draft_length=draft_length,
        adaptive_draft=adaptive_draft, max_draft_length=max_draft_length,
        confidence_threshold=confidence_threshold, fallback=fallback, **method_options)
    input_ids, attention_mask, token_type_ids = unpack_encoding(input_ids, attention_mask, token_type_ids)
    check_input_ids(input_ids)
    check_token_type_ids(target, token_type_ids, input_ids)
    criteria = check_stopping_criteria(stopping_criteria)
    if num_return_sequences is None:   # as HF: the generation config's, else 1
        num_return_sequences = getattr(gc, "num_return_sequences", None) or 1
    if not _is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be an int >= 1, got {num_return_sequences!r}")
    if num_return_sequences > 1:   # as HF: each prompt n times, rows of one prompt next to each other
        input_ids = input_ids.repeat_interleave(num_return_sequences, 0)
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 \
                and attention_mask.shape[0] * num_return_sequences == input_ids.shape[0]:
            attention_mask = attention_mask.repeat_interleave(num_return_sequences, 0)
    check_streamer(streamer, input_ids)
    check_pack_weights(pack_weights)   # (its combination with compile: below, once the engine's mode is known)
    # (lengths count the prompt's width, padding included, as HF counts them)
    max_new_tokens, temperature, top_k, top_p = resolve(target, input_ids.shape[1], max_new_tokens, temperature,
                                                        top_k, top_p, do_sample, max_length)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    max_new_tokens = budget_of_criteria(criteria, input_ids.shape[1], max_new_tokens)
    sampling = SamplingConfig(temperature, top_k, top_p, **resolve_warpers(
        target, min_p=min_p, typical_p=typical_p, epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff, top_h=top_h))
    ignored = not_applied(target)
    if ignored:
        warnings.warn(f"target.generation_config sets {', '.join(ignored)}, which HF generate would apply and "
                      "fastdecode does not: the tokens follow the model's distribution without them (set those "
                      "fields to None on target.generation_config to silence this)", UserWarning, stacklevel=2)
    if num_return_sequences > 1 and sampling.greedy:
        raise ValueError(f"num_return_sequences={num_return_sequences} with greedy decoding would return the same "
                         "text n times: sample (temperature > 0 or do_sample=True), as HF generate requires")
    eos_ids = eos_ids_of(target, eos_token_id)
    if attention_mask is None:   # as HF: leading pad tokens are padding (when the pad id is not an EOS id)
        attention_mask = batched.inferred_mask(target, input_ids, pad_token_id, eos_ids)
    attention_mask, pad_token_id = batched.check_batch(target, input_ids, attention_mask, pad_token_id)
    padded_prompt = None
    if input_ids.shape[0] == 1 and not bool(attention_mask.all()):  # one left-padded row: decode its real tokens
        padded_prompt, input_ids = input_ids, input_ids[:, attention_mask[0].bool()]
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if seed is not None and not -(2 ** 63) <= int(seed) < 2 ** 64:
        raise ValueError(f"seed must fit in 64 bits (-2**63 <= seed < 2**64), got {seed}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    drafter = draft if method != "autoregressive" else None   # the draft model the method runs (None: none)
    if drafter is not None:  # prompt_lookup: the draft model is optional
        check_pair(target, draft)
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator(device=kv.device(target)).manual_seed(int(seed))
    if fallback is None and generator is not None and not sampling.greedy and hasattr(method_cfg, "fallback"):
        method_cfg = dataclasses.replace(method_cfg, fallback="estimated")  # timings must not change seeded tokens

    check_call(target, draft, method, input_ids, max_new_tokens)
    device = kv.device(target)
    input_ids = input_ids.to(device)
    compile_mode = _static_mode(cache_implementation, compile, method, target, draft, lambda_attention)
    if lambda_attention is not None:
        _check_rollback(lambda_attention, method_cfg, static=compile_mode is not None)
    check_pack_weights(pack_weights, inductor=compile_mode == "inductor")
    rows_alone = input_ids.shape[0] > 1 and (batched.one_by_one(method, lambda_attention)
                                             or batch_rows_alone(method, target, draft))
    procs = Processors(**resolve_processors(
        target, (input_ids if padded_prompt is None else padded_prompt).shape[1], eos_ids, repetition_penalty,
        min_new_tokens, min_length, no_repeat_ngram_size, bad_words_ids, suppress_tokens, begin_suppress_tokens,
        sequence_bias, forced_bos_token_id, forced_eos_token_id, exponential_decay_length_penalty, max_new_tokens,
        logits_processor, prefix_allowed_tokens_fn, num_return_sequences, kv.logits_width(target)))
    stop = stops_for(target, stop_strings, tokenizer, criteria, max_time, device)
    # (batches make a stream per row, each with the processors; this one then only carries the EOS ids)
    stream = TokenStream(input_ids, max_new_tokens, eos_of_criteria(criteria, eos_ids), streamer,
                         procs if input_ids.shape[0] == 1 else None, stop)
    stats = DecodeStats(method=method)
    if compile_mode is not None and compile is None and input_ids.shape[0] > 1 and not rows_alone:
        compile_mode = "eager"   # batches record their forwards on request only (compile=True / "cudagraphs")
    if compile_mode is not None and method == "speculative" and confidence_threshold is None \
            and kv.device(target).type == "cuda":  # the stop's per-token host sync costs more than it saves there
        method_cfg = dataclasses.replace(method_cfg, confidence_threshold=0.0)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_new_tokens * input_ids.shape[0], desc=method, unit="tok")

    with contextlib.ExitStack() as stack, torch.inference_mode():
        if streamer is not None:
            streamer.put(input_ids.cpu())   # the prompt first, as HF generate does (TextStreamer may skip it)
            stack.callback(streamer.end)
        stack.enter_context(eval_mode(target, drafter))
        if drafter is not None:
            stack.enter_context(shared_vocab(target, draft))
        if lambda_attention is not None:
            from .attention import lambda_attention as lambda_ctx
            for m in (target, draft) if draft is not None else (target,):
                stack.enter_context(lambda_ctx(m, lambda_attention))
        if compile_mode != "inductor" and should_pack(pack_weights, (target, drafter)):
            stats.extra["packed_linears"] = stack.enter_context(packed_linears(target, drafter,
                                                                               measured=pack_weights is None))
        if compile_mode == "inductor":
            from .decoding.static_cache import compile_limits
            stack.enter_context(compile_limits())
        if compile_mode is not None:   # a failed call must not leave its caches kept on the models
            from .decoding.static_cache import drop_runners
            stack.push(lambda exc_type, *_: drop_runners(target, drafter) if exc_type is not None else None)
        t0 = time.perf_counter()
        if rows_alone:   # no batched loop for it: the rows one by one, each as alone
            def one(s, st):
                if compile_mode is not None:
                    STATIC[method](target, draft, s, sampling, method_cfg, generator, st, bar, mode=compile_mode)
                else:
                    DYNAMIC[method](target, draft, s, sampling, method_cfg, generator, st, bar)
            sequences = decode_rows(one, input_ids, attention_mask.to(device), max_new_tokens, stream.eos_ids,
                                    pad_token_id, stats, procs, stop)
        elif input_ids.shape[0] > 1:
            sequences = batched.decode(target, drafter, input_ids,
                                       attention_mask.to(device), max_new_tokens, stream.eos_ids, pad_token_id,
                                       sampling, method_cfg, generator, stats, bar, static=compile_mode is not None,
                                       mode=compile_mode or "eager", processors=procs, stop=stop)
        elif compile_mode is not None:
            STATIC[method](target, draft, stream, sampling, method_cfg, generator, stats, bar, mode=compile_mode)
        else:
            DYNAMIC[method](target, draft, stream, sampling, method_cfg, generator, stats, bar)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats.wall_time_s = time.perf_counter() - t0
        scored = None, None
        if output_scores or output_logits:   # (inside the contexts: Lambda attention scores as it decoded)
            if input_ids.shape[0] > 1:
                text, mask = sequences, attention_mask.to(device)
                counts = [row["new_tokens"] for row in stats.extra["per_row"]]
            else:
                text, counts = stream.as_tensor(device), [stream.new_tokens]
                mask = torch.ones_like(input_ids)
            t1 = time.perf_counter()
            scored = generated_scores(target, text, mask, counts, procs, sampling, output_scores, output_logits,
                                      renormalize_logits)
            stats.extra["scoring_s"] = time.perf_counter() - t1
    if bar is not None:
        bar.close()
    if input_ids.shape[0] > 1:
        return GenerationResult(sequences, stats, *scored)
    stats.new_tokens = stream.new_tokens
    sequences = stream.as_tensor(device)
    if padded_prompt is not None:
        sequences = torch.cat([padded_prompt.to(device), sequences[:, input_ids.shape[1]:]], 1)
    return GenerationResult(sequences, stats, *scored)
