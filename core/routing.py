"""Which channel serves a request, and in what order the others are tried: the highest priority first, weighted
within a priority, channels that keep failing taken out (a circuit breaker) and probed back in, Retry-After honoured."""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.config import Channel, Model, Routing


@dataclass(slots=True)
class ChannelState:
    failures: int = 0  # in a row
    closed_until: float = 0.0  # out of the rotation until then (the breaker, or the upstream's Retry-After)
    probe_started: float = 0.0  # when one request began trying it again after it was out (0: none)


def channel_key(channel: Channel) -> tuple[str, str]:
    return channel.provider.name, channel.upstream_model


class Router:
    """Per-process channel health. Not shared between workers: each finds a failing channel out by itself,
    after `breaker_failures` failures in a row, and each probes it again after `breaker_seconds`."""

    def __init__(self, settings: Routing, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        self.states: dict[tuple[str, str], ChannelState] = {}

    def order(self, model: Model, now: float) -> list[Channel]:
        """The channels to try, in order: by priority, weighted at random within one, the available ones
        before those taken out (which are still tried, last, rather than refusing the request)."""
        channels = model.channels
        if len(channels) == 1:
            return list(channels)
        ranked: list[Channel] = []
        i = 0
        while i < len(channels):  # channels come sorted by priority
            j = i
            while j < len(channels) and channels[j].priority == channels[i].priority:
                j += 1
            ranked += self._weighted(list(channels[i:j]))
            i = j
        available = [c for c in ranked if self._available(c, now)]
        return available + [c for c in ranked if c not in available]

    def _weighted(self, group: list[Channel]) -> list[Channel]:
        """The group in a random order where each channel comes first in proportion to its weight."""
        out = []
        while group:
            pick = self.rng.choices(range(len(group)), weights=[c.weight for c in group])[0]
            out.append(group.pop(pick))
        return out

    def _available(self, channel: Channel, now: float) -> bool:
        state = self.states.get(channel_key(channel))
        if state is None:
            return True
        probe_running = state.probe_started and now - state.probe_started < self.settings.breaker_seconds
        return now >= state.closed_until and not probe_running

    def trying(self, channel: Channel, now: float) -> None:
        """A request is about to use the channel: if it was out, this request is the probe, and the others
        keep away from it until the probe's outcome (or until a probe that never ends is old)."""
        state = self.states.get(channel_key(channel))
        if state is not None and state.failures >= self.settings.breaker_failures and now >= state.closed_until:
            state.probe_started = now

    def succeeded(self, channel: Channel) -> None:
        state = self.states.get(channel_key(channel))
        if state is not None:
            state.failures, state.closed_until, state.probe_started = 0, 0.0, 0.0

    def failed(self, channel: Channel, now: float, retry_after: float | None = None) -> None:
        """A failure before the answer started. The channel rests for the upstream's Retry-After when it gave
        one (it said when it will take requests again: no longer); otherwise after `breaker_failures` failures
        in a row (or a failed probe) it is out for `breaker_seconds`."""
        state = self.states.setdefault(channel_key(channel), ChannelState())
        state.failures += 1
        rest = retry_after or 0.0
        if not rest and state.failures >= self.settings.breaker_failures:
            rest = self.settings.breaker_seconds
        state.closed_until = max(state.closed_until, now + rest) if rest else state.closed_until
        state.probe_started = 0.0

    def retry_after(self, model: Model, now: float) -> float | None:
        """Seconds until the first of the model's channels is back, when every one is resting."""
        waits = [self.states[channel_key(c)].closed_until - now for c in model.channels
                 if channel_key(c) in self.states]
        if len(waits) < len(model.channels) or min(waits) <= 0:
            return None
        return min(waits)

    def is_out(self, channel: Channel, now: float) -> bool:
        state = self.states.get(channel_key(channel))
        return state is not None and now < state.closed_until
