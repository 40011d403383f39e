"""The CPU's matrix products for decoding: ``nn.Linear`` layers run on oneDNN-packed weights.

A decode or verify forward multiplies a few rows (one token, a draft of 2-16 tokens, a small batch) by
every weight matrix of the model. ``F.linear`` sends that to the BLAS (MKL in torch's CPU wheels), which for
so few rows either runs a matrix-vector product or packs the weight matrix again on every call: on a
2-core AMD EPYC the code pair's target spends 10-13 ms per forward in its matrix products for 1-16 tokens.
oneDNN (torch's ``mkldnn`` backend, the one inductor uses when it freezes a model) takes the weight packed
once into its blocked layout and then reads it as it is: 5-6.5 ms on the same machine, and 2.5-4x faster
than MKL for 2-16 rows on 0.5B-1.1B Llama shapes (``bench/cpu_linear.py``; the README's CPU section has
the figures). Verifying a draft of 4 then costs less than one plain token did before, which is what
speculative decoding needs.

:func:`packed_linears` swaps the forward of each plain float32 ``nn.Linear`` of a CPU model (``MIN_PACKED`` elements or more) for the
packed product while a generation runs, and puts the model back when it ends. The packed copy is kept for
the layer (in a weak table, so that it goes with the model and never travels with a copy or a pickle of it;
rebuilt when the weight changes) so the next call does not pack again: it costs as much memory as the
weights it copies, hence the default limit (:func:`default_limit`: a quarter of the available memory;
:func:`release_packed` drops the copies of a model).
Results differ from MKL's by rounding only (another summation order, ~1e-6 relative in float32).

Left alone: subclasses of ``nn.Linear`` (quantized layers), layers whose forward is already replaced (e.g.
accelerate's offload hooks), other dtypes and devices, and everything when oneDNN is missing from the torch
build or gradients are on.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
import weakref

import torch

MEMORY_FRACTION = 4   # pack_weights=None packs when the copies need at most 1/4 of the memory available
FALLBACK_LIMIT_BYTES = 1 << 30   # ... or at most 1 GiB where the available memory cannot be read
PACK_ROWS = 16   # oneDNN's layout hint (rows per product): any hint >= 2 gave the same speed for 1-64 rows;
#                  hint 1 is another layout, 1.5-2x slower for 2 or more rows
# Small layers are left unpacked: oneDNN's product costs ~20 us per call whatever its size, MKL's 4-10 us for
# layers of 4k-37k elements (2-core EPYC, 1-16 rows). Plain decoding with the code pair's draft (192 x 192
# projections) ran 1.13-1.25x faster with those layers unpacked (bench/pack_rule.py), its target (>= 384 x 384)
# no faster; tiny models (hidden 32-64) ran their short calls 2.2x faster with nothing packed.
MIN_PACKED = 48 * 1024   # elements of a layer's weight (192 KiB in float32)


def packing_available() -> bool:
    """Whether this torch build has the oneDNN linear ops."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def packable_layers(model) -> list[torch.nn.Linear]:
    """The layers :func:`packed_linears` would pack: plain ``nn.Linear`` with a float32 CPU weight of at least
    ``MIN_PACKED`` elements and no replaced forward."""
    if model is None:
        return []
    return [m for m in model.modules()
            if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
            and m.weight.numel() >= MIN_PACKED and "forward" not in m.__dict__]


def _unique_layers(models) -> list[torch.nn.Linear]:
    """The packable layers of ``models`` (None entries skipped), each once (a model may be given twice, or a
    draft share layers with its target)."""
    seen, out = set(), []
    for model in models:
        for m in packable_layers(model):
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def _bytes(layers, new_only: bool = False) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in layers if not (new_only and _is_packed(m)))


def packed_bytes(models, new_only: bool = False) -> int:
    """Bytes of float32 weights the packed copies of ``models`` hold (each layer counted once); new_only: only
    the layers without a current copy."""
    return _bytes(_unique_layers(models), new_only)


