"""Fast-tier matrix: tiny random models of many transformers architectures (built from their config classes)
give HF ``generate``'s greedy output with every lossless method (and entropy switching with the large model
always active, which verifies drafts like speculative decoding), or are refused up front with a ValueError
that names the model type and the reason; the static engine too. Draft: the target's first layer (same architecture,
same vocabulary)."""
import functools

import pytest
import torch

import fastdecode
from tiny_models import draft_of, hf_greedy, tiny_lm

ARCHITECTURES = [
    "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "mistral", "mixtral", "qwen2_moe", "qwen3_moe",
    "phi3", "gpt_neox", "opt", "falcon", "olmo", "olmo2", "olmo3", "starcoder2", "cohere", "cohere2", "glm",
    "granite", "granitemoe", "stablelm", "phi", "gptj", "gpt2", "mpt", "smollm3", "exaone4", "seed_oss", "bloom",
    "deepseek_v3", "deepseek_v32",
]
# ALiBi attention (bloom: no 4D mask at all; mpt: its bias grows with a key's cache slot, not its position):
# multi_draft refused, every other method works
NO_TREE_MASK = {"bloom", "mpt"}
PROMPT, NEW = 6, 12
# multi-head latent attention (DeepSeek-V3; MLA needs as many KV heads as query heads)
MLA = dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8,
           v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
           moe_intermediate_size=32, n_shared_experts=1)
OVERRIDES = {"mpt": dict(d_model=64, n_heads=4), "deepseek_v3": MLA,
             # DeepSeek sparse attention: an indexer keeps a key per token (top-k below the context, so it matters;
             # 16 indexer heads: fewer tie at the top-k boundary, where HF's own forwards then disagree)
             "deepseek_v32": dict(MLA, index_topk=4, index_head_dim=16, index_n_heads=16)}


@functools.lru_cache(maxsize=None)
def _case(model_type):
    target = tiny_lm(model_type, 2, seed=1, **OVERRIDES.get(model_type, {}))
    prompt = torch.randint(0, target.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    return target, draft_of(target), prompt, hf_greedy(target, prompt, NEW)


STATIC_REFUSED = {"bloom",          # ALiBi: the static engine's forwards pass a 4D mask (refused up front)
                  "deepseek_v32"}   # indexed attention layers: refused up front


@pytest.mark.parametrize("model_type", sorted(set(ARCHITECTURES) - STATIC_REFUSED))
def test_static_engine_equals_hf_greedy(model_type):
    """The static engine (plain forwards on preallocated slot caches, its own 4D masks) on every architecture."""
    target, draft, prompt, ref = _case(model_type)
    runs = [("autoregressive", None, {}), ("speculative", draft, dict(draft_length=3, adaptive_draft=False)),
            ("speculative", draft, dict(verifier="block")), ("prompt_lookup", None, {}),
            ("multi_draft", draft, dict(num_drafts=2, draft_length=3)),
            ("multi_draft", target, dict(num_drafts=2, draft_length=4)),
            ("entropy_switch", draft, dict(entropy_threshold=float("-inf"), speculate_when_large=True))]
    for method, d, kw in runs:
        if method == "multi_draft" and model_type in NO_TREE_MASK:
            continue
        out = fastdecode.generate(target, prompt, draft=d, method=method, temperature=0, max_new_tokens=NEW,
                                  cache_implementation="static", **kw)
        assert torch.equal(out.sequences, ref), f"{model_type}: static {method} {kw} differs from HF greedy"


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_method_equals_hf_greedy(model_type):
    target, draft, prompt, ref = _case(model_type)
    runs = [("autoregressive", None, {}), ("speculative", draft, dict(draft_length=3, adaptive_draft=False)),
            ("speculative", draft, dict(verifier="block")),
            ("multi_draft", draft, dict(num_drafts=2, draft_length=3)),
            ("multi_draft", target, dict(num_drafts=2, draft_length=4)),  # self-draft: whole paths accepted
            ("entropy_switch", draft, dict(entropy_threshold=float("-inf"), speculate_when_large=True))]
    for method, d, kw in runs:
        if method == "multi_draft" and model_type in NO_TREE_MASK:
            continue
        out = fastdecode.generate(target, prompt, draft=d, method=method, temperature=0, max_new_tokens=NEW, **kw)
        assert torch.equal(out.sequences, ref), f"{model_type}: {method} {kw} differs from HF greedy"


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_packed_products_equal_hf_greedy(model_type, monkeypatch):
    """The CPU's packed linear layers (kernels/cpu_linear.py) on every architecture: these tiny layers are below
    the size rule, so it is lowered to pack them all; plain and speculative decoding still equal HF greedy."""
    from fastdecode.kernels import cpu_linear

    if not cpu_linear.packing_available():
        pytest.skip("this torch build lacks oneDNN")
    monkeypatch.setattr(cpu_linear, "MIN_PACKED", 0)
    target, draft, prompt, ref = _case(model_type)
    for method, d in (("autoregressive", None), ("speculative", draft)):
        out = fastdecode.generate(target, prompt, draft=d, method=method, temperature=0, max_new_tokens=NEW,
                                  draft_length=None if d is None else 3)
        packed = cpu_linear.packable_layers(target)
        assert out.stats.extra.get("packed_linears", 0) >= len(packed) > 0, model_type
        assert torch.equal(out.sequences, ref), f"{model_type}: packed {method} differs from HF greedy"


@pytest.mark.parametrize("model_type,overrides", [("bloom", {}), ("falcon", dict(alibi=True))])
def test_alibi_models_refuse_multi_draft_up_front(model_type, overrides):
    target = tiny_lm(model_type, 1, seed=1, **overrides)
    prompt = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=f"multi_draft.*{model_type}.*ALiBi"):
        fastdecode.generate(target, prompt, draft=target, method="multi_draft", num_drafts=2, temperature=0,
                            max_new_tokens=4)
    ref = hf_greedy(target, prompt, 6)
    out = fastdecode.generate(target, prompt, draft=target, method="speculative", temperature=0, max_new_tokens=6)
    assert torch.equal(out.sequences, ref)


