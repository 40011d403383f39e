"""Loading models and checking that a draft can serve a target."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

DEFAULT_PAIR = Path(__file__).resolve().parent.parent / "models" / "code-pair"


def vocab_size(model) -> int:
    """The model's own output size (rows of its output embedding; see ``decoding.hf_cache.output_size``)."""
    from .decoding.hf_cache import output_size
    return output_size(model)


# without tokenizers, output sizes may differ by vocabulary padding: at most this many rows and this
# fraction of the larger size (Qwen2.5: 128 rows of 152064; unrelated vocabularies differ by far more)
MAX_PADDING = 1024
MAX_PADDING_FRACTION = 1 / 32


def padding_allowed(v1: int, v2: int) -> bool:
    """Whether two output sizes can be one tokenizer's vocabulary padded differently."""
    return abs(v1 - v2) <= min(MAX_PADDING, max(v1, v2) * MAX_PADDING_FRACTION)


def check_pair(target, draft, target_tokenizer=None, draft_tokenizer=None) -> None:
    """Raise ValueError when the draft cannot propose tokens for the target.

    Output sizes may differ by vocabulary padding (Qwen2.5-0.5B has 151936 output rows, Qwen2.5-7B 152064,
    with one tokenizer): :func:`shared_vocab` then brings the draft to the target's size. With tokenizers,
    they must map tokens to the same ids; without, sizes further apart than padding explains
    (:func:`padding_allowed`) are taken for different tokenizers and refused.
    """
    vt, vd = vocab_size(target), vocab_size(draft)
    if not padding_allowed(vt, vd) and (target_tokenizer is None or draft_tokenizer is None):
        raise ValueError(
            f"target and draft vocabularies differ: target has {vt} output tokens, draft has {vd}. "
            "Speculative decoding needs a draft with the same tokenizer (output sizes may differ only by "
            f"vocabulary padding: at most {MAX_PADDING} rows and 1/{round(1 / MAX_PADDING_FRACTION)} of the size)")
    from .decoding.hf_cache import device
    if device(target) != device(draft):
        raise ValueError(f"target is on {device(target)} but draft is on {device(draft)}: put both on one device "
                         "(for a target dispatched with accelerate, the device its inputs go to)")
    if target_tokenizer is not None and draft_tokenizer is not None:
        if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
            raise ValueError("target and draft tokenizers differ (their vocabularies map tokens to different ids)")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.txt")


def _did_you_mean(p: Path) -> str:
    import difflib

    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return ""
    close = difflib.get_close_matches(p.name, [c.name for c in parent.iterdir() if c.is_dir()], n=1)
    return f" (did you mean {parent / close[0]}?)" if close else ""


def _looks_local(path: str) -> bool:
    """A Hub id is "name" or "org/name"; anything else (or an org part that is a local folder) is a path."""
    if path.startswith((".", "/", "~", "\\")) or "\\" in path or path.count("/") > 1:
        return True
    return "/" in path and Path(path.split("/")[0]).expanduser().is_dir()


def check_model_path(path: str | Path) -> None:
    """Raise a one-line error when ``path`` cannot be a model folder, before any weights are loaded.

    A missing local folder gives FileNotFoundError (not an error about Hub repo ids); a folder holding
    ``target/`` and ``draft/`` (a pair) gives a hint to name one of them; a folder without
    ``config.json`` or without tokenizer files gives a ValueError naming the folder. Strings that look
    like Hub ids ("name", "org/name") pass unchecked.
    """
    s = str(path)
    p = Path(s).expanduser()
    if not p.exists():
        if isinstance(path, Path) or _looks_local(s):
            raise FileNotFoundError(f"{s}: no such model folder{_did_you_mean(p)}")
        return
    if not p.is_dir():
        raise ValueError(f"{s}: not a folder (a model is a folder holding config.json, weights and a tokenizer)")
    if not (p / "config.json").is_file():
        if (p / "target").is_dir() and (p / "draft").is_dir():
            raise ValueError(f"{s} is a model pair, not a model: pass {p / 'target'} (and {p / 'draft'} as the "
                             f"draft), or load_pair({s!r}) in Python")
        raise ValueError(f"{s}: no config.json in this folder, so it is not a Hugging Face model folder")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"{s}: no tokenizer in this model folder (none of {', '.join(TOKENIZER_FILES[:3])}, ...)")


@contextlib.contextmanager
def shared_vocab(target, draft):
    """Make the draft speak the target's output size for the duration of one generation (a no-op when the
    sizes match). Read by ``decoding.hf_cache.forward``:

    - the draft's logits are cut or padded with -inf to the target's size V_t, so q gives probability 0
      to ids the draft lacks and never proposes an id the target lacks. The target's logits are never
      touched, so p stays the target's law over its whole output; q is just another draft distribution,
      used both to sample and to verify, so every lossless verifier stays lossless;
    - ids the draft cannot read (a target token past the draft's input embedding table, e.g. a padding
      row) are fed to the draft as id 0: that changes only what the draft proposes, never p.
    """
    vt = vocab_size(target)
    rows = input_rows(draft)
    fields = {}
    if draft is not None and draft is not target and vocab_size(draft) != vt:
        fields["_fastdecode_logits_width"] = vt
    if draft is not None and draft is not target and rows < max(vt, input_rows(target)):
        fields["_fastdecode_input_rows"] = rows
    for k, v in fields.items():
        setattr(draft, k, v)
    try:
        yield
    finally:
        for k in fields:
            delattr(draft, k)


def input_rows(model) -> int:
    """Rows of the input embedding table: the token ids the model can read are 0 .. rows - 1 (0 for None)."""
    if model is None:
        return 0
    emb = model.get_input_embeddings()
    weight = getattr(emb, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A causal LM and its tokenizer from a local folder or a Hugging Face model id.

    Raises FileNotFoundError for a local folder that does not exist and ValueError (naming the folder)
    for a folder that is not a model, lacks a tokenizer, or whose tokenizer has more tokens than the
    model has embeddings (see :func:`check_model_path`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_path(path)
    path = str(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, ImportError) as e:  # e.g. a multi-line sentencepiece message
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: cannot load the tokenizer of this model ({first})") from None
    n_tok, n_emb = len(tok), model.get_input_embeddings().num_embeddings
    if n_tok > n_emb:
        raise ValueError(f"{path}: the tokenizer has {n_tok} tokens but the model only {n_emb} embeddings; "
                         "token ids past the embedding would fail: use the model's own tokenizer")
    return model, tok


def load_pair(path: str | Path = DEFAULT_PAIR, device="cpu", dtype=torch.float32):
    """(target, draft, tokenizer) of a folder holding ``target/`` and ``draft/`` (default: the code pair).

    Raises FileNotFoundError when the folder does not exist, ValueError when it lacks target/ or draft/.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder{_did_you_mean(path)}; load_pair expects a folder "
                                "holding target/ and draft/")
    missing = [d for d in ("target", "draft") if not (path / d).is_dir()]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(m + '/' for m in missing)} in this folder; load_pair expects a "
                         "folder holding target/ and draft/ (use load_model for one model)")
    target, ttok = load_model(path / "target", device, dtype)
    draft, dtok = load_model(path / "draft", device, dtype)
    check_pair(target, draft, ttok, dtok)
    return target, draft, ttok
