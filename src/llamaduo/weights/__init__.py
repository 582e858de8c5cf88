"""Model weights on disk: the base model in Hugging Face format, a folder's content hash, and adapters folded
into their base (one function for inference, merging, the registry and serving)."""

from llamaduo.weights.base import materialize, resolve_gguf
from llamaduo.weights.fingerprint import fingerprint
from llamaduo.weights.fold import fold, folded, save_folded

__all__ = ["fingerprint", "fold", "folded", "materialize", "resolve_gguf", "save_folded"]