def check_pack_weights(pack_weights, inductor: bool = False) -> None:
    """ValueError for a pack_weights that is not True / False / None, or True with torch.compile (inductor:
    whether the static engine compiles with it), which cannot trace the packed products."""
    if pack_weights is not None and not isinstance(pack_weights, bool):
        raise ValueError(f"pack_weights must be True, False or None (automatic), got {pack_weights!r}")
    if pack_weights is True and inductor:
        raise ValueError("pack_weights=True (--pack-weights) does not combine with compile=True / 'inductor' "
                         "(--compile inductor): torch.compile cannot trace the packed products (use one or the other)")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``, else free pages), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_limit() -> int:
    """What ``pack_weights=None`` allows the new copies: a quarter of the available memory (1 GiB when it is
    unknown). Copies already made for these layers are not counted again."""
    avail = available_memory()
    return FALLBACK_LIMIT_BYTES if avail is None else avail // MEMORY_FRACTION


def should_pack(pack_weights: bool | None, models, limit: int | None = None) -> bool:
    """The decision for one generation. True: pack every packable layer (no-op where none is, or where
    oneDNN is missing); None: the same when the copies not made yet need at most ``limit`` bytes (None:
    :func:`default_limit`); False: never."""
    check_pack_weights(pack_weights)
    if pack_weights is False or not packing_available():
        return False
    layers = _unique_layers(models)   # (one walk over the modules: a call's fixed cost)
    if not layers or pack_weights is True:
        return bool(layers)
    return _bytes(layers, new_only=True) <= (default_limit() if limit is None else limit)


# layer -> (weight identity, packed weight). Outside the layers themselves: a packed weight is an opaque oneDNN
# tensor that ``copy.deepcopy`` and pickling of the model could not handle; the entry goes with its layer.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


SAMPLED = 257   # weight elements compared between calls, spread over the matrix (rows and columns vary)


def _weight_id(layer: torch.nn.Linear) -> tuple:
    w = layer.weight
    return (w.data_ptr(), w._version, tuple(w.shape))


def _weight_key(layer: torch.nn.Linear) -> tuple:
    """What says the kept copy is still the weight's: its storage, version and shape (:func:`_weight_id`), and
    the bits of SAMPLED of its elements. The version counter misses edits through ``weight.data`` (``.data``
    has a counter of its own: PEFT's unsafe adapter merge and EMA updates write that way), which change the
    sampled elements (an edit that changes none of them, a single element say, is missed: call
    :func:`release_packed` then)."""
    flat = layer.weight.detach().reshape(-1)
    return _weight_id(layer), flat[sampled_indices(flat.numel())].view(torch.int32)


def sampled_indices(n: int) -> torch.Tensor:
    """min(SAMPLED, n) indices spread evenly over 0 .. n - 1, ends included. Integer arithmetic: a float32
    ``linspace`` rounds n - 1 to a multiple of 2, 4, 8, ... past 2**24 elements, often up to n itself (an
    lm_head of 32000 x 2048 or 151936 x 896 gave an IndexError)."""
    k = min(SAMPLED, n)
    return torch.arange(k, dtype=torch.long) * (n - 1) // max(k - 1, 1)


def _same_weight(kept_key: tuple, key: tuple) -> bool:
    return kept_key[0] == key[0] and torch.equal(kept_key[1], key[1])


def _is_packed(layer: torch.nn.Linear) -> bool:
    """Whether a copy of this weight's storage and shape is kept (the memory budget's question: an edit through
    ``.data`` repacks in place of that copy at the next call, in :func:`_packed_weight`, without the sampled
    elements' second read here)."""
    kept = _PACKED.get(layer)
    return kept is not None and kept[0][0] == _weight_id(layer)


def _packed_weight(layer: torch.nn.Linear) -> torch.Tensor:
    w = layer.weight
    key = _weight_key(layer)
    with _LOCK:
        kept = _PACKED.get(layer)
        if kept is None or not _same_weight(kept[0], key):
            kept = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS))
            _PACKED[layer] = kept
    return kept[1]


def _packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _blas_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, bias)


