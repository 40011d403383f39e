"""Lambda attention (``fastdecode.LambdaAttention``) on the static engine: a fixed-size ring cache per layer.

The dynamic engine's :class:`~fastdecode.attention.lambda_cache.LambdaCache` evicts, crops and concatenates
on every forward, with host-side bookkeeping of every slot's position; none of that can be recorded.
Lambda attention only ever looks at the ``num_global`` leading tokens and the last ``window`` positions,
so its cache is a ring by nature. Here every layer preallocates

    [ G = num_global global slots | a ring of R = window + chunk slots ]

and one device tensor ``kpos`` [G + R] (shared by all layers) holds the true position of the key in each
slot (a far-future sentinel for slots never written since the last prefill). A forward of n tokens at
positions ``start .. start + n - 1`` (``start``: one device scalar, as in
:class:`~fastdecode.decoding.static_cache.SlotCache`) writes position p at slot p if p < G, else at
G + (p - G) mod R, and records p in ``kpos``; nothing is allocated, cropped or moved, whatever the length.

Why R = window + chunk suffices (``chunk``: the longest forward a loop makes, a power of two; longer
inputs are fed in pieces of at most ``chunk``, see :func:`fastdecode.decoding.static.feed`): a forward at
``start`` needs positions ``start - window + 1 .. start + n - 1``, at most window - 1 + chunk distinct
positions, so its own writes never clobber what it reads; and every loop only moves ``start`` forward
(the next forward starts at or after the first rejected draft), so slots written past the committed text
(rejected drafts, bucket padding) hold positions at most chunk - 2 beyond the next ``start``: they are
either rewritten by the next forward before any query could see them, or lie in its queries' future.
Rolling back is therefore free and ``LambdaAttention.max_rollback`` plays no part here (it sizes the
dynamic cache's slack for crops).

Attention over the fixed-size cache is the Lambda rule applied to the slot positions, computed entirely
on the device (:meth:`RingCache.attend`, called by the ``fastdecode_lambda`` attention function of
:mod:`fastdecode.attention.context` while a ring forward runs): a key is *local* when
0 <= q_pos - k_pos < window (scored ``q_rot . k_rot`` as the model rotated them), a global slot whose key is
``window`` or more positions behind is *far* and scored at the distance limit (``q_rot(window) . k_raw``,
the same re-rotation as the dynamic path, :class:`~fastdecode.attention.rope.FarRotation`), everything else
(stale slots included: they are outside every query's window or in its future) is masked. The shapes
are fixed ([n, G + R] per forward), so recorded forwards (``compile="cudagraphs"`` / ``"inductor"``)
replay them. Memory is O(num_global + window + chunk) per layer, independent of the generation length.

Prefill runs the dynamic engine's Lambda prefill (one eager forward on a fresh ``LambdaCache``: blocked
attention, O(prompt x window)) and copies the globals and the last window - 1 positions into the ring,
so the prompt's keys are exactly those of the dynamic engine.

Token trees (``method="multi_draft"``, :mod:`fastdecode.decoding.static_tree`): a tree node's position
(root + depth) is not its place in the text, so every slot also records its *logical index* (``kidx``),
and every forward adds a mask by logical index to the Lambda rule: a chain query sees the keys up to its
own index (rejected tree nodes, left behind at positions a later query could otherwise see, stay hidden),
a tree query the committed keys (index below ``prefix``) and its ancestors. Writes still go to the ring
slot of the logical index, so the argument above holds with ``chunk`` = the span of logical indices one
step writes. After verification :meth:`RingCache.move` copies the accepted path into place.

Not covered: the Triton one-token decode kernel (one-token steps take the dense PyTorch path, which records
on CUDA as any other forward).
"""
from __future__ import annotations

import contextlib

import torch
from transformers.cache_utils import Cache

from . import hf_cache as kv
from .masks import additive
from .static_cache import StaticRunner, kept_runner, runner_key
from .written_layer import WrittenLayer

RING = "_fastdecode_ring"  # attribute on each attention layer: its model's RingCache
_STATE = "_fastdecode_lambda"  # the LambdaState that fastdecode.attention.lambda_attention puts on the model
UNWRITTEN = 1 << 40  # position of a slot never written: in every query's future, so always masked


class RingLayer(WrittenLayer):
    """One layer's keys and values [B, Hkv, G + R, D], written at the ring slots of ``owner.start + arange(n)``."""

    def __init__(self, owner: "RingCache"):
        super().__init__(owner.size, owner)

    def slots(self, n: int, device) -> torch.Tensor:
        slots = self.owner.write   # computed once per forward by the runner
        if slots is None or slots.shape[0] != n:
            slots = self.owner.slots_of(self.owner.start + torch.arange(n, device=device))
        return slots


