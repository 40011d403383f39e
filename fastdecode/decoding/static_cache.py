"""The static engine's cache and model runner: preallocated keys and values, rejected positions simply
overwritten, and each forward shape recorded once and replayed (CUDA graphs or ``torch.compile``).

Why a layer of our own instead of transformers' ``StaticLayer`` as it is: ``StaticLayer`` keeps one
length counter per layer and advances it inside every ``update``, so a rollback costs one device op per
layer, and its write slots cannot be chosen. :class:`SlotLayer` (a ``written_layer.WrittenLayer``) reuses
``StaticLayer``'s allocation (and its static-address marking for ``torch.compile``) but writes the n new
keys at slots ``start .. start + n - 1``, where ``start`` is ONE device scalar shared by every layer of
the model. A step sets it once (``start.fill_``, no host sync); a rejected draft needs no rollback at all,
since its slots lie past the committed length, the attention mask hides them, and the next step
overwrites them.

The attention mask is ours too (an additive 4D mask over the whole capacity, built on the device from
``start``): query i of a forward at ``start`` sees the keys at slots ``<= start + i``. A recorded forward
needs that fixed width; a plain (eager) forward knows ``start`` on the host, so it attends to the slots
``< start + n`` only (:attr:`SlotCache.width`), not to the whole preallocated capacity. transformers
passes a 4D mask through unchanged in every version we support, so the model's own mask code (which
differs between releases) never runs inside a recorded step. A model with its own sliding window (Mistral,
Phi-3, Gemma-2/3, ...) gets the window in that mask, applied by position as transformers does (the cache
records each slot's key position, ``SlotCache.positions``; one mask, or a dict {layer type: mask} when
windowed and full layers mix). Its windowed layers keep the full capacity like the others in short
generations; in long ones (single rows) a ring of window + a few hundred slots each (``static_windows``).

Trees (``method="multi_draft"``): :meth:`StaticRunner.tree_forward` writes the n queries at slots
``start ..`` like any forward, but each query sees the committed prefix (slots below a second device
scalar, ``prefix``) plus an explicit list of slots (the root and its ancestors in the tree, itself
included), given as a fixed-width [n, A] tensor, and sits at its own position (root + depth). After
verification :meth:`SlotCache.move` copies the accepted path's keys and values down to consecutive
slots, in place.

Batches (:mod:`fastdecode.decoding.batched`, ``batched_tree``): :meth:`StaticRunner.batch_forward` takes
ids [B, n] (B = the runner's ``batch``, the rows of its cache), per-row positions [B, n] and either each
row's valid slots [B, capacity] (the causal mask built in the recorded function) or each query's visible
slots [B, n, capacity] (trees). It goes through the same :meth:`StaticRunner._run` / ``_record`` as the
single-row forwards, one graph per input shape; the batch code pads B and n to powers of two, so a few
graphs serve every step. ``runner_for(..., batch=B, role=...)`` keeps one runner per (role, B bucket) on the
model, apart from the single-row one.
"""
from __future__ import annotations

import contextlib

import torch
from transformers.cache_utils import Cache

from .. import graphs
from . import hf_cache as kv
from . import static_windows as sw   # (its PREFILL_PIECE read at call time: the tests shrink it)
from .masks import additive, row_causal, with_window
from .static_windows import UNWRITTEN, WindowRingLayer, cache_layer_types, ring_mask, ring_needed, ring_size, windowed_layers
from .static_windows import move as ring_move
from .written_layer import WrittenLayer

COMPILE_MODES = ("eager", "cudagraphs", "inductor")
RECOMPILE_LIMIT = 256  # graphs per recorded function (inductor): target and draft, every bucket of n and of B


class SlotLayer(WrittenLayer):
    """Writes at ``start + arange(n)`` (``start``: a device scalar shared by all layers); an eager forward sees
    the slots below ``owner.width`` only."""

    def slots(self, n: int, device) -> torch.Tensor:
        slots = self.owner.write   # computed once per forward by the runner (not per layer: one op less each)
        if slots is None or slots.shape[0] != n:
            slots = torch.arange(n, device=device) + self.owner.start
        return slots

    def visible(self):
        w = self.owner.width
        if w is None:
            return self.keys, self.values
        return self.keys[:, :, :w], self.values[:, :, :w]


