"""`python -m bench [--quick ...]`: run every bench/bench_*.py module's main(), one after another.

Arguments are handed to each module through sys.argv; each main() parses what it knows.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> None:
    args = sys.argv[1:]
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    for name in names:
        print(f"\n=== bench.{name} {' '.join(args)}", flush=True)
        sys.argv = [f"bench.{name}", *args]
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main()
