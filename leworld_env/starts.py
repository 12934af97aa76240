"""The public path of the start bank: ``python -m leworld_env.starts MODEL`` builds a model's bank.

The code is :mod:`leworld_env.envs.starts`; this module only keeps the short command and import the
README and users' scripts use.
"""

from leworld_env.envs.starts import GOAL_OFFSET, STARTS_FILE, StartBank, build_start_bank, load_start_bank, main

__all__ = ["GOAL_OFFSET", "STARTS_FILE", "StartBank", "build_start_bank", "load_start_bank", "main"]

if __name__ == "__main__":
    main()
