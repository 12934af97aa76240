"""Plan one real PushT episode with CEM in the shipped model's latent space.

    python examples/plan_one_episode.py

LeWM's protocol: start from a held-out real state (with its agent velocity), reach
the real state 25 physics steps later within 50 physics steps (10 actions, all run).
Success is LeWM's test at any step: agent and block within 20 px of the goal's together,
block angle within pi/9. Each action is planned by CEM (300 samples x 30 iterations over
5 model steps, in standardised action units) and executed on gym-pusht physics.
"""

import gymnasium as gym
import numpy as np

import leworld_env
import world_models
from agents import make_planner

world_model = world_models.load()  # the shipped model, INT8 + Q4_0 weights on numba kernels
env = gym.make(leworld_env.REAL_ID, model=world_model, goal="dataset", max_episode_steps=10, terminate_on_success=False)
planner = make_planner("cem", world_model)

obs, info = env.reset(seed=0)
print(f"start block {np.round(info['state'][2:], 1)}, goal block {np.round(info['goal_state'][2:], 1)}")
episode_start, success, block_only = True, False, False
while True:
    action, _ = planner.predict(obs, episode_start=np.array([episode_start]), deterministic=True)
    episode_start = False
    obs, reward, terminated, truncated, info = env.step(action)
    error = np.linalg.norm(info["state"][2:4] - info["goal_state"][2:4])
    success, block_only = success or info["success_strict"], block_only or info["success_block"]
    print(f"step {info['step']:2d}  action {np.round(action, 2)}  block error {error:6.1f} px  reward {reward:.2f}")
    if terminated or truncated:
        break
print(f"success: {success} (block only: {block_only}), {np.mean(planner.plan_seconds):.2f} s per decision")
