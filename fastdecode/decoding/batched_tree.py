"""Batched multi-draft decoding (B > 1, ``method="multi_draft"``, dynamic engine): one draft tree per row over
the shared cache columns of :mod:`fastdecode.decoding.batched`.

Design (the batched chain loop's, with trees):

- Each row grows its own tree exactly as :class:`~fastdecode.decoding.multi_draft.MultiDraftDecoder` does alone:
  k sequences, children drawn per node with the verifier's scheme, equal draws sharing a node, its own depth
  (``draft_length``, or its own +2 / -1 adaptive depth), cut near its budget. Trees differ in shape between
  rows; a forward pads every row to the largest node count (padding nodes see only themselves and are never
  valid).
- Drafting: one draft forward feeds every row's pending tokens (2D validity mask) and gives the roots'
  distributions; then one forward per depth scores all rows' new nodes (those of rows whose trees grow
  further) with a per-row 4D tree mask: a node sees its row's valid context, its ancestors (earlier columns
  of this step) and itself. So drafting costs ``max depth`` draft forwards, whatever B and k.
- Verification: ONE target forward scores every row's pending tokens (causal, masked padding) and its whole
  tree (4D mask, position = the row's root position + depth); each row's tree is walked by the single-row
  walk (the same verifier calls, node by node).
- Tree columns enter a cache invalid; after the walk, the step's tree columns are permuted per row so that
  the row's accepted path comes first (one gather over this step's columns only: the context never moves),
  marked valid, and trailing columns no row uses are cropped, so the caches grow by the longest accepted
  path. Finished rows are dropped (``index_select`` of the batch axis).

Greedy output equals greedy decoding row by row (children are the draft's top-m, the walk matches the
target's argmax), and every row makes the same trees and accepts the same paths as alone. Sampled: each
row's law is exactly the target's for a lossless verifier (one generator serves the batch, so the same seed
gives a row different tokens in another batch, as for the chain methods).

Sliding-window models: the window is applied by position in the tree masks (``_Cache.attention``). Lambda
attention does not come here: its batches run row by row (:mod:`~fastdecode.decoding.batched_rows`).

Static engine (``cache_implementation="static"``, :class:`_StaticTreeCache`): the same columns on the slot
caches of :mod:`fastdecode.decoding.batched`; a tree forward passes its [rows, n, columns] visibility
explicitly, the accepted paths are gathered in place in the cache rows, and with recorded forwards every
forward is padded to [bucket(B), bucket(n)] (the draft's depth forwards n <= k, the target's pending token +
nodes n <= 1 + k * depth). The walk and the generator's use are the dynamic engine's: same greedy tokens,
and a seed gives the dynamic engine's tokens up to floating-point near-ties.
"""
from __future__ import annotations

import torch

from ..config import MultiDraftConfig, SamplingConfig
from ..stats import DecodeStats
from ..verification import method_info
from ..verification.primitives import sample
from . import hf_cache as kv
from . import sampling as sm
from .batched_cache import _block, _bucket, _Cache, _SlotCache, batch_output, static_capacity
from .masks import row_causal
from .processors import process_nodes
from .stream import TokenStream
from .multi_draft import MultiDraftDecoder, draw_frontier
from .tree import DraftTree


