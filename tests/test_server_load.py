"""The admission rule on a load monitor whose figures the test sets."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipecat_vibevoice.server_load import (
    MIN_COST_EXPONENT,
    MIN_SAMPLES,
    Admission,
    CostCurve,
    LoadMonitor,
    LoadSample,
    read_machine_cpu,
)


class SetMonitor(LoadMonitor):
    """A monitor that reports what the test says instead of measuring."""

    def __init__(self, cores: float = 2.0) -> None:
        super().__init__()
        self.cores = cores
        self.now = LoadSample(0.1, 0.0, 0.0, {})

    def sample(self) -> LoadSample:
        return self.now

    @property
    def smoothed_busy_share(self) -> float:
        return self.now.machine_busy_share

    def feed(
        self, process_cores: float, times: int = 200, machine_share: float | None = None
    ) -> None:
        """Hand the listeners ``times`` samples of ``process_cores``."""
        share = self.now.machine_busy_share if machine_share is None else machine_share
        self.now = LoadSample(share, process_cores, 0.0, {})
        for _ in range(times):
            for listener in self._listeners:
                listener(self.now)


def test_capacity_is_the_budget_over_the_cost_of_a_conversation():
    monitor = SetMonitor(cores=2.0)
    admission = Admission(monitor, budget_share=0.8, prior_session_cores=0.4)
    assert admission.capacity() == 4  # 1.6 cores / 0.4
    assert admission.check(3) is None
    refusal = admission.check(4)
    assert refusal is not None and refusal.reason == "at capacity"
    assert "try again later" in refusal.message
    assert admission.refused == {"at capacity": 1}


def test_an_idle_server_always_admits_one_and_the_hard_cap_always_holds():
    monitor = SetMonitor(cores=2.0)
    admission = Admission(monitor, prior_session_cores=64.0, max_sessions=3)
    assert admission.capacity() == 0
    assert admission.check(0) is None  # the estimate may be wrong; one is always fine
    assert admission.check(1).reason == "at capacity"
    off = Admission(monitor, prior_session_cores=64.0, max_sessions=3, enabled=False)
    assert off.check(2) is None
    assert off.check(3).reason == "session limit"


@pytest.mark.parametrize(
    ("sample", "why"),
    [
        (LoadSample(0.97, 1.9, 0.0, {}), "CPU"),
        (LoadSample(0.2, 0.2, 400.0, {}), "event loop"),
        (LoadSample(0.2, 0.2, 0.0, {"stt_latency_s": 2.5}), "stt_latency_s"),
    ],
)
def test_an_overloaded_server_refuses_whatever_the_estimate_says(sample, why):
    monitor = SetMonitor()
    admission = Admission(monitor, prior_session_cores=0.01, max_probe={"stt_latency_s": 1.0})
    monitor.now = sample
    refusal = admission.check(1)
    assert refusal is not None and refusal.reason == "overloaded" and why in refusal.message
    report = admission.report(1)
    assert report["admits"] is False and why in report["reason"]


def power(n: int) -> float:
    """Cores at ``n`` conversations on a curve like the one measured on the 2-core box."""
    return 0.37 * n**0.65


def test_the_cost_is_a_curve_through_what_the_process_used_at_each_count():
    """A conversation costs less the more there are (shared work): capacity comes from
    the curve through the measured counts, not from what four cost each."""
    monitor = SetMonitor(cores=2.0)
    admission = Admission(monitor, budget_share=0.75, prior_session_cores=0.18, learn_secs=5.0)
    assert admission.cost_curve() == CostCurve(0.0, 0.18, 1.0)  # nothing measured: the prior
    assert admission.capacity() == 8  # 1.5 cores / 0.18
    monitor.feed(0.02)  # idle: the baseline
    admission.note_sessions(4)
    monitor.feed(power(4))
    # One count: the prior's cost, on a line through the point measured.
    assert admission.cost_curve() == CostCurve(pytest.approx(power(4) - 4 * 0.18), 0.18, 1.0)
    assert admission.capacity() == 7
    for n in (1, 2, 6):
        admission.note_sessions(n)
        monitor.feed(power(n))
    curve = admission.cost_curve()
    assert curve.exponent == pytest.approx(0.65, abs=0.01)
    assert curve.scale == pytest.approx(0.37, rel=0.02)
    # 0.37 × 8 ** 0.65 = 1.42 cores fit in 1.5; nine (1.54) do not. Four at 0.23 each
    # (or a straight line through these counts) would have said seven.
    assert admission.capacity() == 8
    assert admission.check(7) is None and admission.check(8).reason == "at capacity"
    report = admission.report(7)
    assert report["session_cost_cores"] == pytest.approx(power(8) - power(7), rel=0.05)
    assert report["cost_curve"]["exponent"] == pytest.approx(0.65, abs=0.01)


def test_a_new_count_only_nudges_the_curve_and_old_counts_are_forgotten():
    monitor = SetMonitor(cores=2.0)
    admission = Admission(
        monitor, budget_share=0.75, prior_session_cores=0.18, learn_secs=30.0, forget_secs=60.0
    )
    for n in (2, 4, 7):
        admission.note_sessions(n)
        monitor.feed(power(n), times=400)
    assert admission.capacity() == 8
    # Five new sessions, still silent: nothing changes before MIN_SAMPLES.
    admission.note_sessions(12)
    monitor.feed(0.05, times=MIN_SAMPLES - 1)
    assert admission.capacity() == 8
    # A count that costs what the curve predicts leaves it where it is.
    admission.note_sessions(10)
    monitor.feed(power(10), times=400)
    assert admission.capacity() == 8
    # A day later nothing measured then counts: the workload may differ.
    for mean in admission._cores_at.values():
        mean.updated -= 61.0
    assert admission.cost_curve() == CostCurve(0.0, 0.18, 1.0)


def test_idle_sessions_never_make_a_conversation_look_free():
    monitor = SetMonitor(cores=2.0)
    admission = Admission(monitor, prior_session_cores=0.2, learn_secs=5.0)
    admission.note_sessions(1)
    monitor.feed(0.3)
    admission.note_sessions(8)
    monitor.feed(0.3)  # eight cost what one did
    curve = admission.cost_curve()
    assert curve.exponent == MIN_COST_EXPONENT
    assert admission.session_cores == pytest.approx(curve.cores(9) - curve.cores(8))
    assert admission.session_cores > 0


async def test_the_monitor_measures_this_process_and_the_loop():
    """Whatever else the machine runs: the CPU this process used is what the samples
    add up to, and a loop blocked for 0.25 s shows at least that much lag."""
    monitor = LoadMonitor(sample_secs=0.1, lag_every_secs=0.02)
    samples: list[LoadSample] = []
    monitor.add_listener(samples.append)
    await monitor.start()
    await asyncio.sleep(0.15)  # the first sample sets the baseline
    cpu0, wall0 = time.process_time(), time.monotonic()
    try:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            sum(i * i for i in range(20000))  # keep this thread busy...
            await asyncio.sleep(0)
        time.sleep(0.25)  # ...and block the loop once
        await asyncio.sleep(0.15)
        sample = monitor.sample()
    finally:
        await monitor.stop()
    used = time.process_time() - cpu0
    assert used > 0
    measured = sum(s.process_cores * s.interval_s for s in samples[1:])
    assert 0.5 * used < measured < 2 * used, (used, measured)
    assert sample.loop_lag_ms >= 150
    assert time.monotonic() - wall0 >= 0.25
    if read_machine_cpu() is not None:
        assert 0.0 <= sample.machine_busy_share <= 1.0  # 10 ms ticks: 0 over 0.1 s is possible
