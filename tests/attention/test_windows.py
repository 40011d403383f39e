"""attention/windows.py: a model's own sliding window and layer types, as transformers' mask functions see
them (what the loops that build their own masks, and Lambda attention's window check, rely on)."""
import pytest

from fastdecode.attention.windows import attention_layout
from tiny_models import tiny_lm


def test_attention_layout():
    assert attention_layout(tiny_lm("mistral", 1, sliding_window=4)) == (4, None)              # every layer windowed
    assert attention_layout(tiny_lm("gemma2", 2, sliding_window=4)) == (4, ("full_attention", "sliding_attention"))
    assert attention_layout(tiny_lm("qwen2", 1)) == (None, None)  # use_sliding_window=False
    assert attention_layout(tiny_lm("llama", 1)) == (None, None)


def test_unknown_layer_types_are_refused():
    model = tiny_lm("gemma2", 2, sliding_window=4)
    model.config.layer_types = ["sliding_attention", "chunked_attention"]
    with pytest.raises(ValueError, match="chunked_attention"):
        attention_layout(model)
