"""llamaduo: migrate a task from a service LLM to a small local model, proving it with numbers."""

__version__ = "0.1.0"
