"""Coverage data from recorded traffic: MLflow traces (`mlflow_traces.py`), OpenAI stored completions
(`openai_stored.py`) and OTLP JSON files of GenAI spans (`otlp.py`), each read with its own SDK into one record
(`record.py`), selected by params (`select.py`), cleaned (`hygiene.py`: secrets and personal data, curation's duplicate
and test-leak checks) and added to the tasks' coverage files (`run.py`)."""

from llamaduo.capture.record import CaptureError
from llamaduo.capture.run import capture, report

__all__ = ["CaptureError", "capture", "report"]
