"""``python -m leworld_env.cli`` runs the ``leworld`` command."""

import sys

from leworld_env.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
