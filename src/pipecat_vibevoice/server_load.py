"""How busy this server is, and whether it can take one more conversation.

A voice server past its capacity must refuse the next caller rather than make every
caller stutter: audio that misses its deadline is heard by everybody at once. What the
box can carry is not a fixed number (the machine, the voice, the length of replies and
how often people talk all move it), so it is measured while the server runs.

:class:`LoadMonitor` samples, every ``sample_secs``:

* **CPU**: cores busy on the whole machine (``/proc/stat``; time of niced processes
  counts as idle, as they yield to us) and in this process (``time.process_time``);
* **event-loop lag**: how late a timer on this loop fires (every conversation's audio
  moves through this loop);
* any extra **probes** the owner adds (the bot: how long the oldest final transcript
  has waited for speech recognition).

:class:`Admission` turns that into one rule for every new connection:

* a hard ``max_sessions`` cap, if set;
* refuse while the server is already **overloaded** now (machine CPU above the budget,
  the event loop late, or speech recognition behind);
* else refuse if one more conversation would not fit: its predicted cores at
  ``sessions + 1`` conversations exceed ``budget × cores``.

The prediction (:class:`CostCurve`) is learned from this process's own CPU while it
serves: a slow average (``learn_secs``) of its cores at each number of live
conversations seen in the last ``forget_secs``, and through those points a curve
``scale × n ** exponent``, least squares in log-log, each point weighed by its samples
up to two averaging spans (a long spell at one count does not outweigh the others, a
new count only nudges the curve). A curve, not ``n ×`` an average, because a
conversation costs less the more there are: final transcripts are decoded together and
optional work (interim transcripts) is shed under load. On the project's 2-core box
the bot used 0.29-0.37 cores alone, 0.83-0.99 at four, 1.15-1.23 at six and 1.28-1.47
at eight (``n ** 0.63-0.78``); an average learned at four (0.21-0.22 each) refused an
eighth conversation that the box serves to the goals, and so did a straight line
through the counts. Until the counts measured span ``MIN_COUNT_SPAN`` (say 2 and 6)
the cost is ``prior_session_cores`` per conversation, on a line through the most
conversations measured. The exponent stays within
``MIN_COST_EXPONENT``..1, and a count counts after ``MIN_SAMPLES`` samples, so a burst of
new, still silent sessions makes conversations look cheap only slowly; a room of
sessions silent for long does look cheaper, and the overload signals are the backstop.

Both report to ``/health`` (``load``) and ``/metrics``, so a load balancer or an
autoscaler reads the same signal the server admits by. Nothing here imports Pipecat.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger


def usable_cores() -> float:
    """CPU cores this process may run on (its affinity mask, else the CPU count)."""
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 1)


def read_machine_cpu() -> tuple[float, float] | None:
    """``(busy, total)`` CPU seconds of the whole machine since boot (Linux), else None.

    Busy is user + system + irq + softirq + steal; time in niced processes counts as
    idle: they run only when nothing of normal priority wants the core.
    """
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    busy = user + system + irq + softirq + steal
    return busy / tick, (busy + nice + idle + iowait) / tick


#: Below this busy share (smoothed) the machine has room for optional work.
SLACK_SHARE = 0.6
#: Samples (of ``sample_secs``) at one number of conversations before it counts.
MIN_SAMPLES = 20
#: Share of the cores conversations may take in all: room for the bursts of
#: conversations that talk at once. On the project's 2-core box it admits the 8
#: conversations served to the goals there (README, capacity curve).
DEFAULT_BUDGET_SHARE = 0.75
#: Cores one more conversation is assumed to take until measured: a little over what
#: the eighth cost on that box.
DEFAULT_SESSION_CORES = 0.18
#: The learned curve's exponent is at least this (0.63-0.78 measured on the 2-core box):
#: a room of silent sessions says little about what they cost once they talk.
MIN_COST_EXPONENT = 0.6
#: The curve is fitted only once the counts measured span this ratio (most / fewest).
MIN_COUNT_SPAN = 3.0


@dataclass(frozen=True)
class LoadSample:
    """One look at the server's load."""

    machine_busy_share: float  # 0..1 of all cores, over the last sample interval
    process_cores: float  # cores this process kept busy, over the last interval
    loop_lag_ms: float  # worst timer lateness over the last ``window_secs``
    probes: dict[str, float]
    interval_s: float = 0.0  # the interval the CPU figures cover


