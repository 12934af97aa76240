"""Train PPO in the dream, then evaluate it on real physics.

    python examples/train_ppo_in_dream.py

The agent never touches the simulator while it learns: 64 dream episodes advance
together, one batched world-model predict per step. It is judged on the real twin
(gym-pusht physics, the same observation and action spaces) under LeWM's protocol.
`leworld train-agent --algo ppo` does the same with agents/hyperparams/ppo.yml, evaluating
on real physics during training.
"""

from stable_baselines3 import PPO

from agents.evaluate import evaluate
from leworld_env.sb3 import LeWorldSB3VecEnv

dream = LeWorldSB3VecEnv(num_envs=64, goal="dataset", reward="coverage", max_episode_steps=10)
dream.seed(0)
agent = PPO("MultiInputPolicy", dream, n_steps=64, batch_size=1024, gamma=0.95, seed=0, device="cpu", verbose=1)
agent.learn(total_timesteps=100_000)

result = evaluate(agent, "ppo", env="real", protocol="lewm", episodes=20, seed=0)
print(result.table())
