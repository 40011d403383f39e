"""Token trees for multi-draft decoding: drafting k sequences as a prefix tree, the tree attention mask,
and the forward pass that scores tree nodes on top of a KV cache.

Words: the *root* is the newest accepted token (not yet in the caches); a *node* is a drafted token at
depth 1..L, identified by its index in ``DraftTree.tokens``; ``draws[node]`` are the tokens drawn as its
children, in draw order and with duplicates (each duplicate is one draft sequence passing through that
child), and ``q[node]`` is the draft distribution they were drawn from. Node -1 is the root.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import hf_cache as kv
from .masks import additive, with_window


@dataclass
class DraftTree:
    tokens: list[int] = field(default_factory=list)   # node -> token id
    parent: list[int] = field(default_factory=list)   # node -> parent node (-1 = root)
    depth: list[int] = field(default_factory=list)    # node -> depth (1 = child of the root)
    draws: dict[int, list[int]] = field(default_factory=dict)   # node -> drawn child tokens (draw order)
    q: dict[int, torch.Tensor] = field(default_factory=dict)    # node -> [V] draft distribution of its children
    child: dict[tuple[int, int], int] = field(default_factory=dict)  # (node, token) -> child node

    def add_children(self, node: int, draws: list[int]) -> list[tuple[int, int]]:
        """Record the draws at ``node``; returns [(child node, multiplicity)] in first-draw order."""
        self.draws[node] = draws
        counts: dict[int, int] = {}
        order: list[int] = []
        d = self.depth[node] + 1 if node >= 0 else 1
        for t in draws:
            key = (node, t)
            if key not in self.child:
                self.child[key] = len(self.tokens)
                self.tokens.append(t)
                self.parent.append(node)
                self.depth.append(d)
                order.append(self.child[key])
            c = self.child[key]
            counts[c] = counts.get(c, 0) + 1
        return [(c, counts[c]) for c in order]

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestors(self, node: int) -> list[int]:
        """Nodes from depth 1 down to ``node`` (inclusive)."""
        out = []
        while node >= 0:
            out.append(node)
            node = self.parent[node]
        return out[::-1]


def tree_allow(tree: DraftTree, cached_nodes: dict[int, int], new_nodes: list[int], n_prefix: int,
               n_pending: int) -> torch.Tensor:
    """Boolean [n_pending + len(new_nodes), n_prefix + len(cached_nodes) + n_pending + len(new_nodes)]:
    which key each query may see (layout of :func:`tree_mask`)."""
    """Additive 4D mask [1, 1, n_pending + len(new_nodes), n_prefix + len(cached_nodes) + n_pending + len(new_nodes)].

    Key layout: ``n_prefix`` cached context positions, then the tree nodes already in the cache
    (``cached_nodes``: node -> key offset relative to the end of the prefix), then the ``n_pending``
    new context tokens (causal), then ``new_nodes``. A node sees the whole context, its ancestors and itself.
    """
    n_cached = len(cached_nodes)
    nq = n_pending + len(new_nodes)
    nk = n_prefix + n_cached + nq
    allow = torch.zeros(nq, nk, dtype=torch.bool)
    allow[:, :n_prefix] = True
    base = n_prefix + n_cached
    if n_pending:
        allow[:n_pending, base:base + n_pending] = torch.ones(n_pending, n_pending, dtype=torch.bool).tril()
        allow[n_pending:, base:base + n_pending] = True
    col = {node: base + n_pending + i for i, node in enumerate(new_nodes)}
    for i, node in enumerate(new_nodes):
        for a in tree.ancestors(node):
            if a in col:
                allow[n_pending + i, col[a]] = True
            elif a in cached_nodes:
                allow[n_pending + i, n_prefix + cached_nodes[a]] = True
            else:
                raise AssertionError(f"ancestor {a} of node {node} is neither cached nor new")
    return allow


def tree_mask(tree: DraftTree, cached_nodes: dict[int, int], new_nodes: list[int], n_prefix: int,
              n_pending: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive 4D mask [1, 1, n_pending + len(new_nodes), n_prefix + len(cached_nodes) + n_pending + len(new_nodes)].

    Key layout: ``n_prefix`` cached context positions, then the tree nodes already in the cache
    (``cached_nodes``: node -> key offset relative to the end of the prefix), then the ``n_pending``
    new context tokens (causal), then ``new_nodes``. A node sees the whole context, its ancestors and itself.
    """
    return additive(tree_allow(tree, cached_nodes, new_nodes, n_prefix, n_pending).to(device), dtype)


def score_nodes(model, cache, tree: DraftTree, pending: list[int], new_nodes: list[int], n_prefix: int,
                cached_nodes: dict[int, int], root_position: int) -> torch.Tensor:
    """Forward ``pending`` context tokens plus ``new_nodes`` through ``model`` with the tree mask.

    ``root_position`` is the absolute position of the root (the last context token). Returns float32
    logits [1 + len(new_nodes), V] (root first) when ``pending`` is given, else [len(new_nodes), V];
    the caller records where the new nodes land in the cache.
    A 4D mask bypasses the model's own mask functions, so for a model with a sliding window the window is
    applied here, by position (``cache.attention_layout``): one mask when every layer is windowed, a dict
    {layer type: mask} when windowed and full layers mix (the form those models accept).
    """
    device = kv.device(model)
    ids = pending + [tree.tokens[n] for n in new_nodes]
    n_pend = len(pending)
    pos = [root_position - n_pend + 1 + i for i in range(n_pend)] + [root_position + tree.depth[n] for n in new_nodes]
    dtype = next(model.parameters()).dtype
    allow = tree_allow(tree, cached_nodes, new_nodes, n_prefix, n_pend).to(device)
    window, layer_types = (None, None) if hasattr(cache, "select_positions") else kv.attention_layout(model)
    if window is None:  # Lambda caches apply their own window; their prefix is not positions 0..n_prefix-1
        mask = additive(allow, dtype)
    else:
        # keys: the prefix (positions 0..n_prefix-1, the cache holds the accepted text), cached nodes in
        # cache order, then the queries themselves; a tree node sits at root position + depth
        by_offset = sorted(cached_nodes, key=cached_nodes.get)
        key_pos = torch.tensor(list(range(n_prefix)) + [root_position + tree.depth[n] for n in by_offset] + pos)
        mask = with_window(allow, torch.tensor(pos, device=device), key_pos.to(device), window, layer_types, dtype)
    keep = len(new_nodes) + (1 if n_pend else 0)
    return kv.forward(model, torch.tensor([ids], device=device), cache,
                      position_ids=torch.tensor([pos], device=device), attention_mask=mask, logits_to_keep=keep)[0]
