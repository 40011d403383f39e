"""Up-front checks of the models and inputs of one :func:`fastdecode.generate` call.

Everything here turns what would otherwise surface as a raw ``IndexError`` / ``RuntimeError`` deep inside
transformers or torch into a ``ValueError`` (or a warning) that names the model type and the reason:
- :func:`check_models`: a target or draft that is not a model at all;
- :func:`check_method_support` / :func:`static_mask_problem`: methods and engines a model's attention code
  cannot run (the 4D masks of multi-draft decoding and of the static engine under ALiBi attention, unknown
  attention layer types; drafts on models with recurrent state, see ``decoding.state_cache``);
- :func:`check_token_ids`: prompt ids outside a model's input embedding table;
- :func:`check_positions`: prompt + new tokens past the table of learned absolute position embeddings;
- :func:`eval_mode`: a model left in training mode (dropout on) is run in eval mode, with a warning,
  and given back in the mode it came in.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from .decoding.state_cache import CONTINUES_STATE, foreign_layers, state_model_type
from .models import input_rows

# model types whose attention builds its own mask from a 2D padding mask and cannot take a 4D one
# (ALiBi: the bias is added inside the attention code, which unpacks the mask as [batch, seq])
_NO_4D_MASK = {
    "bloom": "its ALiBi attention takes only a 2D padding mask (transformers' Bloom cannot take a 4D mask)",
    "openai-gpt": "its attention adds a 2D padding mask to its own causal mask (transformers' OpenAI GPT cannot "
                  "take a 4D mask)",
}

# model types whose forward cannot run on top of a cache that holds only the text before its new tokens
_NOT_INCREMENTAL = {
    "cpmant": "CPM-Ant's forward takes the whole text at every step (it prepends its own prompt tokens, slices the "
              "cached part off itself and adds its segment embedding to one new token only) and lets the tokens of "
              "one forward attend to each other both ways, so fastdecode's forwards of the new tokens only, several "
              "at once, cannot run it (use model.generate)",
}


# encoder architectures that transformers lets run as causal LMs only with config.is_decoder=True (else their
# self-attention is bidirectional: HF warns "If you want to use ... as a standalone, add `is_decoder=True`")
_ENCODER_AS_DECODER = frozenset({
    "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert",
    "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl", "xmod"})


def unsupported_problem(model) -> str | None:
    """Why no method of fastdecode can run ``model``, or None."""
    mtype = _model_type(model)
    if mtype in _NOT_INCREMENTAL:
        return _NOT_INCREMENTAL[mtype]
    if mtype in _ENCODER_AS_DECODER and not getattr(model.config, "is_decoder", False):
        return ("its config has is_decoder=False, so its self-attention is bidirectional: the tokens of one forward "
                "(a prompt, a draft being verified) would see the ones after them. Load it with is_decoder=True")
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    if getattr(cfg, "recurrent_kv_cache_mode", None) == "last_loop":
        return ("recurrent_kv_cache_mode='last_loop' (its earlier loops read the last loop's cached keys and cut "
                "them to the sliding window without cutting the mask, which only transformers' own windowed cache "
                "layers, that cannot be cropped back, keep consistent) is not supported; "
                "recurrent_kv_cache_mode='per_loop' is")
    return None


# model types that take a 4D mask but place a token by its slot in the cache, not by the position a draft tree
# gives it: the tree's nodes (at slots past their positions) would be computed at other positions than in
# sequential decoding (chains are fine: their slots are their positions; drafting batches, whose ragged columns
# also put tokens past their positions, run row by row: batch_rows_alone)
_TREE_POSITION_BY_SLOT = {
    "mpt": "its ALiBi bias grows with a key's slot in the cache, not with its position",
    "trocr": "its forward takes no position_ids: it numbers positions from the cache length",
    "gpt_neo": "its local attention layers apply their window (and causality) by slot in the cache, not by position",
}

# learned absolute position embeddings: the config field that bounds the positions
_ABSOLUTE_POSITIONS = {
    "gpt2": "n_positions",
    "gpt_bigcode": "n_positions",
    "opt": "max_position_embeddings",
    "biogpt": "max_position_embeddings",
    "gpt_neo": "max_position_embeddings",
}


def _model_type(model) -> str:
    return str(getattr(model.config, "model_type", type(model).__name__))


def tree_mask_problem(model) -> str | None:
    """Why ``model`` cannot score a draft tree (a 4D attention mask), or None when it can."""
    mtype = _model_type(model)
    if mtype in _NO_4D_MASK:
        return _NO_4D_MASK[mtype]
    if mtype == "falcon" and getattr(model.config, "alibi", False):
        return "its ALiBi attention (config.alibi=True) takes only a 2D padding mask"
    from .decoding.hf_cache import attention_layout
    try:
        attention_layout(model)
    except ValueError as e:
        return str(e)
    return None


def check_models(target, draft) -> None:
    """Raise TypeError unless ``target`` (and ``draft``, when given) are causal LMs: torch modules with a config."""
    for model, role in ((target, "target"), (draft, "draft")):
        if role == "draft" and model is None:
            continue
        if not isinstance(model, torch.nn.Module) or getattr(model, "config", None) is None:
            raise TypeError(f"{role} must be a transformers causal language model (a torch.nn.Module with a "
                            f".config, e.g. from AutoModelForCausalLM.from_pretrained), got {type(model).__name__}")


def static_mask_problem(model, role: str) -> str | None:
    """Why ``model`` cannot run on the static engine, whose forwards pass an explicit 4D attention mask (None: it
    can)."""
    problem = tree_mask_problem(model)
    if problem is None:
        return None
    return (f"the static engine passes a 4D attention mask, which the {role} (model type {_model_type(model)!r}) "
            f"cannot take: {problem} (use cache_implementation='dynamic')")


def check_method_support(model, method: str, role: str) -> None:
    """Raise ValueError when ``model`` (``role``: "target" or "draft") cannot run ``method``."""
    if method == "autoregressive":
        return
    foreign = foreign_layers(model)
    if foreign:
        raise ValueError(f"method {method!r} cannot run: the {role} (model type {_model_type(model)!r}) keeps cache "
                         f"layers of its own ({', '.join(foreign)}) that fastdecode cannot roll back past rejected "
                         "drafts (transformers' assisted generation refuses such stateful models too). Use "
                         "method='autoregressive'")
    state_type = state_model_type(model)
    if state_type is not None:
        what = f"the {role} (model type {state_type!r}) keeps a recurrent state (linear-attention / SSM layers)"
        if method == "multi_draft":
            raise ValueError(f"method 'multi_draft' cannot run: {what}, through which the branches of a draft tree "
                             "cannot pass side by side. Use method='speculative'"
                             + ("" if state_type in CONTINUES_STATE else " or 'autoregressive'"))
        if state_type not in CONTINUES_STATE:
            raise ValueError(f"method {method!r} cannot run: {what}, which fastdecode rewinds past rejected drafts by "
                             "feeding the accepted tokens again; that is exact only for models whose forwards over "
                             f"several tokens continue the state, and model type {state_type!r} is not known to "
                             f"(tested: {', '.join(sorted(CONTINUES_STATE))}). Use method='autoregressive'")
    if method == "multi_draft":
        problem = tree_mask_problem(model) or _TREE_POSITION_BY_SLOT.get(_model_type(model))
        if problem is not None:
            raise ValueError(f"method 'multi_draft' needs a 4D tree attention mask, which the {role} (model type "
                             f"{_model_type(model)!r}) cannot take: {problem}. Use method='speculative' instead")


# model types whose attention code cannot decode a padded batch on top of a cache (OpenAI GPT's attention crashes
# on a padding mask there): every batch runs row by row
_BATCH_ROWS_ALONE = frozenset({"openai-gpt"})


def batch_rows_alone(method: str, target, draft) -> bool:
    """Whether a batch must run row by row for these models:
    - any method, on a target with cache layers of its own (:func:`~fastdecode.decoding.state_cache.foreign_layers`:
      its rows selected away would keep their state) or in :data:`_BATCH_ROWS_ALONE`;
    - plain decoding, on a target with recurrent state of a type not tested to continue it;
    - a drafting method, on a model with recurrent state (a batch's ragged columns would pass rejected drafts
      through it) or one that places tokens by cache slot (the ragged columns would shift them)."""
    if foreign_layers(target) or _model_type(target) in _BATCH_ROWS_ALONE:
        return True
    if method == "autoregressive":
        state_type = state_model_type(target)
        return state_type is not None and state_type not in CONTINUES_STATE
    return any(m is not None and (state_model_type(m) is not None or _model_type(m) in _TREE_POSITION_BY_SLOT)
               for m in (target, draft))


def check_token_ids(model, input_ids: torch.Tensor, role: str) -> None:
    """Raise ValueError when a prompt id is negative or past ``model``'s input embedding table."""
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0:
        raise ValueError(f"input_ids hold a negative token id ({lo})")
    rows = input_rows(model)
    if hi >= rows:
        raise ValueError(f"input_ids hold token id {hi}, but the {role} (model type {_model_type(model)!r}) has "
                         f"{rows} input embeddings (ids 0..{rows - 1}): was the prompt made by another tokenizer?")


