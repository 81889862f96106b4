"""`python -m bench [NAME] [--quick ...]`: run every bench/bench_*.py module's main(), one after
another, or only bench_NAME's (`python -m bench store`, `python -m bench query`).

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
    if args and not args[0].startswith("-"):  # `python -m bench store`: that benchmark only
        wanted = f"bench_{args.pop(0)}"
        if wanted not in names:
            sys.exit(f"no benchmark {wanted[6:]!r}; there are: {', '.join(n[6:] for n in names)}")
        names = [wanted]
    for name in names:
        print(f"\n=== bench.{name} {' '.join(args)}", flush=True)
        sys.argv = [f"bench.{name}", *args]
        importlib.import_module(f"bench.{name}").main()


if __name__ == "__main__":
    main()
