"""Curation on a Ray cluster (`cluster.engine: ray`): the same decisions as `compose.curate`, the work spread.

What runs where, and why the result is byte-identical to the local path:
- per row, in Ray Data `map_batches` over blocks of rows: tokens, the quality rules' values and the first rule
  failed (with the per-task settings calibrated on train, computed once by the driver), decontamination against
  the small test set (which a task carries whole), the exact-duplicate key, the MinHash digest and its LSH band
  keys. Every one of these depends on its own row only (tokens.py, quality.py, decontam.py, dedup.py are called
  as they are, numba kernels included), so a block gives each row what the whole table would.
- the driver then walks the exact keys in (cycle, position) order, as the local path does: a dict lookup per row.
- band grouping, spread by band: one task per slice of the bands sorts its bands' keys and lists each bucket's
  pairs (dedup's `_bucket_pairs`, the same cap on earlier members); the driver merges them into the one sorted,
  de-duplicated candidate list `MinHashLSH.candidates` makes, and keeps the pairs whose MinHash agreement
  reaches the threshold (dedup's `_agreement`, on the signatures the per-row step returned).
- ROUGE-L confirmation, in rounds of pairs in the walk's order, spread over tasks within a round: each task
  re-tokenizes the rows its pairs touch and computes the pair's and the responses' ROUGE-L (pure functions of
  the pair), skipping the pairs the walk is known never to read (`_confirm`).
- the keep-first walk over the confirmed pairs in the local path's order (by the later row, then the earlier),
  on the driver: only it knows which rows are still kept when a pair comes up.
The train rows (the human coverage rows: thousands, not millions) are tokenized and hashed on the driver, with
the same functions. `stats` (a dict, if given) receives the node ids that ran each step.
"""

from __future__ import annotations

import resource
import time
import uuid

import numpy as np
import pyarrow as pa

from llamaduo.curation import quality
from llamaduo.curation.compose import exact_walk, outcome
from llamaduo.curation.decontam import find_leaks
from llamaduo.curation.dedup import MAX_EARLIER_PER_BUCKET, MinHashLSH, _agreement, _band_keys, _bucket_pairs, choose_bands, rouge_l
from llamaduo.curation.tokens import tokenize

# candidate pairs per confirmation round (split over the cluster's CPUs): large enough that a task outweighs its
# overhead, small enough that most pairs meet rows already decided (fewer pairs to compute)
PAIRS_PER_ROUND = 20_000


def _exact_key(fields) -> np.ndarray:
    """One key per pair from its instruction's and response's text hashes, as compose.curate combines them."""
    th = fields.text_hash()
    with np.errstate(over="ignore"):
        return th[0::2] * np.uint64(3) + th[1::2]


def _lsh(p) -> MinHashLSH:
    return MinHashLSH(num_perm=p.num_perm, threshold=p.lsh_threshold, seed=p.minhash_seed)


def _need_shingles(p, test) -> bool:
    return p.near_dedup or (p.decontaminate and bool(test) and p.decontam_minhash_threshold is not None)