class RingCache(Cache):
    """The fixed-size Lambda cache of one model (see the module docstring): G global slots and a ring of R,
    the device scalar ``start`` (first position of the next forward) and ``kpos`` [G + R], the position held
    by each slot. ``active`` is True while a ring forward runs (the attention function then calls
    :meth:`attend`)."""

    def __init__(self, num_layers: int, cfg, ring: int, inv_freq: torch.Tensor, device):
        self.cfg, self.num_global, self.ring = cfg, cfg.num_global, ring
        self.size = cfg.num_global + ring
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.kpos = torch.full((self.size,), UNWRITTEN, dtype=torch.long, device=device)
        # the logical index of each slot's key (its place in the text; a tree node's differs from its position)
        self.kidx = torch.full((self.size,), UNWRITTEN, dtype=torch.long, device=device)
        self.inv_freq = inv_freq.detach().to(device).clone()  # owned: recorded forwards read it on every replay
        self.active = False
        self.write: torch.Tensor | None = None   # the slots the forward under way writes (set by the runner)
        super().__init__(layers=[RingLayer(self) for _ in range(num_layers)])

    def slots_of(self, pos: torch.Tensor) -> torch.Tensor:
        """Slot of each position [n] (long, on the device)."""
        g = self.num_global
        return torch.where(pos < g, pos, g + torch.remainder(pos - g, self.ring))

    def get_seq_length(self, layer_idx: int = 0):
        return self.start

    def nbytes(self) -> int:
        """Bytes held by all keys and values (fixed once the layers are allocated)."""
        return sum(t.numel() * t.element_size() for layer in self.layers if layer.is_initialized
                   for t in (layer.keys, layer.values))

    def move(self, src: list[int], dst: int) -> None:
        """Copy the keys and values at logical indices ``src`` (increasing, each >= its destination) to the
        consecutive logical indices ``dst, dst + 1, ..`` in every layer, with their positions (the accepted
        path of a tree becomes committed text: position = logical index); in place, on the device."""
        pairs = [(s, dst + i) for i, s in enumerate(src) if s != dst + i]
        if not pairs:
            return
        dev = self.kpos.device
        frm = self.slots_of(torch.tensor([a for a, _ in pairs], device=dev))
        to_idx = torch.tensor([b for _, b in pairs], device=dev)
        to = self.slots_of(to_idx)
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys.index_copy_(2, to, layer.keys.index_select(2, frm))
                layer.values.index_copy_(2, to, layer.values.index_select(2, frm))
        self.kpos.index_copy_(0, to, to_idx)
        self.kidx.index_copy_(0, to, to_idx)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, position_ids: torch.Tensor,
               scaling: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Lambda attention of query [B, H, n, D] (rotated at ``position_ids``) over the whole ring
        key/value [B, Hkv, G + R, D]; returns [B, n, H, D]. No host sync, fixed shapes. ``mask``: the
        runner's additive [1, 1, n, G + R] mask over the slots by logical index (keys of the text so far
        and, for a tree query, its ancestors), applied on top of the Lambda rule's positions."""
        from ..attention.lambda_mask import _dense_rotated
        from ..attention.rope import FarRotation

        qpos = position_ids.reshape(-1, query.shape[2])[0].long()
        g = self.num_global
        far = FarRotation(qpos, self.kpos[:g], self.cfg.window, self.inv_freq) if g else None
        out = _dense_rotated(query, key, value, qpos, self.kpos, self.cfg, scaling, mask, g, far, slice(None))
        return out.transpose(1, 2).contiguous()


