"""oneDNN-packed linear layers on the CPU (kernels/cpu_linear.py): same products, restored models, reused and
refreshed packs, the layers left alone, and the choice inside ``generate``."""
from __future__ import annotations

import pytest
import torch
from tiny_models import hf_greedy, tiny_lm, tiny_llama

import fastdecode
from fastdecode.kernels import cpu_linear
from fastdecode.kernels.cpu_linear import packable_layers, packed_linears, release_packed, should_pack

pytestmark = pytest.mark.skipif(not cpu_linear.packing_available(), reason="this torch build lacks oneDNN")


@pytest.fixture(autouse=True)
def small_layers_packed(monkeypatch):
    """The tests here pack tiny layers, which the size rule (``MIN_PACKED``) leaves alone; its own test
    restores it."""
    monkeypatch.setattr(cpu_linear, "MIN_PACKED", 0)


def _patched(model) -> list:
    return [m for m in model.modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 16, 70])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_product_matches_linear(rows, bias):
    torch.manual_seed(rows)
    layer = torch.nn.Linear(48, 80, bias=bias)
    x = torch.randn(2, rows, 48)
    with torch.no_grad():
        want = layer(x)
        with packed_linears(layer) as n:
            got = layer(x)
    assert n == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not _patched(layer)


@pytest.mark.parametrize("n", [1, 2, 256, 257, 1000, 2 ** 24 + 4, 32000 * 2048, 151936 * 896, 151936 * 4096])
def test_sampled_indices_stay_inside_large_weights(n):
    """The indices a packed weight is fingerprinted by: in range, ends included, increasing, at any size (a float32
    linspace overshot n - 1 past 2**24 elements: lm_heads of real models gave an IndexError)."""
    idx = cpu_linear.sampled_indices(n)
    assert idx.dtype == torch.long and int(idx[0]) == 0 and int(idx[-1]) == n - 1
    assert len(idx) == min(cpu_linear.SAMPLED, n) and bool((idx[1:] > idx[:-1]).all())


def test_packing_out_of_memory_falls_back_to_plain_products(monkeypatch):
    """A packed copy that does not fit (the CPU allocator's RuntimeError) leaves every layer unpacked, with a
    warning, and the tokens are HF's; other errors are not swallowed."""
    model, prompt = tiny_lm("llama", 2, seed=1), torch.tensor([[3, 14, 15, 92]])
    real, calls = cpu_linear._packed_weight, []

    def fails_third(layer):
        calls.append(layer)
        if len(calls) == 3:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        return real(layer)

    monkeypatch.setattr(cpu_linear, "MIN_PACKED", 0)
    monkeypatch.setattr(cpu_linear, "_packed_weight", fails_third)
    with pytest.warns(UserWarning, match="ran out of memory.*unpacked"):
        out = fastdecode.generate(model, prompt, temperature=0, max_new_tokens=6, pack_weights=True)
    assert out.stats.extra["packed_linears"] == 0 and not cpu_linear.runs_packed(model)
    assert torch.equal(out.sequences, hf_greedy(model, prompt, 6))
    monkeypatch.setattr(cpu_linear, "_packed_weight", lambda layer: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):
        fastdecode.generate(model, prompt, temperature=0, max_new_tokens=2, pack_weights=True)


def test_model_logits_close_and_model_restored():
    model = tiny_lm("qwen2", layers=2)   # q/k/v projections with bias, tied or not: whatever qwen2 has
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    layers = len(packable_layers(model))
    with torch.no_grad():
        want = model(ids).logits
        with packed_linears(model, model) as n:   # a model given twice is packed once
            assert n == layers > 0
            assert len(_patched(model)) == n
            got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not _patched(model)


def test_restored_after_an_error():
    layer = torch.nn.Linear(8, 8)
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
        with packed_linears(layer):
            assert _patched(layer)
            raise RuntimeError("boom")
    assert not _patched(layer)


def test_pack_kept_between_calls_and_rebuilt_when_the_weight_changes():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24, bias=False)
    x = torch.randn(3, 16)
    with torch.no_grad():
        with packed_linears(layer):
            layer(x)
        first = cpu_linear._PACKED[layer][1]
        with packed_linears(layer):
            layer(x)
        assert cpu_linear._PACKED[layer][1] is first                  # no second pack
        layer.weight.mul_(-2.0)                                        # an in-place edit: a new version
        with packed_linears(layer):
            got = layer(x)
    torch.testing.assert_close(got, x @ layer.weight.T, rtol=1e-5, atol=1e-5)   # a stale pack would fail
    assert release_packed(layer) == 1 and layer not in cpu_linear._PACKED


