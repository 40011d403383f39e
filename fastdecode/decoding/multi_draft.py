"""Multi-draft speculative decoding (SpecTr, Sun et al. NeurIPS'23, and its successors; docs/algorithms.md
sections 2-4, docs/verifiers.md section 1).

One step:
1. Drafting: k draft sequences of ``draft_length`` tokens grow as one prefix tree. At each depth every
   frontier node carrying m sequences draws m children from q(.|node) with the verifier's scheme
   ("iid", "without_replacement", "greedy"); equal draws share a child node (its multiplicity counts).
   All new nodes of a depth are scored by the draft model in ONE forward with a tree attention mask,
   so drafting costs ``draft_length`` draft forwards whatever k is.
2. Verification pass: the target scores the whole tree in ONE forward (4D tree mask + per-node
   position ids) on top of its cache.
3. Tree walk: from the root, run the verifier over the draws of the current node (duplicates counted
   as separate drafts, in draw order); on acceptance descend into that child, on a residual stop; a
   bonus token ~ p(.|leaf) follows an accepted leaf.
4. Both caches keep only the accepted path (``cache.select``), never recomputing the prompt.
With ``adaptive`` the depth of the next tree follows the single-draft policy: +2 after a fully
accepted path (up to ``max_draft_length``), -1 after a rejection (down to 1).

Temperature 0: children are the draft's top-m tokens (distinct, whatever the scheme) and every
verifier reduces to exact matching against the target's argmax, so the output equals greedy decoding.
k = 1 with a lossless verifier is single-draft speculative decoding: the chain is verified with the
token-by-token rule and consumes randomness exactly like ``method="speculative"`` with a fixed draft
length, so both give the same tokens for the same seed.
"""
from __future__ import annotations

import torch

from ..config import MultiDraftConfig, SamplingConfig
from ..stats import DecodeStats
from ..verification import PREPARABLE, method_info, verify_unchecked
from ..verification.optimal import build_races
from ..verification.primitives import sample
from ..verification.drafts import draw
from ..verification.token import verify_chain
from . import hf_cache as kv
from . import sampling as sm
from .processors import process_nodes
from .stream import TokenStream
from .tree import DraftTree, score_nodes


BATCH_NODES: bool | None = None   # MultiDraftDecoder.prepare_nodes: None = batched off the CPU only


def draw_frontier(q: torch.Tensor, ms: list[int], scheme: str, greedy: bool, logits: torch.Tensor,
                  generator) -> list[list[int]]:
    """The child tokens of every frontier node of one depth, in draw order: node i (row i of q [F, V], the
    draft distributions, and of ``logits`` [F, V], the raw draft logits) draws ``ms[i]`` children.

    The draws are made node by node, in node order, exactly as one call per node would make them (so the
    generator is consumed as before and a seed keeps its tokens), but read to the host ONCE for the whole
    depth (twice for the distinct-token schemes, which first read how many tokens each q can give). Greedy
    (temperature 0): each node's top-m draft tokens."""
    if greedy:
        top = torch.topk(logits, max(ms), dim=-1).indices.tolist()
        return [row[:m] for row, m in zip(top, ms)]
    asked = ms
    if scheme == "without_replacement" or scheme == "greedy":   # no more distinct tokens than q's support
        # (at least one: a q row with no support holds NaN, which the step's check reports after drafting)
        ms = [max(1, min(m, s)) for m, s in zip(ms, (q > 0).sum(-1).tolist())]
    most = max(ms)
    rows = []
    for i, (a, m) in enumerate(zip(asked, ms)):
        x = sample(q[i : i + 1], generator) if a == 1 else draw(q[i : i + 1], m, scheme, generator)[0]
        rows.append(torch.nn.functional.pad(x.view(-1), (0, most - m)))
    return [r[:m] for r, m in zip(torch.stack(rows).tolist(), ms)]


