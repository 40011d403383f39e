"""Frozen, validated configuration objects, one per concern, and the one builder of a method's config.

Every public argument of :func:`fastdecode.generate` (and of ``fastdecode generate`` on the command
line) lands in one of these dataclasses; their ``__post_init__`` checks types and ranges and turns bad
input into a ``ValueError`` that names it. :func:`build_method_config` is the single place that decides
which method runs and rejects options that do not apply to it; ``generate()`` and the CLI both call it,
so the decoding loops can trust their configuration.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

from .hf_options import check_hf_options

METHODS = ("autoregressive", "speculative", "multi_draft", "entropy_switch", "prompt_lookup")

# documented defaults of generate(): its signature uses None for them, to tell "passed" from "left out"
DEFAULT_DRAFT_LENGTH = 4
DEFAULT_CONFIDENCE_THRESHOLD = 0.4
DEFAULT_MAX_DRAFT_LENGTH = 16


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplingConfig:
    """How logits become a distribution. Applied identically to p (target) and q (draft).

    temperature: 0 means greedy (the distribution is one-hot at the argmax).
    top_k: 0 disables it. top_p: 1.0 disables it. min_p: 0.0 disables it (after top-k and top-p, tokens less
    probable than min_p times the most probable one are dropped, as HF's min_p). typical_p (1.0: off),
    epsilon_cutoff and eta_cutoff (0.0: off): HF's warpers of those names, in HF's order after min_p; top_h
    (1.0: off): HF's, before top-k (see kernels/probs.py). Greedy decoding ignores the warpers after temperature.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    top_h: float = 1.0

    def __post_init__(self):
        t = self.temperature
        if not _is_number(t) or math.isnan(t) or t < 0 or math.isinf(t):
            raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {t!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {self.top_k!r}")
        p = self.top_p
        if not _is_number(p) or math.isnan(p) or not (0.0 < p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        m = self.min_p
        if not _is_number(m) or math.isnan(m) or not (0.0 <= m <= 1.0):
            raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {m!r}")
        m = self.typical_p
        if not _is_number(m) or math.isnan(m) or not (0.0 < m <= 1.0):
            raise ValueError(f"typical_p must be in (0, 1] (1 disables it), got {m!r}")
        m = self.top_h
        if not _is_number(m) or math.isnan(m) or not (0.0 < m <= 1.0):
            raise ValueError(f"top_h must be in (0, 1] (1 disables it), got {m!r}")
        for name in ("epsilon_cutoff", "eta_cutoff"):
            m = getattr(self, name)
            if not _is_number(m) or math.isnan(m) or not (0.0 <= m < 1.0):
                raise ValueError(f"{name} must be in [0, 1) (0 disables it), got {m!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_lengths(draft_length, max_draft_length, adaptive) -> None:
    if not _is_int(draft_length) or draft_length < 1:
        raise ValueError(f"draft_length must be an int >= 1, got {draft_length!r}")
    if not _is_int(max_draft_length) or max_draft_length < draft_length:
        raise ValueError(f"max_draft_length must be an int >= draft_length ({draft_length}), got {max_draft_length!r}")
    if not isinstance(adaptive, bool):
        raise ValueError(f"adaptive must be True or False, got {adaptive!r}")


FALLBACKS = ("measured", "estimated", "off")


def _check_fallback(fallback) -> None:
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Single-draft speculative decoding (Leviathan et al. / Chen et al.).

    draft_length: tokens drafted per step (gamma); with ``adaptive`` it is the starting length.
    adaptive: grow the draft length by 2 after a fully accepted draft, shrink it by 1 after a
        rejection (within [1, max_draft_length]), and stop drafting early when the draft's top
        probability falls below ``confidence_threshold`` (a number in [0, 1)). This only changes
        *how many* tokens are drafted, decided from the draft's own distribution, so the output law
        stays exactly p.
    verifier: "token" (the token-by-token rule of Leviathan et al.) or "block" (block verification,
        Sun et al.: the whole block decided jointly).
    fallback (adaptive only): when drafting does not pay, plain steps: "measured" (timed steps),
        "estimated" (acceptance against a cost ratio from the models' sizes; deterministic) or "off"
        (see :mod:`fastdecode.decoding.policy`).
    """

    draft_length: int = DEFAULT_DRAFT_LENGTH
    adaptive: bool = True
    max_draft_length: int = DEFAULT_MAX_DRAFT_LENGTH
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    verifier: str = "token"
    fallback: str = "measured"

    def __post_init__(self):
        _check_lengths(self.draft_length, self.max_draft_length, self.adaptive)
        _check_fallback(self.fallback)
        c = self.confidence_threshold
        if not _is_number(c) or not (0.0 <= c < 1.0):  # NaN fails the range test too
            raise ValueError(f"confidence_threshold must be a number in [0, 1), got {c!r}")
        if self.verifier not in ("token", "block"):
            raise ValueError(f"single-draft verifier must be 'token' or 'block', got {self.verifier!r}")


MULTI_DRAFT_VERIFIERS = ("rrs", "rrs_without_replacement", "spectr", "greedy_draft", "typical", "optimal")


@dataclass(frozen=True)
class MultiDraftConfig:
    """Multi-draft speculative decoding: k draft sequences of draft_length tokens, verified as a tree.

    The draft scheme follows from the verifier: "rrs_without_replacement" draws siblings without
    replacement, "greedy_draft" takes the draft's top k-1 tokens plus one sampled token, all other
    verifiers need i.i.d. drafts.
    """

    num_drafts: int = 2
    draft_length: int = DEFAULT_DRAFT_LENGTH
    verifier: str = "rrs"
    adaptive: bool = False       # tree depth: +2 after a fully accepted path, -1 after a rejection
    max_draft_length: int = DEFAULT_MAX_DRAFT_LENGTH   # upper bound of the adaptive depth

    def __post_init__(self):
        if not _is_int(self.num_drafts) or not (1 <= self.num_drafts <= 16):
            raise ValueError(f"num_drafts must be an int in [1, 16], got {self.num_drafts!r}")
        _check_lengths(self.draft_length, self.max_draft_length, self.adaptive)
        if self.verifier not in MULTI_DRAFT_VERIFIERS:
            raise ValueError(f"unknown multi-draft verifier {self.verifier!r}; choose one of {MULTI_DRAFT_VERIFIERS}")

    @property
    def scheme(self) -> str:
        return {"rrs_without_replacement": "without_replacement", "greedy_draft": "greedy"}.get(self.verifier, "iid")


@dataclass(frozen=True)
class PromptLookupConfig:
    """Prompt lookup (n-gram) speculation: drafts copied from the prompt and the generated text (no draft
    model needed; one, if given to ``generate``, drafts the steps without an n-gram match).

    prompt_lookup_num_tokens: the longest draft (Hugging Face's name and default, 10); with ``adaptive``
        also the starting length.
    max_matching_ngram_size / min_matching_ngram_size: the trailing n-gram looked up, longest n first,
        from the max (default 2, as Hugging Face) down to the min (default 1).
    adaptive: shrink the draft length by 1 after a rejection, grow it by 2 (up to
        prompt_lookup_num_tokens) after a fully accepted draft.
    verifier: "token" or "block", the single-draft rules applied with one-hot q.
    fallback: as :class:`SpeculativeConfig` ("estimated" never stops an n-gram draft: it costs no forward).
    """

    prompt_lookup_num_tokens: int = 10
    max_matching_ngram_size: int = 2
    min_matching_ngram_size: int = 1
    adaptive: bool = True
    verifier: str = "token"
    fallback: str = "measured"

    def __post_init__(self):
        _check_fallback(self.fallback)
        for name in ("prompt_lookup_num_tokens", "max_matching_ngram_size", "min_matching_ngram_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.min_matching_ngram_size > self.max_matching_ngram_size:
            raise ValueError(f"min_matching_ngram_size ({self.min_matching_ngram_size}) must be <= "
                             f"max_matching_ngram_size ({self.max_matching_ngram_size})")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {self.adaptive!r}")
        if self.verifier not in ("token", "block"):
            raise ValueError(f"prompt_lookup verifier must be 'token' or 'block', got {self.verifier!r}")

    @property
    def draft_length(self) -> int:  # the longest draft, under the names the rollback check reads
        return self.prompt_lookup_num_tokens

    @property
    def max_draft_length(self) -> int:
        return self.prompt_lookup_num_tokens


PROMPT_LOOKUP_OPTIONS = ("prompt_lookup_num_tokens", "max_matching_ngram_size", "min_matching_ngram_size")


DRAFT, TARGET = "draft", "target"


@dataclass(frozen=True)
class EntropySwitchConfig:
    """Options of ``method="entropy_switch"`` (extra keyword arguments of :func:`fastdecode.generate`).

    entropy_threshold: the threshold h* in bits; +inf = small model alone, -inf = large model alone. The default, 3.0,
        gave the demo code pair about 44% large-model tokens on stdlib line completion (bench/quality.py).
    entropy_window: w, number of recent entropies averaged (paper: 5).
    min_dwell: tokens a model generates after taking over before another switch is allowed (>= 1).
    start: which model computes the first entropy ("draft" or "target").
    speculate_when_large: the large model verifies drafts of the small one while active (lossless segments).
    draft_length: gamma, tokens drafted per verification when ``speculate_when_large`` (the same name as
        for speculative decoding; ``speculative_length`` is its deprecated alias in :func:`build_method_config`).
    vocab_size: number of real tokens; logit columns past it (vocabulary padding) are left out of the
        entropy. None: all columns.
    """

    entropy_threshold: float = 3.0
    entropy_window: int = 5
    min_dwell: int = 4
    start: str = DRAFT
    speculate_when_large: bool = False
    draft_length: int = 4
    vocab_size: int | None = None

    def __post_init__(self):
        t = self.entropy_threshold
        if not _is_number(t) or math.isnan(t):
            raise ValueError(f"entropy_threshold must be a number of bits (+inf / -inf allowed), got {t!r}")
        for name in ("entropy_window", "min_dwell", "draft_length"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.start not in (DRAFT, TARGET):
            raise ValueError(f"start must be 'draft' or 'target', got {self.start!r}")
        if not isinstance(self.speculate_when_large, bool):
            raise ValueError(f"speculate_when_large must be a bool, got {self.speculate_when_large!r}")
        v = self.vocab_size
        if v is not None and (not _is_int(v) or v < 2):
            raise ValueError(f"vocab_size must be None or an int >= 2, got {v!r}")


def build_method_config(method: str, has_draft: bool, *, num_drafts=1, verifier=None, draft_length=None,
                        adaptive_draft=None, max_draft_length=None, confidence_threshold=None, fallback=None,
                        **method_options):
    """Resolve ``method`` and build its configuration (see :func:`_method_config`); ``fallback`` (None: the
    configuration's default, "measured") applies to speculative and prompt_lookup only. Options of
    transformers' generate() that fastdecode does not take raise a ValueError that says what to do instead
    (:data:`~fastdecode.hf_options.HF_ONLY`)."""
    method_options = check_hf_options(method_options)
    method, cfg = _method_config(method, has_draft, num_drafts=num_drafts, verifier=verifier,
                                 draft_length=draft_length, adaptive_draft=adaptive_draft,
                                 max_draft_length=max_draft_length, confidence_threshold=confidence_threshold,
                                 **method_options)
    if fallback is not None:
        if not isinstance(cfg, (SpeculativeConfig, PromptLookupConfig)):
            raise ValueError(f"fallback= applies to method='speculative' and 'prompt_lookup', not to {method!r}")
        if not cfg.adaptive and fallback != "off":
            raise ValueError(f"fallback={fallback!r} applies only to an adaptive draft length (a fixed one never "
                             "falls back); drop it or pass adaptive_draft=True")
        cfg = dataclasses.replace(cfg, fallback=fallback)
    return method, cfg


def _method_config(method: str, has_draft: bool, *, num_drafts=1, verifier=None, draft_length=None,
                   adaptive_draft=None, max_draft_length=None, confidence_threshold=None, **method_options):
    """Resolve ``method`` and build its configuration: ``(method, config)``, config None for "autoregressive".

    The arguments are those of :func:`fastdecode.generate`; None (and ``num_drafts=1``) means "not given",
    which selects the documented default (draft_length 4, confidence_threshold 0.4, max_draft_length
    max(16, draft_length), adaptive on for speculative and off for multi_draft). "auto" is speculative
    when ``has_draft`` (multi_draft when num_drafts > 1), else autoregressive; with ``prompt_lookup_num_tokens``
    given (HF's switch for it), prompt_lookup.

    Raises ValueError for bad values and for options given that do not apply to the method:
    draft options (draft_length, adaptive_draft, max_draft_length, confidence_threshold, verifier,
    num_drafts) with autoregressive, the same except draft_length with entropy_switch (whose draft_length
    applies only with speculate_when_large=True; ``speculative_length`` is a deprecated alias of it),
    confidence_threshold with multi_draft, max_draft_length / confidence_threshold with
    adaptive_draft=False, num_drafts without multi_draft, entropy-switch options with other methods. "prompt_lookup" needs no draft model (one, if
    given, drafts the steps without an n-gram match), takes its own options (see
    :class:`PromptLookupConfig`), adaptive_draft and verifier ("token" / "block"), and none of the other
    draft options.
    """
    if not isinstance(method, str):
        raise ValueError(f"method must be a string, got {method!r}")
    if method == "auto" and method_options.get("prompt_lookup_num_tokens") is not None \
            and not (_is_int(num_drafts) and num_drafts > 1):
        method = "prompt_lookup"   # as HF generate: prompt_lookup_num_tokens asks for prompt lookup
    if method == "auto":
        method = ("multi_draft" if _is_int(num_drafts) and num_drafts > 1 else "speculative") if has_draft \
            else "autoregressive"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {('auto',) + METHODS}")
    if adaptive_draft is not None and not isinstance(adaptive_draft, bool):
        raise ValueError(f"adaptive_draft must be True, False or None (the method's default), got {adaptive_draft!r}")
    if confidence_threshold is not None and not _is_number(confidence_threshold):
        raise ValueError(f"confidence_threshold must be a number in [0, 1), got {confidence_threshold!r}")
    if method != "multi_draft" and num_drafts != 1:
        raise ValueError(f"num_drafts={num_drafts!r} applies to method='multi_draft' (or 'auto'), not to {method!r}")
    if method == "prompt_lookup":
        return method, _prompt_lookup_config(verifier, draft_length, adaptive_draft, max_draft_length,
                                             confidence_threshold, method_options)
    if method_options and method != "entropy_switch":
        raise ValueError(f"unexpected arguments for method {method!r}: {sorted(method_options)}")
    if method != "autoregressive" and not has_draft:
        raise ValueError(f"method {method!r} needs a draft model (draft=...)")

    if method in ("autoregressive", "entropy_switch"):
        if verifier is not None:
            raise ValueError(f"verifier= applies to speculative and multi_draft decoding, not to {method!r}")
        given = [name for name, v in (("draft_length", draft_length), ("adaptive_draft", adaptive_draft),
                                      ("max_draft_length", max_draft_length),
                                      ("confidence_threshold", confidence_threshold)) if v is not None]
        if method == "entropy_switch":
            given = [name for name in given if name != "draft_length"]
        if given:
            hint = (" (entropy_switch drafts only with speculate_when_large=True, draft_length tokens at a "
                    "time)" if method == "entropy_switch" else "")
            raise ValueError(f"{', '.join(given)} applies to speculative and multi_draft decoding, "
                             f"not to {method!r}{hint}")
        if method == "autoregressive":
            return method, None
        method_options = dict(method_options)
        if "speculative_length" in method_options:
            if draft_length is not None:
                raise ValueError("pass draft_length only (speculative_length is its deprecated alias), not both")
            warnings.warn("entropy_switch's speculative_length is deprecated: pass draft_length",
                          DeprecationWarning, stacklevel=3)
            draft_length = method_options.pop("speculative_length")
        if draft_length is not None:
            if method_options.get("speculate_when_large") is not True:
                raise ValueError("draft_length applies to entropy_switch only with speculate_when_large=True "
                                 "(the large model verifies draft_length tokens of the small one at a time)")
            method_options["draft_length"] = draft_length
        try:
            return method, EntropySwitchConfig(**method_options)
        except TypeError as e:
            raise ValueError(f"bad entropy_switch option: {e}") from None

    draft_length = DEFAULT_DRAFT_LENGTH if draft_length is None else draft_length
    if not _is_int(draft_length) or draft_length < 1:
        raise ValueError(f"draft_length must be an int >= 1, got {draft_length!r}")
    adaptive = (method == "speculative") if adaptive_draft is None else adaptive_draft
    if not adaptive:
        for name, v in (("max_draft_length", max_draft_length), ("confidence_threshold", confidence_threshold)):
            if v is not None:
                raise ValueError(f"{name} applies only to an adaptive draft length; drop it or pass adaptive_draft=True")
    if max_draft_length is None:
        max_draft_length = max(DEFAULT_MAX_DRAFT_LENGTH, draft_length)
    if method == "speculative":
        return method, SpeculativeConfig(
            draft_length, adaptive, max_draft_length,
            DEFAULT_CONFIDENCE_THRESHOLD if confidence_threshold is None else confidence_threshold,
            "token" if verifier is None else verifier)
    if confidence_threshold is not None:
        raise ValueError("confidence_threshold applies to method='speculative' (early stop of a single draft), "
                         "not to 'multi_draft'")
    return method, MultiDraftConfig(num_drafts=num_drafts, draft_length=draft_length,
                                    verifier="rrs" if verifier is None else verifier,
                                    adaptive=adaptive, max_draft_length=max_draft_length)


def _prompt_lookup_config(verifier, draft_length, adaptive_draft, max_draft_length,
                          confidence_threshold, options) -> PromptLookupConfig:
    given = [name for name, v in (("draft_length", draft_length), ("max_draft_length", max_draft_length),
                                  ("confidence_threshold", confidence_threshold)) if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} does not apply to method 'prompt_lookup': its longest draft is "
                         "prompt_lookup_num_tokens (default 10)")
    unknown = sorted(set(options) - set(PROMPT_LOOKUP_OPTIONS))
    if unknown:
        raise ValueError(f"unexpected arguments for method 'prompt_lookup': {unknown}; "
                         f"its options are {list(PROMPT_LOOKUP_OPTIONS)}")
    return PromptLookupConfig(**options, adaptive=True if adaptive_draft is None else adaptive_draft,
                              verifier="token" if verifier is None else verifier)