@pytest.mark.parametrize("edit", ["data_add", "data_mul", "data_copy"])
def test_an_edit_through_data_is_seen(edit):
    """``weight.data`` has a version counter of its own, so an edit through it (PEFT's unsafe adapter merge, EMA
    updates) left the kept pack stale: generate then decoded with the old weights, silently."""
    target = tiny_llama(21, vocab=64, hidden=32)
    ids = torch.tensor([[1, 2, 3, 4]])
    fastdecode.generate(target, ids, method="autoregressive", temperature=0, max_new_tokens=4, pack_weights=True)
    w = target.model.layers[0].mlp.down_proj.weight
    delta = torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    {"data_add": lambda: w.data.add_(delta), "data_mul": lambda: w.data.mul_(-1.5),
     "data_copy": lambda: w.data.copy_(w.data + delta)}[edit]()
    out = fastdecode.generate(target, ids, method="autoregressive", temperature=0, max_new_tokens=12,
                              pack_weights=True, eos_token_id=[])
    assert out.stats.extra.get("packed_linears")
    assert torch.equal(out.sequences, hf_greedy(target, ids, 12))


def test_a_packed_model_still_copies_and_pickles():
    """The packs (opaque oneDNN tensors) are kept outside the model: deepcopy and pickling still work."""
    import copy
    import io

    model = tiny_llama(1, vocab=16)
    with torch.no_grad(), packed_linears(model):
        model(torch.tensor([[1, 2]]))
    assert any(m in cpu_linear._PACKED for m in model.modules())
    twin = copy.deepcopy(model)
    torch.save(model, io.BytesIO())
    assert not any(m in cpu_linear._PACKED for m in twin.modules())


def test_layers_left_alone():
    class Quantized(torch.nn.Linear):
        pass

    hooked = torch.nn.Linear(8, 8)
    hooked.forward = lambda x: x          # e.g. accelerate's offload hook
    model = torch.nn.Sequential(Quantized(8, 8), hooked, torch.nn.Linear(8, 8).to(torch.bfloat16),
                                torch.nn.Linear(8, 8))
    with torch.no_grad(), packed_linears(model) as n:
        assert n == 1 and "forward" in model[3].__dict__
    assert model[1].__dict__["forward"] is not None and "forward" not in model[3].__dict__
    with packed_linears(model) as n:      # gradients on: never packed
        assert n == 0
    with torch.no_grad(), packed_linears(model, enabled=False) as n:
        assert n == 0


def test_small_layers_are_left_unpacked(monkeypatch):
    """Layers under MIN_PACKED elements run faster on MKL's product (oneDNN's has a fixed cost per call): they are
    not packed, also with pack_weights=True, and a model with nothing larger runs its plain products."""
    monkeypatch.undo()
    assert cpu_linear.MIN_PACKED == 48 * 1024
    small, large = torch.nn.Linear(192, 192), torch.nn.Linear(192, 512)   # 36864 and 98304 elements
    model = torch.nn.Sequential(small, large)
    assert packable_layers(model) == [large]
    with torch.no_grad(), packed_linears(model) as n:
        assert n == 1 and "forward" in large.__dict__ and "forward" not in small.__dict__
    assert not should_pack(True, [small]) and should_pack(None, [model])
    target = tiny_llama(1)   # hidden 32: every layer below the rule
    out = fastdecode.generate(target, torch.tensor([[1, 2, 3]]), max_new_tokens=3, pack_weights=True)
    assert "packed_linears" not in out.stats.extra


def test_should_pack():
    model = torch.nn.Linear(256, 256)     # 256 KiB of float32 weights
    assert should_pack(None, [model, None])
    assert not should_pack(None, [model], limit=1000)
    assert should_pack(True, [model], limit=1000)
    assert not should_pack(False, [model])
    assert not should_pack(None, [torch.nn.Linear(4, 4).to(torch.bfloat16)])   # nothing to pack
    with pytest.raises(ValueError, match="pack_weights must be True, False or None"):
        should_pack("yes", [model])


def test_default_limit_is_a_quarter_of_the_available_memory(monkeypatch):
    model = torch.nn.Linear(256, 256)     # 256 KiB
    monkeypatch.setattr(cpu_linear, "available_memory", lambda: 4 * 256 * 1024)
    assert cpu_linear.default_limit() == 256 * 1024 and should_pack(None, [model])
    monkeypatch.setattr(cpu_linear, "available_memory", lambda: 4 * 256 * 1024 - 4)
    assert not should_pack(None, [model])
    with torch.no_grad(), packed_linears(model):   # once packed, the copy is not counted again
        pass
    assert should_pack(None, [model]) and cpu_linear.packed_bytes([model], new_only=True) == 0
    monkeypatch.setattr(cpu_linear, "available_memory", lambda: None)
    assert cpu_linear.default_limit() == cpu_linear.FALLBACK_LIMIT_BYTES
    monkeypatch.undo()
    avail = cpu_linear.available_memory()
    assert avail is None or avail > 0


