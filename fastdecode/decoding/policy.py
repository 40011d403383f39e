"""How many tokens the next speculative step drafts: the one policy of the dynamic and the static engine.

- Fixed (``adaptive=False``): always ``draft_length`` (less near the end of the budget).
- Adaptive: +2 after a fully accepted draft, -1 after a rejection, within [1, max_draft_length].
- Fallback to plain decoding (adaptive only), one of ``config.FALLBACKS``:
  - ``"measured"`` (:class:`MeasuredSwitch`): the wall time of every step is measured, and drafting steps
    are taken only while they give more tokens per second than plain steps (timed now and then). This is
    what makes speculation never cost more than plain decoding on the machine at hand, whatever the
    models' sizes, the device, the batch or the verification cost. Timings differ between runs, so with
    sampling the same seed may give other (equally distributed) tokens.
  - ``"estimated"``: a step with gamma = 1 emits 1 + alpha_1 tokens on average (alpha_1: how often the
    first drafted token is accepted) for the cost of one target forward plus one draft forward, so it pays
    only while alpha_1 > c, c = (cost of a draft forward) / (cost of a target forward) estimated from the
    models' sizes (the larger of the parameter ratio and the layer ratio: compute-bound and launch-bound
    forwards). When the last ``window`` drafting steps show alpha_1 <= c, the next ``pause`` steps decode
    plainly (gamma = 0, one target forward each), then one step drafts a single token to probe again;
    acceptance that recovers ends the pause. Deterministic: a seed fixes the output.
  - ``"off"``: always draft.
  ``generate`` picks "measured" unless a seed or generator is given with sampling ("estimated" then).

Every decision uses past outcomes and past timings only, never the tokens about to be drafted, so the
output law is exactly the target's whatever the policy does.
"""
from __future__ import annotations

import statistics
import time
from collections import deque

from ..config import SpeculativeConfig
from ..kernels.cpu_linear import runs_packed


def cost_ratio(target, draft) -> float:
    """Estimated cost of one draft forward relative to one target forward (both models' sizes)."""
    def size(m):
        cfg = m.config.get_text_config(decoder=True) if hasattr(m.config, "get_text_config") else m.config
        return sum(p.numel() for p in m.parameters()), max(1, int(getattr(cfg, "num_hidden_layers", 1) or 1))
    (pt, lt), (pd, ld) = size(target), size(draft)
    return max(pd / max(pt, 1), ld / lt)


