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


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A causal LM and its tokenizer from a local folder or a Hugging Face model id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok


def load_pair(path: str | Path = DEFAULT_PAIR, device="cpu", dtype=torch.float32):
    """(target, draft, tokenizer) of a folder holding ``target/`` and ``draft/`` (default: the code pair)."""
    path = Path(path)
    target, ttok = load_model(path / "target", device, dtype)
    draft, dtok = load_model(path / "draft", device, dtype)
    check_pair(target, draft, ttok, dtok)
    return target, draft, ttok
