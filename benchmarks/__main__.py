"""``python -m benchmarks NAME [options]``: run one benchmark, print and save its result."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

from benchmarks.harness import report


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)])
                  if m.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    names = [n.removeprefix("bench_") for n in available()]
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("name", choices=names, help="which benchmark")
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(f"benchmarks.bench_{args.name}")
    sub = argparse.ArgumentParser(prog=f"python -m benchmarks {args.name}")
    if hasattr(module, "add_arguments"):
        module.add_arguments(sub)
    options = sub.parse_args(rest)
    start = time.perf_counter()
    result = module.run(options)
    report(args.name, result, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
