"""The ``leworld`` command line: ``main`` parses and dispatches; each sub-command lives beside it."""

from leworld_env.cli.main import main

__all__ = ["main"]
