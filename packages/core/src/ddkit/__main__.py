"""``python -m ddkit``: the same command line as the ``ddkit`` script."""

from __future__ import annotations

from ddkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
