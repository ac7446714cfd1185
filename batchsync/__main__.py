"""`python -m batchsync` runs the command line."""

from batchsync.cli import main

main()
