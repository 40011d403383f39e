"""The inputs of one :func:`fastdecode.generate` call as HF ``generate`` takes them: the prompt (a tensor or a
tokenizer's output), its token type ids, the EOS ids and the streamer, checked at the boundary (a ValueError
that names the problem)."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .defaults import eos_from_model


def eos_ids_of(target, eos_token_id) -> set[int]:
    """The EOS ids of a call: ``eos_token_id`` (an id, a list, a tensor), else the target's generation config's
    only, as HF reads them."""
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


def unpack_encoding(inputs, attention_mask, token_type_ids=None):
    """``inputs``: a tensor, or a tokenizer's output (``BatchEncoding``, or any mapping with "input_ids"), whose
    "attention_mask" and "token_type_ids" are used unless passed as well (then a ValueError). Returns
    (input_ids, mask, token_type_ids)."""
    if not isinstance(inputs, Mapping):
        return inputs, attention_mask, token_type_ids
    if "input_ids" not in inputs:
        raise ValueError(f"input_ids is a mapping without an 'input_ids' entry (keys: {sorted(inputs)})")
    found = {}
    for name, given in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        inside = inputs.get(name)
        if inside is not None and given is not None:
            raise ValueError(f"{name} given twice: in the tokenizer's output passed as input_ids and as {name}=; "
                             "pass one")
        found[name] = given if given is not None else inside
    return inputs["input_ids"], found["attention_mask"], found["token_type_ids"]


def check_token_type_ids(target, token_type_ids, input_ids: torch.Tensor) -> None:
    """Token type ids are not passed to the model: all zeros in the prompt's shape, for a model whose forward has
    no such input (what a tokenizer returns for one segment), are dropped; anything else is a ValueError, since
    the model would read them."""
    if token_type_ids is None:
        return
    import inspect

    try:
        types = torch.as_tensor(token_type_ids)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"token_type_ids must be a tensor (or nested list) of ints, got {token_type_ids!r}") from e
    if tuple(types.shape) != tuple(input_ids.shape):
        raise ValueError(f"token_type_ids has shape {tuple(types.shape)}, but input_ids has shape "
                         f"{tuple(input_ids.shape)}: they must match")
    takes = "token_type_ids" in inspect.signature(target.forward).parameters
    if takes or bool(types.any()):
        why = f"{type(target).__name__} reads them" if takes else "they are not all zeros"
        raise ValueError(f"token_type_ids: fastdecode does not pass token type ids to the model, and {why}; "
                         "tokenize with return_token_type_ids=False (or drop them) to decode without them")


def check_input_ids(input_ids) -> None:
    if input_ids is None:
        raise ValueError("input_ids is required: the prompt's token ids [batch, prompt_len] (or the tokenizer's "
                         "output passed whole)")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be an integer tensor [batch, prompt_len], got {type(input_ids).__name__}"
                         + (f" of dtype {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else ""))
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [batch, prompt_len], got {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: input_ids must hold at least one token")


def check_streamer(streamer, input_ids: torch.Tensor) -> None:
    if streamer is None:
        return
    if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
        raise TypeError(f"streamer must have put() and end() methods (transformers' TextStreamer, "
                        f"TextIteratorStreamer, ...), got {type(streamer).__name__}")
    if input_ids.shape[0] != 1:
        raise ValueError(f"streamer= supports batch size 1 (as transformers' streamers do), got a batch of "
                         f"{input_ids.shape[0]}")
