"""HF's prefix-dependent logits processors (repetition_penalty, min_new_tokens, min_length): each row processed
with its own prefix (chains, tree branches, batch rows), equal to transformers' processors; greedy output equal
to HF generate's for every method on both engines, alone and in batches; the sampled law equal to the processed
target's (and a broken variant, the target's rows left unprocessed, caught)."""
import warnings

import pytest
import torch
from transformers.generation.logits_process import (MinNewTokensLengthLogitsProcessor, NoBadWordsLogitsProcessor,
                                                    NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                                                    SuppressTokensAtBeginLogitsProcessor,
                                                    SuppressTokensLogitsProcessor)

import fastdecode
from fastdecode import kernels
from fastdecode.decoding import step
from fastdecode.decoding.processors import Prefix, Processors
from fastdecode.decoding.stream import TokenStream

from distribution import LAW_ALPHA, LAW_PROMPT, LAW_RUNS, caught, chi_square_pvalue, sample_law
from tiny_models import tiny_llama


def _hf_rows(logits, committed, ahead, prompt_len, penalty, min_new, eos, ngram=0, bad=(), suppress=(), begin=()):
    """Row j processed by transformers' own processors with its prefix, written out one row at a time."""
    n = logits.shape[0]
    first = len(ahead) - (n - 1)
    rows = []
    for j in range(n):
        prefix = torch.tensor([committed + ahead[: first + j]])
        x = logits[j : j + 1].float().clone()
        if penalty != 1.0:
            x = RepetitionPenaltyLogitsProcessor(penalty)(prefix, x)
        if ngram:
            x = NoRepeatNGramLogitsProcessor(ngram)(prefix, x)
        if bad:
            x = NoBadWordsLogitsProcessor([list(w) for w in bad], eos)(prefix, x)
        if min_new:
            x = MinNewTokensLengthLogitsProcessor(prompt_len, min_new, torch.tensor(eos))(prefix, x)
        if suppress:
            x = SuppressTokensLogitsProcessor(list(suppress))(prefix, x)
        if begin:
            x = SuppressTokensAtBeginLogitsProcessor(list(begin), prompt_len)(prefix, x)
        rows.append(x)
    return torch.cat(rows)


@pytest.mark.parametrize("ngram", [2, 3])
def test_ngram_and_word_bans_equal_transformers_processors(ngram):
    """no_repeat_ngram_size, bad words (one and several tokens), suppress_tokens and begin_suppress_tokens, with
    the penalty: chain blocks and tree branches, each row against transformers' processors on its prefix."""
    g = torch.Generator().manual_seed(ngram)
    V, prompt = 12, [3, 5, 5, 9, 1, 3, 5]
    bad = ((7,), (5, 4), (3, 5, 8), (9,))          # (9,) is an EOS id: HF drops it, so must we
    for trial in range(30):
        procs = Processors(1.2, 0, (9,), ngram, ((7,), (5, 4), (3, 5, 8), (11,)), (6, 2))
        pre = Prefix(procs, prompt, len(prompt), "cpu")
        committed = prompt + torch.randint(0, V, (trial % 4,), generator=g).tolist()
        pre.commit(committed[len(prompt):])
        n = 1 + trial % 5
        ahead = torch.randint(0, V, (n - 1 + trial % 2,), generator=g).tolist()
        logits = torch.randn(n, V, generator=g) * 3
        want = _hf_rows(logits, committed, ahead, len(prompt), 1.2, 0, [9], ngram, bad, (11,), (6, 2))
        assert torch.equal(pre.apply(logits, ahead), want), trial
        paths = [ahead[: j + 1] for j in range(len(ahead))] + [[], ahead[::-1]]   # tree branches
        rows = torch.randn(len(paths), V, generator=g) * 3
        got = pre.apply_paths(rows, paths)
        for i, path in enumerate(paths):
            w = _hf_rows(rows[i : i + 1], committed, path, len(prompt), 1.2, 0, [9], ngram, bad, (11,), (6, 2))
            assert torch.equal(got[i : i + 1], w), (trial, i)