class MultiDraftDecoder:
    """State of one multi-draft generation: both caches plus the step logic (tests drive ``step``)."""

    def __init__(self, target, draft, stream: TokenStream, sampling: SamplingConfig, cfg: MultiDraftConfig,
                 generator, stats: DecodeStats):
        self.target, self.draft, self.stream = target, draft, stream
        sampling = sm.greedy_limit(sampling)   # (its distributions skip kernels.probs' overflow fallback)
        self.sampling, self.cfg, self.generator, self.stats = sampling, cfg, generator, stats
        self._new_caches()
        self.lossless = method_info(cfg.verifier).lossless
        stats.lossy = not self.lossless
        stats.extra.setdefault("tree_nodes", 0)
        stats.extra.update(num_drafts=cfg.num_drafts, verifier=cfg.verifier, scheme=cfg.scheme)
        self.depth = cfg.draft_length  # the next step's tree depth (changes only with cfg.adaptive)
        self._flags: list[torch.Tensor] = []   # device bools: the step's p and q rows (and logits) are finite

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        """probs of ``logits``, their NaN / inf check left to the step's one read (:meth:`_checked_step`)."""
        p = sm.probs(logits, self.sampling, check_finite=False)
        self._flags.append(sm.all_finite(p))
        return p

    def _process(self, logits: torch.Tensor, tree: DraftTree | None, nodes: list[int]) -> torch.Tensor:
        """The stream's logits processors on rows after ``nodes`` (-1: the root; :func:`process_nodes`)."""
        return process_nodes(self.stream, logits, tree, nodes)

    def _checked_step(self) -> None:
        """Raise ValueError if any distribution (or logits) this step flagged held NaN or +inf: ONE host read
        per step, before any token of it is committed, in place of a read per distribution (drafting and the
        walk run on flagged rows meanwhile: their draws are discarded with the step)."""
        flags, self._flags = self._flags, []
        if flags and not bool(torch.stack(flags).all()):
            raise sm.non_finite(self.stream.prefix is not None)

    # ------------------------------------------------------------------ the engine: caches and forwards
    # The dynamic engine's (DynamicCache, cropped / selected). The static engine overrides these six
    # methods (``static_tree.StaticMultiDraftDecoder``); drafting, the walk and the step are shared.
    def _new_caches(self) -> None:
        self.tcache, self.dcache = kv.new_cache(self.target), kv.new_cache(self.draft)

    def _draft_root(self) -> torch.Tensor:
        """Feed the draft every committed token its cache lacks; its logits [1, V] at the root."""
        pending = self.stream.tokens[kv.cache_length(self.dcache):]
        logits = kv.forward(self.draft, torch.tensor([pending], device=kv.device(self.draft)), self.dcache,
                            logits_to_keep=1)[0]
        self._d_context = kv.cache_length(self.dcache)
        return logits

    def _draft_nodes(self, tree: DraftTree, nodes: list[int], cached: dict[int, int]) -> torch.Tensor:
        """Score ``nodes`` (one depth) with the draft on top of the context and the ``cached`` nodes:
        logits [len(nodes), V]; the caller records them in ``cached`` (node -> offset past the context)."""
        return score_nodes(self.draft, self.dcache, tree, [], nodes, self._d_context, cached,
                           self.stream.length - 1)

    def _target_plain(self) -> torch.Tensor:
        """One target forward on the tokens its cache lacks: logits [1, V] after the newest one."""
        t_pending = self.stream.tokens[kv.cache_length(self.tcache):]
        return kv.forward(self.target, torch.tensor([t_pending], device=kv.device(self.target)), self.tcache,
                          logits_to_keep=1)[0]

    def _target_tree(self, tree: DraftTree) -> torch.Tensor:
        """The target's logits [1 + len(tree), V] at the root and at every node, in ONE forward."""
        t_pending = self.stream.tokens[kv.cache_length(self.tcache):]
        self._t_context = kv.cache_length(self.tcache) + len(t_pending)
        return score_nodes(self.target, self.tcache, tree, t_pending, list(range(len(tree))),
                           kv.cache_length(self.tcache), {}, self.stream.length - 1)

    def _keep(self, tree: DraftTree, path: list[int], dcached: dict[int, int]) -> None:
        """Keep the context and the accepted ``path`` in both caches (the rest of the tree is dropped)."""
        dev = kv.device(self.target)
        t_context = self._t_context
        keep_t = torch.cat([torch.arange(t_context, device=dev),
                            torch.tensor(path, dtype=torch.long, device=dev) + t_context])
        kv.select(self.tcache, keep_t)
        d_context = kv.cache_length(self.dcache) - len(dcached)
        d_path = [dcached[n] + d_context for n in path if n in dcached]
        keep_d = torch.cat([torch.arange(d_context, device=dev), torch.tensor(d_path, dtype=torch.long, device=dev)])
        kv.select(self.dcache, keep_d)

    # ------------------------------------------------------------------ drafting
    def draft_tree(self, depth: int) -> tuple[DraftTree, dict[int, int]]:
        """Grow the draft tree to ``depth`` levels. Returns the tree and node -> draft-cache offset
        (relative to the end of the context) for the nodes the draft model has scored."""
        tree, s = DraftTree(), self.sampling
        logits = self._process(self._draft_root(), tree, [-1])
        self.stats.draft_calls += 1
        cached: dict[int, int] = {}
        frontier = [(-1, self.cfg.num_drafts)]
        for d in range(depth):
            q = self._probs(logits)  # [F, V]
            new_frontier = []
            draws = draw_frontier(q, [m for _, m in frontier], self.cfg.scheme, s.greedy, logits, self.generator)
            for i, (node, _) in enumerate(frontier):
                tree.q[node] = q[i]
                new_frontier += tree.add_children(node, draws[i])
            frontier = new_frontier
            if d + 1 == depth:
                break
            nodes = [n for n, _ in frontier]
            logits = self._process(self._draft_nodes(tree, nodes, cached), tree, nodes)
            self.stats.draft_calls += 1
            for n in nodes:
                cached[n] = len(cached)
        return tree, cached

    # ------------------------------------------------------------------ verification
    def prepare_nodes(self, tree: DraftTree, p: torch.Tensor, batch: bool | None = None) -> dict:
        """node -> the verifier's draft-independent work (the optimal verifier's race), for every node
        with draws, in ONE batched call before the walk; empty for verifiers without such work. The walk
        then consumes the generator and decides exactly as with one verify call per visited node.

        ``batch`` None: the module's BATCH_NODES, and if that is None, batch off the CPU only. The
        batched call builds every node's race, the walk visits only a path of them: on a GPU the build
        is launch-bound and one call for all nodes costs about one node's; on the CPU the cost is per row, and building unvisited nodes made decoding
        slower (bench/optimal_e2e.py, code pair, k = 4: 37.8 vs 55.4 tokens/s), so there every visited
        node builds its own race inside verify."""
        nodes = list(tree.draws)
        if batch is None:
            batch = BATCH_NODES if BATCH_NODES is not None else p.device.type != "cpu"
        if not batch or not nodes or self.cfg.verifier not in PREPARABLE:
            return {}
        rows = torch.tensor([n + 1 for n in nodes], device=p.device)
        prep = build_races(p.index_select(0, rows), torch.stack([tree.q[n] for n in nodes]),
                           [len(tree.draws[n]) for n in nodes])
        return dict(zip(nodes, prep))

    def walk(self, tree: DraftTree, p: torch.Tensor) -> tuple[list[int], int]:
        """Walk the tree with the verifier. p: [1 + len(tree), V] target distributions at the root and at
        every node. Returns (accepted node path, next token: residual or bonus)."""
        s, path, node = self.sampling, [], -1
        row = lambda n: n + 1  # noqa: E731  (row of p holding node n; the root is row 0)
        if not s.greedy and self.cfg.num_drafts == 1 and self.lossless and len(tree):
            chain = tree.ancestors(len(tree) - 1)
            n_acc, nxt = verify_chain(p[[0] + [row(n) for n in chain]],
                                      torch.stack([tree.q[-1]] + [tree.q[n] for n in chain[:-1]]),
                                      torch.tensor([tree.tokens[n] for n in chain], device=p.device),
                                      self.generator)
            return chain[:n_acc], nxt
        prepared = {} if s.greedy else self.prepare_nodes(tree, p)
        top = p.argmax(-1).tolist() if s.greedy else None   # greedy: every row's argmax in one read
        while node in tree.draws:
            draws = tree.draws[node]
            if s.greedy:
                tok = top[row(node)]
                if tok not in draws:
                    return path, tok
            else:
                res = verify_unchecked(self.cfg.verifier, p[row(node)][None], tree.q[node][None],
                                       torch.tensor([draws], device=p.device), self.generator, prepared.get(node))
                tok, accepted = torch.stack([res.tokens[0], res.accepted[0].to(res.tokens.dtype)]).tolist()
                if not accepted:   # (one read for both)
                    return path, tok
            node = tree.child[(node, tok)]
            path.append(node)
        bonus = top[row(node)] if s.greedy else int(sample(p[row(node)][None], self.generator)[0])
        return path, bonus

    # ------------------------------------------------------------------ one step
    def step(self) -> int:
        stream, s = self.stream, self.sampling
        depth = min(self.depth, stream.remaining - 1)
        if depth <= 0:
            logits = self._process(self._target_plain(), None, [-1])
            self.stats.target_calls += 1
            self.stats.record_step(0, 0)
            nxt = int(logits.argmax()) if s.greedy else int(sample(self._probs(logits), self.generator)[0])
            self._checked_step()
            return stream.append([nxt])

        tree, dcached = self.draft_tree(depth)
        logits = self._process(self._target_tree(tree), tree, [-1] + list(range(len(tree))))
        self.stats.target_calls += 1
        self.stats.extra["tree_nodes"] += len(tree)
        p = logits if s.greedy else self._probs(logits)
        path, nxt = self.walk(tree, p)
        self._checked_step()
        self.stats.record_step(depth, len(path))
        if self.cfg.adaptive:  # decided from past outcomes only, so the output law is unchanged
            self.depth = min(self.depth + 2, self.cfg.max_draft_length) if len(path) == depth else max(1, self.depth - 1)
        self._keep(tree, path, dcached)
        return stream.append([tree.tokens[n] for n in path] + [nxt])


def decode(target, draft, stream: TokenStream, sampling: SamplingConfig, cfg: MultiDraftConfig, generator,
           stats: DecodeStats, progress=None) -> None:
    dec = MultiDraftDecoder(target, draft, stream, sampling, cfg, generator, stats)
    while not stream.done:
        kept = dec.step()
        if progress is not None:
            progress.update(kept)
