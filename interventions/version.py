"""The package's version, written once (pyproject.toml reads it; `python -m interventions.run --version`)."""
__version__ = "0.1.0"