def test_generate_packs_by_default_and_matches_hf_greedy():
    target, draft = tiny_llama(1, vocab=64, hidden=64), tiny_llama(2, vocab=64, hidden=32)
    ids = torch.randint(1, 64, (1, 6), generator=torch.Generator().manual_seed(3))
    want = hf_greedy(target, ids, 20)
    for method in ("autoregressive", "speculative"):
        for cache in ("dynamic", "static"):
            on = fastdecode.generate(target, ids, draft=draft, method=method, max_new_tokens=20, temperature=0.0,
                                     cache_implementation=cache)
            off = fastdecode.generate(target, ids, draft=draft, method=method, max_new_tokens=20, temperature=0.0,
                                      cache_implementation=cache, pack_weights=False)
            used = len(packable_layers(target)) + (len(packable_layers(draft)) if method != "autoregressive" else 0)
            assert on.stats.extra["packed_linears"] == used
            assert "packed_linears" not in off.stats.extra
            assert "packed linear layers" in on.stats.summary()
            assert torch.equal(on.sequences, want) and torch.equal(off.sequences, want), (method, cache)
    assert not _patched(target) and not _patched(draft)


def test_generate_rejects_bad_pack_weights():
    target = tiny_llama(1)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="pack_weights must be"):
        fastdecode.generate(target, ids, max_new_tokens=2, pack_weights="on")
    with pytest.raises(ValueError, match="does not combine with compile"):
        fastdecode.generate(target, ids, max_new_tokens=2, pack_weights=True, cache_implementation="static",
                            compile=True)


def test_measured_dispatch_follows_the_timings(monkeypatch):
    """pack_weights=None (measured=True): each (shape, row bucket) is timed once, both products on the call's own
    input, and the faster one runs from then on. Here the packed product is made slow for one row and the BLAS's
    slow for more: one row then runs on the BLAS, four rows packed, and later calls time nothing again."""
    import time

    monkeypatch.setattr(cpu_linear, "_FASTER", {})
    calls = []
    real_packed, real_blas = cpu_linear._packed_product, cpu_linear._blas_product

    def slow_when(product, name, slow):
        def run(x, w, b):
            calls.append(name)
            if slow(x.numel() // x.shape[-1]):
                time.sleep(0.003)
            return product(x, w, b)
        return run
    monkeypatch.setattr(cpu_linear, "_packed_product", slow_when(real_packed, "packed", lambda rows: rows == 1))
    monkeypatch.setattr(cpu_linear, "_blas_product", slow_when(real_blas, "blas", lambda rows: rows > 1))
    layer = torch.nn.Linear(48, 80)
    one, four = torch.randn(1, 1, 48), torch.randn(1, 4, 48)
    with torch.no_grad(), packed_linears(layer, measured=True):
        for x in (one, four):
            got = layer(x)   # (timed here)
            torch.testing.assert_close(got, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5,
                                       atol=1e-5)
        calls.clear()
        layer(one)
        layer(four)
        layer(torch.randn(3, 48))   # 3 rows: the 4-row bucket's decision, timed already
    assert calls == ["blas", "packed", "packed"]
    assert cpu_linear._FASTER == {(80, 48, 1, torch.get_num_threads()): False,
                                  (80, 48, 4, torch.get_num_threads()): True}


def test_packed_on_request_times_nothing(monkeypatch):
    """pack_weights=True (measured=False) always runs the packed product; generate() measures with None only."""
    monkeypatch.setattr(cpu_linear, "_FASTER", {})
    layer = torch.nn.Linear(48, 80)
    with torch.no_grad(), packed_linears(layer):
        layer(torch.randn(1, 48))
    assert cpu_linear._FASTER == {}
    seen = []
    real = cpu_linear.packed_linears

    def spy(*models, **kw):
        seen.append(kw.get("measured"))
        return real(*models, **kw)
    monkeypatch.setattr(fastdecode.api, "packed_linears", spy)
    target = tiny_llama(1)
    for pw in (None, True):
        fastdecode.generate(target, torch.tensor([[1, 2]]), max_new_tokens=2, temperature=0, pack_weights=pw)
    assert seen == [True, False]