@pytest.mark.parametrize("penalty,min_new", [(1.3, 0), (0.7, 0), (1.0, 6), (1.2, 5)])
def test_rows_equal_transformers_processors(penalty, min_new):
    g = torch.Generator().manual_seed(0)
    V, prompt = 40, [3, 5, 5, 9, 1]
    for trial in range(20):
        committed = prompt + torch.randint(0, V, (trial % 6,), generator=g).tolist()
        procs = Processors(penalty, min_new, (2, 7))
        pre = Prefix(procs, prompt, len(prompt), "cpu")
        pre.commit(committed[len(prompt):])
        n = 1 + trial % 5
        ahead = torch.randint(0, V, (n - 1 + trial % 3,), generator=g).tolist() + [5]   # repeats and seen tokens
        logits = torch.randn(n, V, generator=g) * 3
        got = pre.apply(logits, ahead)
        want = _hf_rows(logits, committed, ahead, len(prompt), penalty, min_new, [2, 7])
        assert torch.equal(got, want), (trial, penalty, min_new)
        assert torch.equal(logits, logits.clone())   # the input is left as it was


def test_branch_rows_equal_transformers_processors():
    """Tree rows: each with its own branch (repeats inside a branch, tokens the committed text holds)."""
    g = torch.Generator().manual_seed(1)
    V, prompt = 30, [3, 5, 5, 9, 1]
    for trial in range(20):
        pre = Prefix(Processors(1.4 if trial % 2 else 0.6, 8, (2,)), prompt, len(prompt), "cpu")
        paths = [torch.randint(0, V, (int(k),), generator=g).tolist() for k in torch.randint(0, 5, (4,), generator=g)]
        logits = torch.randn(4, V, generator=g) * 3
        got = pre.apply_paths(logits, paths)
        for i, path in enumerate(paths):
            want = _hf_rows(logits[i : i + 1], prompt, path, len(prompt), pre.procs.repetition_penalty, 8, [2])
            assert torch.equal(got[i : i + 1], want), (trial, i)


def test_bias_forced_tokens_and_decay_equal_transformers_processors():
    """sequence_bias (one- and two-token sequences, two on one token), forced BOS / EOS and the exponential decay
    length penalty, by each row's position, against transformers' processors (with a repetition penalty after the
    bias, in HF's order)."""
    from transformers.generation.logits_process import (ExponentialDecayLengthPenalty, ForcedBOSTokenLogitsProcessor,
                                                        ForcedEOSTokenLogitsProcessor, SequenceBiasLogitsProcessor)

    g = torch.Generator().manual_seed(3)
    V = 12
    bias = {(4,): 2.5, (3, 4): -1.0, (5, 7): 1.5, (9,): -3.0}
    for trial in range(24):
        prompt = [3] if trial % 3 == 0 else [3, 5, 5, 9, 1, 3]
        new = torch.randint(0, V, (trial % 4,), generator=g).tolist()
        committed = prompt + new
        max_new = 7
        procs = Processors(1.3, 0, (2,), sequence_bias=tuple((k, v) for k, v in bias.items()),
                           forced_bos=0 if len(prompt) == 1 else None, forced_eos=(2,), forced_eos_at=max_new - 1,
                           decay=(1, 1.4))
        pre = Prefix(procs, prompt, len(prompt), "cpu")
        pre.commit(new)
        n = 1 + trial % 5
        ahead = torch.randint(0, V, (n - 1,), generator=g).tolist()
        logits = torch.randn(n, V, generator=g) * 3
        got = pre.apply(logits, ahead)
        for j in range(n):
            prefix = torch.tensor([committed + ahead[:j]])
            x = SequenceBiasLogitsProcessor({k: v for k, v in bias.items()})(prefix, logits[j : j + 1].clone())
            x = RepetitionPenaltyLogitsProcessor(1.3)(prefix, x)
            if len(prompt) == 1:
                x = ForcedBOSTokenLogitsProcessor(0)(prefix, x)
            x = ForcedEOSTokenLogitsProcessor(len(prompt) + max_new, 2)(prefix, x)
            x = ExponentialDecayLengthPenalty((1, 1.4), 2, len(prompt))(prefix, x)
            assert torch.equal(got[j : j + 1], x), (trial, j)


def test_inactive_processors_leave_the_logits_alone():
    s = TokenStream(torch.tensor([[1, 2]]), 4, {0}, processors=Processors(1.0, 3, ()))
    x = torch.randn(2, 9)
    assert s.prefix is None and s.process(x, [4]) is x    # no EOS: a minimum length holds nothing back