class SlotCache(Cache):
    """One :class:`SlotLayer` per decoder layer, all writing at the same device scalar ``start``."""

    def __init__(self, num_layers: int, capacity: int, device, ring: int | None = None,
                 windowed: list[bool] | None = None):
        self.start = torch.zeros((), dtype=torch.long, device=device)
        # ``ring``: the windowed layers (``windowed[i]``) keep a ring of that many slots (``static_windows``)
        self.ring = ring
        super().__init__(layers=[WindowRingLayer(self) if ring and windowed[i] else SlotLayer(capacity, self)
                                 for i in range(num_layers)])
        self.capacity = capacity
        self.width: int | None = None   # eager forwards: the keys returned (and masked) are slots < width
        self.write: torch.Tensor | None = None   # the slots the forward under way writes (set by the runner)
        # models with their own sliding window (set by the runner): the position of the key in each slot
        self.positions: torch.Tensor | None = None
        if ring:   # the logical slot and the key position held by each ring slot; the forward's ring slots
            self.ring_idx = torch.full((ring,), UNWRITTEN, dtype=torch.long, device=device)
            self.ring_pos = torch.zeros(ring, dtype=torch.long, device=device)
            self.ring_write: torch.Tensor | None = None

    def get_seq_length(self, layer_idx: int = 0):
        return self.start

    def move(self, src: list[int], dst: int) -> None:
        """Copy the keys and values at slots ``src`` (increasing, each >= its destination) to the consecutive
        slots ``dst, dst + 1, ..``, in every layer, on the device and in place (slots already in their place
        are skipped). The accepted path of a tree becomes committed text this way; the rest is left to be
        overwritten."""
        pairs = [(s, dst + i) for i, s in enumerate(src) if s != dst + i]
        if not pairs:
            return
        dev = self.start.device
        frm = torch.tensor([a for a, _ in pairs], device=dev)
        to = torch.tensor([b for _, b in pairs], device=dev)
        for layer in self.layers:
            if layer.is_initialized and not isinstance(layer, WindowRingLayer):
                layer.keys.index_copy_(2, to, layer.keys.index_select(2, frm))
                layer.values.index_copy_(2, to, layer.values.index_select(2, frm))
        if self.positions is not None:
            self.positions.index_copy_(0, to, self.positions.index_select(0, frm))
        if self.ring:
            ring_move(self, frm, to)


def forward_at(model, cache, ids, write, pos, mask, keep: int = 0, check_finite: bool = True) -> torch.Tensor:
    """The model on ``ids`` over a slot (or ring) ``cache``, its layers writing at the slots ``write`` [n]
    (computed once here, not in every layer), positions ``pos`` and the 4D ``mask``; see ``kv.forward``."""
    cache.write = write
    try:
        return kv.forward(model, ids, cache, position_ids=pos, attention_mask=mask, logits_to_keep=keep,
                          check_finite=check_finite)
    finally:
        cache.write = None
        if getattr(cache, "ring", None):
            cache.ring_write = None


def static_support_problem(model) -> str | None:
    """Why ``model`` cannot run on the static engine, or None. Full and sliding-window attention layers run
    (the window is applied by position in the engine's own masks, over the full capacity or a ring:
    ``static_windows``); other layer kinds do not."""
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    other = set(getattr(cfg, "layer_types", None) or ()) - {"full_attention", "sliding_attention"}
    if other:
        return (f"{cfg.model_type} has layers of type {sorted(other)}; the static engine supports full and "
                "sliding-window attention layers only (use cache_implementation='dynamic')")
    if len(execution_devices(model)) > 1:
        return ("the model is split across several devices (device_map); the static engine keeps each cache on "
                "one device: use cache_implementation='dynamic'")
    return None


def execution_devices(model) -> set:
    """The devices accelerate's ``device_map`` runs ``model``'s modules on (offloaded ones, "cpu" or "disk" in
    the map, run on the main device: not counted unless nothing else is); empty for a model not dispatched."""
    placed = set((getattr(model, "hf_device_map", None) or {}).values())
    return (placed - {"cpu", "disk"}) or (placed & {"cpu"}) or ({"cpu"} if placed else set())


def offloaded(model) -> bool:
    """Whether accelerate moves some of ``model``'s weights in at each forward (device_map with "cpu" or
    "disk" besides the execution device, or "disk" alone)."""
    placed = set((getattr(model, "hf_device_map", None) or {}).values())
    return len(placed) > 1 or "disk" in placed


