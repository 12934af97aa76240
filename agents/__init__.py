"""Agents over LeWorld: latent planners (CEM, iCEM, MPPI), the distilled planner, and SB3 training in imagination.

* :mod:`agents.planning`: the planners, policies with SB3's ``predict`` signature;
* :mod:`agents.distill`: CEM distilled into a network that plans in one forward pass (DAgger in the dream);
* :mod:`agents.evaluate`: the ``lewm`` and ``pusht`` protocols on real or dreamed PushT;
* :mod:`agents.replay`: an evaluated episode replayed and re-judged in plain gym-pusht;
* :mod:`agents.train_agent`: PPO / SAC / HER-SAC in the dream, judged on the real twin.
"""

from typing import Any

from agents.planning import CEMPlanner, ICEMPlanner, MPPIPlanner, RandomAgent, make_planner


def load_policy(name: str = "distilled", model: str = "pusht-tiny", backend: str | None = None, seed: int = 0) -> Any:
    """An agent with SB3's ``predict``, by name, for a world model (loaded here, offline):
    ``distilled`` (the distilled planner shipped beside the model), ``cem``, ``icem``, ``mppi``,
    ``random``, a distilled planner's folder or an agent folder (no pickle either way).

    >>> policy = agents.load_policy("distilled")
    >>> action, _ = policy.predict(observation, episode_start=np.array([True]))
    """
    import world_models
    from agents.evaluate import load_agent

    return load_agent(name, world_models.load(model, backend=backend), seed=seed)


__all__ = ["CEMPlanner", "ICEMPlanner", "MPPIPlanner", "RandomAgent", "load_policy", "make_planner"]
