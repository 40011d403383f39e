"""Plugging Lambda attention into a transformers model: ``with lambda_attention(model, cfg): ...``.

How it plugs in (no modelling file is copied or patched):

1. An attention function is registered once under the name ``"fastdecode_lambda"`` through
   transformers' ``AttentionInterface``, and the model is switched to it with
   ``model.set_attn_implementation`` (restored on exit). transformers' mask factory does not know the
   name, so it passes ``attention_mask=None`` (or a caller's 4D mask, e.g. a tree mask) straight through.
2. Each attention layer carries the Lambda settings (``window``, ``num_global``, the model's RoPE
   ``inv_freq``) in an attribute for the duration of the context; the model carries a cache factory that
   :func:`fastdecode.decoding.hf_cache.new_cache` uses, so every decoding loop gets a bounded
   :class:`~fastdecode.attention.lambda_cache.LambdaCache` without knowing about it.
3. RoPE is applied inside the attention layer before the attention function runs, so queries and keys
   arrive rotated at their true positions. Local scores use them as they are (true distance < L). For a
   global key outside the window the function moves the query to position L and the key to position 0
   (one extra rotation each, :mod:`fastdecode.attention.rope`), which scores it at the distance limit L.
   The cache therefore stores ordinary rotated keys; only the n_global global keys are un-rotated, per
   call. This is the paper code's "q_rot(L) . k_raw" for globals, without re-rotating the whole window.
   The cos/sin of these rotations and the key positions are computed by the first layer of a forward
   and reused by the others (:meth:`LambdaState.view`). One-token decode steps on CUDA run the
   Triton kernel of :mod:`fastdecode.kernels.lambda_decode` through ``kernels.lambda_decode``
   (``LambdaAttention.decode_kernel``; ``FASTDECODE_KERNELS=reference`` keeps them on the dense path).

On the static engine (``cache_implementation="static"``) the model's attention layers carry a
:class:`~fastdecode.decoding.static_lambda.RingCache` instead: while one of its forwards runs, the attention
function hands the whole fixed-size cache to ``RingCache.attend`` (slot positions on the device, no host
sync, fixed shapes that CUDA graphs and torch.compile can record).

Key positions are not passed to attention functions. A :class:`~fastdecode.attention.lambda_cache.LambdaCache`
made here records the true position and logical index of every stored key: its ``update`` tells the
state which layer returned the keys (``LambdaState.track``), and the attention function attaches the
forward's ``position_ids`` to the new slots and reads the positions back
(:mod:`fastdecode.attention.positions`). So token trees work: tree nodes at root + depth (siblings share a
position), a draft cache holding the context plus earlier tree levels, paths kept by ``select``, and a
caller's 4D mask over the logical sequence ([1, 1, c, cached + c]) mapped onto the stored keys. Without a
LambdaCache (no cache, or a ``DynamicCache``) the cached keys are taken to be a plain sequence ending
right before the chunk. Reading the position ids on the host costs one device sync per forward on CUDA.

Limits: batch rows must share their position ids; 2D padding masks are dropped by transformers for
custom attention names (batch 1 / unpadded input only); rope types whose frequencies depend on the
sequence length ("dynamic", "longrope") are refused.
"""
from __future__ import annotations

import contextlib

import torch

from .. import kernels
from .lambda_cache import LambdaCache
from .lambda_mask import LambdaAttention, lambda_attention_rotated
from .positions import ForwardView, layout_view, plain_view
from .positions import key_positions as _key_positions  # noqa: F401  (the plain layout rule; used by tests)

ATTN_NAME = "fastdecode_lambda"
_STATE = "_fastdecode_lambda"  # attribute on each attention layer and on the model
_FACTORY = "_fastdecode_new_cache"  # attribute read by fastdecode.decoding.hf_cache.new_cache
_RING = "_fastdecode_ring"  # attribute on each attention layer: the static engine's RingCache (decoding.static_lambda)

