"""``python -m multirnn``: the installation's backends and versions (see :mod:`multirnn.info`)."""

import sys

from .info import main

sys.exit(main())
