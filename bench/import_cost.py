"""Import and discovery cost: wall time of `ddkit plugins` against `python -c "import torch"`.

Both commands run as fresh interpreters, interleaved, so that machine noise hits both alike;
the figure that matters is the ratio of the medians (target: at most 1.3).

    python bench/import_cost.py --repeats 15 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS: dict[str, list[str]] = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import ddkit": [sys.executable, "-c", "import ddkit"],
    "ddkit plugins --json": [sys.executable, "-m", "ddkit", "plugins", "--json"],
}


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(repeats: int) -> dict[str, list[float]]:
    """Wall times of each command, interleaved round by round after one warm-up round."""
    for cmd in COMMANDS.values():
        _time(cmd)  # warm the file-system cache
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, cmd in COMMANDS.items():
            times[name].append(_time(cmd))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    times = measure(args.repeats)
    base = statistics.median(times["import torch"])
    rows = [
        {"command": name, "median_s": statistics.median(t), "ratio_to_torch": statistics.median(t) / base}
        for name, t in times.items()
    ]
    print("| command | median wall time (s) | ratio to `import torch` |")
    print("|---|---|---|")
    for r in rows:
        print(f"| `{r['command']}` | {r['median_s']:.3f} | {r['ratio_to_torch']:.2f}× |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
