"""The method and sampling configurations (fastdecode.config): types and ranges, defaults, and the one
builder that api.generate and the CLI share."""
import pytest


@pytest.mark.parametrize("cls,kw,match", [
    ("SpeculativeConfig", dict(draft_length=True), "draft_length"),
    ("SpeculativeConfig", dict(draft_length=2.0), "draft_length"),
    ("SpeculativeConfig", dict(max_draft_length=True), "max_draft_length"),
    ("SpeculativeConfig", dict(confidence_threshold="0.4"), "confidence_threshold"),
    ("SpeculativeConfig", dict(confidence_threshold=None), "confidence_threshold"),
    ("SpeculativeConfig", dict(adaptive=1), "adaptive"),
    ("SpeculativeConfig", dict(verifier="rrs"), "verifier"),
    ("MultiDraftConfig", dict(adaptive="yes"), "adaptive"),
    ("MultiDraftConfig", dict(max_draft_length=2.5), "max_draft_length"),
    ("MultiDraftConfig", dict(num_drafts=True), "num_drafts"),
    ("SamplingConfig", dict(top_k=True), "top_k"),
    ("EntropySwitchConfig", dict(min_dwell=True), "min_dwell"),
])
def test_configs_check_types_and_ranges(cls, kw, match):
    from fastdecode import config
    with pytest.raises(ValueError, match=match):
        getattr(config, cls)(**kw)


def test_build_method_config_resolves_and_defaults():
    from fastdecode.config import (EntropySwitchConfig, MultiDraftConfig, SpeculativeConfig,
                                   build_method_config)
    from fastdecode.decoding import entropy_switch
    assert entropy_switch.EntropySwitchConfig is EntropySwitchConfig  # still importable from the old place
    assert build_method_config("auto", False) == ("autoregressive", None)
    assert build_method_config("auto", True) == ("speculative", SpeculativeConfig())
    m, cfg = build_method_config("auto", True, num_drafts=3, verifier="optimal")
    assert m == "multi_draft" and cfg == MultiDraftConfig(num_drafts=3, verifier="optimal")
    m, cfg = build_method_config("speculative", True, draft_length=20)
    assert cfg.max_draft_length == 20 and cfg.adaptive and cfg.confidence_threshold == 0.4
    m, cfg = build_method_config("entropy_switch", True, speculate_when_large=True, draft_length=6)
    assert cfg == EntropySwitchConfig(speculate_when_large=True, draft_length=6)
    with pytest.warns(DeprecationWarning, match="speculative_length is deprecated"):  # the old name still works
        assert build_method_config("entropy_switch", True, speculate_when_large=True, speculative_length=6)[1] == cfg