# (out features, in features, rows bucket, torch threads) -> the packed product was the faster one on this machine
_FASTER: dict = {}
TIMED_RUNS = 3   # runs of each product (interleaved; the fastest counts) when a key is first met


def rows_bucket(rows: int) -> int:
    """The row counts timed together: 1, 2, 4, 8, ... up to 64 (a product's cost changes little inside one)."""
    return 1 if rows <= 1 else min(1 << (rows - 1).bit_length(), 64)


def packed_is_faster(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, bias) -> bool:
    """Whether the packed product is the faster one for ``x``'s row count and this weight's shape, timed once per
    process on this call's own input (both products, interleaved, the fastest of TIMED_RUNS each after a warm-up)
    and then kept. Which one wins depends on the CPU: on a 2-core AMD EPYC the packed one won from one row on;
    on a 2-core Intel Xeon MKL's was up to 2.2x faster for one row and the packed one up to 1.9x for five."""
    key = (weight.shape[0], weight.shape[1], rows_bucket(x.numel() // max(x.shape[-1], 1)), torch.get_num_threads())
    faster = _FASTER.get(key)
    if faster is None:
        best = {"blas": float("inf"), "packed": float("inf")}
        runs = (("blas", lambda: _blas_product(x, weight, bias)), ("packed", lambda: _packed_product(x, packed, bias)))
        for _, run in runs:
            run()                                     # (warm-up)
        for _ in range(TIMED_RUNS):
            for name, run in runs:
                t0 = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - t0)
        faster = _FASTER[key] = best["packed"] < best["blas"]
    return faster


def _packed_forward(layer: torch.nn.Linear, measured: bool = False):
    packed, bias = _packed_weight(layer), layer.bias
    bias = None if bias is None else bias.detach()
    weight = layer.weight.detach()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":   # pragma: no cover - the model casts first
            return torch.nn.functional.linear(x, layer.weight, layer.bias)
        if measured and not packed_is_faster(x, weight, packed, bias):
            return _blas_product(x, weight, bias)
        return _packed_product(x, packed, bias)
    forward._fastdecode_packed = True
    return forward


def runs_packed(model) -> bool:
    """Whether ``model``'s linear layers run packed now (inside :func:`packed_linears`)."""
    return any(getattr(m.__dict__.get("forward"), "_fastdecode_packed", False) for m in model.modules()
               if type(m) is torch.nn.Linear)


@contextlib.contextmanager
def packed_linears(*models, enabled: bool = True, measured: bool = False):
    """Run the plain float32 ``nn.Linear`` layers of ``models`` (None entries skipped) on packed weights
    until the block ends. ``enabled=False`` (or gradients on): a no-op. ``measured``: each product runs packed only
    for the weight shapes and row counts where a one-time timing found it faster (:func:`packed_is_faster`),
    else on the BLAS as without packing."""
    patched = []

    def unpatch():
        for layer, fwd in patched:
            if layer.__dict__.get("forward") is fwd:
                del layer.__dict__["forward"]

    if enabled and not torch.is_grad_enabled() and packing_available():
        try:
            for layer in _unique_layers(models):
                fwd = _packed_forward(layer, measured)
                layer.__dict__["forward"] = fwd
                patched.append((layer, fwd))
        except (torch.OutOfMemoryError, RuntimeError) as e:   # (the CPU allocator raises a RuntimeError)
            if not isinstance(e, torch.OutOfMemoryError) and "allocate" not in str(e):
                raise
            unpatch()
            patched = []
            for model in models:
                if model is not None:
                    release_packed(model)
            warnings.warn(f"packing the linear layers' weights ran out of memory ({str(e).splitlines()[0][:120]}): "
                          "fastdecode runs them unpacked (pass pack_weights=False to skip packing)", stacklevel=3)
    try:
        yield len(patched)
    finally:
        unpatch()


def release_packed(model) -> int:
    """Drop the packed copies kept for ``model``'s layers (they also go when the model does); returns how many
    were dropped."""
    with _LOCK:
        return sum(_PACKED.pop(m, None) is not None for m in model.modules())
