"""Lambda attention on the static engine (decoding/static_lambda.py): greedy tokens equal the dynamic
engine's Lambda attention (prompts longer than the window, generation past the window, past the model's
max_position_embeddings and around the ring many times, drafts rejected across its wrap point), logits of
every forward equal a full Lambda forward of the text, the ring's size does not grow with the generation,
seeded sampling, and inductor on the CPU (slow); token trees (multi_draft) on the ring: every node's logits,
greedy tokens equal to the dynamic engine's, and the sampled law."""
import pytest
import torch

import fastdecode
from fastdecode import LambdaAttention, lambda_attention
from fastdecode.decoding import static
from fastdecode.decoding.static_lambda import LambdaRunner, RingCache, lambda_runner_for
from tiny_models import draft_of, tiny_llama

PROMPT_LEN, NEW = 30, 40  # tiny_llama has max_position_embeddings=64: the text ends at position 69


@pytest.fixture(scope="module")
def pair():
    target = tiny_llama(1, vocab=64, hidden=32, layers=2)
    return target, draft_of(target)


def _prompt(n=PROMPT_LEN, seed=0):
    return torch.randint(0, 64, (1, n), generator=torch.Generator().manual_seed(seed))


METHODS = [
    dict(method="autoregressive"),
    dict(method="speculative", draft_length=3, adaptive_draft=False),             # g + 1 = 4: a bucket edge
    dict(method="speculative", max_draft_length=16, fallback="estimated"),        # adaptive, fallback steps
    dict(method="speculative", draft_length=5, adaptive_draft=False, verifier="block"),
    dict(method="prompt_lookup", prompt_lookup_num_tokens=4, fallback="estimated"),
]