# families whose attention applies rotate-half RoPE before calling ALL_ATTENTION_FUNCTIONS
ROPE_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma")
ALIBI_MODEL_TYPES = ("bloom", "mpt", "baichuan", "jais")
VARIABLE_ROPE_TYPES = ("dynamic", "longrope")


class LambdaState:
    """What the attention function needs for one model: the config, the RoPE frequencies, the query
    positions of the current forward (on the device and on the host, read once per forward), and the
    LambdaLayer whose ``update`` returned the keys the next attention call receives (``track``)."""

    def __init__(self, cfg: LambdaAttention, inv_freq: torch.Tensor, num_layers: int):
        self.cfg, self.inv_freq, self.num_layers = cfg, inv_freq, num_layers
        self._memo: tuple | None = None  # (position_ids, (c, device), (qpos, qhost), plain views by m)
        self._tracked: tuple | None = None  # (LambdaLayer, keys it returned)

    def new_cache(self) -> LambdaCache:
        """A fresh bounded cache for this model, whose layers report their updates here."""
        return LambdaCache(self.num_layers, self.cfg.window, self.cfg.num_global, self.cfg.max_rollback,
                           tracker=self)

    def track(self, layer, keys: torch.Tensor) -> None:
        """Called by ``LambdaLayer.update``: ``keys`` [B, Hkv, m, D] go to the attention function next."""
        self._tracked = (layer, keys)

    def _claim(self, key: torch.Tensor, c: int):
        tracked, self._tracked = self._tracked, None
        if tracked is None:
            return None
        if tracked[1] is not key:
            if key.shape[2] != c:  # a cache is in use, but not the keys our layer returned
                raise RuntimeError("Lambda attention: the keys reaching the attention function are not the ones the "
                                   "LambdaCache returned (this model's attention code is not supported)")
            return None
        return tracked[0]

    def _queries(self, position_ids: torch.Tensor | None, c: int, m: int, device) -> tuple:
        # (qpos [c] long on device, the same as host ints), read once per forward (one host sync)
        memo = self._memo
        if position_ids is not None and memo is not None and memo[0] is position_ids and memo[1] == (c, device):
            return memo[2], memo[3]
        if position_ids is None:
            qpos = torch.arange(m - c, m, device=device)
        else:
            pid = position_ids.to(device)
            if pid.dim() == 2 and pid.shape[0] > 1 and not bool((pid == pid[:1]).all()):
                raise ValueError("Lambda attention needs the same position ids in every batch row")
            qpos = pid.reshape(-1, c)[0].long()
        out = (qpos, tuple(qpos.tolist()))
        if position_ids is not None:
            self._memo = (position_ids, (c, device), out, {})
        return out, ({} if position_ids is None else self._memo[3])

    def view(self, key: torch.Tensor, position_ids: torch.Tensor | None, c: int, device) -> ForwardView:
        """Positions of the keys ``key`` [B, Hkv, m, D] and of the c queries of this forward (computed by the
        first layer of a forward and reused by the others)."""
        if self.inv_freq.device != device:
            self.inv_freq = self.inv_freq.to(device)
        cfg, m = self.cfg, key.shape[2]
        layer = self._claim(key, c)
        if layer is not None and position_ids is None:  # continue the logical sequence
            position_ids = torch.tensor([layer.layout.pos[len(layer.layout.pos) - c:]], device=device)
        (qpos, qhost), plain = self._queries(position_ids, c, m, device)
        if layer is not None:
            full = layer.attach_positions(qhost)
            return full.memo(("view", device), lambda: layout_view(full, qpos, qhost, cfg.window, cfg.num_global,
                                                                   self.inv_freq))
        if m not in plain:
            plain[m] = plain_view(qpos, qhost, m, cfg.window, cfg.num_global, self.inv_freq)
        return plain[m]