class _TreeMixin:
    """Tree forwards (4D masks) and each row's accepted path of a step's tree columns kept, on either cache
    (:class:`_TreeCache`: transformers' DynamicCache; :class:`_StaticTreeCache`: the static engine's slots)."""

    def forward_tree(self, ids_p: torch.Tensor, m_p: torch.Tensor, node_ids: torch.Tensor, depth: torch.Tensor,
                     node_allow: torch.Tensor, extra: list[tuple[int, int, int]], keep: int) -> torch.Tensor:
        """Feed a left-padded pending block (ids_p, m_p [B, W], W may be 0) and N tree nodes per row
        (node_ids, depth [B, N]: depth below the row's root, the newest committed token). node_allow [B, N, N]:
        which of these new nodes each node sees (its ancestors among them and itself; padding: itself). extra:
        (row, node index, column) of ancestors in earlier columns. Nodes enter invalid; returns logits
        [B, keep, V]."""
        B, W = ids_p.shape
        N = node_ids.shape[1]
        dev = node_ids.device
        c0 = self.columns
        pos_p = self._append(m_p)
        pos_n = self.valid[:, None] - 1 + depth          # the root sits at valid - 1
        if self.pos is not None:
            self.pos = torch.cat([self.pos, pos_p, pos_n], 1)
        ctx = self.mask.bool()                           # [B, c0 + W]: each row's valid context
        allow = torch.zeros(B, W + N, c0 + W + N, dtype=torch.bool, device=dev)
        if W:
            allow[:, :W, : c0 + W] = row_causal(ctx, c0 + torch.arange(W, device=dev))
        if N:
            allow[:, W:, : c0 + W] = ctx[:, None, :]
            if extra:
                r, i, c = (torch.tensor(x, device=dev) for x in zip(*extra))
                allow[r, W + i, c] = True
            allow[:, W:, c0 + W:] = node_allow
        self.mask = torch.cat([self.mask, torch.zeros(B, N, dtype=torch.long, device=dev)], 1)
        qpos = torch.cat([pos_p, pos_n], 1)
        return self._tree_feed(torch.cat([ids_p, node_ids], 1), qpos, allow, c0, keep)

    def keep_paths(self, first: int, paths: list[list[int]]) -> None:
        """Columns first.. are this step's tree columns: row r keeps paths[r] (absolute columns, in order),
        moved to the front of that region and marked valid; the rest become invalid and trailing columns that
        no row uses are cropped."""
        n = self.columns - first
        if n <= 0:
            return
        dev = self.mask.device
        order = []
        for cols in paths:
            rel = [c - first for c in cols]
            chosen = set(rel)
            order.append(rel + [j for j in range(n) if j not in chosen])
        idx = torch.tensor(order, dtype=torch.long, device=dev)                   # [B, n]
        if any(o != list(range(n)) for o in order):
            self._permute(first, idx)
            if self.pos is not None:
                self.pos = torch.cat([self.pos[:, :first], self.pos[:, first:].gather(1, idx)], 1)
        lens = torch.tensor([len(c) for c in paths], dtype=torch.long, device=dev)
        self.mask[:, first:] = (torch.arange(n, device=dev)[None] < lens[:, None]).long()
        self.valid = self.valid + lens
        self.trim()


class _TreeCache(_TreeMixin, _Cache):
    """Batched trees on transformers' DynamicCache."""

    def _tree_feed(self, ids, qpos, allow, c0, keep):
        return kv.forward(self.model, ids, self.cache, position_ids=qpos, attention_mask=self.attention(allow, qpos),
                          logits_to_keep=keep)


class _StaticTreeCache(_TreeMixin, _SlotCache):
    """Batched trees on the static engine's slots (eager or recorded forwards, see
    :class:`~fastdecode.decoding.batched._SlotCache`): a tree forward is a forward with an explicit [nb, n,
    columns] visibility (recorded: padded to [bucket(B), bucket(n), capacity], one graph per shape), and the
    accepted paths are gathered in place, in the active rows' cache rows."""

    def _tree_feed(self, ids, qpos, allow, c0, keep):
        return self._feed(ids, qpos, c0, keep, allow)


class _Walker(MultiDraftDecoder):
    """The single-row tree walk (``MultiDraftDecoder.walk``) without the single-row caches."""

    def __init__(self, sampling: SamplingConfig, cfg: MultiDraftConfig, generator):  # noqa: D107
        self.sampling, self.cfg, self.generator = sampling, cfg, generator
        self.lossless = method_info(cfg.verifier).lossless


def _pad_nodes(rows: list[list[int]], trees: list[DraftTree], device):
    """Node token ids [B, N] and depths [B, N] of each row's listed nodes, padded (token 0, depth 1)."""
    n = max((len(x) for x in rows), default=0)
    ids = [[trees[i].tokens[v] for v in x] + [0] * (n - len(x)) for i, x in enumerate(rows)]
    dep = [[trees[i].depth[v] for v in x] + [1] * (n - len(x)) for i, x in enumerate(rows)]
    return (torch.tensor(ids, dtype=torch.long, device=device).view(len(rows), n),
            torch.tensor(dep, dtype=torch.long, device=device).view(len(rows), n))


