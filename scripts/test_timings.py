"""Where the test tier's time goes: the costliest tests with their compile share.

Run the tier with per-test timings, from an empty compilation cache to see the cold cost::

    JAX_COMPILATION_CACHE_DIR=$(mktemp -d) HMC_TEST_TIMINGS=/tmp/timings python -m pytest
    python scripts/test_timings.py /tmp/timings [--top 25] [--by-module]

Each test's wall time is split into JAX's tracing, lowering and XLA compilation in the
test process (JAX's duration events, recorded by ``tests/conftest.py``) and the rest
(running, Python, subprocesses: a subprocess's own compilation counts as "rest").
"""

import argparse
import collections
import json
import pathlib


def read(folder):
    records = []
    for path in sorted(pathlib.Path(folder).glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by-module", action="store_true", help="also sum per test module")
    args = parser.parse_args(argv)
    records = read(args.folder)
    total = sum(r["wall"] for r in records)
    jax_total = sum(r["trace"] + r["lower"] + r["compile"] for r in records)
    print(f"{len(records)} tests, {total:.0f} s of test time over all workers; "
          f"JAX trace+lower+compile {jax_total:.0f} s ({100 * jax_total / max(total, 1e-9):.0f} %)\n")
    print("| test | wall s | trace+lower s | XLA compile s | compile share | programs |")
    print("|---|---|---|---|---|---|")
    for r in sorted(records, key=lambda r: -r["wall"])[: args.top]:
        jax_s = r["trace"] + r["lower"] + r["compile"]
        print(f"| `{r['test']}` | {r['wall']:.1f} | {r['trace'] + r['lower']:.1f} | {r['compile']:.1f} "
              f"| {100 * jax_s / max(r['wall'], 1e-9):.0f} % | {r['programs']} |")
    if args.by_module:
        modules = collections.defaultdict(lambda: [0, 0.0, 0.0])
        for r in records:
            m = modules[r["test"].split("::")[0]]
            m[0] += 1
            m[1] += r["wall"]
            m[2] += r["trace"] + r["lower"] + r["compile"]
        print("\n| module | tests | wall s | JAX s |")
        print("|---|---|---|---|")
        for name, (n, wall, jax_s) in sorted(modules.items(), key=lambda kv: -kv[1][1]):
            print(f"| `{name}` | {n} | {wall:.0f} | {jax_s:.0f} |")


if __name__ == "__main__":
    main()
