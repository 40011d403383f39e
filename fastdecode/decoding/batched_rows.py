"""Batches (B > 1) of what has no batched loop: ``entropy_switch`` (each row switches models on its own
entropies) and Lambda attention (each row's global tokens and window sit at its own positions). The rows are
decoded one after another by the single-row engine, exactly as alone (greedy: each row equals its own
call; sampling: one generator serves the rows in turn), and put together as the batched loops return them.

No faster than a loop over the prompts: what it gives is the batch interface (left padding, ``pad_token_id``
after a row's end, per-row counters) for every method.
"""
from __future__ import annotations

import torch

from ..stats import DecodeStats
from .batched_cache import batch_output
from .stream import TokenStream

SUMMED = ("target_calls", "draft_calls", "drafted_tokens", "accepted_tokens")
# method counters that are settings of the call, the same in every row (entropy switching's), not sums
SETTINGS = ("params_target", "params_draft", "entropy_threshold")
LISTS = ("accepted_length_histogram", "position_drafted", "position_accepted")


def _add(into: list[int], more: list[int]) -> None:
    into.extend([0] * (len(more) - len(into)))
    for i, v in enumerate(more):
        into[i] += v


def _merged_extra(rows: list[dict], weights: list[int]) -> dict:
    """One value per key every row has: integer counters summed, float ones averaged with the rows' new tokens
    as weights (exact for the per-token fractions and cost ratios of entropy switching), settings (``SETTINGS``,
    strings, flags) kept when every row has the same; anything else stays per row only."""
    out = {}
    for key in rows[0] if rows else ():
        vals = [r.get(key) for r in rows]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if key in SETTINGS or not numbers:
            if all(v == vals[0] for v in vals) and not isinstance(vals[0], (dict, list)):
                out[key] = vals[0]
        elif all(isinstance(v, int) for v in vals):
            out[key] = sum(vals)
        elif sum(weights):
            out[key] = sum(w * v for w, v in zip(weights, vals) if w) / sum(weights)
    return out


def decode_rows(decode_one, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                eos_ids: set[int], pad_token_id: int, stats: DecodeStats, processors=None, stop=None) -> torch.Tensor:
    """Decode a left-padded batch row by row: ``decode_one(stream, stats)`` runs the single-row engine on one
    row's real tokens. Returns sequences [B, L + longest new] (``batch_output``); ``stats`` gets the sums of the
    rows' counters and ``extra["per_row"]`` each row's own (with its method counters under "extra")."""
    B, L = input_ids.shape
    streams, per_row = [], []
    for r in range(B):
        stream = TokenStream(input_ids[r : r + 1, L - int(attention_mask[r].sum()):], max_new_tokens, eos_ids,
                             processors=processors, stop=stop, row=r)
        row = DecodeStats(method=stats.method)
        decode_one(stream, row)   # (also with nothing to generate: the counters a call alone gives, zeros)
        streams.append(stream)
        per_row.append(dict(new_tokens=stream.new_tokens, drafted=row.drafted_tokens, accepted=row.accepted_tokens,
                            steps=row.steps, extra=row.extra))
        for name in SUMMED:
            setattr(stats, name, getattr(stats, name) + getattr(row, name))
        for name in LISTS:
            _add(getattr(stats, name), getattr(row, name))
        stats.lossy = stats.lossy or row.lossy
    stats.extra.update(_merged_extra([p["extra"] for p in per_row], [s.new_tokens for s in streams]))
    out = batch_output(streams, per_row, sum(p["steps"] for p in per_row), stats, input_ids, pad_token_id)
    stats.extra["rows_one_by_one"] = True
    return out