def test_refused_models_name_the_reason():
    """Models fastdecode cannot run, or cannot run a draft tree on, are refused up front (not a crash, not other
    tokens): a BERT-style model without is_decoder=True (bidirectional attention), MPT's and GPT-1's trees."""
    prompt = torch.randint(0, 512, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    bert = tiny_lm("bert", 2, seed=1)
    with pytest.raises(ValueError, match="model type 'bert'.*is_decoder=False.*bidirectional"):
        fastdecode.generate(bert, prompt, max_new_tokens=4)
    mpt = _case("mpt")[0]
    with pytest.raises(ValueError, match="'multi_draft'.*'mpt'.*slot in the cache"):
        fastdecode.generate(mpt, prompt, draft=mpt, method="multi_draft", num_drafts=2, max_new_tokens=4)
    gpt1 = tiny_lm("openai-gpt", 2, seed=1)
    for kw in (dict(draft=gpt1, method="multi_draft", num_drafts=2), dict(cache_implementation="static")):
        with pytest.raises(ValueError, match="'openai-gpt'.*cannot take a 4D mask"):
            fastdecode.generate(gpt1, prompt, max_new_tokens=4, **kw)
    batch = torch.randint(1, 512, (2, 7), generator=torch.Generator().manual_seed(1))   # its batches: row by row
    mask = torch.ones_like(batch)
    batch[0, :2] = mask[0, :2] = 0
    ref = gpt1.generate(batch, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    out = fastdecode.generate(gpt1, batch, attention_mask=mask, temperature=0, max_new_tokens=6, min_new_tokens=6,
                              pad_token_id=0, draft=gpt1)
    assert torch.equal(out.sequences, ref) and out.stats.extra.get("rows_one_by_one")


def test_a_forward_without_logits_to_keep_is_cut():
    """TrOCR's forward takes no logits_to_keep (it lands in **kwargs) and returns every position's logits:
    fastdecode keeps the last ones itself (it used to read the first row: other tokens from the first one)."""
    model = tiny_lm("trocr", 2, seed=1)
    prompt = torch.randint(0, 512, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    out = fastdecode.generate(model, prompt, temperature=0, max_new_tokens=NEW, draft=draft_of(model),
                              method="speculative")
    assert torch.equal(out.sequences, hf_greedy(model, prompt, NEW))


@pytest.mark.parametrize("method", ["speculative", "prompt_lookup"])
def test_slot_positioned_models_draft_batches_row_by_row(method):
    """GPT-Neo's local layers window by cache slot: a batch's ragged columns (rejected drafts, pending blocks of
    different lengths) would shift them, so its drafting batches run row by row and equal HF's batched output."""
    target = tiny_lm("gpt_neo", 2, seed=1, attention_types=[[["global", "local"], 1]], window_size=4)
    ids = torch.randint(1, 512, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    ids[0, :2] = mask[0, :2] = 0
    ref = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                          pad_token_id=0)
    out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft_of(target) if method == "speculative"
                              else None, method=method, temperature=0, max_new_tokens=NEW, min_new_tokens=NEW,
                              pad_token_id=0)
    assert torch.equal(out.sequences, ref) and out.stats.extra.get("rows_one_by_one")


def test_looped_model_on_the_static_engine():
    """Dory (a looped transformer: its recurrent layers run several loops, each with its own cache copies) on both
    engines: the static slot caches are sized for every loop up front (Dory deep-copied slot layers into a cache
    of exactly num_hidden_layers layers, copying the state they share, and crashed)."""
    target = tiny_lm("dory", 4, seed=1, n_input_layers=1, n_output_layers=1, head_dim=16, sliding_window=5)
    prompt = torch.randint(0, 512, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    ref = hf_greedy(target, prompt, NEW)
    for engine in ("dynamic", "static"):
        for method, d in (("autoregressive", None), ("speculative", target)):
            out = fastdecode.generate(target, prompt, draft=d, method=method, temperature=0, max_new_tokens=NEW,
                                      cache_implementation=engine)
            assert torch.equal(out.sequences, ref), (engine, method)


def test_models_with_cache_layers_of_their_own_decode_plainly():
    """DeepSeek-V4's compressed-attention cache layers keep buffers and running compressed entries that cannot be
    cropped past rejected drafts (HF's assisted generation refuses the model too): plain decoding equals HF past
    several compressions, alone and in a batch whose rows stop at different steps (run row by row); drafting
    methods are refused, naming the layer classes."""
    target = tiny_lm("deepseek_v4", 2, seed=1, layer_types=["compressed_sparse_attention", "heavily_compressed_attention"],
                     compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
                     sliding_window=8, mlp_layer_types=["moe", "moe"], moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
                     head_dim=16, q_lora_rank=32, o_lora_rank=32, qk_rope_head_dim=8, index_n_heads=4, index_head_dim=16)
    prompt = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(3))
    ref = hf_greedy(target, prompt[:1], 14)
    out = fastdecode.generate(target, prompt[:1], temperature=0, max_new_tokens=14, min_new_tokens=14)
    assert torch.equal(out.sequences, ref)
    eos = int(ref[0, 14])
    ref = target.generate(prompt, max_new_tokens=14, do_sample=False, eos_token_id=eos, pad_token_id=0)
    out = fastdecode.generate(target, prompt, temperature=0, max_new_tokens=14, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out.sequences, ref) and out.stats.extra.get("rows_one_by_one")
    for method in ("speculative", "prompt_lookup", "multi_draft"):
        with pytest.raises(ValueError, match="'deepseek_v4'.*layers of its own.*DeepseekV4HCACache"):
            fastdecode.generate(target, prompt[:1], draft=target if method != "prompt_lookup" else None,
                                method=method, max_new_tokens=4)


def test_multimodal_target_with_a_text_draft():
    """AutoModelForCausalLM gives Gemma-3's image-text class (Gemma3ForConditionalGeneration: a vision tower, and
    the text model under a wrapper whose config nests a text config) for the larger Gemma-3 checkpoints; a
    text-only Gemma3ForCausalLM drafts for it, as the 1B model would. Text prompts past the sliding window: every
    method on both engines, and a left-padded batch, give HF's greedy tokens."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tiny_models import BASE

    text = dict(BASE, num_hidden_layers=2, head_dim=16, sliding_window=4,
                layer_types=["sliding_attention", "full_attention"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    cfg = AutoConfig.for_model("gemma3", text_config=text, vision_config=vision, mm_tokens_per_image=4,
                               image_token_index=511, boi_token_index=509, eoi_token_index=510)
    torch.manual_seed(1)
    target = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        target.get_output_embeddings().weight.mul_(4.0)
    torch.manual_seed(2)
    draft = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("gemma3_text", **dict(text, num_hidden_layers=1, layer_types=["sliding_attention"])),
        dtype=torch.float32).eval()
    assert type(target).__name__ == "Gemma3ForConditionalGeneration" and type(draft).__name__ == "Gemma3ForCausalLM"
    prompt = torch.randint(0, 500, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    ref = hf_greedy(target, prompt, NEW)
    batch = torch.randint(0, 500, (2, 8), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(batch)
    batch[1, :3], mask[1, :3] = 0, 0
    ref_batch = target.generate(batch, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                pad_token_id=0)
    runs = [("autoregressive", None, {}), ("speculative", draft, dict(draft_length=3, adaptive_draft=False)),
            ("speculative", draft, dict(verifier="block")), ("prompt_lookup", None, {}),
            ("multi_draft", draft, dict(num_drafts=2, draft_length=3))]
    for engine in ("dynamic", "static"):
        for method, d, kw in runs:
            out = fastdecode.generate(target, prompt, draft=d, method=method, temperature=0, max_new_tokens=NEW,
                                      cache_implementation=engine, **kw)
            assert torch.equal(out.sequences, ref), f"{engine} {method} {kw}"
            out = fastdecode.generate(target, batch, attention_mask=mask, draft=d, method=method, temperature=0,
                                      max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0,
                                      cache_implementation=engine, **kw)
            assert torch.equal(out.sequences, ref_batch), f"batch: {engine} {method} {kw}"