def _rotary_inv_freq(model) -> torch.Tensor | None:
    found = [m.inv_freq for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    if not found:
        return None
    if any(f.shape != found[0].shape or not torch.equal(f, found[0]) for f in found[1:]):
        return torch.empty(0)  # several different rotary embeddings (e.g. local/global layers)
    return found[0]


def _missing_rope_reason(model, config) -> str:
    """Why no single ``inv_freq`` buffer was found: the real reason, for the refusal message."""
    per_type = sorted({name for m in model.modules() for name, b in m.named_buffers(recurse=False)
                       if name.endswith("_inv_freq") and not name.endswith("original_inv_freq")})
    if per_type:
        return (f"has one rotary embedding per layer type ({', '.join(per_type)}; e.g. different RoPE bases for local "
                "and global layers)")
    if getattr(config, "rotary_dim", None) is not None:
        return ("applies rotary embeddings in the interleaved GPT-J convention from a precomputed sin/cos table "
                "(config.rotary_dim), not the rotate-half convention Lambda attention re-rotates")
    leaves = {name.split(".")[-1] for name, _ in model.named_modules()}
    if leaves & {"wpe", "embed_positions", "position_embeddings"}:
        return "has absolute position embeddings, so its distances cannot be re-assigned"
    if any(getattr(config, k, None) is not None for k in ("rope_theta", "rope_parameters", "rope_scaling",
                                                          "rotary_pct", "partial_rotary_factor")):
        return "has a rotary embedding that keeps no inv_freq buffer Lambda attention could read"
    return "has no rotary position embedding"


def check_window(model, cfg: LambdaAttention) -> None:
    """A model with its own sliding window: the smaller window wins. Lambda's window ``L`` <= the model's
    ``W`` is the smaller, so Lambda attention runs (it replaces the model's attention, window included); a
    model window below ``L`` is refused, since Lambda attention would let queries see keys the model
    never saw."""
    from .windows import attention_layout

    window, _ = attention_layout(model)
    if window is not None and window < cfg.window:
        mtype = getattr(model.config, "model_type", type(model).__name__)
        raise ValueError(f"model type {mtype!r} attends through its own sliding window of {window} tokens "
                         f"(config.sliding_window), smaller than LambdaAttention.window={cfg.window}: Lambda "
                         f"attention would show keys the model never attends to; use LambdaAttention(window<={window})")


def check_supported(model) -> torch.Tensor:
    """Raise ValueError (naming the model type) unless Lambda attention can run on ``model``;
    returns its RoPE inverse frequencies [head_dim_rot / 2]."""
    config = getattr(model, "config", None)
    mtype = getattr(config, "model_type", None) or type(model).__name__
    alibi = (mtype in ALIBI_MODEL_TYPES or bool(getattr(config, "alibi", False))
             or bool(getattr(getattr(config, "attn_config", None), "alibi", False)))
    if alibi:
        raise ValueError(f"Lambda attention needs rotary position embeddings (RoPE); model type {mtype!r} uses "
                         "ALiBi attention biases, which are not supported")
    inv_freq = _rotary_inv_freq(model)
    if inv_freq is None:
        raise ValueError(f"Lambda attention needs one rotate-half rotary position embedding (RoPE) with an "
                         f"inv_freq buffer; model type {mtype!r} {_missing_rope_reason(model, config)}")
    if mtype not in ROPE_MODEL_TYPES:
        raise ValueError(f"Lambda attention supports the RoPE model types {ROPE_MODEL_TYPES}; model type {mtype!r} "
                         "is not one of them (its rotary convention or attention code is not validated)")
    if inv_freq.numel() == 0:
        raise ValueError(f"model type {mtype!r} uses several rotary embeddings; Lambda attention needs one")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type in VARIABLE_ROPE_TYPES:
        raise ValueError(f"model type {mtype!r} uses rope_type {rope_type!r}, whose frequencies change with the "
                         "sequence length; Lambda attention needs fixed frequencies")
    if not model._can_set_attn_implementation():
        raise ValueError(f"model type {mtype!r} does not dispatch through transformers' AttentionInterface")
    return inv_freq


def lambda_attention_function(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, scaling: float | None = None,
                              dropout: float = 0.0, **kwargs):
    """transformers attention function: query [B, H, c, D], key/value [B, Hkv, m, D] -> ([B, c, H, D], None)."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    ring = getattr(module, _RING, None)
    if ring is not None and ring.active:  # a static-engine forward on its fixed-size Lambda cache
        return ring.attend(query, key, value, kwargs["position_ids"], scaling, attention_mask), None
    state: LambdaState | None = getattr(module, _STATE, None)
    if state is None:
        raise RuntimeError("the fastdecode_lambda attention function runs only inside fastdecode.lambda_attention()")
    cfg = state.cfg
    c = query.shape[2]
    view = state.view(key, kwargs.get("position_ids"), c, query.device)
    mask = None
    if attention_mask is not None:
        if attention_mask.dim() != 4:
            raise ValueError(f"Lambda attention takes no mask or a 4D mask, got shape {tuple(attention_mask.shape)}")
        mask = view.mask_for_keys(attention_mask)
    # elsewhere the dense path below is the reference: it also covers chunks and masks, not only decode steps
    if c == 1 and mask is None and cfg.decode_kernel and kernels.use_triton(query):
        return _decode_step(query, key, value, view.qpos, view.kpos, cfg, view.far, scaling), None
    out = lambda_attention_rotated(query, key, value, view.qpos, view.kpos, cfg, state.inv_freq, scaling, mask,
                                   far_rot=view.far, g=view.g)
    return out.transpose(1, 2).contiguous(), None


def _decode_step(query, key, value, qpos, kpos, cfg, far, scaling):
    q = query[:, :, 0]  # [B, H, D]
    if far is None:  # no global can be outside the window yet
        q_far, k_glob = q, key[:, :, :0]
    else:
        q_far = far.queries(query)[:, :, 0]
        k_glob = far.globals(key[:, :, :far.g])
    out = kernels.lambda_decode(q, q_far, key, value, k_glob, kpos, qpos, cfg.window, cfg.num_global, scaling)
    return out[:, None]  # [B, 1, H, D]


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTN_NAME not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        AttentionInterface.register(ATTN_NAME, lambda_attention_function)


def _attention_layers(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]


@contextlib.contextmanager
def lambda_attention(model, cfg: LambdaAttention):
    """Run ``model`` with Lambda-shaped attention inside the ``with`` block; yields a :class:`LambdaState`
    (``state.new_cache()`` makes a bounded cache). Nested entry with the same config is a no-op."""
    if not isinstance(cfg, LambdaAttention):
        raise ValueError(f"lambda_attention needs a fastdecode.LambdaAttention config, got {type(cfg).__name__}")
    current: LambdaState | None = getattr(model, _STATE, None)
    if current is not None:
        if current.cfg != cfg:
            raise ValueError(f"model is already under lambda_attention({current.cfg}); cannot nest {cfg}")
        yield current
        return
    inv_freq = check_supported(model)
    check_window(model, cfg)
    layers = _attention_layers(model)
    num_layers = int(getattr(model.config, "num_hidden_layers", len(layers)))
    if len(layers) != num_layers:
        raise ValueError(f"found {len(layers)} attention layers in a {num_layers}-layer {model.config.model_type!r} model")
    _register()
    state = LambdaState(cfg, inv_freq.detach().clone(), num_layers)
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
    try:
        if model.config._attn_implementation != ATTN_NAME:
            raise ValueError(f"could not switch model type {model.config.model_type!r} to Lambda attention")
        for layer in layers:
            setattr(layer, _STATE, state)
        setattr(model, _STATE, state)
        setattr(model, _FACTORY, state.new_cache)
        yield state
    finally:
        for obj in (*layers, model):
            for attr in (_STATE, _FACTORY):
                if attr in obj.__dict__:
                    delattr(obj, attr)
        model.set_attn_implementation(previous)
