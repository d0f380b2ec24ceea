"""``python -m multirnn``: the installation's backends and versions (see :mod:`multirnn.info`)."""

from .info import main
from .runner import exit_with

exit_with(main)
