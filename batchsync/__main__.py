"""`python -m batchsync` runs the command line."""

from batchsync.cli import main

if __name__ == "__main__":  # not when a worker process imports it as its parent's main
    main()
