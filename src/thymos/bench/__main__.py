"""`python -m thymos.bench [OPTIONS]`: the same as `thymos bench [OPTIONS]`."""

import sys

from thymos.cli import app

app(["bench", *sys.argv[1:]], prog_name="python -m thymos")
