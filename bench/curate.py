"""Curation at the paper's scale: 256k synthetic rows against train and test, with planted duplicates and leaks.

Rows are stitched from thirds of coverage train rows (data/coverage/*.jsonl), so they read like the data
but are mostly distinct; then a share of them is replaced by perturbed copies of earlier rows (planted
near duplicates) and by perturbed copies of test prompts and answers (planted leaks).

The goal is about the whole curate stage, so the figure that counts (`wall_s`) is the stage's own command
from dvc.yaml, run as DVC runs it, in a scratch workspace holding the three Parquet inputs: interpreter
start, imports, Parquet in and out, metrics. `curate_call_s` is the curate() call alone, in this process.
Reports rows/s, the stage's peak RSS (goal: under 1 GB at 256k rows: the rows stream, a few hundred bytes a row stay
in memory, plus the curated table, written as one Parquet row group), and per planted set the recall by the reasons
that set is about: a planted duplicate counts as found only when a duplicate step dropped it, a planted leak only
when decontamination did (a copy dropped for another reason, say a quality rule, is counted under that reason in
`*_by_reason`, not as found). `originals_wrongly_removed`: rows a planted duplicate was copied from (not planted
themselves) that a duplicate step dropped, where keep-first should have kept them.

The baseline is datatrove's MinHash deduplication (its four steps: signatures, buckets, clusters, filter, on its local
executor, one process), the tool a user would otherwise pick, run on the same Parquet rows in the same run, as its
own process so its peak RSS is its own: wall, peak RSS, recall of the planted duplicates, originals wrongly removed,
rows removed that were not planted, and the ratios to ours (`datatrove`, `ours_over_datatrove`). It runs twice:
with its default MinHash settings (5-word shingles, 14 bands of 8 hashes), and with ours (3-word shingles,
the same band count and hashes per band as our LSH). Its text is a row's instruction and response; its words are
split on whitespace after its own text simplification (its English default tokenizer needs NLTK's punkt data).
It does MinHash alone: no ROUGE-L confirmation, no quality rules or decontamination, so its wall is the
deduplication's alone, beside our whole stage.
`coverage_keep_rate`: per shipped task, the share of its human coverage rows that curation keeps
when they are curated as if they were syntheses (no train, no test, so no calibration: the rules alone);
`coverage_keep_rate_held_out`: each half of a task's rows curated with the other half as train (calibrated).

    OMP_NUM_THREADS=1 .venv/bin/python bench/curate.py [--rows 256000]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llamaduo import hardware, tables  # noqa: E402
from llamaduo.atomic import write_json  # noqa: E402
from llamaduo.config import CurateParams  # noqa: E402
from llamaduo.coverage.prepare import split as split_rows  # noqa: E402

GOAL_PEAK_RSS_MB = 1000


def coverage_rows() -> list[dict]:
    rows = []
    for f in sorted((ROOT / "data/coverage").glob("*.jsonl")):
        for k, line in enumerate(f.read_text().splitlines()):
            r = json.loads(line)
            msgs = {m["role"]: m["content"] for m in r["messages"]}
            rows.append({"id": f"{f.stem}-{k}", "task": f.stem, "instruction": msgs["user"], "response": msgs["assistant"]})
    return rows


def perturb(text: str, rng: random.Random, edits: int = 2) -> str:
    """A near copy: case and punctuation noise plus a couple of dropped or swapped words."""
    words = text.split()
    for _ in range(min(edits, max(len(words) // 20, 1))):
        if len(words) > 3:
            i = rng.randrange(len(words))
            if rng.random() < 0.5:
                del words[i]
            else:
                words[i] = rng.choice(["really", "also", "quite", "very"])
    out = " ".join(words)
    return out.upper() if rng.random() < 0.2 else out + rng.choice(["", "!", " ."])


def make_rows(n: int, seed: int = 0, dup_share: float = 0.05, leak_share: float = 0.01):
    rng = random.Random(seed)
    cov = coverage_rows()
    rng.shuffle(cov)
    n_test = max(len(cov) // 16, 1)
    test, train = cov[:n_test], cov[n_test:]
    tw = [(r["task"], r["instruction"].split(), r["response"].split()) for r in train]

    def third(words):
        L = max(len(words) // 3, 1)
        s = rng.randrange(max(len(words) - L + 1, 1))
        return words[s:s + L]

    rows, planted_dup, planted_leak = [], {}, set()  # planted_dup: copy's id -> its original's
    for i in range(n):
        rid = f"b{i}"
        roll = rng.random()
        if roll < dup_share and len(rows) > 100:
            src = rows[rng.randrange(len(rows))]
            row = dict(src, id=rid, instruction=perturb(src["instruction"], rng), response=perturb(src["response"], rng))
            planted_dup[rid] = src["id"]
        elif roll < dup_share + leak_share:
            t = test[rng.randrange(len(test))]
            field = "instruction" if rng.random() < 0.7 or len(t["response"].split()) < 20 else "response"
            other = tw[rng.randrange(len(tw))]
            row = {"id": rid, "task": t["task"], "instruction": " ".join(other[1]), "response": " ".join(other[2])}
            row[field] = perturb(t[field], rng)
            planted_leak.add(rid)
        else:
            a, b, c = (tw[rng.randrange(len(tw))] for _ in range(3))
            row = {"id": rid, "task": a[0], "instruction": " ".join(third(a[1]) + third(b[1]) + third(c[1])),
                   "response": " ".join(third(a[2]) + third(b[2]) + third(c[2]))}
        row.update(seed_id="s", provider="bench", model="bench", request_id=f"r{i // 4}", cycle=1)
        rows.append(row)
    return rows, train, test, planted_dup, planted_leak


def datatrove_dedup(dt: Path, raw: Path, n_grams: int, num_buckets: int, hashes_per_bucket: int) -> None:
    """datatrove's MinHash deduplication of `raw`/raw.parquet, its four steps in this process, its files in `dt`; the
    ids it removed to `dt`/removed.json."""
    import pyarrow.parquet as pq
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Words(WordTokenizer):
        """Whitespace words: datatrove simplifies the text first (lower case, no punctuation)."""

        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    def pair(self, data, path, id_in_file):
        return {"text": f"{data['instruction']}\n{data['response']}", "id": data["id"], "metadata": {}}

    # its sha1 shingle hash: its default xxhash path hands xxhash a str, which xxhash 4 refuses
    config = MinhashConfig(n_grams=n_grams, num_buckets=num_buckets, hashes_per_bucket=hashes_per_bucket,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))

    def reader():
        return ParquetReader(str(raw), glob_pattern="raw.parquet", adapter=pair)

    def run(name, *steps, tasks=1):
        LocalPipelineExecutor(list(steps), tasks=tasks, workers=1, logging_dir=str(dt / "logs" / name)).run()

    run("signatures", reader(), MinhashDedupSignature(str(dt / "signatures"), config=config, language=Words()))
    run("buckets", MinhashDedupBuckets(str(dt / "signatures"), str(dt / "buckets"), config=config), tasks=num_buckets)
    run("clusters", MinhashDedupCluster(str(dt / "buckets"), str(dt / "remove"), config=config))
    run("filter", reader(), MinhashDedupFilter(str(dt / "remove"), exclusion_writer=ParquetWriter(str(dt / "removed"))),
        ParquetWriter(str(dt / "kept")))
    removed = [i for f in sorted((dt / "removed").glob("*.parquet"))
               for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    (dt / "removed.json").write_text(json.dumps(removed))


# a process's peak-RSS figure starts at its parent's (Linux carries it across fork and exec), and this process holds
# the rows: a small process in between starts the command and reports its children's peak RSS and CPU time, the
# command's own (the CPU time stands when the machine is shared and the wall is stretched)
PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1], shell=True, check=True); "
        "u = resource.getrusage(resource.RUSAGE_CHILDREN); print(u.ru_maxrss, u.ru_utime + u.ru_stime)")


def workspace(rows: list[dict], train: list[dict], test: list[dict]) -> Path:
    """A scratch workspace holding the curate stage's three Parquet inputs and params."""
    work = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    (work / "stages").symlink_to(ROOT / "stages")
    # the stage reads only `curate`; the other sections take their defaults (and may be mid-edit in the tree)
    (work / "params.yaml").write_text(yaml.safe_dump({"curate": curate_section()}))
    for name, split in (("train", train), ("test", test)):
        tables.write(work / f"data/prepared/{name}.parquet", "split",
                     [{k: r[k] for k in ("id", "task", "instruction", "response")} | {"category": None, "split": name} for r in split])
    tables.write(work / "data/synthetic/raw.parquet", "synthetic", rows)
    (work / "metrics").mkdir()
    return work


