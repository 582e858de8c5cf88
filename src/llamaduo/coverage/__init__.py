"""Coverage data: the prompt/response pairs the team kept from the service LLM, read per task, checked row by
row (errors name file and line), and split into train and test by the ratio phi."""

from llamaduo.coverage.prepare import load_task, prepare, split

__all__ = ["load_task", "prepare", "split"]
