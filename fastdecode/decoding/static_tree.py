"""``method="multi_draft"`` on the static engine: the draft tree grown, verified and walked by the dynamic
engine's code (:class:`~fastdecode.decoding.multi_draft.MultiDraftDecoder`: ``draw_children``, the
``DraftTree``, the verifiers through ``verify`` / ``prepare``, the walk), with every forward a fixed-shape
:meth:`~fastdecode.decoding.static_cache.StaticRunner.tree_forward` on preallocated caches.

Layout of one step (L = committed length, the root = token L - 1, not in either cache yet):

- target: slots 0 .. L - 2 hold the committed text. The verify forward writes [root, node 0, node 1, ..,
  pad ..] at slots L - 1, L, L + 1, ..: a fixed node budget of ``bucket(1 + k * depth)`` queries
  (k drafts x depth nodes at most, padded to the next power of two, so one recorded graph serves every
  tree of that depth whatever its duplicates merged; plain eager forwards, which pay for every query,
  score the root and the nodes alone, and the draft's catch-up keeps the logits of its last row only). Node i sits at slot L + i and position
  L - 1 + depth(i), and sees the committed prefix, the root, its ancestors and itself.
- draft: the committed tokens it lacks (the root, and the previous accepted leaf if the path was full)
  in one forward, then depth d's nodes (at most k, padded to ``bucket(k)``) at slots L + (nodes scored
  so far), each seeing the prefix through the root plus its ancestors and itself.
- after the walk, :meth:`~fastdecode.decoding.static_cache.SlotCache.move` copies the accepted path's
  keys and values to slots L, L + 1, .. in both caches (on the device, in place); rejected nodes stay
  where they are, hidden by the mask and overwritten by the next step.
- under Lambda attention the caches are the ring runners of :mod:`fastdecode.decoding.static_lambda`: the
  same logical slots, mapped onto the ring, each slot remembering its logical index (what the masks use)
  beside its position (what the Lambda rule uses); :meth:`~fastdecode.decoding.static_lambda.RingCache.move`
  does the copy there.

Host syncs: the tree's shape depends on the draws (equal draws share a node), so drafting reads each
depth's draws (one read per depth, two for the distinct-token schemes, whatever the number of nodes), and
the walk reads each visited node's decision (one read per node; greedy: every node's argmax in one read),
as the dynamic engine does; every forward's logits and every distribution are checked for NaN / +inf in
one read per step, before its tokens are committed (:meth:`MultiDraftDecoder._checked_step`). Measured on
the code pair (k = 2 to 4, depth 3, T = 1): about 6 reads per step, from about 40 when every distribution,
draw and verifier call read the device on its own. The static engine removes the allocation, cropping and
per-shape launch costs, not those reads. Since
drafting and walking are the same code consuming the generator in the same order, the same seed gives
the same tokens as the dynamic engine, up to floating-point differences between the two engines'
forwards (a near-tie of two tokens could then go either way).
"""
from __future__ import annotations

import torch

from ..config import MultiDraftConfig, SamplingConfig
from ..stats import DecodeStats
from . import hf_cache as kv
from . import sampling as sm
from .stream import TokenStream
from .multi_draft import MultiDraftDecoder
from .static import bucket, capacity_for, runner
from .tree import DraftTree


