"""The one Parquet schema module: the columns of every table the pipeline writes, and atomic I/O.

Stages read and write only through `read` and `write`, so a table on disk always has exactly the
columns declared here, in this order, with these types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llamaduo.atomic import replacing

_PAIR = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("instruction", pa.string(), nullable=False),
    pa.field("response", pa.string(), nullable=False),
    # the instruction's context (llamaduo.chat builds the messages): the system prompt (null: none) and the
    # earlier turns, user/assistant alternating, before the instruction (null: a single-turn row)
    pa.field("system", pa.string()),
    pa.field("history", pa.list_(pa.struct([pa.field("role", pa.string(), nullable=False),
                                              pa.field("content", pa.string(), nullable=False)]))),
]

# who judged and how: the same columns in judgments and pairwise verdicts (judging.JudgeRecord and the call)
_JUDGE = [
    pa.field("judge", pa.string(), nullable=False),          # provider name in params
    pa.field("primary", pa.bool_(), nullable=False),         # the primary judge (eval.json's top level, the gate)
    pa.field("judge_model", pa.string(), nullable=False),
    pa.field("judge_version", pa.string(), nullable=False),  # provider identity: kind, endpoint, model, weights hash
    pa.field("served_model", pa.string()),                  # what the service said answered (a dated snapshot)
    pa.field("prompt_sha", pa.string(), nullable=False),
    pa.field("temperature", pa.float64(), nullable=False),
    pa.field("max_tokens", pa.int32(), nullable=False),
]

SCHEMAS: dict[str, pa.Schema] = {
    # data/prepared/{train,test}.parquet: coverage rows after the split
    "split": pa.schema(_PAIR + [pa.field("category", pa.string()), pa.field("split", pa.string(), nullable=False)]),
    # data/synthetic/raw.parquet: every parsed pair the service returned, with its lineage
    "synthetic": pa.schema(
        _PAIR
        + [
            pa.field("seed_id", pa.string(), nullable=False),
            pa.field("provider", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("cycle", pa.int32(), nullable=False),
        ]
    ),
    # data/synthetic/dropped.parquet: what curation removed, and why
    "dropped": pa.schema(_PAIR + [pa.field("reason", pa.string(), nullable=False)]),
    # data/eval/responses.parquet: K sampled answers per test prompt
    "responses": pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("answer", pa.string(), nullable=False),
            pa.field("tokens", pa.int32(), nullable=False),
            pa.field("finish_reason", pa.string()),
            pa.field("engine", pa.string(), nullable=False),
            # seconds from the request entering the engine to its last token (shared by the K samples of a
            # prompt; transformers: the batch's generate call); null when the engine does not report it
            pa.field("latency_s", pa.float64()),
        ]
    ),
    # data/eval/baseline_responses.parquet: the service LLMs' answers to the test prompts (the baseline)
    "baseline_responses": pa.schema(
        [
            pa.field("service", pa.string(), nullable=False),        # provider name in params
            pa.field("service_model", pa.string(), nullable=False),
            pa.field("served_model", pa.string()),                   # what the service said answered (a dated snapshot)
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("answer", pa.string(), nullable=False),
            pa.field("tokens", pa.int32()),                          # the call's output tokens / n (providers bill per call)
            pa.field("finish_reason", pa.string()),
        ]
    ),
    # data/eval/judgments.parquet and baseline_judgments.parquet: M judgments per answer and judge; a judgment
    # that stayed unusable after the retries is a row with ok=false and its reason, never a score
    "judgments": pa.schema(
        [
            pa.field("answerer", pa.string(), nullable=False),       # "local", or the service's provider name
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("repeat", pa.int32(), nullable=False),
        ]
        + _JUDGE
        + [
            pa.field("m", pa.int32(), nullable=False),
            pa.field("attempts", pa.int32(), nullable=False),        # 1 + re-asks this judgment took
            pa.field("ok", pa.bool_(), nullable=False),
            pa.field("precision", pa.float64()),
            pa.field("similarity", pa.float64()),
            pa.field("reason", pa.string()),                         # the judge's own one-sentence reason
            pa.field("error", pa.string()),                          # why it is unusable (ok=false)
        ]
    ),
    # data/eval/pairwise.parquet: each local answer against the service's answer, judged in both orders
    "pairwise": pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("service", pa.string(), nullable=False),
            pa.field("service_sample", pa.int32(), nullable=False),
        ]
        + _JUDGE
        + [
            pa.field("attempts", pa.int32(), nullable=False),        # calls over both orders, re-asks included
            pa.field("local_first", pa.string()),                    # verdict with the local answer shown as A: local/service/tie
            pa.field("service_first", pa.string()),                  # verdict with the orders swapped
            pa.field("outcome", pa.string()),                        # for the local model: win / tie / loss (null when failed)
            pa.field("flipped", pa.bool_()),                         # the preferred model changed with the order
            pa.field("ok", pa.bool_(), nullable=False),
            pa.field("reason_local_first", pa.string()),
            pa.field("reason_service_first", pa.string()),
            pa.field("error", pa.string()),
        ]
    ),
    # data/eval/reference.parquet: every local and service answer against the test row's reference, no judge
    # (llamaduo.judging.reference; 0-100 like the judge's scores)
    "reference": pa.schema(
        [
            pa.field("answerer", pa.string(), nullable=False),       # "local", or the service's provider name
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("rouge_l", pa.float64(), nullable=False),       # ROUGE-L F1 (rouge-score)
            pa.field("chrf", pa.float64(), nullable=False),          # sentence chrF (sacrebleu)
            pa.field("exact_match", pa.float64(), nullable=False),   # 100 or 0, after SQuAD's normalisation
        ]
    ),
}


def columns(table: str) -> list[str]:
    return SCHEMAS[table].names


def write(path: str | Path, table: str, rows: Iterable[Mapping]) -> int:
    """Write rows as `table`, atomically (temp file + rename), so a crash never leaves half a file."""
    schema = SCHEMAS[table]
    rows = list(rows)
    data = {name: [r.get(name) for r in rows] for name in schema.names}
    for r in rows:
        extra = set(r) - set(schema.names)
        if extra:
            raise ValueError(f"table `{table}` has no column(s) {sorted(extra)}")
    arrow = pa.Table.from_pydict(data, schema=schema)
    with replacing(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")
    return len(rows)


def read(path: str | Path, table: str) -> list[dict]:
    """Read a table and check it has the declared columns."""
    arrow = pq.read_table(path)
    want = SCHEMAS[table]
    if arrow.schema.names != want.names:
        raise ValueError(f"{path}: columns {arrow.schema.names} do not match table `{table}` {want.names}")
    return arrow.to_pylist()
