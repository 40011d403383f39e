"""Helpers for distribution tests of whole generations: exact laws by enumeration, and a chi-square test."""
from __future__ import annotations


import numpy as np
import torch

import fastdecode
from fastdecode import kernels


@torch.inference_mode()
def exact_law(model, prompt: list[int], n_tokens: int, temperature=1.0, top_k=0, top_p=1.0) -> dict:
    """{(x1, .., xn): probability} of the first n generated tokens under the model (enumeration)."""
    law = {(): 1.0}
    for _ in range(n_tokens):
        nxt = {}
        for seq, pr in law.items():
            logits = model(torch.tensor([prompt + list(seq)])).logits[0, -1:].float()
            p = kernels.probs(logits, temperature, top_k, top_p)[0].double()
            for x in torch.nonzero(p).flatten().tolist():
                nxt[seq + (x,)] = pr * float(p[x])
        law = nxt
    return law


def sample_law(target, draft, prompt, n_tokens, runs, max_new_tokens=None, **kw) -> dict:
    counts: dict = {}
    ids = torch.tensor([prompt])
    for seed in range(runs):
        out = fastdecode.generate(target, ids, draft=draft, max_new_tokens=max_new_tokens or n_tokens,
                                  seed=seed, eos_token_id=[], **kw)
        key = tuple(out.sequences[0, len(prompt):len(prompt) + n_tokens].tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


def chi_square_pvalue(counts: dict, law: dict, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of observed counts against an exact law (cells with small expected
    counts are pooled; an observation outside the law's support gives p = 0)."""
    from scipy.stats import chi2

    n = sum(counts.values())
    if any(k not in law for k in counts):
        return 0.0
    cells = sorted(law, key=lambda k: -law[k])
    obs, exp, po, pe = [], [], 0.0, 0.0
    for c in cells:
        e = law[c] * n
        if e >= min_expected:
            obs.append(counts.get(c, 0)); exp.append(e)
        else:
            po += counts.get(c, 0); pe += e
    if pe > 0:
        obs.append(po); exp.append(pe)
    obs, exp = np.array(obs, float), np.array(exp, float)
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(chi2.sf(stat, max(len(obs) - 1, 1)))


# The two-token law test of whole generations on the tiny pair (conftest's ``tiny_pair`` and ``law2``):
LAW_PROMPT = [1, 2, 3, 4]
LAW_RUNS = 800   # the broken rules of the law tests score p = 1.6e-6 (static tree nodes) to 1e-249 at this count
LAW_ALPHA = 1e-3  # seeds are fixed, so each test is deterministic; this only sets its power


def two_token_pvalue(pair, law2: dict, **kw) -> float:
    """Chi-square p-value of the first two tokens of LAW_RUNS seeded generations (T = 1, three new tokens,
    so the runs draft) against the target's exact law ``law2``."""
    counts = sample_law(*pair, LAW_PROMPT, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0, **kw)
    return chi_square_pvalue(counts, law2)


def accept_every_draft(p, q, drafts, generator=None):
    """A broken chain rule (``step.CHAIN_VERIFIERS``'s signature): every draft kept, the bonus drawn from p, so
    the output follows q instead of p. The law tests must catch it."""
    return drafts.shape[0], int(fastdecode.verification.sample(p[-1:], generator)[0])