def timed(cmd: str, work: Path) -> tuple[float, float, float]:
    """Run a shell command in `work`: (wall s, its peak RSS in MB, its CPU s)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, cmd], cwd=work, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{cmd} failed:\n{done.stderr[-4000:]}")
    rss, cpu = done.stdout.split()[-2:]
    return time.perf_counter() - t0, int(rss) / 1024, float(cpu)


def curate_section() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())["curate"]


def coverage_keep(p) -> tuple[dict, dict]:
    """(keep rate of each shipped task's rows curated alone, keep rate of each half held out from the other)."""
    from llamaduo.curation import curate

    by_task = {}
    for r in coverage_rows():
        by_task.setdefault(r["task"], []).append(r | {"seed_id": "human", "provider": "coverage", "model": "human",
                                                      "request_id": r["id"], "cycle": 0})
    alone, held = {}, {}
    for task, rows in sorted(by_task.items()):
        alone[task] = round(len(curate(rows, train=[], test=[], p=p)[0]) / len(rows), 4)
        a, b = split_rows(rows, train_ratio=0.5, seed=0)
        held[task] = round(sum(len(curate(y, train=x, test=[], p=p)[0]) for x, y in ((a, b), (b, a))) / len(rows), 4)
    return alone, held


DEDUP = ("exact_duplicate", "exact_duplicate_train", "near_duplicate", "near_duplicate_train")
LEAK = ("test_contamination_exact", "test_contamination_ngram", "test_contamination_minhash")
# datatrove's MinHash settings: its defaults, and ours (3-word shingles, 32 bands of 4 hashes: our LSH's at
# num_perm 128, lsh_threshold 0.5)
DATATROVE = {"defaults": (5, 14, 8), "our_settings": (3, 32, 4)}


def by_reason(ids, reason: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in ids:
        out[reason.get(i, "kept")] = out.get(reason.get(i, "kept"), 0) + 1
    return dict(sorted(out.items()))


def dedup_figures(removed: set[str], dups: dict[str, str], leaks: set[str]) -> dict:
    """What a deduplication (`removed`: the ids it dropped as duplicates) did with the planted rows."""
    originals = set(dups.values()) - set(dups) - leaks
    return {"dup_recall": round(len(removed & set(dups)) / max(len(dups), 1), 4),
            "originals": len(originals), "originals_wrongly_removed": len(removed & originals),
            "removed": len(removed), "removed_not_planted": len(removed - set(dups) - leaks)}


def baseline(work: Path, label: str, dups: dict[str, str], leaks: set[str]) -> dict:
    n_grams, buckets, per_bucket = DATATROVE[label]
    out = work / f"datatrove-{label}"
    out.mkdir()
    wall, peak, cpu = timed(f"{sys.executable} {Path(__file__).resolve()} --datatrove {out} {work / 'data/synthetic'} "
                       f"{n_grams} {buckets} {per_bucket}", work)
    removed = set(json.loads((out / "removed.json").read_text()))
    shutil.rmtree(out)
    return {"n_grams": n_grams, "num_buckets": buckets, "hashes_per_bucket": per_bucket,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak)} | dedup_figures(removed, dups, leaks)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256_000)
    ap.add_argument("--out", default=str(ROOT / "bench/results/curate.json"))
    ap.add_argument("--datatrove", nargs=5, metavar=("OUT", "RAW_DIR", "N_GRAMS", "BUCKETS", "PER_BUCKET"),
                    help="(in a child process) datatrove's MinHash dedup of RAW_DIR/raw.parquet into OUT")
    args = ap.parse_args()
    if args.datatrove:
        out, raw, *numbers = args.datatrove
        return datatrove_dedup(Path(out), Path(raw), *map(int, numbers))
    from llamaduo.curation import curate

    p = CurateParams(**curate_section())
    rows, train, test, dups, leaks = make_rows(args.rows)
    print(f"made {len(rows)} rows ({len(dups)} planted duplicates, {len(leaks)} planted leaks), "
          f"train {len(train)}, test {len(test)}", file=sys.stderr)
    curate(rows[:200], train=train, test=test, p=p)  # compiled kernels come from numba's cache, as in the stage

    work = workspace(rows, train, test)
    try:
        cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["curate"]["cmd"]
        wall, peak, cpu = timed(cmd, work)
        load_at_stage = os.getloadavg()[0]
        print(f"stage: {wall:.1f} s, peak {peak:.0f} MB", file=sys.stderr)
        counts = json.loads((work / "metrics/curate.json").read_text())
        dropped = tables.read(work / "data/synthetic/dropped.parquet", "dropped")
        rows_out = len(tables.read(work / "data/synthetic/curated.parquet", "synthetic"))
        theirs = {}
        for label in DATATROVE:
            theirs[label] = baseline(work, label, dups, leaks)
            print(f"datatrove ({label}): {theirs[label]['wall_s']} s, peak {theirs[label]['peak_rss_mb']} MB", file=sys.stderr)
    finally:
        shutil.rmtree(work)
    reason = {d["id"]: d["reason"] for d in dropped}
    ours = dedup_figures({i for i, why in reason.items() if why in DEDUP}, dups, leaks)
    leak_found = sum(1 for i in leaks if reason.get(i) in LEAK)
    unplanted_drops = by_reason([i for i in reason if i not in dups and i not in leaks], reason)
    met = wall < 60 and min(ours["dup_recall"], leak_found / len(leaks)) >= 0.98

    t0, c0 = time.perf_counter(), time.process_time()
    curate(rows, train=train, test=test, p=p)
    call_wall, call_cpu = time.perf_counter() - t0, time.process_time() - c0

    keep_alone, keep_held = coverage_keep(p)

    result = {
        "coverage_keep_rate": keep_alone, "coverage_keep_rate_held_out": keep_held,
        "rows": len(rows), "train_rows": len(train), "test_rows": len(test),
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "goal_wall_s": 60, "met_goal": met,
        "curate_call_s": round(call_wall, 2), "curate_call_cpu_s": round(call_cpu, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2), "load_avg_1m_after_stage": round(load_at_stage, 2), "cpus": os.cpu_count(),
        "rows_per_s": round(len(rows) / wall), "peak_rss_mb": round(peak), "goal_peak_rss_mb": GOAL_PEAK_RSS_MB,
        "met_peak_rss_goal": peak < GOAL_PEAK_RSS_MB, "rows_out": rows_out,
        "planted_duplicates": len(dups), "planted_leaks": len(leaks),
        # recall by the set's own reasons: duplicate steps for the duplicates, decontamination for the leaks
        "dup_recall": ours["dup_recall"], "leak_recall": round(leak_found / max(len(leaks), 1), 4),
        "originals": ours["originals"], "originals_wrongly_removed": ours["originals_wrongly_removed"],
        "removed_as_duplicates": ours["removed"], "removed_as_duplicates_not_planted": ours["removed_not_planted"],
        "planted_duplicates_by_reason": by_reason(dups, reason), "planted_leaks_by_reason": by_reason(leaks, reason),
        "dropped": counts["dropped"], "unplanted_drops": unplanted_drops,
        "datatrove": theirs, "datatrove_version": importlib.metadata.version("datatrove"),
        # our whole stage (rules, decontamination, both duplicate steps, Parquet out) against datatrove's dedup alone
        "ours_over_datatrove": {label: {"wall": round(wall / t["wall_s"], 3), "cpu": round(cpu / t["cpu_s"], 3),
                                        "peak_rss": round(peak / t["peak_rss_mb"], 3),
                                        "dup_recall": round(ours["dup_recall"] / max(t["dup_recall"], 1e-9), 3)}
                                for label, t in theirs.items()},
        "params": p.model_dump(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    write_json(args.out, result | {"machine": hardware.describe()})
    print(json.dumps({k: v for k, v in result.items() if k != "params"}, indent=2))


if __name__ == "__main__":
    main()
