"""The one command behind the README's reliability table.

Runs, in order, and then rewrites the text between ``<!-- reliability-table:start -->``
and ``<!-- reliability-table:end -->`` in README.md (nothing else in the file):

1. the CI reliability suite (``pytest tests/reliability``, plus the security tests that
   live elsewhere: the TTS socket's origin/token checks and the preset unpickler), as
   pass/fail counts per group;
2. ``bench/reliability_load.py`` (16 concurrent ``/ws`` sessions for 60 s);
3. ``bench/reliability_soak.py`` (1 000 utterances through one server).

The markers are checked first: without them nothing runs and the exit code is 2.
Raw results are kept as JSON in ``--out`` (default: a temporary directory).

    .venv/bin/python bench/reliability_report.py            # full run (~15 min here)
    .venv/bin/python bench/reliability_report.py --soak-utterances 200 --load-duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
START = "<!-- reliability-table:start -->"
END = "<!-- reliability-table:end -->"

#: Tests outside tests/reliability that the table also stands on.
REFERENCES = [
    "tests/serving/test_protocol.py::test_origin_allow_list",
    "tests/serving/test_protocol.py::test_token_is_required_when_configured",
    "tests/vibevoice/test_presets.py::test_preset_that_runs_code_is_refused",
]
GROUPS = {
    "test_engine_faults": "Faults: engine (mid-stream error, corrupt weights → fallback, hang-up)",
    "test_tts_server_faults": "Faults: TTS server (hang-up, engine error, store read-only/full)",
    "test_ws_faults": "Faults: bot `/ws` (hang-up, STT error, LLM error)",
    "test_fuzz_tts_protocol": "Bad input: fuzz of `/v1/tts/stream`",
    "test_fuzz_ws": "Bad input: fuzz of `/ws`",
    "test_security": "Security: voice-name traversal, hostile preset, `/ws` origin and token",
    "test_protocol": "Security: TTS socket origin and token",
    "test_presets": "Security: preset unpickler refuses code",
}


def split_readme(text: str) -> tuple[str, str, str]:
    """(before, table, after) around the markers; ``ValueError`` if they are missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(
            f"README must contain exactly one {START!r} followed by one {END!r}; "
            "add them where the reliability table belongs"
        )
    return text[: start + len(START)], text[start + len(START) : end], text[end:]


def run_suite(out: Path) -> dict[str, Any]:
    """Pytest over tests/reliability and the references; counts per group."""
    junit = out / "reliability-junit.xml"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/reliability", *REFERENCES, "-q",
         "-p", "no:cacheprovider", f"--junitxml={junit}"],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    groups: dict[str, dict[str, int]] = {}
    failed_names: list[str] = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        group = groups.setdefault(module, {"passed": 0, "failed": 0, "skipped": 0})
        if case.find("failure") is not None or case.find("error") is not None:
            group["failed"] += 1
            failed_names.append(f"{module}::{case.get('name')}")
        elif case.find("skipped") is not None:
            group["skipped"] += 1
        else:
            group["passed"] += 1
    return {
        "returncode": proc.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "groups": groups,
        "failed": failed_names,
        "tail": proc.stdout[-2000:],
    }


