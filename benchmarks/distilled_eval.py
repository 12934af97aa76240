"""A distilled planner folder on the strict LeWM test (real twin, eval seed 0), its MLP alone and with
the shipped student's refinement (6 x 32 coloured-noise rounds on the first plan), one JSON line each:

    python benchmarks/distilled_eval.py FOLDER [EPISODES=500] [mlp,refined]

What docs/results.md's refit table (session 18) reports for every student; the CLI's
``leworld eval --agent FOLDER`` runs a folder with its own ``refine`` instead.
"""

import json
import sys
import time

import agents.evaluate as ev
import world_models
from agents.distill import load_distilled, shipped_distilled

wm = world_models.load("pusht-tiny")
folder = sys.argv[1]
episodes = int(sys.argv[2]) if len(sys.argv) > 2 else 500
shipped_refinement = load_distilled(shipped_distilled(), wm).refinement
for which in (sys.argv[3] if len(sys.argv) > 3 else "mlp,refined").split(","):
    agent = load_distilled(folder, wm)
    agent.refinement = shipped_refinement if which == "refined" else None
    began = time.time()
    result = ev.evaluate(agent, which, seed=0, episodes=episodes, progress=False)
    line = {"folder": folder, "agent": which, "episodes": episodes, "success": result.success_rate,
            "ms": result.mean_decision_seconds * 1e3, "wall": time.time() - began}  # fmt: skip
    print(json.dumps(line), flush=True)
