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


CHECK_EVERY = 100   # runs between two looks of a broken variant's test (``stop_when``)


def sample_law(target, draft, prompt, n_tokens, runs, max_new_tokens=None, stop_when=None, **kw) -> dict:
    """{first n_tokens generated: count} over ``runs`` seeded generations. ``stop_when(counts)``, looked at every
    CHECK_EVERY runs, ends them early: a broken variant's test stops once it is caught (:func:`caught`). The seeds
    are fixed, so where it stops is too."""
    counts: dict = {}
    ids = torch.tensor([prompt])
    for seed in range(runs):
        out = fastdecode.generate(target, ids, draft=draft, max_new_tokens=max_new_tokens or n_tokens,
                                  seed=seed, eos_token_id=[], **kw)
        key = tuple(out.sequences[0, len(prompt):len(prompt) + n_tokens].tolist())
        counts[key] = counts.get(key, 0) + 1
        if stop_when is not None and (seed + 1) % CHECK_EVERY == 0 and stop_when(counts):
            break
    return counts


def caught(*laws, alpha: float = 1e-3):
    """``stop_when`` for a broken variant's test: true once some counts (one dict, or one per law) score a
    p-value below ``alpha`` against their law. A broken rule caught at 200 runs is caught; the runs after that
    add nothing but time, while a correct rule's test runs them all."""
    def stop(*counts) -> bool:
        return min(chi_square_pvalue(c, law) for c, law in zip(counts, laws)) < alpha
    return stop


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
# Seeded runs of a law test. Every broken rule of the law tests is caught (p < LAW_ALPHA) within 500 runs: the
# static tree's swapped node rows at 500 (p = 9.8e-5), the others at 100 or 200 (looked at every CHECK_EVERY).
LAW_RUNS = 600
LAW_ALPHA = 1e-3  # seeds are fixed, so each test is deterministic; this only sets its power


def two_token_pvalue(pair, law2: dict, broken: bool = False, **kw) -> float:
    """Chi-square p-value of the first two tokens of LAW_RUNS seeded generations (T = 1, three new tokens,
    so the runs draft) against the target's exact law ``law2``. ``broken``: a broken variant's test, whose runs
    stop once it is caught (:func:`caught`)."""
    counts = sample_law(*pair, LAW_PROMPT, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0,
                        stop_when=caught(law2, alpha=LAW_ALPHA) if broken else None, **kw)
    return chi_square_pvalue(counts, law2)


def accept_every_draft(p, q, drafts, generator=None):
    """A broken chain rule (``step.CHAIN_VERIFIERS``'s signature): every draft kept, the bonus drawn from p, so
    the output follows q instead of p. The law tests must catch it."""
    return drafts.shape[0], int(fastdecode.verification.sample(p[-1:], generator)[0])