@pytest.mark.parametrize("window,num_global", [(4, 0), (8, 2), (5, 1)])
@pytest.mark.parametrize("kw", METHODS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_greedy_equals_dynamic(pair, window, num_global, kw):
    target, draft = pair
    cfg = LambdaAttention(window=window, num_global=num_global, max_rollback=16)
    common = dict(temperature=0, max_new_tokens=NEW, lambda_attention=cfg, eos_token_id=[],
                  draft=None if kw["method"] in ("autoregressive", "prompt_lookup") else draft, **kw)
    dyn = fastdecode.generate(target, _prompt(), **common)
    out = fastdecode.generate(target, _prompt(), cache_implementation="static", **common)
    assert torch.equal(out.sequences, dyn.sequences)
    assert out.stats.target_calls == dyn.stats.target_calls
    assert out.stats.accepted_tokens == dyn.stats.accepted_tokens
    assert target.config._attn_implementation != "fastdecode_lambda"  # the context was left


@pytest.mark.parametrize("window,num_global", [(4, 0), (8, 2), (5, 1)])
@pytest.mark.parametrize("kw", [dict(num_drafts=2, draft_length=3, verifier="rrs"),
                                dict(num_drafts=3, draft_length=2, verifier="spectr"),
                                dict(num_drafts=4, draft_length=4, verifier="greedy_draft"),
                                dict(num_drafts=2, max_draft_length=4, adaptive_draft=True, verifier="optimal")],
                         ids=lambda kw: kw["verifier"])
@pytest.mark.parametrize("plen", [30, 3])
def test_multi_draft_greedy_equals_dynamic(pair, window, num_global, kw, plen):
    """Token trees on the ring: the same greedy tokens, target calls and accepted drafts as the dynamic
    engine's multi-draft Lambda decoding (trees across the ring's wrap point, a prompt shorter than the
    globals' count)."""
    target, draft = pair
    cfg = LambdaAttention(window=window, num_global=num_global, max_rollback=16)
    common = dict(draft=draft, method="multi_draft", temperature=0, max_new_tokens=NEW, lambda_attention=cfg,
                  eos_token_id=[], **kw)
    dyn = fastdecode.generate(target, _prompt(plen, seed=plen), **common)
    out = fastdecode.generate(target, _prompt(plen, seed=plen), cache_implementation="static", **common)
    assert torch.equal(out.sequences, dyn.sequences)
    assert (out.stats.target_calls, out.stats.accepted_tokens) == (dyn.stats.target_calls, dyn.stats.accepted_tokens)


@pytest.mark.parametrize("plen,num_global", [(1, 0), (2, 4)])
def test_short_prompts_and_self_draft(pair, plen, num_global):
    """A one-token prompt (nothing to prefill) and a prompt shorter than num_global (later tokens fill the
    global slots); the target drafting for itself shares one runner."""
    target, draft = pair
    cfg = LambdaAttention(window=4, num_global=num_global, max_rollback=8)
    ids = _prompt(plen, seed=plen)
    for kw in (dict(method="autoregressive"), dict(method="speculative", draft=draft, draft_length=3,
                                                   adaptive_draft=False),
               dict(method="speculative", draft=target, draft_length=3, adaptive_draft=False)):
        common = dict(temperature=0, max_new_tokens=20, lambda_attention=cfg, eos_token_id=[], **kw)
        assert torch.equal(fastdecode.generate(target, ids, cache_implementation="static", **common).sequences,
                           fastdecode.generate(target, ids, **common).sequences)


def test_lambda_changes_the_output(pair):
    """The comparison above is not vacuous: the window changes the greedy text."""
    target = pair[0]
    kw = dict(temperature=0, max_new_tokens=NEW, eos_token_id=[], cache_implementation="static")
    lam = fastdecode.generate(target, _prompt(), lambda_attention=LambdaAttention(window=4, num_global=1), **kw)
    assert not torch.equal(lam.sequences, fastdecode.generate(target, _prompt(), **kw).sequences)


@torch.inference_mode()
@pytest.mark.parametrize("window,num_global,chunk", [(6, 2, 4), (4, 0, 8), (5, 3, 2)])
def test_forwards_equal_a_full_lambda_forward(pair, window, num_global, chunk):
    """Each chunk forward (committed token + random drafts, bucket padded) scores like a full Lambda forward
    of the text so far; a random number of the drafts is kept, the rest rejected and overwritten. The
    ring (R = window + chunk) wraps many times, with rejections across its wrap point."""
    target = pair[0]
    cfg = LambdaAttention(window=window, num_global=num_global)
    gen = torch.Generator().manual_seed(window)
    text = _prompt(12, seed=1)[0].tolist()
    with lambda_attention(target, cfg):
        run = LambdaRunner(target, cfg, chunk, "eager")
        run.prefill(torch.tensor([text[:-1]]))
        while len(text) < 90:
            g = int(torch.randint(0, chunk, (1,), generator=gen))
            drafts = torch.randint(0, 64, (g,), generator=gen).tolist()
            pad = [0] * (static.bucket(g + 1) - g - 1)
            got = run.forward(torch.tensor([text[-1:] + drafts + pad]), len(text) - 1)[: g + 1]
            want = target(torch.tensor([text + drafts])).logits[0, len(text) - 1:]
            torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
            keep = int(torch.randint(0, g + 1, (1,), generator=gen))
            text += drafts[:keep] + [int(torch.randint(0, 64, (1,), generator=gen))]
        assert run.cache.layers[0].keys.shape[2] == num_global + window + chunk


@torch.inference_mode()
@pytest.mark.parametrize("window,num_global,chunk", [(6, 2, 8), (4, 0, 8), (5, 3, 16)])
def test_tree_forwards_equal_full_lambda_forwards(pair, window, num_global, chunk):
    """Token trees on the ring (multi_draft): every node of a random tree (depth <= 3) scores like a full
    Lambda forward of the text plus its path; the path to a random node is moved into place and committed;
    a chain forward after a tree step sees none of the rejected nodes (some sit at positions it could see by
    the Lambda rule alone: only their logical index hides them). The ring wraps many times."""
    target = pair[0]
    cfg = LambdaAttention(window=window, num_global=num_global)
    gen = torch.Generator().manual_seed(window + chunk)
    rand = lambda hi: int(torch.randint(0, hi, (1,), generator=gen))  # noqa: E731
    text = _prompt(12, seed=2)[0].tolist()
    width = 4   # visible logical indices per query: the root, up to 2 ancestors, itself
    with lambda_attention(target, cfg):
        run = LambdaRunner(target, cfg, chunk, "eager")
        run.prefill(torch.tensor([text[:-1]]))
        while len(text) < 80:
            L, n = len(text), 1 + rand(chunk - 1)          # the root (token L - 1) and n - 1 nodes
            parent, depth = [-1], [0]
            for i in range(1, n):
                p = [j for j in range(i) if depth[j] < 3][rand(sum(d < 3 for d in depth))]
                parent.append(p)
                depth.append(depth[p] + 1)

            def path(i):
                return path(parent[i]) + [i] if i >= 0 else []
            toks = [text[-1]] + [rand(64) for _ in range(n - 1)]
            vis = [[L - 1 + j for j in path(i)] + [L - 1 + i] * (width - len(path(i))) for i in range(n)]
            got = run.tree_forward(torch.tensor([toks]), L - 1, L - 1, torch.tensor([L - 1 + d for d in depth]),
                                   torch.tensor(vis))
            for i in range(n):
                want = target(torch.tensor([text[:-1] + [toks[j] for j in path(i)]])).logits[0, -1]
                torch.testing.assert_close(got[i], want, atol=2e-4, rtol=1e-4)
            kept = path(rand(n))[1:]
            run.cache.move([L - 1 + j for j in kept], L)
            text += [toks[j] for j in kept] + [rand(64)]
            if rand(2):
                got = run.forward(torch.tensor([text[-1:]]), len(text) - 1)
                torch.testing.assert_close(got[0], target(torch.tensor([text])).logits[0, -1], atol=2e-4, rtol=1e-4)
                text.append(rand(64))


def test_ring_size_does_not_grow(pair):
    """The cache is allocated once, num_global + window + chunk slots per layer, whatever the length; later
    calls reuse the runner (and its recordings) without reallocating."""
    target, draft = pair
    cfg = LambdaAttention(window=8, num_global=2)
    kw = dict(draft=draft, method="speculative", draft_length=3, adaptive_draft=False, temperature=0,
              eos_token_id=[], lambda_attention=cfg, cache_implementation="static")
    sizes = []
    for new in (10, 60, 150):
        fastdecode.generate(target, _prompt(), max_new_tokens=new, **kw)
        run = target.__dict__["_fastdecode_static_lambda"]
        assert isinstance(run.cache, RingCache)
        sizes.append((id(run), run.cache.nbytes(), run.cache.layers[0].keys.data_ptr()))
    assert len(set(sizes)) == 1
    per_slot = 2 * 2 * 2 * 16 * 4  # keys + values, 2 layers, 2 kv heads, head_dim 16, float32
    assert sizes[0][1] == (2 + 8 + static.bucket(4)) * per_slot


def test_long_catch_up_is_fed_in_pieces(pair, monkeypatch):
    """After fallback (plain) steps the draft catches up on more tokens than its ring takes in one forward
    (chunk = bucket(max_draft_length + 1) = 4): static.feed splits them; same tokens as the dynamic engine."""
    target, draft = pair
    calls = []
    real = static.feed
    monkeypatch.setattr(static, "feed", lambda run, seq, pad, start, n, **kw: calls.append((n, run.max_forward))
                        or real(run, seq, pad, start, n, **kw))
    cfg = LambdaAttention(window=4, num_global=1, max_rollback=4)
    kw = dict(draft=draft, method="speculative", draft_length=1, max_draft_length=2, temperature=0, max_new_tokens=NEW,
              lambda_attention=cfg, eos_token_id=[], fallback="estimated")
    dyn = fastdecode.generate(target, _prompt(), **kw)
    out = fastdecode.generate(target, _prompt(), cache_implementation="static", **kw)
    assert torch.equal(out.sequences, dyn.sequences)
    assert out.stats.extra.get("plain_steps", 0) > 0
    assert any(n > chunk for n, chunk in calls)


def test_sampling(pair):
    """Plain sampling and speculative sampling with the token verifier draw the same noise in the same order
    on both engines (as without Lambda attention): same seed, same tokens."""
    target, draft = pair
    cfg = LambdaAttention(window=4, num_global=1, max_rollback=8)
    for seed in range(2):
        kw = dict(method="autoregressive", max_new_tokens=40, seed=seed, eos_token_id=[], top_k=8,
                  lambda_attention=cfg)
        a = fastdecode.generate(target, _prompt(), **kw).sequences
        assert torch.equal(a, fastdecode.generate(target, _prompt(), cache_implementation="static", **kw).sequences)
    kw = dict(draft=draft, method="speculative", max_new_tokens=40, eos_token_id=[], lambda_attention=cfg,
              draft_length=3, adaptive_draft=False)
    a = fastdecode.generate(target, _prompt(), seed=3, cache_implementation="static", **kw).sequences
    assert torch.equal(a, fastdecode.generate(target, _prompt(), seed=3, cache_implementation="static", **kw).sequences)
    assert torch.equal(a, fastdecode.generate(target, _prompt(), seed=3, **kw).sequences)


def test_own_context_and_refusals(pair):
    """Inside the caller's own lambda_attention block the static engine uses the ring too; max_rollback
    does not bound the drafts there (nothing is rolled back)."""
    target, draft = pair
    cfg = LambdaAttention(window=6, num_global=1, max_rollback=0)
    kw = dict(draft=draft, method="speculative", draft_length=5, adaptive_draft=False, temperature=0,
              max_new_tokens=30, eos_token_id=[])
    ref = fastdecode.generate(target, _prompt(), lambda_attention=LambdaAttention(window=6, num_global=1), **kw)
    out = fastdecode.generate(target, _prompt(), lambda_attention=cfg, cache_implementation="static", **kw)
    assert torch.equal(out.sequences, ref.sequences)
    with lambda_attention(target, cfg), lambda_attention(draft, cfg):
        own = fastdecode.generate(target, _prompt(), cache_implementation="static", **kw)
        assert isinstance(lambda_runner_for(target, 8, "eager"), LambdaRunner)
    assert torch.equal(own.sequences, ref.sequences)
    with pytest.raises(ValueError, match="max_rollback"):  # the dynamic engine still needs it
        fastdecode.generate(target, _prompt(), lambda_attention=cfg, **kw)


@pytest.mark.slow
def test_compile_on_cpu_through_inductor():
    """compile=True records the ring forwards through torch.compile (inductor) on the CPU: same greedy
    tokens as the dynamic engine, past the window and around the ring."""
    target = tiny_llama(5, vocab=32)
    draft = draft_of(target)
    ids = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(0))
    cfg = LambdaAttention(window=6, num_global=2, max_rollback=4)
    # speculative records both shapes a ring sees (one-token draft steps, the target's verify bucket); multi_draft
    # the tree forwards on the ring
    for kw in (dict(method="speculative", draft=draft, draft_length=3, adaptive_draft=False),
               dict(method="multi_draft", draft=draft, num_drafts=2, draft_length=2, verifier="rrs")):
        common = dict(temperature=0, max_new_tokens=30, eos_token_id=[], lambda_attention=cfg, **kw)
        ref = fastdecode.generate(target, ids, **common).sequences
        out = fastdecode.generate(target, ids, cache_implementation="static", compile=True, **common).sequences
        assert torch.equal(out, ref)


