"""The options of transformers' ``generate()`` that :func:`fastdecode.generate` meets in code written for HF: those
it does not take (:data:`HF_ONLY`, each with what to do instead), the values of them that ask for nothing
(:data:`HARMLESS`, dropped), and HF's names for fastdecode's own settings (:data:`HF_ALIASES`)."""
from __future__ import annotations

from .defaults import NEUTRAL, NOT_APPLIED

_CHANGES_LAW = ("it changes the distribution tokens are drawn from in a way fastdecode does not apply (it applies "
                "HF's other logits processors and warpers, each row with its own prefix, which its verification "
                "keeps exactly)")
# options of transformers' generate() that fastdecode does not take, and what to do instead
HF_ONLY = {
    "num_beams": "beam search is not speculative decoding's target; fastdecode decodes greedily (temperature=0) "
                 "or samples",
    **{name: _CHANGES_LAW for name in NOT_APPLIED if name not in ("num_beams", "penalty_alpha", "dola_layers")},
    "penalty_alpha": "contrastive search is not speculative decoding's target; fastdecode decodes greedily "
                     "(temperature=0) or samples",
    "dola_layers": "DoLa contrasts layers of one model; fastdecode decodes the target's own distribution",
    "return_dict_in_generate": "generate() returns a GenerationResult (.sequences and .stats; .scores and .logits "
                               "with output_scores=True / output_logits=True) always",
    "use_cache": "fastdecode always decodes with a cache (cache_implementation='dynamic' or 'static')",
    **{name: "it applies to beam search, which fastdecode does not do (it decodes greedily or samples)"
       for name in ("length_penalty", "early_stopping", "num_beam_groups", "diversity_penalty", "low_memory",
                    "force_words_ids", "constraints")},
    **{name: "it applies to encoder-decoder models; fastdecode decodes causal language models"
       for name in ("encoder_repetition_penalty", "encoder_no_repeat_ngram_size", "decoder_start_token_id")},
    "output_attentions": "generate() returns tokens, statistics and (output_scores=True / output_logits=True) the "
                         "target's scores, not attentions",
    "output_hidden_states": "generate() returns tokens, statistics and (output_scores=True / output_logits=True) "
                            "the target's scores, not hidden states",
    "remove_invalid_values": "NaN or +inf logits are a ValueError in fastdecode, never replaced",
    "negative_prompt_ids": "it belongs to guidance_scale (classifier-free guidance), which fastdecode does not apply",
    "negative_prompt_attention_mask": "it belongs to guidance_scale (classifier-free guidance), which fastdecode "
                                      "does not apply",
    "past_key_values": "fastdecode builds its own caches: pass the whole prompt as input_ids",
    "inputs_embeds": "fastdecode decodes from token ids (a draft reads them through its own embeddings, and the "
                     "logits processors read the text): pass the prompt as input_ids",
    **{name: "fastdecode generates from text token ids: images, video and audio are not passed to the model (an "
             "image-text model such as Gemma-3's decodes text prompts; pass input_ids and attention_mask only)"
       for name in ("pixel_values", "pixel_values_videos", "image_sizes", "image_grid_thw", "video_grid_thw",
                    "pixel_attention_mask", "image_attention_mask", "aspect_ratio_ids", "aspect_ratio_mask",
                    "cross_attention_mask", "input_features", "input_features_mask", "input_values",
                    "audio_values", "feature_attention_mask")},
    "synced_gpus": "one process decodes; DeepSpeed ZeRO-3 / FSDP synchronisation is not supported",
    "token_healing": "token healing is not applied",
    "custom_generate": "fastdecode.generate is itself the decoding loop",
    "assistant_tokenizer": "the draft must share the target's tokenizer (check_pair refuses one that does not)",
    "assistant_early_exit": "self-speculation by early exit is not done; pass a draft model as draft=",
    "assistant_lookbehind": "the draft must share the target's tokenizer (no re-tokenisation between them)",
    "target_lookbehind": "the draft must share the target's tokenizer (no re-tokenisation between them)",
    "disable_compile": "fastdecode compiles only with compile=True (or 'inductor'): pass compile=False",
}


