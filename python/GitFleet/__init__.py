"""The product documents' spelling: ``from GitFleet import RepoManager`` is ``gitfleet``'s."""

from gitfleet import *  # noqa: F401,F403
from gitfleet import __all__, __version__  # noqa: F401