class LambdaRunner(StaticRunner):
    """:class:`~fastdecode.decoding.static_cache.StaticRunner` of a model under Lambda attention: a
    :class:`RingCache` instead of a :class:`SlotCache`. ``forward(ids, start)`` takes at most ``chunk``
    tokens (``max_forward``); chains only (no ``tree_forward``)."""

    def __init__(self, model, cfg, chunk: int, mode: str):
        state = getattr(model, _STATE, None)
        if state is None:
            raise RuntimeError("LambdaRunner needs a model inside fastdecode.lambda_attention()")
        self.lam, self.chunk, self.max_forward = cfg, chunk, chunk
        self._inv_freq = state.inv_freq
        super().__init__(model, cfg.num_global + cfg.window + chunk, mode)
        for layer in _attention_layers(model):
            setattr(layer, RING, self.cache)

    def _windowed(self, model) -> None:
        # Lambda's rule replaces the model's own window (``lambda_attention`` refuses a model window smaller
        # than Lambda's, and a larger one never reaches past Lambda's local window), as in the dynamic engine
        self.window, self.layer_types = None, None

    def _new_cache(self, num_layers: int, capacity: int, device) -> RingCache:
        return RingCache(num_layers, self.lam, capacity - self.lam.num_global, self._inv_freq, device)

    def _forward(self, ids: torch.Tensor, keep: int = 0) -> torch.Tensor:
        n = ids.shape[1]
        cache = self.cache
        pos = cache.start + self.slots[:n]   # a chain: logical index = position
        slots = cache.slots_of(pos)
        cache.kpos.index_copy_(0, slots, pos)
        cache.kidx.index_copy_(0, slots, pos)
        # a 4D mask makes transformers skip its own mask code; the ring attention adds it to the Lambda rule:
        # keys up to each query's logical index (hides the rejected nodes a tree step leaves behind)
        allow = cache.kidx[None, :] <= pos[:, None]
        return self._model_forward(ids, slots, pos[None], additive(allow, self.dtype), keep)[0]

    def _tree_forward(self, ids: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """ids [1, n] at logical indices start .. start + n - 1 and positions ``pos`` [n]; query i sees the keys
        of logical index below ``prefix`` (by the Lambda rule) and the logical indices ``visible[i]`` [A]."""
        n = ids.shape[1]
        cache = self.cache
        idx = cache.start + self.slots[:n]
        slots = cache.slots_of(idx)
        cache.kpos.index_copy_(0, slots, pos)
        cache.kidx.index_copy_(0, slots, idx)
        allow = (cache.kidx < self.prefix)[None, :].repeat(n, 1).scatter_(1, cache.slots_of(visible), True)
        return self._model_forward(ids, slots, pos[None], additive(allow, self.dtype))[0]

    def prefill(self, ids: torch.Tensor) -> torch.Tensor | None:
        """The dynamic engine's Lambda prefill of ``ids`` [1, n] (positions 0 .. n-1), then its globals and
        last window - 1 positions copied into the ring; every other slot is marked unwritten. Returns the
        float32 logits [1, V] of the last position (None if n = 0)."""
        cache, cfg = self.cache, self.lam
        cache.kpos.fill_(UNWRITTEN)
        cache.kidx.fill_(UNWRITTEN)
        n = ids.shape[1]
        if not n:
            return None
        lcache = getattr(self.model, _STATE).new_cache()
        logits = kv.forward(self.model, ids, lcache, logits_to_keep=1)[0]
        pos = lcache.layers[0].layout.pos  # the layers of one cache share their layout
        keep = [j for j, p in enumerate(pos) if p < cfg.num_global or p >= n - (cfg.window - 1)]
        p = torch.tensor([pos[j] for j in keep], dtype=torch.long, device=cache.kpos.device)
        slots = cache.slots_of(p)
        for ring_layer, layer in zip(cache.layers, lcache.layers):
            if layer.layout.pos != pos:  # pragma: no cover - transformers drives all layers alike
                raise RuntimeError("Lambda prefill: the layers of the cache hold different positions")
            src = torch.tensor(keep, dtype=torch.long, device=layer.keys.device)
            keys, values = layer.keys.index_select(2, src), layer.values.index_select(2, src)
            if not ring_layer.is_initialized:
                ring_layer.lazy_initialization(keys, values)
            ring_layer.keys.index_copy_(2, slots, keys)
            ring_layer.values.index_copy_(2, slots, values)
        cache.kpos.index_copy_(0, slots, p)
        cache.kidx.index_copy_(0, slots, p)
        return logits

    def _check(self, start: int, n: int) -> None:
        if n > self.chunk:  # pragma: no cover - callers feed long inputs in pieces (static.feed)
            raise RuntimeError(f"a {n}-token forward on a static Lambda cache sized for forwards of {self.chunk}")

    def forward(self, ids: torch.Tensor, start: int, keep: int = 0) -> torch.Tensor:
        with self._ring_active():
            return super().forward(ids, start, keep)

    def tree_forward(self, *args, **kwargs) -> torch.Tensor:
        with self._ring_active():
            return super().tree_forward(*args, **kwargs)

    def replay(self, *args, **kwargs):
        with self._ring_active():   # (a recorded step's forwards attend through the ring)
            return super().replay(*args, **kwargs)

    @contextlib.contextmanager
    def _ring_active(self):
        was, self.cache.active = self.cache.active, True
        try:
            yield
        finally:
            self.cache.active = was


def _attention_layers(model) -> list:
    from ..attention.context import _attention_layers as layers
    return layers(model)


def lambda_runner_for(model, chunk: int, mode: str) -> LambdaRunner:
    """The model's Lambda runner for the config of its current ``lambda_attention`` context, reused across
    ``generate`` calls while the config, mode and dtype/device match and its ring takes forwards of
    ``chunk`` tokens (graphs recorded once)."""
    cfg = getattr(model, _STATE).cfg
    chunk = max(chunk, 1)

    def fits(old) -> bool:
        return (old.mode == mode and (old.lam.window, old.lam.num_global) == (cfg.window, cfg.num_global)
                and old.chunk >= chunk and old.key == runner_key(model))
    runner = kept_runner(model, "_fastdecode_static_lambda", fits, lambda: LambdaRunner(model, cfg, chunk, mode))
    for layer in _attention_layers(model):  # another runner may have been attached meanwhile
        setattr(layer, RING, runner.cache)
    return runner
