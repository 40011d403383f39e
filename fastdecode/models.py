"""Loading models and checking that a draft can serve a target."""
from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_PAIR = Path(__file__).resolve().parent.parent / "models" / "code-pair"


def vocab_size(model) -> int:
    emb = model.get_output_embeddings()
    return int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)


def check_pair(target, draft, target_tokenizer=None, draft_tokenizer=None) -> None:
    """Raise ValueError when the draft cannot propose tokens for the target (different vocabularies)."""
    vt, vd = vocab_size(target), vocab_size(draft)
    if vt != vd:
        raise ValueError(
            f"target and draft vocabularies differ: target has {vt} output tokens, draft has {vd}. "
            "Speculative decoding needs a draft with the same tokenizer and vocabulary size")
    if target.device != draft.device:
        raise ValueError(f"target is on {target.device} but draft is on {draft.device}: put both on one device")
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