# greedy output equals HF generate's with the same processors, on the real pair (float32)
CASES = [dict(repetition_penalty=1.3), dict(repetition_penalty=0.8, min_new_tokens=20), dict(min_length=60)]
METHODS = [("autoregressive", {}), ("speculative", dict(draft=True)),
           ("speculative", dict(draft=True, draft_length=3, adaptive_draft=False)), ("prompt_lookup", {}),
           ("multi_draft", dict(draft=True, num_drafts=2, draft_length=3)),
           ("multi_draft", dict(draft=True, num_drafts=3, draft_length=2, verifier="optimal"))]


def _run(code_pair, ids, method, extra, **kw):
    target, draft, _ = code_pair
    extra = dict(extra, draft=draft) if extra.get("draft") else extra
    return fastdecode.generate(target, ids, method=method, temperature=0, max_new_tokens=40, **extra, **kw).sequences


@pytest.mark.slow
@pytest.mark.parametrize("case", range(3), ids=["penalty", "reward+min_new", "min_length"])
def test_greedy_equals_hf_generate(code_pair, stdlib_prompts, case):
    """Every method on both engines with the penalty; the other settings on a few (their rows are processed by
    the same code, tested against transformers above)."""
    kw = CASES[case]
    methods = [METHODS, [METHODS[1], METHODS[4]], [METHODS[0]]][case]
    target = code_pair[0]
    ids = torch.tensor([stdlib_prompts[case][:24]])
    ref = target.generate(ids, max_new_tokens=40, do_sample=False, **kw)
    if "repetition_penalty" in kw:   # (not a test of nothing: the penalty changes these generations)
        assert not torch.equal(ref, target.generate(ids, max_new_tokens=40, do_sample=False))
    for engine in ("dynamic", "static"):
        for method, extra in methods:
            out = _run(code_pair, ids, method, extra, cache_implementation=engine, **kw)
            assert torch.equal(out, ref), (kw, engine, method, extra)


@pytest.mark.slow
def test_bans_equal_hf_generate(code_pair, stdlib_prompts):
    """no_repeat_ngram_size, bad words and suppressed tokens, then sequence biases, taken from the plain greedy text
    itself (so that they bite), on the chain, prompt-lookup and tree methods of both engines."""
    target = code_pair[0]
    ids = torch.tensor([stdlib_prompts[5][:24]])
    plain = target.generate(ids, max_new_tokens=40, do_sample=False)[0, 24:].tolist()
    kw = dict(no_repeat_ngram_size=3, bad_words_ids=[[plain[5], plain[6]], [plain[9]]], suppress_tokens=[plain[2]])
    ref = target.generate(ids, max_new_tokens=40, do_sample=False, **kw)
    assert ref[0, 24:].tolist() != plain
    for engine in ("dynamic", "static"):
        for method, extra in (METHODS[1], METHODS[3], METHODS[4]):
            out = _run(code_pair, ids, method, extra, cache_implementation=engine, **kw)
            assert torch.equal(out, ref), (engine, method, extra)
    # sequence biases (one and two tokens), the exponential decay length penalty and a forced EOS
    kw = dict(sequence_bias={(plain[3],): -5.0, (plain[0], plain[1]): 3.0}, exponential_decay_length_penalty=(10, 1.5),
              forced_eos_token_id=target.generation_config.eos_token_id)
    ref = target.generate(ids, max_new_tokens=40, do_sample=False, **kw)
    assert ref[0, 24:].tolist() != plain
    for engine in ("dynamic", "static"):
        for method, extra in (METHODS[1], METHODS[4]):
            out = _run(code_pair, ids, method, extra, cache_implementation=engine, **kw)
            assert torch.equal(out, ref), (engine, method, extra)


@pytest.mark.slow
def test_batches_equal_hf_generate(code_pair, stdlib_prompts):
    """A left-padded batch: each row processed with its own text (padding not counted), as HF's batch."""
    target = code_pair[0]
    ids = torch.tensor([[0] * 8 + stdlib_prompts[2][:16], stdlib_prompts[3][:24], [0] * 4 + stdlib_prompts[4][:20]])
    mask = (torch.arange(24)[None] >= torch.tensor([[8], [0], [4]])).long()
    kw = dict(repetition_penalty=1.3, min_new_tokens=30)
    ref = target.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, pad_token_id=0, **kw)
    for engine in ("dynamic", "static"):
        for method, extra in (METHODS[1], METHODS[3], METHODS[4]):
            out = _run(code_pair, ids, method, extra, attention_mask=mask, pad_token_id=0, cache_implementation=engine,
                       **kw)
            assert torch.equal(out, ref), (engine, method, extra)


