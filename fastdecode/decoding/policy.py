"""How many tokens the next speculative step drafts: the one policy of the dynamic and the static engine.

- Fixed (``adaptive=False``): always ``draft_length`` (less near the end of the budget).
- Adaptive: +2 after a fully accepted draft, -1 after a rejection, within [1, max_draft_length].
- Fallback (adaptive only): a step with gamma = 1 emits 1 + alpha_1 tokens on average (alpha_1: how often the
  first drafted token is accepted) for the cost of one target forward plus one draft forward, so it pays
  only while alpha_1 > c, c = (cost of a draft forward) / (cost of a target forward). When the last
  ``window`` drafting steps show alpha_1 <= c, the next ``pause`` steps decode plainly (gamma = 0, one target
  forward each), then one step drafts a single token to probe again; acceptance that recovers ends
  the pause. c is estimated from the models' sizes (the larger of the parameter ratio and the layer
  ratio: compute-bound and launch-bound forwards), so the policy is deterministic: a seed still fixes
  the output.

Every decision uses past outcomes only, never the tokens about to be drafted, so the output law is
exactly the target's whatever the policy does.
"""
from __future__ import annotations

from collections import deque

from ..config import SpeculativeConfig


def cost_ratio(target, draft) -> float:
    """Estimated cost of one draft forward relative to one target forward (both models' sizes)."""
    def size(m):
        cfg = m.config.get_text_config(decoder=True) if hasattr(m.config, "get_text_config") else m.config
        return sum(p.numel() for p in m.parameters()), max(1, int(getattr(cfg, "num_hidden_layers", 1) or 1))
    (pt, lt), (pd, ld) = size(target), size(draft)
    return max(pd / max(pt, 1), ld / lt)


class DraftLengthPolicy:
    """cost: the draft/target cost ratio c of the fallback; None: no fallback (drafts that cost no
    forward, e.g. n-gram lookups, or per-row lengths in a batch, whose forwards are shared)."""

    def __init__(self, spec: SpeculativeConfig, cost: float | None, window: int = 16, pause: int = 8):
        self.spec, self.cost, self.window, self.pause = spec, cost, window, pause
        self.gamma = spec.draft_length
        self.first_accepted: deque[bool] = deque(maxlen=window)
        self.paused = 0          # plain steps left before the next probe
        self.plain_steps = 0     # steps decoded without a draft because drafting did not pay

    def next_length(self, remaining: int) -> int:
        """Draft length of the next step (0: a plain target step), given the tokens left in the budget."""
        if self.paused > 0:
            self.paused -= 1
            self.plain_steps += 1
            return 0
        gamma = 1 if self.probing else self.gamma
        return max(0, min(gamma, remaining - 1))

    @property
    def probing(self) -> bool:
        return self.spec.adaptive and len(self.first_accepted) == self.window and not self._pays()

    def _pays(self) -> bool:
        return self.cost is None or sum(self.first_accepted) / len(self.first_accepted) > self.cost

    def update(self, drafted: int, accepted: int) -> None:
        """Record a step that drafted ``drafted`` tokens of which the first ``accepted`` were kept."""
        if drafted == 0 or not self.spec.adaptive:
            return
        self.first_accepted.append(accepted > 0)
        self.gamma = min(self.gamma + 2, self.spec.max_draft_length) if accepted == drafted else max(1, self.gamma - 1)
        if len(self.first_accepted) == self.window and not self._pays():
            self.paused = self.pause