class LoadMonitor:
    """Samples CPU, event-loop lag and the owner's probes while the server runs."""

    def __init__(
        self,
        *,
        sample_secs: float = 0.5,
        lag_every_secs: float = 0.05,
        window_secs: float = 3.0,
        probes: dict[str, Callable[[], float]] | None = None,
    ) -> None:
        self.cores = usable_cores()
        self.sample_secs = sample_secs
        self.lag_every_secs = lag_every_secs
        self.probes: dict[str, Callable[[], float]] = dict(probes or {})
        self._lags: deque[tuple[float, float]] = deque()
        self._window = window_secs
        self._task: asyncio.Task | None = None
        self._machine_share = 0.0
        self._process_cores = 0.0
        self._interval = 0.0
        self._machine_share_smoothed = 0.0
        self._listeners: list[Callable[[LoadSample], None]] = []

    def add_listener(self, listener: Callable[[LoadSample], None]) -> None:
        """Call ``listener`` with every new sample (on the event loop)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Start sampling on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="load-monitor")

    async def stop(self) -> None:
        """Stop sampling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def sample(self) -> LoadSample:
        """The latest figures."""
        now = time.monotonic()
        while self._lags and self._lags[0][0] < now - self._window:
            self._lags.popleft()
        probes = {}
        for name, probe in self.probes.items():
            try:
                probes[name] = float(probe())
            except Exception as exc:  # a probe must never break admission
                logger.debug(f"load probe {name} failed: {exc!r}")
        return LoadSample(
            machine_busy_share=self._machine_share,
            process_cores=self._process_cores,
            loop_lag_ms=max((lag for _, lag in self._lags), default=0.0) * 1000,
            probes=probes,
            interval_s=self._interval,
        )

    @property
    def smoothed_busy_share(self) -> float:
        """The machine's busy share averaged over ~2 s (one sample is too noisy to act on)."""
        return self._machine_share_smoothed

    def has_slack(self, share: float = SLACK_SHARE) -> bool:
        """Whether optional work (interim transcripts) may run: the machine is below
        ``share`` busy (smoothed over ~2 s) and the event loop is on time."""
        return self._machine_share_smoothed < share and self.sample().loop_lag_ms < 50

    async def _run(self) -> None:
        machine = read_machine_cpu()
        process = time.process_time()
        last_sample = time.monotonic()
        while True:
            expected = time.monotonic() + self.lag_every_secs
            await asyncio.sleep(self.lag_every_secs)
            now = time.monotonic()
            self._lags.append((now, max(0.0, now - expected)))
            if now - last_sample < self.sample_secs:
                continue
            elapsed, last_sample = now - last_sample, now
            self._interval = elapsed
            process_now = time.process_time()
            self._process_cores = (process_now - process) / elapsed
            process = process_now
            machine_now = read_machine_cpu()
            if machine is not None and machine_now is not None:
                busy, total = machine_now[0] - machine[0], machine_now[1] - machine[1]
                self._machine_share = busy / total if total > 0 else 0.0
            else:  # no /proc/stat: this process is all we can see
                self._machine_share = min(1.0, self._process_cores / self.cores)
            machine = machine_now
            alpha = min(1.0, elapsed / 2.0)
            self._machine_share_smoothed += alpha * (
                self._machine_share - self._machine_share_smoothed
            )
            sample = self.sample()
            for listener in self._listeners:
                listener(sample)


@dataclass(frozen=True)
class Refusal:
    """Why a new conversation is refused (sent to the client before the close)."""

    reason: str  # "session limit" | "overloaded" | "at capacity"
    message: str


@dataclass(frozen=True)
class CostCurve:
    """Cores this process uses with ``n`` live conversations: ``base + scale × n ** exponent``."""

    base: float
    scale: float
    exponent: float

    def cores(self, sessions: float) -> float:
        """Predicted cores with ``sessions`` live conversations."""
        return self.base + self.scale * sessions**self.exponent

    def step(self, sessions: int) -> float:
        """What one more conversation beside ``sessions`` costs."""
        return self.cores(sessions + 1) - self.cores(sessions)

    def fits(self, budget_cores: float) -> int:
        """The most conversations whose predicted cores stay within ``budget_cores``."""
        room = (budget_cores - self.base) / self.scale
        if room <= 0:
            return 0
        # The epsilon: 1.4 / 0.2 is 6.999… in floating point, and 7 fit.
        return int(room ** (1.0 / self.exponent) + 1e-9)

    def describe(self) -> dict[str, float]:
        """The curve's terms, for ``/health``."""
        return {
            "base": round(self.base, 3),
            "scale": round(self.scale, 3),
            "exponent": round(self.exponent, 3),
        }


