"""Agents over LeWorld: latent planners (CEM, iCEM, MPPI) and SB3 training in imagination.

* :mod:`agents.planning`: the planners, policies with SB3's ``predict`` signature;
* :mod:`agents.evaluate`: the ``lewm`` and ``pusht`` protocols on real or dreamed PushT;
* :mod:`agents.replay`: an evaluated episode replayed and re-judged in plain gym-pusht;
* :mod:`agents.train_agent`: PPO / SAC / HER-SAC in the dream, judged on the real twin.
"""

from agents.planning import CEMPlanner, ICEMPlanner, MPPIPlanner, RandomAgent, make_planner

__all__ = ["CEMPlanner", "ICEMPlanner", "MPPIPlanner", "RandomAgent", "make_planner"]
