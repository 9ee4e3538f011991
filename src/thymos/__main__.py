"""`python -m thymos` is the `thymos` command."""

from thymos.cli import main

main()
