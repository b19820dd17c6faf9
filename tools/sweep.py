"""Train several recipes at once (one `train.py` process each) and rank them by validation loss.

    python tools/sweep.py sweep.json --out runs/sweep [--jobs 16] [--deadline-s 3600]

sweep.json names each recipe's extra train.py flags: {"wd2": ["--weight-decay", "2.0"], "base": []}.
On one GPU many small runs share the device well (16 at once on an H100 took ~4 minutes for the
default recipe); on a CPU use --jobs 1. Each run writes OUT/NAME/; the ranking (one JSON line per
run: name, flags, val_loss of the shipped average, last-step val_loss, steps, seconds, hardware) is
printed and written to OUT/results.jsonl. This is how docs/experiments/gpu_sweep_h100.jsonl was made.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def final_record(out: Path) -> dict | None:
    log = out / "train_log.jsonl"
    if not log.exists():
        return None
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return next((r["final"] for r in reversed(records) if "final" in r), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", type=Path, help="JSON object: name -> list of train.py flags")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--jobs", type=int, default=16, help="runs at once")
    parser.add_argument("--deadline-s", type=float, default=None, help="stop unfinished runs after this long")
    args = parser.parse_args()
    recipes: dict[str, list[str]] = json.loads(args.recipes.read_text(encoding="utf-8"))
    started = time.monotonic()
    pending, running = list(recipes.items()), {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name, flags = pending.pop(0)
            out = args.out / name
            out.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "train.py", "--out", str(out), "--no-progress", "--threads", "1", *flags]
            with (out / "stdout.txt").open("w") as log:
                running[name] = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if args.deadline_s is not None and time.monotonic() - started > args.deadline_s:
            for process in running.values():
                process.kill()
            pending.clear()
        running = {name: p for name, p in running.items() if p.poll() is None}
        time.sleep(2)

    results = []
    for name, flags in recipes.items():
        final = final_record(args.out / name)
        if final is None:
            print(f"{name}: no result (see {args.out / name / 'stdout.txt'})", file=sys.stderr)
            continue
        kept = ("val_loss", "last_step_val_loss", "steps", "params", "elapsed_s", "hardware")
        results.append({"name": name, "flags": " ".join(flags), **{key: final[key] for key in kept}})
    results.sort(key=lambda r: r["val_loss"])
    lines = [json.dumps(r) for r in results]
    (args.out / "results.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print("\n".join(lines))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