def test_min_new_tokens_holds_eos_back_and_generation_config_is_read():
    m = tiny_llama(1)
    ids = torch.tensor([[1, 2, 3]])
    eos = int(fastdecode.generate(m, ids, temperature=0, max_new_tokens=1).sequences[0, -1])
    out = fastdecode.generate(m, ids, temperature=0, max_new_tokens=6, eos_token_id=eos)
    assert out.sequences.shape[1] == 4                             # stops at once without a minimum
    ref = m.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=eos, min_new_tokens=4, pad_token_id=0)
    for method in ("autoregressive", "prompt_lookup"):
        for engine in ("dynamic", "static"):
            out = fastdecode.generate(m, ids, method=method, temperature=0, max_new_tokens=6, eos_token_id=eos,
                                      min_new_tokens=4, cache_implementation=engine)
            assert torch.equal(out.sequences, ref), (method, engine)
            assert eos not in out.sequences[0, 3:7].tolist()
    m = tiny_llama(1, vocab=12)
    m.generation_config.repetition_penalty = 3.0      # read from the generation config, as HF generate does
    try:
        ref = m.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")                # applied: no warning
            out = fastdecode.generate(m, ids, temperature=0, max_new_tokens=6)
        assert torch.equal(out.sequences, ref)
        assert not torch.equal(ref, fastdecode.generate(m, ids, temperature=0, max_new_tokens=6,
                                                        repetition_penalty=1.0).sequences)
    finally:
        m.generation_config.repetition_penalty = None


def test_entropy_switch_applies_them_on_both_engines():
    """Entropy switching: the target alone (threshold -inf) equals HF's greedy output with the penalty; the static
    engine gives the dynamic engine's tokens whatever the switching (its recorded steps give way to plain ones)."""
    m, d = tiny_llama(1, vocab=12), tiny_llama(2, vocab=12)
    ids = torch.tensor([[1, 2, 3, 1]])
    kw = dict(method="entropy_switch", temperature=0, max_new_tokens=10, eos_token_id=[], repetition_penalty=1.4)
    ref = m.generate(ids, max_new_tokens=10, do_sample=False, repetition_penalty=1.4, pad_token_id=0)
    for engine in ("dynamic", "static"):
        out = fastdecode.generate(m, ids, draft=d, entropy_threshold=float("-inf"), cache_implementation=engine, **kw)
        assert torch.equal(out.sequences, ref), engine
    for opts in (dict(entropy_threshold=1.0), dict(entropy_threshold=1.0, speculate_when_large=True)):
        a = fastdecode.generate(m, ids, draft=d, **opts, **kw).sequences
        b = fastdecode.generate(m, ids, draft=d, cache_implementation="static", **opts, **kw).sequences
        assert torch.equal(a, b), opts