class StaticMultiDraftDecoder(MultiDraftDecoder):
    """:class:`MultiDraftDecoder` whose caches are :class:`~fastdecode.decoding.static_cache.StaticRunner` s."""

    pad_plain = False   # True: plain (eager) forwards padded like recorded ones too (tests of the recorded layout)

    def __init__(self, target, draft, stream: TokenStream, sampling: SamplingConfig, cfg: MultiDraftConfig,
                 generator, stats: DecodeStats, mode: str = "eager"):
        self.mode = mode
        super().__init__(target, draft, stream, sampling, cfg, generator, stats)

    def _new_caches(self) -> None:
        cfg, stream = self.cfg, self.stream
        deepest = cfg.max_draft_length if cfg.adaptive else cfg.draft_length
        k = cfg.num_drafts
        self.kb = bucket(k)                # draft queries per depth
        self.width = deepest + 1           # visible slots per query: the root, the ancestors, itself
        longest = max(bucket(1 + k * deepest), k * deepest + self.kb)
        cap = capacity_for(stream.length, stream.max_new_tokens, longest)
        self.tdev, self.ddev = kv.device(self.target), kv.device(self.draft)
        # under Lambda attention: the ring runners, whose chunk (the span of logical indices one step writes,
        # ``longest``) keeps every key a query can see out of the step's writes (see static_lambda)
        self.trun = runner(self.target, cap, self.mode, longest)
        self.drun = runner(self.draft, cap, self.mode, longest)
        context = stream.tokens[:-1]
        self.trun.prefill(torch.tensor([context], device=self.tdev))
        self.drun.prefill(torch.tensor([context], device=self.ddev))
        self.dlen = len(context)           # draft slots holding committed text (the target holds L - 1)

    def _rows(self, rows: list[list[int]], n: int, own: list[int]) -> torch.Tensor:
        """[n, width] visible slots: each row padded by repeating its own slot."""
        out = [r + [o] * (self.width - len(r)) for r, o in zip(rows, own)]
        return torch.tensor(out + [[o] * self.width for o in own[len(rows):n]], dtype=torch.long)

    def _draft_root(self) -> torch.Tensor:
        L = self.stream.length
        pending = self.stream.tokens[self.dlen:L]
        n = len(pending)
        b = self._queries(self.drun, n, bucket(n))
        ids = torch.tensor([pending + [0] * (b - n)], device=self.ddev)
        logits = self.drun.forward(ids, self.dlen, keep=1) if b == n else self.drun.forward(ids, self.dlen)[n - 1 : n]
        self.dlen = L
        return self._flagged(logits)

    def _draft_nodes(self, tree: DraftTree, nodes: list[int], cached: dict[int, int]) -> torch.Tensor:
        L, n = self.stream.length, len(nodes)
        b = self._queries(self.drun, n, self.kb)
        start = L + len(cached)
        own = [start + i for i in range(b)]
        ids = [tree.tokens[x] for x in nodes] + [0] * (b - n)
        pos = [L - 1 + tree.depth[x] for x in nodes] + [L - 1] * (b - n)
        rows = [[L + cached[a] for a in tree.ancestors(x)[:-1]] + [own[i]] for i, x in enumerate(nodes)]
        vis = self._rows(rows, b, own)
        return self._flagged(self.drun.tree_forward(torch.tensor([ids], device=self.ddev), start, L,
                                                    torch.tensor(pos, device=self.ddev), vis.to(self.ddev))[:n])

    def _target_plain(self) -> torch.Tensor:
        L = self.stream.length
        return self._flagged(self.trun.forward(torch.tensor([self.stream.tokens[L - 1 : L]], device=self.tdev), L - 1))

    def _target_tree(self, tree: DraftTree) -> torch.Tensor:
        L, N = self.stream.length, len(tree)
        # the node budget of a tree of this depth (recorded forwards); plain forwards score the nodes alone
        b = self._queries(self.trun, 1 + N, bucket(1 + self.cfg.num_drafts * max(tree.depth)))
        own = [L - 1 + i for i in range(b)]
        ids = [self.stream.tokens[L - 1]] + tree.tokens + [0] * (b - 1 - N)
        pos = [L - 1] + [L - 1 + d for d in tree.depth] + [L - 1] * (b - 1 - N)
        rows = [[L - 1]] + [[L - 1] + [L + a for a in tree.ancestors(x)] for x in range(N)]
        vis = self._rows(rows, b, own)
        return self._flagged(self.trun.tree_forward(torch.tensor([ids], device=self.tdev), L - 1, L - 1,
                                                    torch.tensor(pos, device=self.tdev), vis.to(self.tdev))[: 1 + N])

    def _queries(self, run, n: int, budget: int) -> int:
        """Queries of a forward that scores n: the recorded ``budget``, or n alone for a plain forward, where
        padding queries would only cost compute."""
        return n if run.mode == "eager" and not self.pad_plain else budget

    def _flagged(self, logits: torch.Tensor) -> torch.Tensor:
        """A forward's logits, flagged now for the step's one NaN / +inf read (:meth:`_checked_step`; a recorded
        forward's output is rewritten by the next replay, so the flag is computed before that). Greedy only:
        when sampling, every forward's logits become distributions that :meth:`_probs` flags (NaN or +inf
        logits give NaN probabilities)."""
        if self.sampling.greedy:
            self._flags.append(sm.all_finite(logits))
        return logits

    def _keep(self, tree: DraftTree, path: list[int], dcached: dict[int, int]) -> None:
        L = self.stream.length
        self.trun.cache.move([L + x for x in path], L)
        d_path = [L + dcached[x] for x in path if x in dcached]
        if self.drun is not self.trun:  # a self-draft shares the cache: the target's move did it (same keys)
            self.drun.cache.move(d_path, L)
        self.dlen = L + len(d_path)


def decode_multi_draft(target, draft, stream: TokenStream, sampling: SamplingConfig, cfg: MultiDraftConfig,
                       generator, stats: DecodeStats, progress=None, mode: str = "eager") -> None:
    dec = StaticMultiDraftDecoder(target, draft, stream, sampling, cfg, generator, stats, mode)
    while not stream.done:
        kept = dec.step()
        if progress is not None:
            progress.update(kept)
