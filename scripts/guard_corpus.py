"""Run the guard over the real-code corpus (``tests/real_code_cases.py``) and print,
for every case and precision, what preflight said: false alarms on correct code,
and for the faults whether the kind, primitive, line and cause are right.

    python scripts/guard_corpus.py            # needs jax-md and tfp-nightly for all rows
    python scripts/guard_corpus.py --no-cause # judge faults on kind, primitive and line only
"""

from __future__ import annotations

import os
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import real_code_cases as corpus  # noqa: E402

from hmc import guard  # noqa: E402


def main() -> None:
    with_cause = "--no-cause" not in sys.argv[1:]
    rows = []
    for case in corpus.CASES:
        if not corpus.available(case.library):
            print(f"skip {case.name}: {case.library} not installed")
            continue
        for precision in case.dtypes:
            with jax.enable_x64(precision == "float64"):
                dtype = jax.numpy.float64 if precision == "float64" else jax.numpy.float32
                pot, position = case.build(dtype)
                t0 = time.perf_counter()
                report = guard.preflight(pot, position)
                seconds = time.perf_counter() - t0
            right, said = corpus.judge(case, report.events)
            located = corpus.judge(case, report.events, cause=False)[0]
            rows.append((case, precision, right, said, seconds, located))
            mark = "ok " if (right if with_cause else located) else "BAD"
            print(f"{mark} {case.name} [{precision}] {seconds:.2f} s: {said}", flush=True)
    clean = [r for r in rows if r[0].expect is None]
    faults = [r for r in rows if r[0].expect is not None]
    print()
    print(f"false alarms: {sum(not r[2] for r in clean)} of {len(clean)} correct-code runs")
    print(f"attribution:  {sum(r[5] for r in faults)} of {len(faults)} fault runs at the right kind, primitive "
          f"and line; {sum(r[2] for r in faults)} also with the right cause")


if __name__ == "__main__":
    main()
