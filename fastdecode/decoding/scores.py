"""HF's ``output_scores`` and ``output_logits``: the target's scores for every generated token.

A speculative step scores several tokens in one forward and a tree step scores branches that are then thrown
away, so the loops do not keep per-token rows. After decoding, one forward of the target over each row's text
(its prompt without padding and its generated tokens) gives the logits at every generated position, in one
pass, under the same attention (Lambda attention included: it runs inside the same context). Those are the
logits HF returns as ``logits`` (the raw next-token logits, float32); the ``scores`` are them after the logits
processors, each row with its own prefix, and after the warpers, as HF forms them: greedy decoding returns the
processed logits; sampling divides by the temperature and sets the tokens the warpers drop to -inf.

For the lossless methods these are the scores of the law each token was drawn from (up to the rounding of a
forward of another shape); for entropy switching, which draws some tokens from the draft, they are what the
target gives those tokens. Cost: about one prefill of the whole text per row, paid only when asked.
"""
from __future__ import annotations

import torch

from ..config import SamplingConfig
from ..kernels.probs import probs_reference, scaled_logits
from . import hf_cache as kv
from .processors import Prefix, Processors
from .sampling import warpers


def warped(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """HF's scores for processed ``logits`` [n, V]: unchanged when greedy (HF applies no warper then); else
    divided by the temperature, with -inf where a warper drops the token (top-h, top-k, top-p, min-p, typical,
    epsilon and eta: the kept set of :func:`~fastdecode.kernels.probs.probs_reference`)."""
    if sampling.greedy:
        return logits.float()
    w = warpers(sampling)
    x = scaled_logits(logits, sampling.temperature, sampling.top_k, w["top_h"])
    by_mass = (sampling.top_p < 1.0 or w["min_p"] > 0 or w["typical_p"] < 1.0 or w["epsilon_cutoff"] > 0
               or w["eta_cutoff"] > 0)
    if by_mass:   # (a token these drop has probability 0; one whose probability underflows is dropped by HF too)
        kept = probs_reference(logits, sampling.temperature, sampling.top_k, sampling.top_p, **w) > 0
        x = x.masked_fill(~kept, float("-inf"))
    return x


def generated_scores(target, sequences: torch.Tensor, prompt_mask: torch.Tensor, new_tokens: list[int],
                     processors: Processors, sampling: SamplingConfig, scores: bool, logits: bool,
                     renormalize: bool = False):
    """(scores, logits) as HF returns them: each a tuple with one [B, V] float32 tensor per generated column of
    ``sequences`` [B, L + n] (L = the prompt width, ``prompt_mask`` [B, L] its attention mask), or None where not
    asked. Row r's first ``new_tokens[r]`` columns are scored; its columns after its end are 0 (HF fills them
    with what the model gives its padding). ``renormalize`` (HF's renormalize_logits): the scores as
    log-probabilities, log-softmax after the warpers."""
    B, W = sequences.shape
    L = prompt_mask.shape[1]
    n = W - L
    out_s = out_l = None
    for r in range(B):
        k = new_tokens[r]
        if k == 0:
            continue
        own = int(prompt_mask[r].sum())
        text = sequences[r : r + 1, L - own : L + k]
        raw = kv.forward(target, text, kv.new_cache(target, rewindable=False), logits_to_keep=k + 1)[0, :-1]   # [k, V]
        if out_s is None and out_l is None:
            out_s, out_l = (torch.zeros(B, n, raw.shape[-1], device=raw.device) if want else None
                            for want in (scores, logits))
        if logits:
            out_l[r, :k] = raw
        if scores:
            x = raw
            if processors.active:
                prefix = Prefix(processors, text[0, :own].tolist(), own, raw.device, row=r)
                x = prefix.apply(raw, text[0, own : own + k - 1])
            x = warped(x, sampling)
            out_s[r, :k] = x.log_softmax(-1) if renormalize else x

    def steps(t):
        return None if t is None else tuple(t[:, i] for i in range(n))

    if out_s is None and out_l is None:   # nothing generated
        return (() if scores else None), (() if logits else None)
    return steps(out_s), steps(out_l)
