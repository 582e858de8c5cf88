"""llamaduo: migrate a task from a service LLM to a small local model, proving it with numbers."""

from importlib.metadata import PackageNotFoundError, version

try:  # the installed distribution's version, one source of truth (pyproject.toml): MLflow records it per run
    __version__ = version("llamaduo")
except PackageNotFoundError:  # run from a checkout without `pip install -e .`
    __version__ = "0+unknown"
