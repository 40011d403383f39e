"""fastdecode.models: which vocabulary sizes count as one tokenizer with padding, the pair check, and the
logits width a padded draft is brought to. (Loading errors are tested through the CLI in test_cli.py;
generation with padded vocabularies in end_to_end/test_vocab_padding.py.)"""
import pytest
import torch

from fastdecode.decoding.hf_cache import fit_width
from fastdecode.models import check_pair, shared_vocab
from tiny_models import tiny_lm


def test_fit_width_and_shared_vocab():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert fit_width(x, 2).tolist() == [[1.0, 2.0]]
    assert fit_width(x, 5).tolist() == [[1.0, 2.0, 3.0, float("-inf"), float("-inf")]]
    target, draft = tiny_lm("llama", 1, seed=1, vocab_size=520), tiny_lm("llama", 1, seed=2, vocab_size=512)
    with shared_vocab(target, draft):
        assert draft._fastdecode_logits_width == 520 and draft._fastdecode_input_rows == 512
        assert not hasattr(target, "_fastdecode_logits_width")
    assert not hasattr(draft, "_fastdecode_logits_width") and not hasattr(draft, "_fastdecode_input_rows")


def test_different_tokenizers_still_refused():
    from fastdecode.models import padding_allowed
    assert padding_allowed(151936, 152064) and padding_allowed(512, 520)
    assert not padding_allowed(6, 7) and not padding_allowed(32000, 50257) and not padding_allowed(256000, 262144)
    with pytest.raises(ValueError, match="vocabularies differ"):
        check_pair(tiny_lm("llama", 1, vocab_size=512), tiny_lm("llama", 1, vocab_size=2048))

    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

        def __len__(self):
            return len(self.vocab)

    a, b = tiny_lm("llama", 1, vocab_size=512), tiny_lm("llama", 1, vocab_size=520)
    check_pair(a, b, Tok({"x": 0}), Tok({"x": 0}))
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_pair(a, b, Tok({"x": 0}), Tok({"x": 1}))
