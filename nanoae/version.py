"""nanoae's version, in a module of its own so that anything (checkpoints, the
command line) can read it without importing the whole package."""

__version__ = "0.1.0"