@dataclass
class _MeanCores:
    """The process's cores at one number of live conversations: the mean of its first
    samples, then a slow average (``alpha`` per sample)."""

    value: float = 0.0
    samples: int = 0
    updated: float = float("-inf")

    def add(self, cores: float, alpha: float, now: float) -> None:
        self.samples += 1
        self.value += max(alpha, 1.0 / self.samples) * (cores - self.value)
        self.updated = now


class Admission:
    """Whether one more conversation fits (see the module doc)."""

    def __init__(
        self,
        monitor: LoadMonitor,
        *,
        budget_share: float = DEFAULT_BUDGET_SHARE,
        prior_session_cores: float = DEFAULT_SESSION_CORES,
        max_sessions: int = 0,
        max_loop_lag_ms: float = 150.0,
        max_probe: dict[str, float] | None = None,
        learn_secs: float = 30.0,
        forget_secs: float = 600.0,
        enabled: bool = True,
    ) -> None:
        if not 0 < budget_share <= 1:
            raise ValueError(f"budget_share must be in (0, 1], got {budget_share}")
        if prior_session_cores <= 0:
            raise ValueError(f"prior_session_cores must be > 0, got {prior_session_cores}")
        self.monitor = monitor
        self.budget_share = budget_share
        self.max_sessions = max_sessions
        self.max_loop_lag_ms = max_loop_lag_ms
        self.max_probe = dict(max_probe or {})
        self.enabled = enabled
        self.prior_session_cores = prior_session_cores
        self._idle_cores = 0.0
        self._learn_secs = learn_secs
        self._forget_secs = forget_secs
        self._cores_at: dict[int, _MeanCores] = {}  # live conversations -> process cores
        self._sessions = 0
        self.refused: dict[str, int] = {}
        monitor.add_listener(self._learn)

    @property
    def budget_cores(self) -> float:
        """Cores conversations may use in all."""
        return self.budget_share * self.monitor.cores

    def cost_curve(self) -> CostCurve:
        """Cores for ``n`` conversations, learned (module doc)."""
        now = time.monotonic()
        # Each count weighs by its samples up to two averaging spans' worth: a new count
        # (a burst of new sessions) nudges the curve, established ones weigh alike.
        full = 2 * self._learn_secs / self.monitor.sample_secs
        points = [
            (float(n), mean.value, min(float(mean.samples), full))
            for n, mean in self._cores_at.items()
            if mean.samples >= MIN_SAMPLES
            and now - mean.updated < self._forget_secs
            and mean.value > 0
        ]
        counts = [n for n, _, _ in points]
        if not points or max(counts) < MIN_COUNT_SPAN * min(counts):
            # Too narrow a range to tell the curve's bend (1 and 2 conversations differ
            # by little more than noise): the prior's cost per conversation, on a line
            # through the most conversations measured.
            base = self._idle_cores
            if points:
                n, cores, _ = max(points)
                base = max(base, cores - n * self.prior_session_cores)
            return CostCurve(base, self.prior_session_cores, 1.0)
        # cores = scale × n ** exponent: least squares in log-log.
        logs = [(math.log(n), math.log(c), w) for n, c, w in points]
        weight = sum(w for _, _, w in logs)
        mean_x = sum(x * w for x, _, w in logs) / weight
        mean_y = sum(y * w for _, y, w in logs) / weight
        spread = sum(w * (x - mean_x) ** 2 for x, _, w in logs)
        slope = sum(w * (x - mean_x) * (y - mean_y) for x, y, w in logs) / spread
        exponent = min(1.0, max(MIN_COST_EXPONENT, slope))
        return CostCurve(0.0, math.exp(mean_y - exponent * mean_x), exponent)

    @property
    def session_cores(self) -> float:
        """Cores one more conversation would cost now."""
        return self.cost_curve().step(self._sessions)

    def capacity(self) -> int:
        """Conversations that fit under the budget on the learned curve (the hard cap, if lower)."""
        fit = self.cost_curve().fits(self.budget_cores)
        return min(fit, self.max_sessions) if self.max_sessions else fit

    def note_sessions(self, sessions: int) -> None:
        """Tell the policy how many conversations are live (for learning their cost)."""
        self._sessions = sessions

    def check(self, sessions: int) -> Refusal | None:
        """``None`` if a new conversation may start now beside ``sessions`` live ones."""
        self._sessions = sessions
        refusal = self.refusal_for(sessions)
        if refusal is not None:
            self.refused[refusal.reason] = self.refused.get(refusal.reason, 0) + 1
        return refusal

    def refusal_for(self, sessions: int) -> Refusal | None:
        """Why a new conversation would be refused now beside ``sessions`` (not counted)."""
        if self.max_sessions and sessions >= self.max_sessions:
            return Refusal("session limit", f"server busy: {sessions} sessions is the limit")
        if not self.enabled:
            return None
        if sessions == 0:
            return None  # an idle server always takes one: the estimate may be wrong
        overload = self.overload()
        if overload:
            return Refusal("overloaded", f"server busy: {overload}; try again later")
        if sessions + 1 > self.capacity():
            return Refusal(
                "at capacity",
                f"server busy: {sessions} conversations fill this server; try again later",
            )
        return None

    def overload(self) -> str | None:
        """What says the server is overloaded right now, if anything."""
        sample = self.monitor.sample()
        busy = self.monitor.smoothed_busy_share
        if busy > max(self.budget_share, 0.9):
            return f"CPU {busy:.0%} busy"
        if sample.loop_lag_ms > self.max_loop_lag_ms:
            return f"event loop {sample.loop_lag_ms:.0f} ms late"
        for name, limit in self.max_probe.items():
            value = sample.probes.get(name)
            if value is not None and value > limit:
                return f"{name} {value:.2f} > {limit:.2f}"
        return None

    def _learn(self, sample: LoadSample) -> None:
        """Fold one CPU sample into the mean at the current number of conversations."""
        alpha = min(1.0, self.monitor.sample_secs / self._learn_secs)
        if self._sessions == 0:
            self._idle_cores += alpha * (sample.process_cores - self._idle_cores)
            return
        now = time.monotonic()
        mean = self._cores_at.get(self._sessions)
        if mean is None or now - mean.updated >= self._forget_secs:
            mean = self._cores_at[self._sessions] = _MeanCores()
        mean.add(sample.process_cores, alpha, now)

    def report(self, sessions: int) -> dict[str, Any]:
        """The block ``/health`` shows (and ``/metrics`` exports)."""
        sample = self.monitor.sample()
        refusal = self.refusal_for(sessions)
        return {
            "admits": refusal is None,
            "reason": None if refusal is None else refusal.message,
            "sessions": sessions,
            "capacity": self.capacity(),
            "session_cost_cores": round(self.cost_curve().step(sessions), 3),
            "cost_curve": self.cost_curve().describe(),
            "budget_cores": round(self.budget_cores, 2),
            "cores": self.monitor.cores,
            "machine_cpu_share": round(sample.machine_busy_share, 3),
            "process_cores": round(sample.process_cores, 3),
            "loop_lag_ms": round(sample.loop_lag_ms, 1),
            **{name: round(value, 3) for name, value in sample.probes.items()},
            "refused": dict(self.refused),
        }


