"""Thin shim: `python run_engine.py ...` is `passerelle ...`."""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
