"""The exception type of :mod:`nanoae.data`.

``DataError`` is raised for every problem with data files or their sources
(missing, truncated, corrupt, wrong checksum, nothing available).  It is a
``ValueError`` so that callers who only know "bad input" can still catch it.
Each message names the file or directory concerned and says how to fix it.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data file or data source is unusable; the message says which and why."""
