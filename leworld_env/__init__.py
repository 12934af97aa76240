"""LeWorld's Gymnasium side: real PushT glue, data collection, the ``leworld`` CLI.

The dream environment ``LeWorld-PushT-v0`` and its real twin register here once
they exist (the environments issue); today this package holds the real PushT
simulator wrapper :class:`PushTSim`, the scripted policies and the collector.
"""

from leworld_env.pusht_sim import PushTSim, PushTState, lewm_success

__all__ = ["PushTSim", "PushTState", "lewm_success"]
