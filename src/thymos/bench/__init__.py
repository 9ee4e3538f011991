"""The benchmark: `thymos bench` / `python -m thymos.bench`.

It prints each figure as text, then one JSON line with all of them. Speed targets are checked
here, never by timed assertions in tests.
"""

from ._main import main

__all__ = ["main"]