def _hash_rows(instructions: pa.Array, responses: pa.Array, p, need_shingles: bool):
    """(tokens, shingles, exact keys, MinHash signatures, band keys) of some rows: the per-row hashing shared by
    workers and driver."""
    fields = tokenize(instructions, responses)
    shingles = fields.windows(p.shingle_size, short=True) if need_shingles and len(fields) else None
    sig = bands = None
    if p.near_dedup:
        sig = _lsh(p).signatures(shingles.pairs()) if shingles is not None else np.zeros((0, p.num_perm), np.uint32)
        nb = choose_bands(p.lsh_threshold, p.num_perm)
        bands = np.stack([_band_keys(sig, b, p.num_perm // nb) for b in range(nb)], axis=1) if len(sig) else np.zeros((0, nb), np.uint64)
    return fields, shingles, _exact_key(fields), sig, bands


def _per_row(batch: pa.Table, *, p, test: list[dict], overrides: dict) -> pa.Table:
    """map_batches: what each synthetic row of the block gets on its own (see the module docstring)."""
    from llamaduo.cluster.ray import node_id

    ins, res = batch.column("instruction").combine_chunks(), batch.column("response").combine_chunks()
    tasks = batch.column("task").to_pylist()
    fields, shingles, key, sig, bands = _hash_rows(ins, res, p, _need_shingles(p, test))
    values = quality.values(ins, res, fields, p)
    reason = quality.check(values, tasks, overrides, p)
    method = np.full(len(tasks), None, dtype=object)
    test_id = np.full(len(tasks), None, dtype=object)
    if p.decontaminate and test and len(tasks):
        for i, (m, t) in find_leaks(fields, shingles, test, p, alive=reason == None).items():  # noqa: E711
            reason[i], method[i], test_id[i] = f"test_contamination_{m}", m, t
    cols = {"idx": batch.column("idx"), "reason": pa.array(reason.tolist(), pa.string()),
            "leak_method": pa.array(method.tolist(), pa.string()), "leak_test_id": pa.array(test_id.tolist(), pa.string()),
            "key": pa.array(key)}
    if bands is not None:
        cols["bands"] = pa.FixedSizeListArray.from_arrays(pa.array(bands.ravel()), bands.shape[1])
        # the driver estimates each candidate pair's Jaccard from these, as the local LSH does, before any ROUGE-L
        cols["sig"] = pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()), sig.shape[1])
    for rule, v in values.items():  # the report's examples quote a rule's value
        cols[f"q_{rule}"] = pa.array(v)
    node = node_id()
    cols["node"] = pa.array([node] * len(tasks), pa.string())
    # this worker process's peak memory so far (the bench reports it per process)
    cols["peak_rss_mb"] = pa.array([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024] * len(tasks), pa.float64())
    return pa.table(cols)


def _group_bands(keys: np.ndarray) -> tuple[np.ndarray, str]:
    """Candidate codes (later * n + earlier, over the considered rows) from each band's buckets, as
    `MinHashLSH.candidates` lists them; and the node that did it."""
    from llamaduo.cluster.ray import node_id

    n, codes = len(keys), []
    for b in range(keys.shape[1]):
        k = np.ascontiguousarray(keys[:, b])
        order = np.argsort(k, kind="stable")  # stable: row order inside a bucket, as the local path
        a, c = _bucket_pairs(k[order], order, MAX_EARLIER_PER_BUCKET)
        codes.append(c * n + a)
    return np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64), node_id()


def _confirm(texts: pa.Table, a: np.ndarray, b: np.ndarray, sure: np.ndarray, p):
    """(computed, ROUGE-L of the pairs, ROUGE-L of their responses) for candidate pairs (a[k], b[k]) of
    `texts`' rows, in the walk's order; the same numbers the local walk computes, as it computes them.

    `sure[k]`: row a[k] is known to be kept when the walk reaches the pair (train, or decided in an earlier
    round). The task replays the walk over its own pairs as far as it can know it: a later row is dropped once a
    pair with a row known to be kept confirms (its remaining pairs are then never read by the walk, and are not
    computed); a pair with a row known to be dropped is not computed either; a pair with a row whose fate
    another task decides is computed whatever it gives, and leaves its later row's fate open."""
    from llamaduo.cluster.ray import node_id

    fields = tokenize(texts.column("instruction").combine_chunks(), texts.column("response").combine_chunks())
    both = fields.pairs()
    computed = np.zeros(len(a), dtype=bool)
    score, answers = np.zeros(len(a)), np.zeros(len(a))
    KEPT, DROPPED, OPEN = 0, 1, 2
    fate: dict[int, int] = {}  # rows whose every pair as the later row is in this task: their fate so far
    for k in range(len(a)):
        x, y = int(a[k]), int(b[k])
        fy = fate.setdefault(y, KEPT)  # sent pairs have a later row that was kept before this round
        fx = fate.get(x, KEPT if sure[k] else OPEN)
        if fy == DROPPED or fx == DROPPED:
            continue  # the walk skips this pair
        computed[k] = True
        score[k] = rouge_l(both.row(x).tolist(), both.row(y).tolist())
        if score[k] < p.rouge_l_threshold:
            continue
        answers[k] = rouge_l(fields.row(2 * x + 1).tolist(), fields.row(2 * y + 1).tolist())
        if p.min_response_rouge_l is None or answers[k] >= p.min_response_rouge_l:
            fate[y] = DROPPED if fx == KEPT else OPEN  # (fy is KEPT or OPEN here)
    return computed, score, answers, node_id()