def register_load_metrics(registry: Any, admission: Admission, sessions: Callable[[], int]) -> None:
    """Export the admission's view on a Prometheus ``registry`` (read at scrape time).

    ``voice_sessions``, ``voice_session_capacity``, ``voice_admits`` (1/0),
    ``voice_machine_cpu_share``, ``voice_event_loop_lag_ms``, ``voice_session_cost_cores``,
    ``voice_session_cost_exponent`` and ``voice_sessions_refused`` by reason: what an autoscaler or load balancer needs
    to send the next caller elsewhere before this server has to refuse one.
    """
    from prometheus_client import Gauge
    from prometheus_client.core import CounterMetricFamily

    def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
        Gauge(name, doc, registry=registry).set_function(read)

    monitor = admission.monitor
    gauge("voice_sessions", "Live conversations", lambda: sessions())
    gauge(
        "voice_session_capacity", "Conversations that fit at the measured cost", admission.capacity
    )
    gauge(
        "voice_admits",
        "1 if a new conversation would be admitted now",
        lambda: float(admission.refusal_for(sessions()) is None),
    )
    gauge(
        "voice_machine_cpu_share",
        "Share of the machine's cores busy (niced work counts as idle)",
        lambda: monitor.sample().machine_busy_share,
    )
    gauge(
        "voice_event_loop_lag_ms",
        "Worst event-loop timer lateness over the last seconds",
        lambda: monitor.sample().loop_lag_ms,
    )
    gauge(
        "voice_session_cost_cores",
        "Learned cores one more conversation would cost now",
        lambda: admission.cost_curve().step(sessions()),
    )
    gauge(
        "voice_session_cost_exponent",
        "Exponent of the learned cost curve (cores = scale × conversations ** exponent)",
        lambda: admission.cost_curve().exponent,
    )

    class _Refused:
        def collect(self) -> Any:
            family = CounterMetricFamily(
                "voice_sessions_refused", "Conversations refused, by reason", labels=["reason"]
            )
            for reason, count in admission.refused.items():
                family.add_metric([reason], count)
            yield family

    registry.register(_Refused())
