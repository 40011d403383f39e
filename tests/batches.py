"""Helpers of the batch tests (tests/decoding/test_batched*.py): left-padded prompts, a random batch of
mixed lengths, the tiny pair they decode with, and an EOS token that makes rows finish at different steps."""
from __future__ import annotations

import torch

import fastdecode
from tiny_models import draft_of, tiny_lm


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, longest] with the prompts left-padded, as HF pads for generation."""
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def random_prompts(lens: list[int], seed: int = 1, vocab: int = 512) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lens]


def tiny_pair():
    """A 2-layer tiny Llama and a 1-layer draft sharing its embeddings (vocabulary 512)."""
    target = tiny_lm("llama", layers=2, seed=0)
    return target, draft_of(target, 1)


def eos_for(target, batch, new: int, row: int = 0, at: int = 3) -> int:
    """The token ``row`` emits greedily at new-token index ``at``: the other rows hit it later or never."""
    ids, mask = batch
    free = target.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    return int(free[row, ids.shape[1] + at])


def accept_all(p, q, drafts, lens, generator):
    """A broken batched token rule (``batched._verify_token``'s signature): every row keeps all its drafts and
    samples the bonus from p, so the rows follow q, not p. The law tests must catch it."""
    rows = torch.arange(p.shape[0])
    return lens, fastdecode.verification.sample(p[rows, lens], generator)
