"""The public path of playback: ``from leworld_env.play import PlaySettings, agent_source, play``.

The code is :mod:`leworld_env.playback.play`; this module only keeps the short import the README
and users' scripts use.
"""

from leworld_env.playback.play import PlayResult, PlaySettings, agent_source, has_display, play, replay_source

__all__ = ["PlayResult", "PlaySettings", "agent_source", "has_display", "play", "replay_source"]
