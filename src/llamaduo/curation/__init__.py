"""Curation of synthetic pairs: quality rules (`quality.py`), decontamination against test (`decontam.py`), exact
and near duplicates (`dedup.py`: MinHash LSH, ROUGE-L), over word tokens hashed by compiled kernels
(`tokens.py`, `hashindex.py`); `curate` (`compose.py`) runs them in order."""

from llamaduo.curation.compose import curate
from llamaduo.curation.tokens import normalize, tokenize

__all__ = ["curate", "normalize", "tokenize"]
