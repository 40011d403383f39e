"""``streamer=``: transformers' streamer interface receives the prompt, then every committed token in order
(several per step when drafts are accepted), and ``end`` once, for every method on both engines."""
import pytest
import torch

import fastdecode
from streamers import Recorder
from tiny_models import draft_of, tiny_lm


@pytest.fixture(scope="module")
def pair():
    target = tiny_lm("llama", 2, seed=1)
    return target, draft_of(target)


CASES = [("autoregressive", {}, "dynamic"), ("autoregressive", {}, "static"),
         ("speculative", {}, "dynamic"), ("speculative", {}, "static"),
         ("multi_draft", dict(num_drafts=2), "dynamic"), ("multi_draft", dict(num_drafts=2), "static"),
         ("prompt_lookup", {}, "dynamic"), ("prompt_lookup", {}, "static"),
         ("entropy_switch", dict(entropy_threshold=1.0), "dynamic"), ("entropy_switch", dict(entropy_threshold=1.0), "static")]


@pytest.mark.parametrize("method,kw,engine", CASES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_streamed_tokens_are_the_output(pair, method, kw, engine, temperature):
    target, draft = pair
    prompt = torch.tensor([[5, 6, 7, 8, 5, 6, 7]])
    rec = Recorder()
    out = fastdecode.generate(target, prompt, draft=None if method == "autoregressive" else draft, method=method,
                              temperature=temperature, seed=3, max_new_tokens=20, cache_implementation=engine,
                              eos_token_id=[], streamer=rec, **kw)
    assert torch.equal(rec.puts[0], prompt) and rec.ended == 1
    new = torch.cat([p.reshape(-1) for p in rec.puts[1:]])
    assert torch.equal(new, out.sequences[0, prompt.shape[1]:])
    assert all(p.dim() == 2 and p.shape[0] == 1 for p in rec.puts)
    if method == "speculative" and temperature == 0:
        assert max(p.shape[1] for p in rec.puts[1:]) > 1   # accepted drafts arrive together


def test_eos_and_left_padded_row(pair):
    """A stream cut at EOS gets nothing after it; a left-padded single row streams its real tokens."""
    target, draft = pair
    free = fastdecode.generate(target, torch.tensor([[5, 6, 7]]), temperature=0, max_new_tokens=10, eos_token_id=[])
    eos = int(free.sequences[0, 6])
    rec = Recorder()
    out = fastdecode.generate(target, torch.tensor([[0, 0, 5, 6, 7]]), attention_mask=torch.tensor([[0, 0, 1, 1, 1]]),
                              draft=draft, temperature=0, max_new_tokens=10, eos_token_id=eos, streamer=rec)
    assert torch.equal(rec.puts[0], torch.tensor([[5, 6, 7]]))
    new = torch.cat([p.reshape(-1) for p in rec.puts[1:]]).tolist()
    assert new == out.sequences[0, 5:].tolist() and new[-1] == eos


def test_text_iterator_streamer_with_the_code_pair(code_pair):
    """transformers' own TextIteratorStreamer, read in another thread: the text is the decoded new tokens."""
    from threading import Thread
    from transformers import TextIteratorStreamer

    target, draft, tok = code_pair
    ids = tok("def read_config(path):\n    ", return_tensors="pt").input_ids
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    result = {}
    thread = Thread(target=lambda: result.update(out=fastdecode.generate(
        target, ids, draft=draft, temperature=0, max_new_tokens=40, streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == tok.decode(result["out"].sequences[0, ids.shape[1]:])


def test_end_is_called_when_generation_fails(pair, monkeypatch):
    """A reader of a TextIteratorStreamer waits for end(): a decoding loop that raises still ends the stream."""
    from fastdecode import api

    def broken(target, draft, stream, *args, **kwargs):
        stream.append([1])
        raise RuntimeError("out of memory")

    monkeypatch.setitem(api.DYNAMIC, "autoregressive", broken)
    rec = Recorder()
    with pytest.raises(RuntimeError, match="out of memory"):
        fastdecode.generate(pair[0], torch.tensor([[1, 2, 3]]), temperature=0, max_new_tokens=4, streamer=rec)
    assert rec.ended == 1 and [p.tolist() for p in rec.puts] == [[[1, 2, 3]], [[1]]]


def test_bad_streamers(pair):
    target, _ = pair
    with pytest.raises(TypeError, match="streamer must have put\\(\\) and end\\(\\)"):
        fastdecode.generate(target, torch.tensor([[1, 2, 3]]), max_new_tokens=2, streamer=print)
    with pytest.raises(ValueError, match="streamer= supports batch size 1.*batch of 2"):
        fastdecode.generate(target, torch.tensor([[1, 2, 3], [4, 5, 6]]), max_new_tokens=2, streamer=Recorder())