def run_bench(script: str, args: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """Run a bench script with ``--json``; its figures (or the failure)."""
    path = out / f"{Path(script).stem}.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args, "--json", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    print(proc.stdout[-3000:])
    if proc.returncode != 0 or not path.exists():
        return {"failed": True, "returncode": proc.returncode, "stderr": proc.stderr[-2000:]}
    return json.loads(path.read_text())


def _mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def build_table(suite: dict[str, Any], load: dict[str, Any], soak: dict[str, Any]) -> str:
    """The markdown block that goes between the markers."""
    rows = ["| Check | Figure | Goal | |", "|---|---|---|---|"]
    if load.get("failed"):
        rows.append(f"| Load | run failed (exit {load['returncode']}) | runs | ❌ |")
    else:
        b = load["barge_in_ms"]
        n = load["sessions"]
        rows += [
            f"| Load: {n} `/ws` sessions × {load['duration_s']:.0f} s, speech + barge-in | "
            f"{load['completed']}/{n} sessions completed, {load['answers']} answers | "
            f"all complete | {_mark(load['completed'] == n)} |",
            f"| Load: audio underruns (client player dry ≥ {load['underrun_threshold_ms']:.0f} ms "
            f"inside a reply) | {load['underruns']} ({load['underrun_dry_s']} s silent in total) | "
            f"0 | {_mark(load['underruns'] == 0)} |",
            f"| Load: errors | {load['errors']} | 0 | {_mark(load['errors'] == 0)} |",
            f"| Load: barge-in under load | p95 {b['p95']} ms, p50 {b['p50']} ms "
            f"(n={b['n']}) | measured | — |",
        ]
        if "cpu_share" in load:
            cpu, lag = load["cpu_share"], load["client_loop_lag_ms"]
            rows.append(
                f"| Load: where the time went | server {cpu['server']} cores busy, clients "
                f"{cpu['clients']} (client loop lag p95 {lag['p95']} ms) | — | — |"
            )
    if soak.get("failed"):
        rows.append(f"| Soak | run failed (exit {soak['returncode']}) | runs | ❌ |")
    else:
        bf, af = soak["before"], soak["after"]
        rows += [
            f"| Soak: {soak['utterances']} utterances, one server — RSS growth | "
            f"{bf['rss_mib']:.0f} → {af['rss_mib']:.0f} MiB ({soak['rss_growth_pct']:+.1f}%) | "
            f"< {soak['rss_goal_pct']:.0f}% | {_mark(soak['rss_growth_pct'] < soak['rss_goal_pct'])} |",
            f"| Soak: open fds / asyncio tasks / threads, before → after | "
            f"{bf['fds']} → {af['fds']} / {bf['server_tasks']} → {af['server_tasks']} / "
            f"{bf['threads']} → {af['threads']} | no growth | "
            f"{_mark(af['fds'] <= bf['fds'] and af['server_tasks'] <= bf['server_tasks'] and af['threads'] <= bf['threads'])} |",
        ]
    for module, label in GROUPS.items():
        g = suite["groups"].get(module)
        if g is None:
            continue
        total = g["passed"] + g["failed"] + g["skipped"]
        extra = f", {g['skipped']} skipped" if g["skipped"] else ""
        rows.append(
            f"| {label} | {g['passed']}/{total} tests pass{extra} | all pass | "
            f"{_mark(g['failed'] == 0)} |"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_avg = " ".join(f"{x:.1f}" for x in os.getloadavg())
    note = (
        f"\n_{stamp}, {os.cpu_count()} shared CPU cores (other work running; load average "
        f"{load_avg} at the end), CI suite {suite['seconds']} s. Refresh: "
        "`.venv/bin/python bench/reliability_report.py`; details in "
        "[docs/reliability.md](docs/reliability.md)._\n"
    )
    return "\n" + "\n".join(rows) + "\n" + note


def main(argv: list[str] | None = None) -> int:
    """Check the markers, run everything, rewrite the table."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--load-sessions", type=int, default=16)
    parser.add_argument("--load-duration", type=float, default=60.0)
    parser.add_argument("--soak-utterances", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="keep raw JSON results here")
    parser.add_argument("--dry-run", action="store_true", help="print the table, keep README")
    args = parser.parse_args(argv)

    try:
        before, _old, after = split_readme(args.readme.read_text())
    except (OSError, ValueError) as exc:
        print(f"reliability_report: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="reliability-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/3] CI reliability suite → {out}", flush=True)
    suite = run_suite(out)
    print(f"      {suite['groups']} failed={suite['failed']}", flush=True)
    print("[2/3] load", flush=True)
    load = run_bench(
        "reliability_load.py",
        ["--sessions", str(args.load_sessions), "--duration", str(args.load_duration)],
        out, args.load_duration + 600,
    )  # fmt: skip
    print("[3/3] soak", flush=True)
    soak = run_bench("reliability_soak.py", ["--utterances", str(args.soak_utterances)], out, 3600)
    table = build_table(suite, load, soak)
    (out / "table.md").write_text(table)
    print(table)
    if not args.dry_run:
        # Re-read: the README may have changed while the benchmarks ran.
        try:
            before, _old, after = split_readme(args.readme.read_text())
        except ValueError as exc:
            print(f"reliability_report: {exc}", file=sys.stderr)
            return 2
        args.readme.write_text(before + table + after)
        print(f"updated the reliability table in {args.readme}")
    ok = suite["returncode"] == 0 and not load.get("failed") and not soak.get("failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