# values of those options that ask for nothing fastdecode does not do (code written for HF generate may pass them)
HARMLESS = {"use_cache": True, "return_dict_in_generate": True, "length_penalty": 1.0, "early_stopping": False,
            "num_beam_groups": 1, "diversity_penalty": 0.0, "low_memory": False, "encoder_repetition_penalty": 1.0,
            "encoder_no_repeat_ngram_size": 0, "output_attentions": False, "output_hidden_states": False,
            "remove_invalid_values": False, "synced_gpus": False, "token_healing": False, "disable_compile": False,
            **NEUTRAL}

# HF generate's names for fastdecode's own settings (assisted generation's): HF name -> fastdecode argument
HF_ALIASES = {"num_assistant_tokens": "draft_length", "assistant_confidence_threshold": "confidence_threshold",
              "num_assistant_tokens_schedule": "adaptive_draft"}
# HF's schedules of the draft length: "constant" is a fixed length; "heuristic" is +2 after a fully accepted draft
# and -1 otherwise, fastdecode's adaptive length ("heuristic_transient": the same, reset each call, as here)
SCHEDULES = {"constant": False, "heuristic": True, "heuristic_transient": True}
# options HF generate takes that ask for nothing when a prompt is given (bos_token_id starts an empty prompt)
UNUSED_WITH_PROMPT = ("bos_token_id",)


def hf_aliases(options: dict, given: dict) -> dict:
    """fastdecode's settings from HF's names for them in ``options`` (popped): num_assistant_tokens -> draft_length,
    num_assistant_tokens_schedule -> adaptive_draft, assistant_confidence_threshold -> confidence_threshold.
    ``given``: the fastdecode arguments as passed; both names at once is a ValueError."""
    out = {}
    for hf_name, ours in HF_ALIASES.items():
        value = options.pop(hf_name, None)
        if value is None:
            continue
        if given.get(ours) is not None:
            raise ValueError(f"{hf_name}= (HF's name) and {ours}= both given: they are one setting; pass one")
        if hf_name == "num_assistant_tokens_schedule":
            if value not in SCHEDULES:
                raise ValueError(f"num_assistant_tokens_schedule must be one of {tuple(SCHEDULES)}, got {value!r}")
            value = SCHEDULES[value]
        out[ours] = value
    return out


def check_hf_options(options) -> dict:
    """ValueError naming an option of transformers' generate() that fastdecode does not take, with what to do.
    Such an option given as None or as a value in :data:`HARMLESS` (``num_beams=1``, ``repetition_penalty=1.0``,
    ...) asks for nothing: it is dropped. Returns the other options."""
    rest = {}
    for name in sorted(options):
        value = options[name]
        if (value is None and _is_hf_option(name)) or name in UNUSED_WITH_PROMPT:
            continue   # (None asks for nothing: HF's own default for every option of its generate)
        if name not in HF_ONLY:
            rest[name] = value
        elif name in HARMLESS and value == HARMLESS[name] \
                and isinstance(value, bool) == isinstance(HARMLESS[name], bool):
            continue
        else:
            raise ValueError(f"{name}= is an option of transformers' generate() that fastdecode.generate does not "
                             f"take: {HF_ONLY[name]}")
    return rest


def _is_hf_option(name: str) -> bool:
    """Whether transformers' generate() takes ``name`` (a GenerationConfig field or one of its own keywords)."""
    from transformers import GenerationConfig

    return name in HF_ONLY or name in HF_ALIASES or hasattr(GenerationConfig(), name) or name in (
        "synced_gpus", "assistant_model", "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate",
        "assistant_tokenizer", "tokenizer", "past_key_values", "bos_token_id")
