"""Sampling and length defaults of :func:`fastdecode.generate`, read from the model's ``generation_config``
the way HF ``generate`` reads them.

Priority, per argument: the caller's explicit value > ``target.generation_config`` > fastdecode's documented
default (temperature 1.0, top_k 0, top_p 1.0, max_new_tokens 128). A generation config field that is None
(the transformers 5 convention for "not set") says nothing. Greedy is temperature 0: ``do_sample=False``
in the generation config means temperature 0 unless the caller passes a temperature or ``do_sample``;
the caller's ``do_sample`` (HF's name) is checked against its temperature in :func:`sampling_choice`. The length: ``max_new_tokens``, else ``max_length`` minus the prompt (HF counts the
prompt in ``max_length``).
"""
from __future__ import annotations

DEFAULTS = dict(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=128)


def _field(gc, name):
    return getattr(gc, name, None) if gc is not None else None


def sampling_choice(do_sample, temperature):
    """The temperature a call asks for once HF's ``do_sample`` is taken into account (None: still to be read from
    the generation config). do_sample=False is greedy decoding (temperature 0); do_sample=True samples (the
    temperature given, else the generation config's, else 1.0). A temperature that contradicts it is a
    ValueError, not a silent choice between the two."""
    if do_sample is None:
        return temperature
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True, False or None, got {do_sample!r}")
    if do_sample is False:
        if temperature is not None and temperature != 0:
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
    prompt included, which takes the place of max_new_tokens)."""
    if max_length is not None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1 (prompt included, as in HF generate), got {max_length!r}")
        if max_new_tokens is not None:
            raise ValueError("pass max_new_tokens or max_length (prompt included), not both")
        max_new_tokens = _room(prompt_len, max_length, f"max_length={max_length} counts the prompt (as in HF "
                                                       "generate): raise it, or pass max_new_tokens=")
    gc = getattr(target, "generation_config", None)
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
        top_k = DEFAULTS["top_k"] if top_k is None else top_k
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


def eos_from_model(target):
    """The EOS id(s) HF ``generate`` stops at when the caller passes none: ``generation_config.eos_token_id``
    only (HF does not fall back to ``config.eos_token_id``); ``config.eos_token_id`` only for a model
    without a generation config."""
    gc = getattr(target, "generation_config", None)
    if gc is not None:
        return getattr(gc, "eos_token_id", None)
    return getattr(target.config, "eos_token_id", None)
