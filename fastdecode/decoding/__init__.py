"""The decoding methods, as one table: method name -> decode function.

Every decode function has the same signature,
``decode(target, draft, stream, sampling, cfg, generator, stats, progress=None)``
(``cfg``: the method's configuration from ``fastdecode.config``; ``draft`` None where the method needs
none), and the static engine's take ``mode=`` ("eager", "cudagraphs", "inductor") as well. Batches
(B > 1) go through ``batched.decode`` instead, which works on a [B, L] prompt rather than one stream.
"""
from . import autoregressive, entropy_switch, multi_draft, prompt_lookup, speculative, static, static_switch, static_tree

DYNAMIC = {
    "autoregressive": autoregressive.decode,
    "speculative": speculative.decode,
    "prompt_lookup": prompt_lookup.decode,
    "multi_draft": multi_draft.decode,
    "entropy_switch": entropy_switch.decode,
}

STATIC = {
    "autoregressive": static.decode_autoregressive,
    "speculative": static.decode_speculative,
    "prompt_lookup": static.decode_prompt_lookup,
    "multi_draft": static_tree.decode_multi_draft,
    "entropy_switch": static_switch.decode,
}