class StaticRunner:
    """One model on a :class:`SlotCache`: ``forward(ids, start)`` scores ``ids`` [1, n] at positions
    start .. start + n - 1 and returns float32 logits [n, V].

    mode: "eager" (plain forwards), "cudagraphs" (each input length recorded once as a CUDA graph of the
    eager forward, then replayed: no Python or launch cost per layer), "inductor" (``torch.compile``,
    fullgraph, one compilation per length; on CUDA each compiled forward is then recorded as a CUDA graph
    of its own, exactly as "cudagraphs" records the eager one). Lengths are the caller's buckets: few
    distinct lengths, few graphs.

    Why our own graphs around inductor rather than its ``mode="reduce-overhead"`` (CUDA-graph trees):
    measured on an H200 (``bench/step_time.py``, the code pair's target), a tree replay cost the host 0.31 ms
    per forward against 0.07 ms for a plain ``CUDAGraph.replay`` of the same compiled forward, and the draft's
    forwards of a speculative step are host-bound, so inductor's fused kernels (0.41 against 0.91 ms of
    device time per forward) were lost to the host again.
    """

    def __init__(self, model, capacity: int, mode: str, span: int | None = None):
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of {COMPILE_MODES}")
        device = kv.device(model)
        if mode == "cudagraphs" and device.type != "cuda":
            raise ValueError("compile='cudagraphs' needs a CUDA model")
        self.model, self.mode, self.capacity, self.device = model, mode, capacity, device
        # recorded CUDA graphs: of the eager forward ("cudagraphs") or of the compiled one ("inductor" on CUDA)
        self.records = mode == "cudagraphs" or (mode == "inductor" and device.type == "cuda")
        # ``span`` (single rows): the longest forward the loop makes, which sizes the windowed layers' rings
        self.ring = ring_size(kv.attention_layout(model)[0], capacity, span)
        self.cache = self._new_cache(len(cache_layer_types(model)), capacity, device)
        self.prefix = torch.zeros((), dtype=torch.long, device=device)  # tree forwards: slots below it are seen
        self.slots = torch.arange(capacity, device=device)
        self.dtype = next(model.parameters()).dtype
        self.graphs: dict[tuple, tuple] = {}   # (kind, input shapes) -> (graph, input buffers, output)
        self.lengths: set[int] = set()         # the lengths of the chain forwards recorded or compiled so far
        self.key = runner_key(model)
        self.batch = 1   # rows of the cache (runner_for sets it; a batch's rows are its recorded batch size)
        self._compiled = {}
        self._windowed(model)
        if mode == "inductor":
            torch._dynamo.mark_static_address(self.cache.start)
            torch._dynamo.mark_static_address(self.prefix)
            if self.window is not None and self.ring is None:   # (a Lambda ring has no window of the model's)
                torch._dynamo.mark_static_address(self.cache.positions)
            if self.ring is not None:
                torch._dynamo.mark_static_address(self.cache.ring_idx)
                torch._dynamo.mark_static_address(self.cache.ring_pos)
            for name, fn in (("chain", self._forward), ("tree", self._tree_forward), ("batch", self._batch_forward)):
                self._compiled[name] = torch.compile(fn, fullgraph=True, dynamic=False)

    max_forward: int | None = None  # longest input ``forward`` takes (None: any that fits the capacity)

    def _new_cache(self, num_layers: int, capacity: int, device) -> Cache:
        windowed = windowed_layers(self.model, num_layers) if self.ring else None
        return SlotCache(num_layers, capacity, device, self.ring, windowed)

    def _windowed(self, model) -> None:
        """The model's own sliding window (``attention_layout``): when it has one, every slot remembers the
        position of its key (``cache.positions``), and the masks hide the keys ``window`` or more positions
        behind their query, as transformers' sliding-window masks do (one mask, or one per layer type)."""
        self.window, self.layer_types = kv.attention_layout(model)
        if self.window is not None and self.ring is None:
            self.cache.positions = torch.zeros(self.capacity, dtype=torch.long, device=self.device)
        if self.ring is not None:   # a longer forward would overwrite keys its own queries still see
            self.max_forward = self.ring - self.window

    def _mask(self, allow: torch.Tensor, qpos: torch.Tensor, write: torch.Tensor):
        """The 4D mask(s) of a single-row forward whose queries, at positions ``qpos`` [n], write the slots
        ``write`` [n] and see the slots ``allow`` [n, width] says; the model's window applied by position."""
        if self.window is None:
            return additive(allow, self.dtype)
        if self.ring is not None:   # the windowed layers' ring (static_windows); full layers: the logical slots
            sliding = ring_mask(self.cache, allow, qpos, write, self.window, self.dtype)
            if self.layer_types is None:
                return sliding
            full = additive(allow, self.dtype)
            return {t: sliding if t == "sliding_attention" else full for t in self.layer_types}
        kpos = self.cache.positions
        kpos.index_copy_(0, write, qpos)
        return with_window(allow, qpos, kpos[: allow.shape[-1]], self.window, self.layer_types, self.dtype)

    def _forward(self, ids: torch.Tensor, keep: int = 0) -> torch.Tensor:
        """ids [1, n] at slots start ..; the logits of the last ``keep`` positions (0: all)."""
        n = ids.shape[1]
        pos = self.cache.start + self.slots[:n]
        allow = self.slots[None, : self.cache.width] <= pos[:, None]
        return self._model_forward(ids, pos, pos[None], self._mask(allow, pos, pos), keep)[0]

    def _model_forward(self, ids, write, pos, mask, keep: int = 0) -> torch.Tensor:
        # (recorded forwards cannot read the device; the static loops check the logits at their one sync)
        return forward_at(self.model, self.cache, ids, write, pos, mask, keep, check_finite=False)

    def _tree_forward(self, ids: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """ids [1, n] at slots start .. start + n - 1 and positions ``pos`` [n]; query i sees the slots below
        ``prefix`` and the slots ``visible[i]`` [A] (repeats allowed)."""
        n = ids.shape[1]
        write = self.cache.start + self.slots[:n]
        allow = (self.slots[: self.cache.width] < self.prefix)[None, :].repeat(n, 1).scatter_(1, visible, True)
        return self._model_forward(ids, write, pos[None], self._mask(allow, pos, write))[0]

    def _batch_forward(self, ids: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor,
                       kpos: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, n] at slots start .. start + n - 1 of every row, positions ``pos`` [B, n]. visible (bool):
        [B, capacity] the valid slots of each row, query i seeing those ``<= start + i`` and its own slot (so
        that a padding query, with nothing valid before it, stays finite); or [B, n, capacity] the slots each
        query sees, given in full (trees). kpos [B, capacity]: the position of every slot's key, the new columns'
        included (models with a sliding window; None otherwise). Returns float32 logits [B, n, V]."""
        width = self.slots[: self.cache.width].shape[0]
        write = self.cache.start + self.slots[: ids.shape[1]]        # the slots of the n columns, every row
        if visible.dim() == 3:
            allow = visible[:, :, :width]
        else:
            allow = row_causal(visible[:, :width], write)             # [B, n, width]
        if kpos is None or self.window is None:
            mask = additive(allow, self.dtype)
        else:
            mask = with_window(allow, pos, kpos[:, :width], self.window, self.layer_types, self.dtype)
        return self._model_forward(ids, write, pos, mask)

    def batch_forward(self, ids: torch.Tensor, start: int, pos: torch.Tensor, visible: torch.Tensor,
                      record: bool = True, kpos: torch.Tensor | None = None) -> torch.Tensor:
        """A batch's forward (``decoding.batched``, ``decoding.batched_tree``): ids [B, n] written at slots
        start .. start + n - 1 of every row (B = the runner's batch, rows of the cache), positions ``pos`` [B, n]
        (long), keys visible as ``visible`` says, at positions ``kpos`` (see :meth:`_batch_forward`). Returns
        float32 logits [B, n, V]. record=False: a plain forward, any n (the prompts); else each input shape is
        recorded once (the caller pads n to a bucket)."""
        self._check(start, ids.shape[1])
        self.cache.start.fill_(start)
        extra = () if kpos is None else (kpos,)
        if not record or self.mode == "eager":
            self.cache.width = start + ids.shape[1]
            return self._batch_forward(ids, pos, visible, *extra)
        self.cache.width = None
        return self._run("batch", self._batch_forward, ids, pos, visible, *extra)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Fill slots 0 .. n-1 from ``ids`` [1, n] in one eager forward (any length, never recorded; in pieces
        of ``static_windows.PREFILL_PIECE`` tokens when windowed layers keep a ring). Returns the float32
        logits [1, V] of the last position (the lm head runs on that row only); None if n = 0."""
        if self.ring is not None:
            self.cache.ring_idx.fill_(UNWRITTEN)   # (a reused runner: no key of an earlier call is seen)
        n, logits = ids.shape[1], None
        piece = sw.PREFILL_PIECE if self.ring is not None else max(n, 1)
        for a in range(0, n, piece):
            self.cache.start.fill_(a)
            self.cache.width = min(n, a + piece)
            logits = self._forward(ids[:, a : a + piece], keep=1)
        return logits

    def _check(self, start: int, n: int) -> None:
        if start + n > self.capacity:  # pragma: no cover - the engine sizes the cache for the longest step
            raise RuntimeError(f"static cache overflow: {start} + {n} > capacity {self.capacity}")
        if self.max_forward is not None and n > self.max_forward:   # the callers split longer inputs
            raise RuntimeError(f"a forward of {n} tokens: this runner takes at most {self.max_forward}")

    def forward(self, ids: torch.Tensor, start: int, keep: int = 0) -> torch.Tensor:
        """Score ``ids`` [1, n] at slots start .. start + n - 1: float32 logits [n, V], or of the last ``keep``
        positions only (a plain forward then runs the lm head on those rows alone; on the CPU the head of a
        small model costs as much as several layers)."""
        self._check(start, ids.shape[1])
        self.cache.start.fill_(start)
        self._set_width(start + ids.shape[1])
        if self.mode == "eager":
            return self._forward(ids, keep)
        self.lengths.add(ids.shape[1])
        logits = self._run("chain", self._forward, ids)
        return logits[-keep:] if keep else logits

    def tree_forward(self, ids: torch.Tensor, start: int, prefix: int, pos: torch.Tensor,
                     visible: torch.Tensor) -> torch.Tensor:
        """Score ``ids`` [1, n] written at slots start .. start + n - 1, at positions ``pos`` [n] (long, on the
        device), where query i sees the committed slots 0 .. prefix - 1 and the slots ``visible[i]`` ([n, A]
        long on the device: its ancestors in the tree and itself; pad a row by repeating a slot). Returns
        float32 logits [n, V]. Each (n, A) is recorded once."""
        self._check(start, ids.shape[1])
        self.cache.start.fill_(start)
        self.prefix.fill_(prefix)
        self._set_width(start + ids.shape[1])
        return self._run("tree", self._tree_forward, ids, pos, visible)

    def _set_width(self, end: int) -> None:
        """Plain forwards attend to the slots below ``end`` only; recorded ones to the whole capacity (one
        shape per input length)."""
        self.cache.width = end if self.mode == "eager" else None

    def _run(self, kind: str, fn, *inputs: torch.Tensor) -> torch.Tensor:
        if self.mode == "eager":
            return fn(*inputs)
        if self.mode == "inductor":
            fn = self._compiled[kind]      # within compile_limits() (the caller's generate)
            if not self.records:
                return _traced(fn, *inputs)   # the CPU: the compiled forward itself
        return self.replay((kind,), fn, *inputs)

    def replay(self, key: tuple, fn, *inputs: torch.Tensor):
        """fn(*inputs), recorded as a CUDA graph the first time this ``key`` meets these input shapes, replayed
        after (the inputs copied into the recorded buffers; the result is the graph's own tensors, rewritten by
        the next replay). Recording runners only (:attr:`records`). ``key`` names everything fn bakes in
        besides the shapes; fn reads the device only (no host read), and leaves ``cache.start`` as it found it."""
        key = tuple(key) + tuple(tuple(x.shape) for x in inputs)
        graph = self.graphs.get(key)
        if graph is None:
            return _traced(self._record, key, fn, inputs)
        g, bufs, out = graph
        for buf, x in zip(bufs, inputs):
            buf.copy_(x)
        g.replay()
        return out

    def step_forward(self):
        """The one-forward function a recorded step calls (``ids`` [1, n] at slots ``cache.start`` ..): the
        compiled forward under inductor, else the eager one. Set up by :meth:`recording_at` first."""
        return self._compiled["chain"] if self.mode == "inductor" else self._forward

    def recording_at(self, start: int, n: int) -> None:
        """Before a :meth:`replay` of a function that calls :meth:`step_forward`: forwards of ``n`` tokens from
        slot ``start`` (set once; the function may move ``cache.start`` as long as it puts it back)."""
        self._check(start, n)
        self.cache.start.fill_(start)
        self.cache.width = None   # recorded forwards see the whole capacity (one shape per length)

    def _record(self, key: tuple, fn, inputs: tuple) -> torch.Tensor:
        """First call of this kind and shape: warm up on a side stream, record the graph, replay it. Replays
        are idempotent (the same keys written to the same slots), so the warm-up forwards do no harm."""
        bufs = tuple(x.clone() for x in inputs)
        g, out = graphs.record(lambda: fn(*bufs), self.device)
        self.graphs[key] = (g, bufs, out)
        g.replay()
        return out


def _traced(fn, *args):
    """fn(*args); a forward that ``torch.compile`` cannot capture in one graph (a host read or other graph break
    inside the model) becomes a ValueError that says what to use instead."""
    try:
        return fn(*args)
    except torch._dynamo.exc.TorchDynamoException as e:
        raise ValueError("compile=True: torch.compile could not compile this model's forward as one graph "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); use compile=None (on CUDA: CUDA "
                         "graphs of the eager forward) or compile=False") from e


def compile_limits():
    """A context for a generation on inductor runners: dynamo keeps the graphs of one function together (every
    runner's, each (B, n) of a batch's), at most ``recompile_limit`` of them (8 by default) before falling back
    to eager forwards, so the limit is raised to cover the buckets. Entered once per ``generate`` call, not
    per forward (a patch costs ~30 us)."""
    cfg = torch._dynamo.config
    return cfg.patch(recompile_limit=max(RECOMPILE_LIMIT, cfg.recompile_limit),
                     accumulated_recompile_limit=max(4 * RECOMPILE_LIMIT, cfg.accumulated_recompile_limit))


def runner_key(model) -> tuple:
    """What a recorded forward depends on besides its shapes: dtype, device, and the output / input sizes a
    pair with a padded vocabulary imposes on the draft (``models.shared_vocab``)."""
    return (next(model.parameters()).dtype, kv.device(model), getattr(model, "_fastdecode_logits_width", None),
            getattr(model, "_fastdecode_input_rows", None))


def runner_for(model, capacity: int, mode: str, batch: int = 1, role: str = "", span: int | None = None) -> StaticRunner:
    """The model's runner, reused across ``generate`` calls while it is big enough (graphs recorded once).

    (A model under Lambda attention gets its ring runner from ``static_lambda.lambda_runner_for`` instead:
    ``decoding.static`` picks.) role (batches, ``decoding.batched``): a runner whose cache has ``batch`` rows, kept apart from the
    single-row one (even with batch 1, once a batch is down to one row) under its role (e.g. "target4",
    "draft4": a model drafting for itself gets two caches), reused by a later call with the same role.
    span (single rows): the longest forward the caller makes; windowed layers then keep a ring sized by it
    when that saves memory (``static_windows``), and a kept runner's ring must hold it."""
    slot = f"_fastdecode_static_batch_{role}" if role else "_fastdecode_static"
    span = span if batch == 1 and not role else None
    window = kv.attention_layout(model)[0]

    def fits(old) -> bool:
        ring_ok = old.ring is None or old.ring >= ring_needed(window, span)
        return (old.mode == mode and old.capacity >= capacity and old.key == runner_key(model) and old.batch == batch
                and ring_ok)

    def make() -> StaticRunner:
        runner = StaticRunner(model, capacity, mode, span)
        runner.batch = batch
        return runner
    return kept_runner(model, slot, fits, make)


def drop_runners(*models) -> None:
    """Drop every static runner kept on ``models`` (None entries skipped) and give back their device memory. After a
    failed call (a draft's cache that did not fit in memory, say) a kept runner could hold caches sized for that
    call, which every later call that fits would reuse: the next calls would run out of memory too."""
    for model in models:
        if model is not None:
            _drop(model, [k for k in model.__dict__ if k.startswith("_fastdecode_static")])


def _drop(model, slots: list[str]) -> None:
    """Drop the runners kept on ``model`` under ``slots`` and give their device memory back."""
    for slot in slots:
        model.__dict__.pop(slot, None)
    if slots:
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def kept_runner(model, slot: str, fits, make):
    """The runner kept on ``model`` under ``slot`` if ``fits(it)``, else a new one from ``make()`` (the old one
    dropped first, and its device memory given back, so that the two never coexist). A cache that does not
    fit in memory is a RuntimeError that says why (the allocator's own error names no cause)."""
    old = model.__dict__.get(slot)
    if old is not None and fits(old):
        return old
    if old is not None:
        del old
        _drop(model, [slot])
    try:
        runner = make()
    except RuntimeError as e:   # (torch.OutOfMemoryError is one)
        if not isinstance(e, torch.OutOfMemoryError) and "alloc" not in str(e).lower():
            raise
        raise type(e)("cache_implementation='static' allocates each model's cache for the whole generation up "
                      "front (prompt + max_new_tokens + the longest forward) and that did not fit in memory; ask "
                      "for fewer max_new_tokens or use cache_implementation='dynamic' "
                      f"({str(e).splitlines()[0][:200]})") from e
    model.__dict__[slot] = runner
    return runner
