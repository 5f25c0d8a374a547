"""The ``kvfit`` command line (the only place typer and rich are imported)."""

from estimator.cli.app import main

__all__ = ["main"]
