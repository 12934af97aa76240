"""CEM and the distilled planner on a fresh evaluation bank (seed 4242, never used to choose anything),
so the distilled planner's success is checked without the selection on the shipped bank's episodes.

    python benchmarks/fresh_bank.py shipped,old,mlp,cem 200 [FOLDER]  # agents, comma-separated; episodes

``shipped``: the distilled planner as shipped; ``old``: its session-15 refinement (5 x 32, white);
``mlp``: the MLP alone; ``cem``: CEM 300 x 30 on LeWM's schedule. ``FOLDER``: another distilled
planner folder instead of the shipped one (its MLP; ``shipped`` then runs it with the shipped
refinement). The bank is written to ``runs/s16/fresh_starts.safetensors`` once and reused; each agent
prints one JSON line.
"""

import json
import sys
import time
from pathlib import Path

import agents.evaluate as ev
import world_models
from agents.distill import Refinement, load_distilled, shipped_distilled
from agents.planning import make_planner
from leworld_env.envs.starts import build_start_bank, load_start_bank, save_start_bank

path = Path("runs/s16/fresh_starts.safetensors")
path.parent.mkdir(parents=True, exist_ok=True)
if not path.is_file():
    bank, meta = build_start_bank(episodes=25, seed=4242, policy="noisy-expert")
    save_start_bank(path, bank, meta)
fresh = load_start_bank(path)
original = ev.make_eval_env


def make_eval_env(*args, **kwargs):
    env = original(*args, **kwargs)
    env.unwrapped.setup.bank = fresh
    return env


ev.make_eval_env = make_eval_env
wm = world_models.load("pusht-tiny")
episodes = min(int(sys.argv[2]), len(fresh))
folder = Path(sys.argv[3]) if len(sys.argv) > 3 else shipped_distilled()
shipped_refinement = load_distilled(shipped_distilled(), wm).refinement
for which in sys.argv[1].split(","):
    if which == "cem":
        agent = make_planner("cem", wm, replan_every=5)
    else:
        agent = load_distilled(folder, wm)
        agent.refinement = shipped_refinement
        if which == "old":
            agent.refinement = Refinement(5, 32, 4, 0.2, plans=1)
        elif which == "mlp":
            agent.refinement = None
    t = time.time()
    res = ev.evaluate(agent, which, seed=0, episodes=episodes, progress=False)
    print(
        json.dumps(
            {
                "agent": which,
                "folder": str(folder),
                "bank": len(fresh),
                "episodes": episodes,
                "success": res.success_rate,
                "interval": res.success_interval if hasattr(res, "success_interval") else None,
                "ms": res.mean_decision_seconds * 1e3,
                "wall": time.time() - t,
            }
        ),
        flush=True,
    )
