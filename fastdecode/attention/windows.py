"""A model's own attention windows, read from its config as transformers' mask functions read them:
which sliding window applies and to which layer types. The decoding loops that build their own 4D masks
(trees, batches, the static engine) and Lambda attention (a model window smaller than its own) need it.
"""
from __future__ import annotations


def attention_layout(model) -> tuple[int | None, tuple[str, ...] | None]:
    """(sliding window, layer types) as the model's own mask functions see them.

    window: ``config.sliding_window`` when at least one layer attends through a window, else None.
    layer types: the distinct ``config.layer_types`` when the layers mix windowed and full attention
    (the model then takes a dict of masks, one per layer type), else None (one mask for every layer).
    """
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    window = getattr(cfg, "sliding_window", None)
    if not window:  # None, or 0 in some configs (Qwen2-MoE) that have no window
        return None, None
    types = getattr(cfg, "layer_types", None)
    if types is None:  # Mistral, Phi-3, StarCoder2, Mixtral: every layer uses the window
        return int(window), None
    kinds = tuple(sorted(set(types)))
    if "sliding_attention" not in kinds:
        return None, None
    if kinds == ("sliding_attention",):
        return int(window), None
    unknown = set(kinds) - {"sliding_attention", "full_attention"}
    if unknown:
        raise ValueError(f"model type {cfg.model_type!r} has layer types {sorted(unknown)}: fastdecode builds tree "
                         "masks only for full and sliding-window attention layers")
    return int(window), kinds
