"""Sampling and length defaults of :func:`fastdecode.generate`, read from the model's ``generation_config``
the way HF ``generate`` reads them.

Priority, per argument: the caller's explicit value > ``target.generation_config`` > fastdecode's documented
default (temperature 1.0, top_k 0, top_p 1.0, max_new_tokens 128), except that sampling asked for with HF's switch
(``do_sample=True`` in the call, or in the generation config when the call does not give ``do_sample``) falls back
to HF's top_k of 50, as HF does. A generation config field that is None (the
transformers 5 convention for "not set") says nothing. Greedy is temperature 0: ``do_sample=False``
in the generation config means temperature 0 unless the caller passes a temperature or ``do_sample``;
the caller's ``do_sample`` (HF's name) is checked against its temperature in :func:`sampling_choice`. The length: ``max_new_tokens``, else ``max_length`` minus the prompt (HF counts the
prompt in ``max_length``).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import warnings

DEFAULTS = dict(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=128)
HF_SAMPLING_TOP_K = 50   # HF's fallback top_k when sampling is asked for with do_sample=True and no top_k is set


def _field(gc, name):
    return getattr(gc, name, None) if gc is not None else None


def sampling_choice(do_sample, temperature):
    """The temperature a call asks for once HF's ``do_sample`` is taken into account (None: still to be read from
    the generation config). do_sample=False is greedy decoding (temperature 0); do_sample=True samples (the
    temperature given, else the generation config's, else 1.0). A temperature that contradicts it is a
    ValueError, not a silent choice between the two, except do_sample=False with temperature=1.0, HF's
    default value, which HF takes silently as greedy decoding."""
    if do_sample is None:
        return temperature
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True, False or None, got {do_sample!r}")
    if do_sample is False:
        if temperature is not None and temperature not in (0, 1.0):
            raise ValueError(f"do_sample=False is greedy decoding, but temperature={temperature!r} asks for sampling: "
                             "pass one of them (greedy: temperature=0)")
        return 0.0
    if temperature is not None and temperature == 0:
        raise ValueError("do_sample=True asks for sampling, but temperature=0 is greedy decoding: pass one of them")
    return temperature


def _room(prompt_len: int, max_length: int, said: str) -> int:
    """New tokens a length limit that counts the prompt leaves (HF's max_length); none left is a ValueError, as
    in HF generate. ``said``: where the limit came from, for the message."""
    if prompt_len >= int(max_length):
        raise ValueError(f"the prompt has {prompt_len} tokens, but {said}")
    return int(max_length) - prompt_len


def resolve(target, prompt_len: int, max_new_tokens, temperature, top_k, top_p, do_sample=None,
            max_length=None) -> tuple:
    """(max_new_tokens, temperature, top_k, top_p) with every None filled in (priority in the module docstring;
    ``do_sample``: the caller's, see :func:`sampling_choice`; ``max_length``: the caller's length limit,
    prompt included, which takes the place of max_new_tokens; both given: max_new_tokens, with a warning, as in
    HF)."""
    if max_length is not None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1 (prompt included, as in HF generate), got {max_length!r}")
        if max_new_tokens is not None:   # as HF: max_new_tokens takes precedence, with a word
            warnings.warn(f"both max_new_tokens ({max_new_tokens}) and max_length ({max_length}) are set: "
                          "max_new_tokens takes precedence, as in HF generate", UserWarning, stacklevel=3)
        else:
            max_new_tokens = _room(prompt_len, max_length, f"max_length={max_length} counts the prompt (as in HF "
                                                           "generate): raise it, or pass max_new_tokens=")
    gc = getattr(target, "generation_config", None)
    # HF's switch said to sample (the call's do_sample=True, else the generation config's): then HF's fallback
    # top_k, 50, where no top_k is set, so that a call written for HF samples HF's law
    switched = do_sample is True or (do_sample is None and _field(gc, "do_sample") is True)
    temperature = sampling_choice(do_sample, temperature)
    if temperature is None:
        do_sample = _field(gc, "do_sample") if do_sample is None else do_sample
        if do_sample is False:
            temperature = 0.0
        else:
            temperature = _field(gc, "temperature")
            temperature = DEFAULTS["temperature"] if temperature is None else temperature
    if top_k is None:
        top_k = _field(gc, "top_k")
        top_k = (HF_SAMPLING_TOP_K if switched else DEFAULTS["top_k"]) if top_k is None else top_k
    if top_p is None:
        top_p = _field(gc, "top_p")
        top_p = DEFAULTS["top_p"] if top_p is None else top_p
    if max_new_tokens is None:
        max_new_tokens = _field(gc, "max_new_tokens")
        max_length = _field(gc, "max_length")
        if max_new_tokens is None and max_length is not None:
            max_new_tokens = _room(prompt_len, max_length, f"the target's generation_config.max_length is "
                                                           f"{max_length} (prompt included): pass max_new_tokens= "
                                                           "(or raise max_length)")
        max_new_tokens = DEFAULTS["max_new_tokens"] if max_new_tokens is None else max_new_tokens
    return max_new_tokens, temperature, top_k, top_p


WARPERS = dict(min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, top_h=1.0)   # HF's; value: off


def resolve_warpers(target, **given) -> dict:
    """HF's warpers besides temperature, top-k and top-p (:data:`WARPERS`): each the caller's, else the generation
    config's, else off.
    Checked by SamplingConfig."""
    gc = getattr(target, "generation_config", None)
    out = {}
    for name, off in WARPERS.items():
        v = given.get(name)
        v = _field(gc, name) if v is None else v
        out[name] = off if v is None else v
    return out


# generation_config fields with which HF generate changes the logits (or the search) and fastdecode does not:
# field -> the value that changes nothing
NOT_APPLIED = {"guidance_scale": 1.0, "watermarking_config": None, "num_beams": 1, "penalty_alpha": 0.0,
               "dola_layers": None, "output_attentions": False, "output_hidden_states": False}
NEUTRAL = {name: neutral for name, neutral in NOT_APPLIED.items() if neutral is not None}


def not_applied(target) -> list[str]:
    """The target's generation_config settings that HF generate would apply and fastdecode does not ("name=value"
    each): the caller is warned, since the tokens then differ from HF's. Explicit arguments with these names are
    refused instead (``hf_options.HF_ONLY``)."""
    gc = getattr(target, "generation_config", None)
    found = []
    for name, neutral in NOT_APPLIED.items():
        value = _field(gc, name)
        if value is None or value == neutral or (isinstance(value, (list, dict)) and not value):
            continue
        found.append(f"{name}={value!r}")
    return found


def resolve_processors(target, prompt_len: int, eos_ids, repetition_penalty=None, min_new_tokens=None,
                       min_length=None, no_repeat_ngram_size=None, bad_words_ids=None, suppress_tokens=None,
                       begin_suppress_tokens=None, sequence_bias=None, forced_bos_token_id=None,
                       forced_eos_token_id=None, exponential_decay_length_penalty=None,
                       max_new_tokens: int = 0, logits_processor=None, prefix_allowed_tokens_fn=None,
                       group: int = 1, width: int | None = None) -> dict:
    """HF's prefix-dependent logits processors of a call, as the keyword arguments of
    :class:`~fastdecode.decoding.processors.Processors`: each setting the caller's, else the generation
    config's, else none. ``min_length`` counts the prompt (``prompt_len``: the prompt's width as the caller
    passed it, padding included, as HF counts it); ``min_new_tokens``, when set (0 included), takes precedence over
    ``min_length``, as in HF (which then sets min_length = min_new_tokens + the prompt's width). One-token
    bad words that are an EOS id are dropped, as HF drops them. ValueError for invalid values, and, given the
    logits' ``width``, for a bad word, a sequence bias or a forced token whose (last) id the logits lack, as HF
    refuses them (suppressed ids past it are ignored, as in HF)."""
    gc = getattr(target, "generation_config", None)
    custom = tuple(logits_processor or ())
    replaced, dropped = _replaced_by_custom(custom), set()

    def pick(name, value):
        value = _field(gc, name) if value is None else value
        if name in replaced and value is not None and value != _NEUTRAL_SETTING.get(name):
            custom_replaces(custom, replaced[name], name)
            dropped.add(name)
            return None
        return value

    r = pick("repetition_penalty", repetition_penalty)
    r = 1.0 if r is None else r
    if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 < r < float("inf"):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1.0: none), got {r!r}")
    counts = {}
    for name, v in (("min_new_tokens", min_new_tokens), ("min_length", min_length),
                    ("no_repeat_ngram_size", no_repeat_ngram_size)):
        v = pick(name, v)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        counts[name] = v
    least = counts["min_new_tokens"] if counts["min_new_tokens"] is not None else \
        max(0, (counts["min_length"] or 0) - prompt_len)
    words, nested_words = [], set()
    for name, v, nested in (("bad_words_ids", bad_words_ids, True), ("suppress_tokens", suppress_tokens, False)):
        v = pick(name, v)
        for w in (v or []):
            w = _token_list(name, w) if nested else _token_list(name, [w])
            if not w:
                raise ValueError(f"{name} holds an empty sequence")
            if not (len(w) == 1 and w[0] in eos_ids and nested):
                words.append(tuple(w))
                if nested:
                    nested_words.add(tuple(w))
    begin = _token_list("begin_suppress_tokens", pick("begin_suppress_tokens", begin_suppress_tokens) or [])
    bias = pick("sequence_bias", sequence_bias) or {}
    items = bias.items() if isinstance(bias, dict) else bias
    try:
        bias = tuple((tuple(_token_list("sequence_bias", list(w))), float(b)) for w, b in items)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sequence_bias must map token-id sequences to biases ({{(id, ...): bias}} or "
                         f"[[[id, ...], bias], ...]), got {bias!r}") from e
    if any(not w for w, _ in bias):
        raise ValueError("sequence_bias holds an empty sequence")
    bos = pick("forced_bos_token_id", forced_bos_token_id)
    if bos is not None:
        bos = _token_list("forced_bos_token_id", [bos])[0]
    eos_forced = pick("forced_eos_token_id", forced_eos_token_id)
    eos_forced = () if eos_forced is None else tuple(_token_list(
        "forced_eos_token_id", [eos_forced] if isinstance(eos_forced, int) else eos_forced))
    decay = pick("exponential_decay_length_penalty", exponential_decay_length_penalty)
    if decay is not None:
        if (not isinstance(decay, (tuple, list)) or len(decay) != 2 or not isinstance(decay[0], int)
                or isinstance(decay[0], bool) or decay[0] < 0 or not isinstance(decay[1], (int, float))):
            raise ValueError(f"exponential_decay_length_penalty must be (start_index >= 0, decay_factor), "
                             f"got {decay!r}")
        decay = (decay[0], float(decay[1]))
    if not all(callable(f) for f in custom):
        raise ValueError(f"logits_processor must hold callables (input_ids, scores) -> scores, got {logits_processor!r}")
    custom, in_slot = _placed(list(custom), replaced, dropped)
    if prefix_allowed_tokens_fn is not None and not callable(prefix_allowed_tokens_fn):
        raise ValueError(f"prefix_allowed_tokens_fn must be a callable (batch_id, input_ids) -> allowed token ids, "
                         f"got {prefix_allowed_tokens_fn!r}")
    if width is not None:
        named = (("bad_words_ids", [w[-1] for w in nested_words]),
                 ("sequence_bias", [w[-1] for w, _ in bias]),
                 ("forced_bos_token_id / forced_eos_token_id", list(eos_forced) + ([bos] if bos is not None else [])))
        for name, ids in named:
            past = sorted({t for t in ids if t >= width})
            if past:
                raise ValueError(f"{name} names token ids {past}, but the model's logits have {width} entries")
    return dict(custom=custom, in_slot=in_slot, allowed_fn=prefix_allowed_tokens_fn, group=group,
                repetition_penalty=float(r), eos_ids=tuple(sorted(eos_ids)),
                min_new_tokens=least, no_repeat_ngram_size=counts["no_repeat_ngram_size"] or 0, bad_words=tuple(words), begin_suppress=tuple(begin),
                sequence_bias=bias, forced_bos=bos if prompt_len == 1 else None,   # (HF forces it at length 1 only)
                forced_eos=eos_forced, forced_eos_at=max_new_tokens - 1, decay=decay)


# HF's built-in processor for each setting: a caller's processor of that type takes the setting's place, as in
# HF generate (min_new_tokens is left out: with it set, HF also builds a MinLengthLogitsProcessor that holds EOS
# back as long, so a custom MinNewTokensLengthLogitsProcessor changes nothing of the built rule)
_BUILT = {"repetition_penalty": "RepetitionPenaltyLogitsProcessor", "no_repeat_ngram_size": "NoRepeatNGramLogitsProcessor",
          "bad_words_ids": "NoBadWordsLogitsProcessor", "min_length": "MinLengthLogitsProcessor",
          "suppress_tokens": "SuppressTokensLogitsProcessor",
          "begin_suppress_tokens": "SuppressTokensAtBeginLogitsProcessor", "sequence_bias": "SequenceBiasLogitsProcessor",
          "forced_bos_token_id": "ForcedBOSTokenLogitsProcessor", "forced_eos_token_id": "ForcedEOSTokenLogitsProcessor",
          "exponential_decay_length_penalty": "ExponentialDecayLengthPenalty"}
_NEUTRAL_SETTING = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0}


def _placed(custom: list, replaced: dict, dropped: set) -> tuple[tuple, tuple]:
    """(custom, in_slot): as in HF, the caller's first processor of the type HF builds for a setting it replaces
    runs where the built one would: in its slot for the sequence bias and the repetition penalty (whose place in
    the order changes the values), first of the caller's for the decay penalty (the last built rule); the others
    replace masks, whose order changes nothing, and run with the rest of the caller's."""
    in_slot = []
    for name in ("sequence_bias", "repetition_penalty", "exponential_decay_length_penalty"):
        if name in dropped:
            proc = custom.pop(next(i for i, c in enumerate(custom) if type(c) is replaced[name]))
            if name == "exponential_decay_length_penalty":
                custom.insert(0, proc)
            else:
                in_slot.append((name, proc))
    return tuple(custom), tuple(in_slot)


def _replaced_by_custom(custom) -> dict:
    """setting -> HF processor class, for the settings whose built processor a caller's processor replaces."""
    if not custom:
        return {}
    from transformers.generation import logits_process

    out = {}
    for name, cls_name in _BUILT.items():
        cls = getattr(logits_process, cls_name, None)
        if cls is not None and any(type(c) is cls for c in custom):
            out[name] = cls
    return out


def _token_list(name: str, value) -> list[int]:
    """A list of token ids (ints >= 0) or a ValueError naming ``name``."""
    try:
        ids = [int(x) for x in value] if all(isinstance(x, int) and not isinstance(x, bool) for x in value) else None
    except TypeError:
        ids = None
    if ids is None or any(x < 0 for x in ids):
        raise ValueError(f"{name} must hold token ids (ints >= 0), got {value!r}")
    return ids


def eos_from_model(target):
    """The EOS id(s) HF ``generate`` stops at when the caller passes none: ``generation_config.eos_token_id``
    only (HF does not fall back to ``config.eos_token_id``); ``config.eos_token_id`` only for a model
    without a generation config."""
    gc = getattr(target, "generation_config", None)
    if gc is not None:
        return getattr(gc, "eos_token_id", None)
    return getattr(target.config, "eos_token_id", None)


@contextlib.contextmanager
def call_generation_config(target, generation_config):
    """HF's ``generate(generation_config=...)``: for one call, the target's generation config with the fields the
    given one sets (not None) put over it, as HF merges them, so that every default above reads it; the model's
    own config is restored afterwards."""
    if generation_config is None:
        yield
        return
    from transformers import GenerationConfig

    if not isinstance(generation_config, GenerationConfig):
        raise ValueError(f"generation_config must be a transformers GenerationConfig, got "
                         f"{type(generation_config).__name__}")
    own = getattr(target, "generation_config", None)
    merged = copy.deepcopy(own) if own is not None else GenerationConfig()
    for name, value in generation_config.to_dict().items():
        if value is not None and name not in ("transformers_version", "_from_model_config"):
            setattr(merged, name, value)
    target.generation_config = merged
    try:
        yield
    finally:
        target.generation_config = own


def takes_generation_config(generate):
    """``generate`` with HF's ``generation_config=`` keyword (see :func:`call_generation_config`)."""
    @functools.wraps(generate)
    def wrapper(target, *args, generation_config=None, **kwargs):
        with call_generation_config(target, generation_config):
            return generate(target, *args, **kwargs)
    return wrapper


def custom_replaces(custom, kind, setting: str) -> bool:
    """Whether the caller's processors or criteria ``custom`` hold one of type ``kind``, which, as in HF generate,
    takes the place of the one HF would build for ``setting`` (warned once per call, as HF warns)."""
    if not any(type(c) is kind for c in custom):
        return False
    warnings.warn(f"a custom {kind.__name__} was passed and {setting} is set too: the custom one takes "
                  f"precedence, as in HF generate", UserWarning, stacklevel=4)
    return True

