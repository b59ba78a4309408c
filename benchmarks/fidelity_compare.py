"""Compare arms of fidelity runs that one ``fidelity.py`` table cannot hold side by side.

``fidelity.py`` compares frameworks under one mask setting. Its mask experiments
(``--masks``, ``--mask-sites``) compare one framework under several settings,
whose runs sit in different ``--results`` folders or were reported in
benchmarks/README.md as per-seed perplexities. This prints fidelity.py's own
comparison table (Welch's interval and the TOST at ``--margin``) for such arms,
the first arm the baseline.

Each ``--arm NAME=SOURCE``: SOURCE is a ``--results`` folder of fidelity.py
(every kept run in its ``runs/``, which must all be one side) or the per-seed
validation perplexities, comma-separated, as the README's tables give them.

Usage::

    .venv/bin/python benchmarks/fidelity_compare.py \\
        --arm "tensorflow own=379.78,421.28,479.99" \\
        --arm "tensorflow, numpy at weight-drop=results/fidelity-weight-drop"
"""

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import comparison_table, margin_type, summarise  # noqa: E402


def arm_records(name, source):
    """fidelity.py's run records of one arm, its side renamed ``name``."""
    folder = Path(source)
    if folder.is_dir():
        runs = [json.loads(p.read_text())["record"] for p in sorted(folder.glob("runs/*.json"))]
        runs = [r for r in runs if r.get("status") == "ok"]
        if not runs:
            raise ValueError(f"--arm {name}: no finished run in {folder / 'runs'}")
        sides = {r["side"] for r in runs}
        if len(sides) > 1:
            raise ValueError(f"--arm {name}: {folder} holds runs of {', '.join(sorted(sides))}; "
                             "an arm is one side")
        return [{**r, "side": name} for r in runs]
    try:
        values = [float(v) for v in source.split(",")]
    except ValueError:
        raise ValueError(f"--arm {name}: {source!r} is neither a folder nor perplexities "
                         "separated by commas") from None
    if any(v <= 1 for v in values):
        raise ValueError(f"--arm {name}: perplexities are above 1, got {source!r}")
    return [{"side": name, "seed": i, "status": "ok", "valid_loss": math.log(v)}
            for i, v in enumerate(values)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=SOURCE",
                        help="an arm: a fidelity.py --results folder or perplexities "
                             "v1,v2,...; the first is the baseline")
    parser.add_argument("--margin", type=margin_type, default=math.log(1.01),
                        help="equivalence margin, as fidelity.py's (default 1%%)")
    args = parser.parse_args(argv)
    records, names = [], []
    for arm in args.arm:
        name, sep, source = arm.rpartition("=")
        if not sep or not name or name in names:
            parser.error(f"--arm {arm!r}: give NAME=SOURCE, each NAME once")
        try:
            records += arm_records(name, source)
        except ValueError as exc:
            parser.error(str(exc))
        names.append(name)
    print("\n".join(comparison_table(summarise(records, names, args.margin), args.margin)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
