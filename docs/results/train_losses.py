"""Mean training loss over the last 500 steps of each seed-0 cell of a compare grid, from the runs' TensorBoard
logs (tag train/loss), as a markdown table: python docs/results/train_losses.py GRID_DIR."""

import glob
import os
import statistics
import sys
from collections import defaultdict

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

root = sys.argv[1]
rows = defaultdict(dict)
for run in sorted(glob.glob(f"{root}/runs/*")):
    name = os.path.basename(run)
    if not os.path.exists(f"{run}/results.json"):
        continue
    task, bb, seed = name.split("__")
    ea = EventAccumulator(run)
    ea.Reload()
    tags = ea.Tags()["scalars"]
    tag = "train/loss" if "train/loss" in tags else None
    if not tag:
        continue
    ev = ea.Scalars(tag)
    last = [e.value for e in ev if e.step > ev[-1].step - 500]  # the last 500 steps
    rows[task.replace("recurrl-", "")][(bb, seed)] = statistics.mean(last)
bbs = ["mingru", "minlstm", "lstm", "gru", "mamba", "transformer"]
print("| dataset (seed 0) | " + " | ".join(bbs) + " |")
print("|---|" + "---:|" * len(bbs))
for task, d in rows.items():
    print(f"| {task} | " + " | ".join(f"{d[(b, 's0')]:.3f}" if (b, "s0") in d else "–" for b in bbs) + " |")
