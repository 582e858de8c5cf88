"""Curation of synthetic pairs: quality rules (`quality.py`), decontamination against test (`decontam.py`), exact
and near duplicates (`duplicates.py` over `dedup.py`'s MinHash LSH and ROUGE-L), over word tokens hashed by compiled
kernels (`tokens.py`, `hashindex.py`). Each is a step with one contract (`pipeline.py`); `compose.py` runs them with
an executor (`local.py`, or `distributed.py` on Ray) and builds the outcome once (`outcome.py`)."""

from llamaduo.curation.compose import curate, curate_parquet
from llamaduo.curation.tokens import normalize, tokenize

__all__ = ["curate", "curate_parquet", "normalize", "tokenize"]
