#!/usr/bin/env python
"""How close float32 comes to the float64 reference, on every torch CPU kernel level.

Runs the VibeVoice parity tests (tests/vibevoice/test_parity.py) once per
``ATEN_CPU_CAPABILITY`` (this CPU's best, ``avx2``, ``default``) and thread count, each
check logging its largest deviation and the bound float32 rounding allows there
(tests/vibevoice/numerics.py). Prints, per check, the bound and the worst deviation of
our float32 result and of the official golden over all runs, and the worst ratio
(deviation / bound; a check fails above 1).

    python bench/vibevoice_numerics.py            # all kernel levels, 1 and 2 threads
    python bench/vibevoice_numerics.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("native", "avx2", "default")


def run(level: str, threads: int, log: Path) -> int:
    env = {**os.environ, "PIPECAT_VIBEVOICE_NUMERICS_LOG": str(log)}
    env["OMP_NUM_THREADS"] = str(threads)
    env["PIPECAT_VIBEVOICE_TEST_TORCH_THREADS"] = str(threads)
    if level != "native":
        env["ATEN_CPU_CAPABILITY"] = level
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command.append("tests/vibevoice/test_parity.py")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    return done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), help="kernel levels")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch threads")
    parser.add_argument("--json", type=Path, help="write the table as JSON here too")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows: dict[str, dict] = defaultdict(lambda: {"bound": 0.0, "ours": 0.0, "golden": 0.0})
    worst_ratio: dict[str, float] = defaultdict(float)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            for threads in args.threads:
                log = Path(tmp) / f"{level}-{threads}.jsonl"
                code = run(level, threads, log)
                if code:
                    failures.append(f"{level}/{threads} threads (pytest exit {code})")
                print(f"ran parity tests: kernels={level} threads={threads} exit={code}")
                for line in log.read_text().splitlines() if log.exists() else []:
                    record = json.loads(line)
                    check, _, who = record["check"].rpartition(" (")
                    who = "golden" if "golden" in who else "ours"
                    row = rows[check]
                    row["bound"] = max(row["bound"], record["max_bound"])
                    row[who] = max(row[who], record["max_deviation"])
                    worst_ratio[check] = max(worst_ratio[check], record["worst_ratio"])
    print(f"\nVibeVoice float32 against the float64 reference ({started}; "
          f"kernels {', '.join(args.levels)}; threads {', '.join(map(str, args.threads))})")
    print(f"{'check':42} {'bound':>9} {'ours':>9} {'official':>9} {'worst/bound':>11}")
    for check in sorted(rows):
        row = rows[check]
        print(f"{check:42} {row['bound']:9.2e} {row['ours']:9.2e} {row['golden']:9.2e} "
              f"{worst_ratio[check]:11.3f}")  # fmt: skip
    if args.json:
        table = {c: {**rows[c], "worst_ratio": worst_ratio[c]} for c in rows}
        args.json.write_text(json.dumps({"started": started, "rows": table}, indent=1))
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