class MeasuredSwitch:
    """Drafting steps or plain steps, whichever has given more tokens per second lately (``fallback="measured"``).

    A step's time is the wall time between two calls of :meth:`draft_next`: it covers the whole step,
    including the host sync that reads the verdict, so on a GPU it is the device time too. The first step
    of a call is not timed (it carries the prompt's prefill). Rates are tokens over seconds of the last
    ``window`` steps of a kind, steps slower than 10x the median left out (a step that recorded a graph).
    A switch can serve several calls in a row (:meth:`restart`, :func:`measured_switch`): its timings, its
    count of steps since plain decoding was last timed and a pause under way carry over.

    Schedule: draft first; once ``probe`` drafting steps are timed, take ``probe`` plain steps to time plain
    decoding; then the rates decide: plain decoding takes over only when it is faster by more than
    ``margin`` (drafting's rate moves with the text: a hard passage must not stop it for long). While
    drafting wins, two plain steps re-time plain decoding every ``reprobe`` steps (the costs move with the
    context length). While plain decoding wins, ``pause`` plain steps (doubling while drafting keeps losing,
    up to ``longest_pause``) are followed by ``probe`` drafting steps that re-time drafting from scratch (its
    acceptance may have come back). A probe can cost several plain steps (a batch's wide n-gram drafts: ~3x),
    so the pauses grow long enough to make the probes' share small (3 in 259 steps at the longest).
    """

    def __init__(self, window: int = 16, probe: int = 3, pause: int = 8, reprobe: int = 64, margin: float = 1.05,
                 longest_pause: int = 256, clock=time.perf_counter):
        self.probe, self.pause, self.reprobe, self.margin, self.clock = probe, pause, reprobe, margin, clock
        self.longest_pause = longest_pause
        # drafting? -> (tokens, seconds, steps): a sample is one step, or plain steps queued together
        self.samples = {kind: deque(maxlen=window) for kind in (True, False)}
        self.since_plain = 0                  # drafting steps since the last plain one
        self.rates: dict[str, float] = {}     # tokens/s of each kind at the last comparison
        self.plan: deque[bool] = deque()      # the kinds of the next steps, decided in advance
        self.losses = 0                       # consecutive comparisons lost by drafting
        self.restart()

    def restart(self) -> None:
        """Start a new call: its first step is untimed; the timings, a pause under way and its length carry
        over (a run of short calls where plain decoding wins does not re-time drafting in each)."""
        self.kind: bool | None = None         # the kind of the step running now
        self.timed = False                    # whether the running step is timed
        self.started = 0.0
        self.tokens = 1                       # tokens the running step emitted (a plain step: one)
        self.steps = 1                        # steps it stands for (plain steps queued together: several)

    def inherit(self, other: "MeasuredSwitch") -> None:
        """Start from ``other``'s knowledge when this switch has none of its own: its timed steps, its plan
        (a pause under way) and its count of lost comparisons. A batch keeps one switch per number of live
        rows; when rows finish, the next count's costs are close to the last one's, and without this every new
        count would first spend ``probe`` drafting and ``probe`` plain steps re-learning what the batch
        already knew (measured: most of the loss of batched speculation where plain steps win)."""
        if any(self.samples.values()):
            return
        for kind in (True, False):
            self.samples[kind].extend(other.samples[kind])
        self.plan.extend(other.plan)
        self.losses, self.since_plain, self.rates = other.losses, other.since_plain, dict(other.rates)

    def emitted(self, tokens: int, steps: int = 1) -> None:
        """The running step emitted ``tokens`` tokens (as ``steps`` steps: plain steps queued together)."""
        self.tokens, self.steps = tokens, steps

    def rate(self, drafting: bool) -> float | None:
        """Tokens per second of the timed steps of a kind (None: fewer than ``probe`` of them; queued plain
        steps count as the steps they are, and their time per step is what the outlier cut compares)."""
        s = self.samples[drafting]
        if sum(st for _, _, st in s) < self.probe:
            return None
        cut = 10 * statistics.median(t / st for _, t, st in s)
        kept = [(n, t) for n, t, st in s if t / st <= cut]
        return sum(n for n, _ in kept) / max(sum(t for _, t in kept), 1e-12)

    def draft_next(self) -> bool:
        """Call once at the start of every step: True = draft, False = a plain step."""
        now = self.clock()
        if self.kind is not None and self.timed:
            self.samples[self.kind].append((self.tokens, now - self.started, self.steps))
        self.timed = self.kind is not None    # the first step of the call is not timed
        self.kind, self.started, self.tokens, self.steps = self._choose(), now, 1, 1
        self.since_plain = 0 if not self.kind else self.since_plain + 1
        return self.kind

    def _choose(self) -> bool:
        if self.plan:
            return self.plan.popleft()
        draft, plain = self.rate(True), self.rate(False)
        if draft is None:
            return True
        if plain is None:
            self.plan.extend([False] * (self.probe - 1))
            return False
        self.rates = dict(drafting=draft, plain=plain)
        if plain > self.margin * draft:
            self.losses += 1
            n = min(self.pause << min(self.losses - 1, 16), self.longest_pause)
            self.samples[True].clear()    # the probe after the pause times drafting afresh
            self.plan.extend([False] * (n - 1) + [True] * self.probe)
            return False
        self.losses = 0
        if self.since_plain >= self.reprobe:
            self.plan.append(False)
            return False
        return True


