"""audiofind: find sounds by describing them."""

__version__ = "0.1.0"