def test_invalid_values_are_refused():
    m = tiny_llama(1)
    ids = torch.tensor([[1, 2, 3]])
    for bad, match in ((dict(sequence_bias={(): 1.0}), "empty sequence"), (dict(sequence_bias=[[1, 2]]), "sequence_bias"),
                       (dict(sequence_bias={(99,): 1.0}), "sequence_bias names token ids \\[99\\]"),
                       (dict(exponential_decay_length_penalty=(1,)), "exponential_decay_length_penalty must"),
                       (dict(forced_eos_token_id="x"), "forced_eos_token_id must hold token ids"),
                       (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size must be"),
                       (dict(bad_words_ids=[[1, "a"]]), "bad_words_ids must hold token ids"),
                       (dict(bad_words_ids=[[]]), "empty sequence"), (dict(suppress_tokens=[-1]), "suppress_tokens"),
                       (dict(repetition_penalty=0), "repetition_penalty must be"),
                       (dict(repetition_penalty=float("nan")), "repetition_penalty must be"),
                       (dict(repetition_penalty="1.2"), "repetition_penalty must be"),
                       (dict(min_new_tokens=-1), "min_new_tokens must be"), (dict(min_length=2.5), "min_length must")):
        with pytest.raises(ValueError, match=match):
            fastdecode.generate(m, ids, **bad)


def test_batch_rows_one_by_one_apply_them():
    """Lambda attention decodes a batch's rows one by one: each row gets the processors, as alone."""
    m = tiny_llama(1, vocab=12)
    ids = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    lam = fastdecode.LambdaAttention(window=16, num_global=2)
    out = fastdecode.generate(m, ids, attention_mask=mask, temperature=0, max_new_tokens=5, pad_token_id=0,
                              eos_token_id=[], repetition_penalty=1.4, lambda_attention=lam)
    for r in range(2):
        alone = fastdecode.generate(m, ids[r : r + 1, 1 - r:], temperature=0, max_new_tokens=5, eos_token_id=[],
                                    repetition_penalty=1.4, lambda_attention=lam)
        assert out.sequences[r, 4:].tolist() == alone.sequences[0, 3 + r:].tolist()


# the sampled law: the first two tokens against the processed target's exact law (enumeration)
PENALTY = 3.0


@torch.inference_mode()
def _processed_law(model, prompt, penalty, ngram=0):
    law = {(): 1.0}
    for _ in range(2):
        nxt = {}
        for seq, pr in law.items():
            prefix = torch.tensor([prompt + list(seq)])
            logits = RepetitionPenaltyLogitsProcessor(penalty)(prefix, model(prefix).logits[0, -1:].float())
            if ngram:
                logits = NoRepeatNGramLogitsProcessor(ngram)(prefix, logits)
            p = kernels.probs(logits, 1.0)[0].double()
            for x in torch.nonzero(p).flatten().tolist():
                nxt[seq + (x,)] = pr * float(p[x])
        law = nxt
    return law


@pytest.fixture(scope="module")
def penalty_law(tiny_pair):
    return _processed_law(tiny_pair[0], LAW_PROMPT, PENALTY)


@pytest.mark.parametrize("method", ["speculative", "multi_draft"])
def test_sampled_law_is_the_processed_target(tiny_pair, penalty_law, method):
    """Chain rows (the drafts before each) and tree rows (each its own branch). (Prompt lookup drafts little on
    this prompt; its rows are those of the chain step, and its greedy output is checked against HF's above.)"""
    target, draft = tiny_pair
    kw = dict(draft_length=2, adaptive_draft=False) if method == "speculative" else dict(num_drafts=3, draft_length=2)
    counts = sample_law(target, draft, LAW_PROMPT, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0, method=method,
                        repetition_penalty=PENALTY, **kw)
    assert chi_square_pvalue(counts, penalty_law) > LAW_ALPHA


def test_unprocessed_target_rows_are_caught(tiny_pair, penalty_law, monkeypatch):
    """Broken on purpose: the draft's rows processed, the target's not. Its law is the raw target's."""
    real = step.verify_step
    monkeypatch.setattr(fastdecode.decoding.speculative, "verify_step",
                        lambda *a, process=None, **k: real(*a, **k))
    counts = sample_law(*tiny_pair, LAW_PROMPT, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0,
                        method="speculative", draft_length=2, adaptive_draft=False, repetition_penalty=PENALTY,
                        stop_when=caught(penalty_law, alpha=1e-6))
    assert chi_square_pvalue(counts, penalty_law) < 1e-6, chi_square_pvalue(counts, penalty_law)


def test_recorded_forwards_apply_them(monkeypatch):
    """compile="cudagraphs" (the CPU stand-in for CUDA graphs): the forwards stay recorded, the processors run
    on their logits outside the graphs, except in the speculative step's own graphs (draft chain,
    verification), which apply the repetition penalty inside (``DenseRules``; the step falls back to
    unrecorded for processors that read the text: ``test_static_step.py``). Greedy output equals HF's, alone
    and in a batch."""
    import fake_graphs

    records = fake_graphs.install(monkeypatch)
    target, draft = tiny_llama(5, vocab=32), tiny_llama(6, vocab=32, layers=1)
    ids = torch.tensor([[3, 7, 7, 1, 9, 3]])
    kw = dict(temperature=0, max_new_tokens=12, eos_token_id=[], repetition_penalty=1.5,
              cache_implementation="static", compile="cudagraphs")
    ref = target.generate(ids, max_new_tokens=12, do_sample=False, repetition_penalty=1.5, pad_token_id=0)
    assert not torch.equal(ref, target.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0))
    for method, extra in (("autoregressive", {}), ("speculative", dict(draft=draft, draft_length=3,
                                                                       adaptive_draft=False)),
                          ("multi_draft", dict(draft=draft, num_drafts=2, draft_length=2))):
        assert torch.equal(fastdecode.generate(target, ids, method=method, **extra, **kw).sequences, ref), method
    kinds = {key[0] for _, key in records}
    assert records and {"draft_chain", "verify"} <= kinds, kinds
    batch = torch.cat([ids, torch.tensor([[0, 0, 5, 2, 5, 8]])])
    mask = (batch != 0).long()
    ref = target.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False, repetition_penalty=1.5,
                          pad_token_id=0)
    out = fastdecode.generate(target, batch, attention_mask=mask, draft=draft, pad_token_id=0, **kw)
    assert torch.equal(out.sequences, ref)