def _blocks(table: pa.Table, n_blocks: int) -> list[pa.Table]:
    step = -(-len(table) // n_blocks)
    return [table.slice(s, step) for s in range(0, len(table), step)]


def curate_ray(raw: list[dict], *, train: list[dict], test: list[dict], p, cluster, stats: dict | None = None):
    """`compose.curate` on the Ray cluster `cluster` (ClusterParams): the same (kept, dropped, counts)."""
    from llamaduo.cluster.ray import connect

    stats = {} if stats is None else stats
    order = sorted(range(len(raw)), key=lambda i: raw[i]["cycle"])  # stable: position breaks ties (as local)
    rows = [raw[i] for i in order]
    n, n_train = len(rows), len(train)
    t_ins = pa.array([r["instruction"] for r in train], type=pa.large_string())
    t_res = pa.array([r["response"] for r in train], type=pa.large_string())
    # the driver's part on train: calibration (as the local path), exact keys and band keys of the train rows
    t_fields, _, t_key, t_sig, t_bands = _hash_rows(t_ins, t_res, p, _need_shingles(p, test))
    overrides, calibration = quality.calibrate(quality.values(t_ins, t_res, t_fields, p), [r["task"] for r in train], p)
    table = pa.table({"idx": pa.array(np.arange(n, dtype=np.int64)),
                      "instruction": pa.array([r["instruction"] for r in rows], type=pa.large_string()),
                      "response": pa.array([r["response"] for r in rows], type=pa.large_string()),
                      "task": pa.array([r["task"] for r in rows], type=pa.string())})
    tasks = [r["task"] for r in rows]
    with connect(cluster) as ray:
        cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        t0 = time.perf_counter()
        out = _map_rows(ray, table, cluster, cpus, p=p, test=test, overrides=overrides) if n else None
        stats["map_s"] = round(time.perf_counter() - t0, 3)
        reason = np.full(n, None, dtype=object)
        why: dict[int, str] = {}
        decontaminated = []
        values = {rule: np.zeros(0) for rule in quality.RULES}
        if out is not None:
            out = out.sort_by("idx")  # blocks come back in any order; idx is the row's place in (cycle, position)
            assert out.column("idx").to_numpy().tolist() == list(range(n)), "rows lost between the workers and the driver"
            reason = np.array(out.column("reason").to_pylist(), dtype=object)
            values = {rule: out.column(f"q_{rule}").to_numpy(zero_copy_only=False) for rule in quality.RULES}
            stats["map_nodes"] = _tally(out.column("node").to_pylist())
            stats["worker_peak_rss_mb"] = round(float(np.max(out.column("peak_rss_mb").to_numpy())), 1)
            for i, (m, t) in enumerate(zip(out.column("leak_method").to_pylist(), out.column("leak_test_id").to_pylist())):
                if m is not None:
                    why[i] = f"{m} match with test row {t}"
                    decontaminated.append({"id": rows[i]["id"], "test_id": t, "method": m})

        # exact duplicates: the local path's walk over the keys, in order
        key = np.concatenate([t_key, out.column("key").to_numpy() if out is not None else np.zeros(0, np.uint64)])
        ids = [r["id"] for r in train] + [r["id"] for r in rows]
        exact_walk(key, ids, n_train, reason, why)

        if p.near_dedup and n:
            t1 = time.perf_counter()
            bands = np.concatenate([t_bands, out.column("bands").combine_chunks().flatten().to_numpy().reshape(n, -1)])
            sig = np.concatenate([t_sig, out.column("sig").combine_chunks().flatten().to_numpy().reshape(n, -1)])
            _near(ray, bands, sig, reason, why, ids, rows, train, n_train, cpus, p, stats)
            stats["near_s"] = round(time.perf_counter() - t1, 3)

    return outcome(rows, reason, why, values, tasks, overrides, p, decontaminated, calibration)


def _tally(nodes: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in nodes:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


def _map_rows(ray, table: pa.Table, cluster, cpus: int, **kwargs) -> pa.Table:
    """The per-row step as Ray Data map_batches; at least two blocks per cluster CPU, so every node gets work."""
    import ray.data

    n_blocks = max(2 * cpus, -(-len(table) // cluster.block_rows))
    n_blocks = min(n_blocks, len(table))
    scratch = None
    if cluster.storage:
        # the rows reach the workers as Parquet in shared storage (the object store then holds results only)
        import fsspec
        import pyarrow.parquet as pq

        scratch = f"{cluster.storage.rstrip('/')}/llamaduo-curate-{uuid.uuid4().hex}"
        fs, root = fsspec.core.url_to_fs(scratch)
        fs.makedirs(root, exist_ok=True)
        for k, part in enumerate(_blocks(table, n_blocks)):
            with fs.open(f"{root}/part-{k:05d}.parquet", "wb") as f:
                pq.write_table(part, f)
        ds = ray.data.read_parquet(scratch, override_num_blocks=n_blocks)
    else:
        ds = ray.data.from_arrow(_blocks(table, n_blocks))
    try:
        # batch_size=None: one call per block (the kernels are fastest over many rows at once)
        ds = ds.map_batches(_per_row, batch_format="pyarrow", batch_size=None, fn_kwargs=kwargs, num_cpus=1)
        return pa.concat_tables(ray.get(ds.to_arrow_refs()))
    finally:
        if scratch is not None:
            fs.rm(root, recursive=True)


def _near(ray, bands, sig, reason, why, ids, rows, train, n_train, cpus, p, stats) -> None:
    """Near duplicates: band grouping and pair confirmation as Ray tasks, the keep-first walk here."""
    alive = np.concatenate([np.ones(n_train, dtype=bool), reason == None])  # noqa: E711
    considered = np.flatnonzero(alive)
    if len(considered) < 2:
        return
    keys = np.ascontiguousarray(bands[considered])
    keys_ref = ray.put(keys)
    group = ray.remote(num_cpus=1)(lambda ref, lo, hi: _group_bands(ref[:, lo:hi]))
    slices = np.array_split(np.arange(keys.shape[1]), min(keys.shape[1], 2 * cpus))
    parts = ray.get([group.remote(keys_ref, int(s[0]), int(s[-1]) + 1) for s in slices if len(s)])
    stats["group_nodes"] = _tally([node for _, node in parts])
    code = np.unique(np.concatenate([c for c, _ in parts]))
    m = len(considered)
    a, c = considered[code % m], considered[code // m]  # global rows (train first), sorted by (later, earlier)
    stats["pairs_candidates"] = int(len(a))
    # a shared band is only a hint: the pairs whose estimated Jaccard reaches the threshold, as the local LSH keeps
    close = _agreement(sig, a, c) >= p.lsh_threshold
    a, c = a[close], c[close]
    if not len(a):
        return
    # confirmation in rounds of pairs (in the walk's order), spread over tasks within a round: the rows a round's
    # pairs meet before its first later row are decided by then, so pairs with a dropped one are never sent and
    # a task can stop on a later row as soon as a pair with a kept row confirms (see `_confirm`)
    confirm = ray.remote(num_cpus=1)(_confirm)
    texts = {"instruction": [r["instruction"] for r in train] + [r["instruction"] for r in rows],
             "response": [r["response"] for r in train] + [r["response"] for r in rows]}
    nodes: list[str] = []
    sent = 0
    pos = 0
    while pos < len(a):
        end = min(pos + PAIRS_PER_ROUND, len(a))
        while end < len(a) and c[end] == c[end - 1]:
            end += 1  # a later row's pairs stay in one round
        ra, rc = a[pos:end], c[pos:end]
        pos = end
        first = rc[0]
        dead = np.array([r is not None for r in reason], dtype=bool)
        dead_x = (ra >= n_train) & dead[np.maximum(ra - n_train, 0)]  # a drop is final
        # the local walk skips these before any score: two train rows, a dropped later row, a dropped earlier one
        live = (rc >= n_train) & ~dead[np.maximum(rc - n_train, 0)] & ~dead_x
        ra, rc = ra[live], rc[live]
        if not len(ra):
            continue
        sure = ra < first
        # tasks cut at later-row boundaries, so a later row's pairs meet in one task
        cuts = [int(x) for x in np.linspace(0, len(ra), 2 * cpus + 1)[1:-1]]
        cuts = sorted({int(np.searchsorted(rc, rc[k])) for k in cuts if k < len(ra)} - {0})
        futures, parts = [], []
        for lo, hi in zip([0, *cuts], [*cuts, len(ra)]):
            pa_, pc_ = ra[lo:hi], rc[lo:hi]
            touched, inv = np.unique(np.concatenate([pa_, pc_]), return_inverse=True)
            sub = pa.table({k: pa.array([v[i] for i in touched.tolist()], type=pa.large_string()) for k, v in texts.items()})
            futures.append(confirm.remote(sub, inv[:len(pa_)], inv[len(pa_):], sure[lo:hi], p))
            parts.append((pa_, pc_))
            sent += hi - lo
        for (pa_, pc_), (computed, score, answers, node) in zip(parts, ray.get(futures)):
            nodes.append(node)
            _walk(pa_, pc_, computed, score, answers, reason, why, ids, n_train, p)
    stats["confirm_nodes"] = _tally(nodes)
    stats["pairs_close"], stats["pairs_sent"] = int(len(a)), int(sent)


def _walk(a, c, computed, score, answers, reason, why, ids, n_train, p) -> None:
    """The local keep-first walk over pairs (earlier a[k], later c[k]) in its order, on precomputed numbers."""
    for k in range(len(a)):
        x, y = int(a[k]), int(c[k])
        j = y - n_train
        if j < 0 or reason[j] is not None:
            continue  # two train rows, or a row already dropped
        if x >= n_train and reason[x - n_train] is not None:
            continue  # only a kept row (or train) can make a later row a duplicate
        assert computed[k], f"pair ({x}, {y}) was not confirmed but the walk reads it"
        if score[k] < p.rouge_l_threshold:
            continue
        if p.min_response_rouge_l is None or answers[k] >= p.min_response_rouge_l:
            reason[j] = "near_duplicate_train" if x < n_train else "near_duplicate"
            why[j] = f"ROUGE-L {score[k]:.2f} (responses {answers[k]:.2f}) with {ids[x]}"