def decode(target, draft, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           eos_ids: set[int], pad_token_id: int, sampling: SamplingConfig, cfg: MultiDraftConfig, generator,
           stats: DecodeStats, progress=None, static: bool = False, mode: str = "eager",
           processors=None, stop=None) -> torch.Tensor:
    """Multi-draft decoding of a left-padded batch; returns sequences [B, L + longest new]. static: the static
    engine's slot caches (mode "eager", or "cudagraphs" / "inductor": recorded forwards). processors: the logits
    processors, each tree row with its own branch of its own row's text."""
    device = kv.device(target)
    sampling = sm.greedy_limit(sampling)   # (its distributions skip kernels.probs' overflow fallback)
    B, L = input_ids.shape
    streams = [TokenStream(input_ids[r : r + 1, L - int(attention_mask[r].sum()):], max_new_tokens, eos_ids,
                           processors=processors, stop=stop, row=r) for r in range(B)]
    active = [r for r in range(B) if not streams[r].done]
    deepest = cfg.max_draft_length if cfg.adaptive else cfg.draft_length
    longest = 2 + cfg.num_drafts * deepest                       # the widest forward after the prompts'
    step = longest + deepest + 1       # a step's columns at most: the draft's pending block and scored nodes
    if static:
        cap = static_capacity(L, max_new_tokens, step)
        if mode != "eager":
            cap += _bucket(longest)
        tc = _StaticTreeCache(target, len(active), device, cap, mode, "target")
        dc = _StaticTreeCache(draft, len(active), device, cap, mode, "draft")
    else:
        tc, dc = _TreeCache(target, len(active), device), _TreeCache(draft, len(active), device)
    tpend = [streams[r].tokens[:] for r in active]
    dpend = [streams[r].tokens[:] for r in active]
    depths = [cfg.draft_length for _ in active]                  # each row's next tree depth
    walker = _Walker(sampling, cfg, generator)
    stats.lossy = not walker.lossless
    stats.extra.update(num_drafts=cfg.num_drafts, verifier=cfg.verifier, scheme=cfg.scheme, tree_nodes=0)
    per_row = [dict(new_tokens=0, drafted=0, accepted=0, steps=0) for _ in range(B)]
    batch_steps = 0
    greedy = sampling.greedy

    flags: list[torch.Tensor] = []   # device bools: this step's distributions are finite (read once per step)
    while active:
        tc.make_room(step)
        dc.make_room(step)
        nb = len(active)
        dr = [max(0, min(depths[i], streams[r].remaining - 1)) for i, r in enumerate(active)]
        D = max(dr)
        trees = [DraftTree() for _ in range(nb)]
        dcols: list[dict[int, int]] = [{} for _ in range(nb)]   # node -> draft cache column
        dfirst = None
        if D > 0:
            ids, m = _block(dpend, device)
            logits = dc.forward(ids, m, 1)                     # [nb, 1, V]: the roots
            stats.draft_calls += 1
            dfirst = dc.columns
            row_logits = [process_nodes(streams[r], logits[i], trees[i], [-1]) for i, r in enumerate(active)]
            frontier = [[(-1, cfg.num_drafts)] if dr[i] > 0 else [] for i in range(nb)]
            for d in range(D):
                for i in range(nb):
                    if dr[i] <= d:
                        frontier[i] = []
                        continue
                    q = sm.probs(row_logits[i], sampling, check_finite=False)
                    flags.append(sm.all_finite(q))
                    new = []
                    draws = draw_frontier(q, [m for _, m in frontier[i]], cfg.scheme, greedy, row_logits[i], generator)
                    for j, (node, _) in enumerate(frontier[i]):
                        trees[i].q[node] = q[j]
                        new += trees[i].add_children(node, draws[j])
                    frontier[i] = new
                if d + 1 == D:
                    break
                score = [[v for v, _ in frontier[i]] if dr[i] > d + 1 else [] for i in range(nb)]
                node_ids, dep = _pad_nodes(score, trees, device)
                n = node_ids.shape[1]
                extra = [(i, j, dcols[i][a]) for i, x in enumerate(score) for j, v in enumerate(x)
                         for a in trees[i].ancestors(v)[:-1]]
                eye = torch.eye(n, dtype=torch.bool, device=device).expand(nb, n, n)   # same depth: itself only
                c0 = dc.columns
                empty = torch.zeros(nb, 0, dtype=torch.long, device=device)
                lg = dc.forward_tree(empty, empty, node_ids, dep, eye, extra, n)      # [nb, n, V]
                stats.draft_calls += 1
                for i, x in enumerate(score):
                    for j, v in enumerate(x):
                        dcols[i][v] = c0 + j
                row_logits = [process_nodes(streams[r], lg[i, : len(score[i])], trees[i], score[i])
                              for i, r in enumerate(active)]

        # one target forward: pending tokens + every row's whole tree (node v at node column v)
        ids_p, m_p = _block(tpend, device)
        rows = [list(range(len(t))) for t in trees]
        node_ids, dep = _pad_nodes(rows, trees, device)
        n = node_ids.shape[1]
        allow = torch.eye(n, dtype=torch.bool).repeat(nb, 1, 1)
        for i, t in enumerate(trees):
            for v in range(len(t)):
                for a in t.ancestors(v):
                    allow[i, v, a] = True
        tfirst = tc.columns + ids_p.shape[1]
        logits = tc.forward_tree(ids_p, m_p, node_ids, dep, allow.to(device), [], n + 1)   # [nb, n + 1, V]
        stats.target_calls += 1
        stats.extra["tree_nodes"] += sum(len(t) for t in trees)
        batch_steps += 1

        walked = []
        for i, r in enumerate(active):
            lg = process_nodes(streams[r], logits[i, : len(trees[i]) + 1], trees[i], [-1] + list(range(len(trees[i]))))
            p = lg if greedy else sm.probs(lg if dr[i] else lg[:1], sampling, check_finite=False)
            if not greedy:
                flags.append(sm.all_finite(p))
            if dr[i] == 0:
                walked.append(([], int(lg[0].argmax()) if greedy else int(sample(p, generator)[0])))
            else:
                walked.append(walker.walk(trees[i], p))
        # the step's one NaN / +inf read of its draft and target distributions, before any token is committed
        if flags and not bool(torch.stack(flags).all()):
            raise sm.non_finite(streams[0].prefix is not None)
        flags.clear()

        keep_t, keep_d, keep = [], [], []
        for i, r in enumerate(active):
            path, nxt = walked[i]
            if dr[i] and cfg.adaptive:   # past outcomes only: the law is unchanged
                depths[i] = min(depths[i] + 2, cfg.max_draft_length) if len(path) == dr[i] else max(1, depths[i] - 1)
            stats.record_step(dr[i], len(path))
            row = per_row[r]
            row["drafted"] += dr[i]
            row["accepted"] += len(path)
            row["steps"] += 1
            kept = streams[r].append([trees[i].tokens[v] for v in path] + [nxt])
            if progress is not None:
                progress.update(kept)
            keep_t.append([tfirst + v for v in path])
            keep_d.append([dcols[i][v] for v in path if v in dcols[i]])
            tpend[i] = [nxt]
            if D > 0:   # the draft saw the pending block and the scored nodes; the path's unscored leaf is pending
                dpend[i] = [trees[i].tokens[v] for v in path if v not in dcols[i]] + [nxt]
            else:
                dpend[i] = dpend[i] + [nxt]
            if not streams[r].done:
                keep.append(i)
        tc.keep_paths(tfirst, keep_t)
        if dfirst is not None:
            dc.keep_paths(dfirst, keep_d)
        if len(keep) < nb:
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            for c in (tc, dc):
                c.select(idx)
                c.trim()
            active = [active[i] for i in keep]
            tpend = [tpend[i] for i in keep]
            dpend = [dpend[i] for i in keep]
            depths = [depths[i] for i in keep]

    return batch_output(streams, per_row, batch_steps, stats, input_ids, pad_token_id)