def test_sampled_law_with_ngram_bans(tiny_pair):
    """Bans give some tokens probability 0 after some prefixes (here: a token after 1, 2 or 3 that the prompt
    already follows it with): the static engine's tree steps keep that law."""
    law = _processed_law(tiny_pair[0], LAW_PROMPT, 1.5, ngram=2)
    counts = sample_law(*tiny_pair, LAW_PROMPT, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0, method="multi_draft",
                        num_drafts=2, draft_length=2, repetition_penalty=1.5, no_repeat_ngram_size=2,
                        cache_implementation="static")
    assert chi_square_pvalue(counts, law) > LAW_ALPHA


def test_static_engine_samples_the_dynamic_engine_s_tokens(tiny_pair):
    """The static engine's chain steps with processors draw what the dynamic engine's draw, seed for seed (so the
    dynamic engine's law test covers them; the law test of each would cost twice as much)."""
    ids = torch.tensor([LAW_PROMPT])
    for seed in range(40):
        kw = dict(draft=tiny_pair[1], max_new_tokens=6, temperature=1.0, seed=seed, eos_token_id=[], draft_length=2,
                  adaptive_draft=False, repetition_penalty=PENALTY, no_repeat_ngram_size=3)
        assert torch.equal(fastdecode.generate(tiny_pair[0], ids, **kw).sequences,
                           fastdecode.generate(tiny_pair[0], ids, cache_implementation="static", **kw).sequences), seed



def test_padded_vocabularies_and_lambda_apply_them():
    """A target wider than its draft (it emits ids the draft lacks; a bad word among them), and Lambda attention
    on both engines (its static ring equals the dynamic engine)."""
    from tiny_models import tiny_lm

    target, draft = tiny_lm("llama", 2, seed=1, vocab_size=520), tiny_lm("llama", 1, seed=2, vocab_size=512)
    with torch.no_grad():
        draft.model.embed_tokens.weight[:] = target.model.embed_tokens.weight[:512]
        draft.lm_head.weight[:] = target.lm_head.weight[:512]
        target.lm_head.weight[512:] *= 3.0
    ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    kw = dict(repetition_penalty=1.3, no_repeat_ngram_size=2, bad_words_ids=[[515]], suppress_tokens=[3])
    ref = target.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0, **kw)
    for engine in ("dynamic", "static"):
        for method, extra in (("speculative", {}), ("multi_draft", dict(num_drafts=3, draft_length=3))):
            out = fastdecode.generate(target, ids, draft=draft, method=method, temperature=0, max_new_tokens=16,
                                      eos_token_id=[], cache_implementation=engine, **extra, **kw)
            assert torch.equal(out.sequences, ref), (engine, method)
    t, d = tiny_llama(1, vocab=32), tiny_llama(2, vocab=32)
    ids = torch.randint(0, 32, (1, 40), generator=torch.Generator().manual_seed(1))
    kw = dict(temperature=0, max_new_tokens=20, eos_token_id=[], repetition_penalty=1.4, no_repeat_ngram_size=3,
              lambda_attention=fastdecode.LambdaAttention(window=16, num_global=2))
    for method, extra in (("speculative", dict(draft=d, draft_length=3, adaptive_draft=False)),
                          ("multi_draft", dict(draft=d, num_drafts=2, draft_length=2))):
        a = fastdecode.generate(t, ids, method=method, **extra, **kw).sequences
        assert torch.equal(a, fastdecode.generate(t, ids, method=method, cache_implementation="static", **extra,
                                                  **kw).sequences), method


