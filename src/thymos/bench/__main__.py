"""`python -m thymos.bench`."""

from thymos.cli import app

app(["bench"])
