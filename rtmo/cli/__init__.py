"""The ``rtmo`` command line: every argparse parser of the package lives in this package."""

from rtmo.cli.main import main

__all__ = ["main"]