class _NextPenalty:
    """A caller's processor that reads the text: the id after the last token's gets -3 (and counts its calls)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        nxt = (input_ids[:, -1] + 1) % scores.shape[-1]
        return scores.scatter_add(1, nxt[:, None], torch.full((scores.shape[0], 1), -3.0))


def test_callers_logits_processors_run_on_every_row_with_its_own_text():
    """logits_processor=: after HF's own (here a repetition penalty and n-gram bans), each row with its own text,
    so greedy output equals HF's with the same list, alone and in a batch, on every method and both engines."""
    from transformers import LogitsProcessorList

    target, draft = tiny_llama(5, vocab=32), tiny_llama(6, vocab=32, layers=1)
    ids = torch.tensor([[3, 7, 7, 1, 9, 3]])
    procs = [NoRepeatNGramLogitsProcessor(3), _NextPenalty()]
    kw = dict(max_new_tokens=14, repetition_penalty=1.2)
    ref = target.generate(ids, do_sample=False, pad_token_id=0, logits_processor=LogitsProcessorList(procs), **kw)
    assert not torch.equal(ref, target.generate(ids, do_sample=False, pad_token_id=0, **kw))
    for engine in ("dynamic", "static"):
        for method, extra in (("autoregressive", {}), ("speculative", dict(draft=draft)), ("prompt_lookup", {}),
                              ("multi_draft", dict(draft=draft, num_drafts=2, draft_length=2))):
            out = fastdecode.generate(target, ids, method=method, temperature=0, eos_token_id=[], logits_processor=procs,
                                      cache_implementation=engine, **extra, **kw)
            assert torch.equal(out.sequences, ref), (engine, method)
    assert procs[1].calls > 14                     # (drafted rows too)
    batch = torch.cat([ids, torch.tensor([[0, 0, 5, 2, 5, 8]])])
    mask = (batch != 0).long()
    ref = target.generate(batch, attention_mask=mask, do_sample=False, pad_token_id=0,
                          logits_processor=LogitsProcessorList(procs), **kw)
    out = fastdecode.generate(target, batch, attention_mask=mask, draft=draft, temperature=0, pad_token_id=0,
                              eos_token_id=[], logits_processor=procs, **kw)
    assert torch.equal(out.sequences, ref)
    with pytest.raises(ValueError, match="logits_processor must hold callables"):
        fastdecode.generate(target, ids, logits_processor=[1])


def test_prefix_allowed_tokens_fn_as_hf():
    """HF's constraint function, given each row's batch index and its own text: greedy output equals HF's, alone
    and in a batch (where the allowed set depends on the batch index), on every method and both engines."""
    target, draft = tiny_llama(5, vocab=32), tiny_llama(6, vocab=32, layers=1)

    def allowed(batch_id, ids):
        last = int(ids[-1])
        return [(last * 3 + j + batch_id) % 32 for j in range(6)]

    ids = torch.tensor([[3, 7, 7, 1, 9, 3]])
    kw = dict(max_new_tokens=12, prefix_allowed_tokens_fn=allowed)
    ref = target.generate(ids, do_sample=False, pad_token_id=0, **kw)
    assert not torch.equal(ref, target.generate(ids, do_sample=False, pad_token_id=0, max_new_tokens=12))
    for engine in ("dynamic", "static"):
        for method, extra in (("autoregressive", {}), ("speculative", dict(draft=draft)),
                              ("multi_draft", dict(draft=draft, num_drafts=2, draft_length=2))):
            out = fastdecode.generate(target, ids, method=method, temperature=0, eos_token_id=[],
                                      cache_implementation=engine, **extra, **kw)
            assert torch.equal(out.sequences, ref), (engine, method)
    batch = torch.cat([ids, torch.tensor([[4, 4, 5, 2, 5, 8]])])
    ref = target.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False, pad_token_id=0, **kw)
    out = fastdecode.generate(target, batch, draft=draft, temperature=0, pad_token_id=0, eos_token_id=[], **kw)
    assert torch.equal(out.sequences, ref)
    with pytest.raises(ValueError, match="returned an empty list for batch ID 0"):
        fastdecode.generate(target, ids, max_new_tokens=2, prefix_allowed_tokens_fn=lambda b, s: [])