def max_positions(model) -> int | None:
    """Number of positions a model with learned absolute position embeddings can encode (None: no such limit)."""
    field = _ABSOLUTE_POSITIONS.get(_model_type(model))
    value = getattr(model.config, field, None) if field else None
    return int(value) if value else None


def check_positions(model, prompt_len: int, max_new_tokens: int, role: str) -> None:
    """Raise ValueError when the positions fed to ``model`` (prompt + new tokens, the last one is never
    fed) would run past its absolute position embeddings."""
    limit = max_positions(model)
    needed = prompt_len + max_new_tokens - 1 if max_new_tokens > 0 else 0
    if limit is not None and needed > limit:
        field = _ABSOLUTE_POSITIONS[_model_type(model)]
        raise ValueError(f"the {role} (model type {_model_type(model)!r}) has learned absolute position embeddings "
                         f"for {limit} positions (config.{field}); a {prompt_len}-token prompt plus max_new_tokens="
                         f"{max_new_tokens} needs {needed}: shorten the prompt or lower max_new_tokens to "
                         f"{max(limit - prompt_len + 1, 0)}")


@contextlib.contextmanager
def eval_mode(*models):
    """Run ``models`` (None entries skipped) in eval mode; a model in training mode gets a warning, and every
    module's own training flag is restored on exit."""
    saved = []
    for model in models:
        if model is None or not any(m.training for m in model.modules()):
            continue
        warnings.warn(f"model type {_model_type(model)!r} is in training mode (dropout would make greedy output "
                      "random): fastdecode runs it in eval mode for this call and restores the mode afterwards; "
                      "call model.eval() to silence this", stacklevel=4)
        saved += [(m, m.training) for m in model.modules()]
        model.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def check_call(target, draft, method: str, input_ids: torch.Tensor, max_new_tokens: int) -> None:
    """Every check above for one generate() call (the draft only when the method uses it)."""
    models = [(target, "target")] + ([(draft, "draft")] if draft is not None and method != "autoregressive" else [])
    for model, role in models:   # (accelerate's offloaded weights sit on meta between forwards: not these)
        if getattr(model, "hf_device_map", None) is None and any(p.device.type == "meta" for p in model.parameters()):
            raise ValueError(f"the {role}'s weights are on the meta device, which holds no data (a model built "
                             "without its weights, or parts of it never loaded): load it onto a real device")
    check_token_ids(target, input_ids, "target")  # ids a smaller draft lacks are bridged (models.shared_vocab)
    for model, role in models:
        problem = unsupported_problem(model)
        if problem is not None:
            raise ValueError(f"the {role} (model type {_model_type(model)!r}) cannot be run by fastdecode: {problem}")
        check_method_support(model, method, role)
        check_positions(model, input_ids.shape[1], max_new_tokens, role)