def test_code_pair_past_training_length(code_pair):
    """The real pair (slow): window 256 past 256 tokens and a small window deep into the ring, static equals
    dynamic for autoregressive, speculative and multi-draft decoding."""
    target, draft, _ = code_pair
    prompt = torch.randint(1, 8192, (1, 240), generator=torch.Generator().manual_seed(0))
    for cfg, new in ((LambdaAttention(window=256, num_global=8), 40), (LambdaAttention(32, 4, 16), 48)):
        for kw in (dict(method="autoregressive"),
                   dict(method="speculative", draft=draft, max_draft_length=16, fallback="estimated"),
                   dict(method="multi_draft", draft=draft, num_drafts=2, draft_length=3, verifier="rrs")):
            common = dict(max_new_tokens=new, temperature=0, lambda_attention=cfg, eos_token_id=-1, **kw)
            dyn = fastdecode.generate(target, prompt, **common)
            out = fastdecode.generate(target, prompt, cache_implementation="static", **common)
            assert torch.equal(out.sequences, dyn.sequences)
            assert out.stats.target_calls == dyn.stats.target_calls


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(method="speculative", draft_length=2, adaptive_draft=False, verifier="token"),
                                dict(method="multi_draft", num_drafts=2, draft_length=2, verifier="rrs")],
                         ids=lambda kw: kw["method"])
def test_two_token_law_under_lambda(tiny_pair, kw):
    """Sampled speculative and multi-draft decoding on the ring follow the Lambda target's exact law (window
    3 < the text, so the far global and the dropped middle both matter). The ring does not depend on the
    verifier (the other rules' laws are tested on the dynamic engine), so one verifier each keeps the suite
    short."""
    from distribution import LAW_RUNS, chi_square_pvalue, exact_law, sample_law

    target, draft = tiny_pair
    cfg = LambdaAttention(window=3, num_global=1, max_rollback=2)
    prompt = [1, 2, 3, 4, 5]
    with torch.inference_mode(), lambda_attention(target, cfg):
        law = exact_law(target, prompt, 2)
    counts = sample_law(target, draft, prompt, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0, lambda_attention=cfg,
                        cache_implementation="static", **kw)
    assert chi_square_pvalue(counts, law) > 1e-3