class DraftLengthPolicy:
    """cost: the draft/target cost ratio c of the "estimated" fallback; switch: the "measured" one; neither:
    no fallback (drafts that cost no forward, e.g. n-gram lookups with the estimated rule, or per-row lengths
    in a batch, whose plain-or-draft choice is made once for the whole batch)."""

    def __init__(self, spec: SpeculativeConfig, cost: float | None, window: int = 16, pause: int = 8,
                 switch: MeasuredSwitch | None = None):
        self.spec, self.cost, self.window, self.pause, self.switch = spec, cost, window, pause, switch
        self.gamma = spec.draft_length
        self.first_accepted: deque[bool] = deque(maxlen=window)
        self.paused = 0          # plain steps left before the next probe
        self.plain_steps = 0     # steps decoded without a draft because drafting did not pay

    def next_length(self, remaining: int) -> int:
        """Draft length of the next step (0: a plain target step), given the tokens left in the budget.
        Call it once per step: the measured fallback times the steps between calls."""
        if self.paused > 0 or (self.switch is not None and not self.switch.draft_next()):
            self.paused = max(self.paused - 1, 0)
            self.plain_steps += 1
            return 0
        gamma = 1 if self.probing else self.gamma
        return max(0, min(gamma, remaining - 1))

    def plain_run(self, most: int) -> int:
        """Right after :meth:`next_length` returned 0: how many plain steps in a row, this one included and at
        most ``most``, the policy has already decided on (a pause under way, or the measured switch's plan).
        They are taken from the plan now, so the caller can queue them on the device with one host read; the
        measured switch times them as one step of that many tokens. The decisions are those of one call per
        step (no timing or acceptance enters a plan already made)."""
        n = 1
        while n < most:
            if self.paused > 0:
                self.paused -= 1
            elif self.switch is not None and self.switch.plan and self.switch.plan[0] is False:
                self.switch.plan.popleft()
            else:
                break
            n += 1
            self.plain_steps += 1
        if self.switch is not None:
            self.switch.emitted(n, steps=n)
        return n

    @property
    def probing(self) -> bool:
        return self.spec.adaptive and len(self.first_accepted) == self.window and not self._pays()

    def _pays(self) -> bool:
        return self.cost is None or sum(self.first_accepted) / len(self.first_accepted) > self.cost

    def update(self, drafted: int, accepted: int) -> None:
        """Record a step that drafted ``drafted`` tokens of which the first ``accepted`` were kept."""
        if drafted == 0 or not self.spec.adaptive:
            return
        if self.switch is not None:
            self.switch.emitted(accepted + 1)
        self.first_accepted.append(accepted > 0)
        self.gamma = min(self.gamma + 2, self.spec.max_draft_length) if accepted == drafted else max(1, self.gamma - 1)
        if len(self.first_accepted) == self.window and not self._pays():
            self.paused = self.pause

    def report(self, stats) -> None:
        """The fallback in effect, the plain steps it took (and the measured rates) into ``stats.extra``."""
        if self.spec.adaptive:
            report_fallback(stats, self.plain_steps, self.switch,
                            "measured" if self.switch else "estimated" if self.cost is not None else "off")


def report_fallback(stats, plain_steps: int, switch: MeasuredSwitch | None, fallback: str) -> None:
    stats.extra["fallback"] = fallback
    if plain_steps:
        stats.extra["plain_steps"] = plain_steps
    if switch is not None and switch.rates:
        stats.extra["measured_tokens_per_s"] = {k: round(v, 1) for k, v in switch.rates.items()}


def measured_switch(target, *key) -> MeasuredSwitch:
    """The switch of the last ``generate`` call with the same target and ``key`` (draft, method, engine, batch
    size, greedy or not; and whether the target's linear layers run packed, which changes every cost), restarted,
    so that a run of short calls does not re-time plain decoding in each (it is kept on the target,
    ``_fastdecode_step_switches``); a new one for a new key."""
    memory = target.__dict__.setdefault("_fastdecode_step_switches", {})
    sw = memory.setdefault(key + (runs_packed(target),), MeasuredSwitch())
    sw.restart()
    return sw


def policy_for(spec, target, draft, *key) -> DraftLengthPolicy:
    """The draft-length policy of one sequence under ``spec.fallback`` (``draft`` None: drafts that cost no
    forward, which the estimated rule never stops); ``key``: see :func:`measured_switch`."""
    fallback = spec.fallback if spec.adaptive else "off"
    cost = cost_ratio(target, draft) if fallback == "estimated" and draft is not None else None
    switch = measured_switch(target, id(draft), *key) if fallback == "measured" else None
    return DraftLengthPolicy(spec, cost, switch=switch)
