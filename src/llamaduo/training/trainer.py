"""Fine-tuning: trl's SFT trainer with a peft LoRA adapter, on a 4-bit NF4 base when quantizing (QLoRA).

`train` fits `train.submodels` adapters that differ only in data order (the input of merging, see
`llamaduo.merging`). Each one checkpoints into `train.checkpoint_dir/train-<hash of inputs and params>/`,
so a killed run resumes at its last checkpoint (and skips finished sub-models) instead of restarting.

The output folder is a plain peft adapter (sub-model 0, what inference loads) plus `submodels.json`
listing every sub-model's folder relative to it: "." for sub-model 0, `submodels/<i>` for the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import shutil
import time
from pathlib import Path

from llamaduo.atomic import replacing_dir
from llamaduo.config import runtime_keys
from llamaduo.errors import DataError
from llamaduo.hardware import compute_dtype
from llamaduo.training import plan as planning
from llamaduo.training.budget import per_process, steps_per_epoch
from llamaduo.training.data import count_truncated, lora_shape, to_examples, token_lengths
from llamaduo.training.launch import process_state

SUBMODELS_FILE = "submodels.json"
# `train.save_steps: null`: a checkpoint this often. A save writes the adapter and its AdamW states (rank 8 on all
# linear layers: ~30 MB for the default model, ~250 MB for a 7B one) whatever a step costs, and a step costs tens of
# seconds on a 2-core CPU but a fraction of one on a GPU: a count of steps cannot suit both, a time can
CHECKPOINT_INTERVAL_S = 120


def parameter_count(base_dir: str) -> int:
    """Parameters of the safetensors weights in `base_dir`, read from the file headers (nothing loaded)."""
    from safetensors import safe_open

    n = 0
    for f in Path(base_dir).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            n += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    return n


def memory_limit() -> int | None:
    """Bytes of memory this process may use: the machine's (MemTotal), or its cgroup's limit where lower; None
    where neither can be read. The total, not what is free now: the choice must not change between two runs."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cgroup.isdigit():
            limits.append(int(cgroup))
    except OSError:
        pass
    return min(limits) if limits else None


def resolve_quantize(p, base_dir: str, dtype: str) -> tuple[bool, str]:
    """(4-bit or not, why) for `train.quantize`: true/false as set; auto = 4-bit NF4 on a CUDA GPU, or where the
    base's weights in `dtype` would take more than half the memory (the other half is for activations, which
    4-bit weights do not shrink); plain LoRA otherwise.

    On a CPU bitsandbytes dequantizes every 4-bit weight on every matmul (forward and backward): so it costs
    time on every step, and it saves memory only on the weights, while on a small model activations dominate.
    """
    import torch

    if p.quantize != "auto":
        return bool(p.quantize), "params"
    if torch.cuda.is_available():
        return True, "auto: cuda"
    weights = parameter_count(base_dir) * torch.finfo(getattr(torch, dtype)).bits // 8
    limit = memory_limit()
    if limit is not None and 2 * weights > limit:
        return True, f"auto: cpu, {dtype} weights {weights / 2**30:.1f} GiB > half of {limit / 2**30:.1f} GiB memory"
    return False, "auto: cpu, base fits in memory"


def base_load_kwargs(*, quantize: bool, dtype, fsdp: bool = False, cuda: bool = False, local_index: int = 0,
                     attn_implementation: str | None = None) -> dict:
    """`from_pretrained` arguments for the base: `dtype` (a torch dtype), 4-bit NF4 computing in it when `quantize`,
    the attention kernel when given (`plan.attention_kernel`; None = transformers' default).

    QLoRA under FSDP as peft documents it (docs "FSDP", "Use PEFT QLoRA and FSDP"): the 4-bit weights are stored in
    the compute dtype (`bnb_4bit_quant_storage`) so FSDP can flatten them with the float parameters, and no
    `device_map`: FSDP places the shards. Under DDP on a GPU, each process loads onto its own GPU (a 4-bit model
    cannot be moved after loading); on a CPU there is no device to name."""
    from transformers import BitsAndBytesConfig

    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantize:
        extra = {"bnb_4bit_quant_storage": dtype} if fsdp else {}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
            **extra)
        if cuda and not fsdp:
            kwargs["device_map"] = {"": local_index}
    return kwargs


def load_base(base_dir: str, *, quantize: bool, dtype=None, fsdp: bool = False, attn_implementation: str | None = None):
    """The base model in `dtype` (torch dtype; float32 when None), 4-bit NF4 computing in `dtype` when `quantize`."""
    import torch
    from transformers import AutoModelForCausalLM

    if attn_implementation == "sdpa_varlen":
        from llamaduo.training import attention  # noqa: F401  (registers the kernel with transformers)
    kwargs = base_load_kwargs(quantize=quantize, dtype=dtype or torch.float32, fsdp=fsdp, cuda=torch.cuda.is_available(),
                              local_index=process_state().local_process_index, attn_implementation=attn_implementation)
    return AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)


def weights_stamp(base_dir: str) -> list:
    """The base folder's files as (name, bytes, modification time): which weights these are, read from the file
    system. Hashing their content instead took 1.1 s for the default model's 538 MB on the 2-core CPU before every
    training, and grows with the base (15 GB for a 7B one in bf16); a replaced base (a `dvc checkout` of other
    weights, a new conversion) is new files, with their own times."""
    path = Path(base_dir).resolve()
    return [str(path)] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.iterdir()) if f.is_file()]


def checkpoint_key(rows: list[dict], val_rows: list[dict], base_dir: str, p, **resolved) -> str:
    """Hash of what the run computes from: rows, held-out rows, base weights, the params that matter and what
    `resolved` names (the dtype and quantization the hardware decided)."""
    h = hashlib.sha256()
    h.update(json.dumps([rows, val_rows], sort_keys=True, default=str).encode())
    h.update(json.dumps(weights_stamp(base_dir)).encode())
    # runtime knobs (threads, checkpoint folder) change how a run goes, not what it computes
    h.update(json.dumps(p.model_dump(exclude=runtime_keys(type(p))), sort_keys=True).encode())
    h.update(json.dumps(resolved, sort_keys=True).encode())
    return h.hexdigest()[:16]


def sft_config(p, output_dir: Path, *, dtype: str, plan: planning.Plan | None = None, num_processes: int = 1, **overrides):
    """trl's SFTConfig for `p`; `dtype` the compute dtype ("bfloat16" / "float32", `hardware.compute_dtype`); `plan`
    how this device runs the global batch (`plan.decide`); without one (an evaluation), `train.micro_batch_size` rows
    a forward pass (1 when null) over `num_processes` processes."""
    import torch
    from trl import SFTConfig

    if plan is None:
        micro, accum = per_process(p, num_processes, p.micro_batch_size or 1)
    else:
        micro, accum = plan.micro_batch_size, plan.grad_accum
    padding_free = bool(plan and plan.padding_free) or p.packing
    kwargs = dict(
        output_dir=str(output_dir), max_length=p.max_length, per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro, gradient_accumulation_steps=accum,
        pad_to_multiple_of=plan.pad_to_multiple_of if plan else None,
        learning_rate=p.learning_rate, lr_scheduler_type=p.lr_scheduler,
        # the budget follows the data: `epochs` passes; `_train_one` applies the `max_steps` cap once trl has built
        # (and maybe packed) the dataset whose length the epochs count
        num_train_epochs=p.epochs, max_steps=-1,
        gradient_checkpointing=p.gradient_checkpointing, packing=p.packing, logging_steps=1, report_to="none",
        seed=p.seed, use_cpu=not torch.cuda.is_available(), bf16=dtype == "bfloat16", dataset_num_proc=None,
        torch_compile=bool(plan and plan.torch_compile),
        # Liger's layer kernels; its fused linear cross-entropy stays off (trl fuses the LM head and loss itself)
        use_liger_kernel=bool(plan and plan.liger),
        liger_kernel_config={"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                             "fused_linear_cross_entropy": False} if plan and plan.liger else None,
        train_sampling_strategy="group_by_length" if p.group_by_length else "random",
        # a padding-free batch has no padding and no attention mask to count it from, and its pad token is the end
        # of turn that every row holds (SmolLM2): count every token there, the mask's ones elsewhere
        include_num_input_tokens_seen="all" if padding_free else "non_padding", eval_strategy="no", save_strategy="no",
        # LoRA leaves most parameters frozen: DDP's unused-parameter search would only cost time
        ddp_find_unused_parameters=False,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


class _RowRecorder:
    """The trainer's collator, noting the `row` of each training example it collates: which rows this process
    trained on (metrics `rows_by_process`, the evidence that processes read disjoint shards). The collator runs
    in this process (dataloader_num_workers = 0); eval examples carry no `row` and pass through unnoted."""

    def __init__(self, collate):
        self.collate, self.rows = collate, []

    def __call__(self, examples):
        self.rows.extend(ex["row"] for ex in examples if "row" in ex)
        return self.collate([{k: v for k, v in ex.items() if k != "row"} for ex in examples])


def _train_one(*, examples, val_examples, base_dir, tokenizer, p, r, alpha, data_seed, ckpt: Path, final: Path,
               quantize: bool, dtype: str, lengths: list[int], callbacks=(), started: float | None = None) -> dict:
    import torch
    from accelerate.utils import gather_object
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerState
    from transformers.trainer_utils import get_last_checkpoint

    from llamaduo.training.callbacks import CheckpointEvery, StepClock
    from llamaduo.training.sft import StepTrainer

    started = time.perf_counter() if started is None else started

    # same seed for every sub-model: identical LoRA init and dropout, so they differ only in data order
    torch.manual_seed(p.seed)
    # each example keeps its row's index (packed sequences mix rows: no index then), to record who trained on what
    examples = [ex if p.packing else dict(ex, row=i) for i, ex in enumerate(examples)]
    # the trainer's sampler also shuffles by data_seed; the pre-shuffle keeps orders distinct whatever the sampler does
    random.Random(data_seed).shuffle(examples)
    fsdp = p.strategy == "fsdp"
    cuda = torch.cuda.is_available()
    attention = planning.attention_kernel(p, cuda)
    model = load_base(base_dir, quantize=quantize, dtype=getattr(torch, dtype), fsdp=fsdp, attn_implementation=attention)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=p.lora_dropout, target_modules=p.target_modules, task_type="CAUSAL_LM")
    procs = process_state().num_processes
    # the micro-batch from the memory the loaded base leaves free (on a GPU), the rest from what this device runs
    plan = planning.decide(p, num_processes=procs, lengths=[min(n, p.max_length) for n in lengths], cuda=cuda,
                           config=model.config.get_text_config(), dtype_bytes=torch.finfo(getattr(torch, dtype)).bits // 8,
                           attn_implementation=attention)
    clock = StepClock()
    saving = ({"save_strategy": "steps", "save_steps": p.save_steps} if p.save_steps
              else {"save_strategy": "no"})  # CheckpointEvery asks for them
    timed = [] if p.save_steps else [CheckpointEvery(CHECKPOINT_INTERVAL_S, procs)]
    # remove_unused_columns=False keeps `row` up to the collator (trl's collator reads only the columns it needs)
    cfg = sft_config(p, ckpt, dtype=dtype, plan=plan, data_seed=data_seed, save_total_limit=1,
                     remove_unused_columns=p.packing, **saving)
    trainer = StepTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(examples),
                          eval_dataset=Dataset.from_list(val_examples) if val_examples else None,
                          processing_class=tokenizer, peft_config=lora, callbacks=[*callbacks, clock, *timed],
                          fused_lm_head=plan.fused_lm_head)
    if plan.padding_free and not p.packing:
        # trl's own collator, switched to padding-free: trl declines `padding_free` with `max_length` unless packing,
        # as its collator would not truncate; here trl's dataset preparation has truncated to max_length already
        trainer.data_collator.padding_free = True
    recorder = trainer.data_collator = _RowRecorder(trainer.data_collator)
    # what the sampler draws from: the examples, or fewer packed sequences under `packing`
    n_seqs = len(trainer.train_dataset)
    if p.max_steps is not None:
        # the cap applies only where it is earlier than the epochs (a bare max_steps would override them); the
        # params' global batch makes the count the same for any number of processes (budget.per_process)
        trainer.args.max_steps = min(p.max_steps, math.ceil(p.epochs * steps_per_epoch(p, n_seqs)))
    last = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
    start_step = start_tokens = 0
    if last:
        state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
        start_step, start_tokens = state.global_step, state.num_input_tokens_seen
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start
    log = trainer.state.log_history
    losses = [h["loss"] for h in log if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"training loss is not finite: {losses}")
    # no eval_loss when trl dropped every validation example (its completion truncated away at max_length)
    val_loss = trainer.evaluate().get("eval_loss") if val_examples else None
    tokens = trainer.state.num_input_tokens_seen
    steps = trainer.state.global_step
    seqs_read = steps * p.batch_size  # the global batch, over all processes
    # every process's rows, in process order; a row on several processes only where accelerate repeats the first
    # rows to fill an epoch's last micro-batches (even_batches)
    by_process = [sorted(set(rows)) for rows in gather_object([recorder.rows])] if not p.packing else None
    # exact without packing: each epoch is a permutation, so a run inside its first epoch read only new rows in
    # full micro-batches, and a run past it read them all (less any trl dropped: a completion truncated away);
    # packed, rows read are in proportion to the packed sequences read
    if not p.packing:
        unique = min(n_seqs, seqs_read)
    else:
        unique = len(examples) if seqs_read >= n_seqs else round(seqs_read * len(examples) / n_seqs)
    metrics = {
        "data_seed": data_seed,
        "steps": steps,
        "resumed_from_step": start_step,
        "train_loss": float(result.training_loss),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "val_loss": val_loss,
        "tokens_seen": int(tokens),
        "examples_seen": seqs_read,
        "epochs_seen": round(float(trainer.state.epoch or 0), 4),
        "unique_rows_seen": unique,
        "rows_available": len(examples),
        # trl drops an example whose prompt alone fills `max_length` (no completion token left to learn from)
        "rows_dropped_too_long": len(examples) - n_seqs if not p.packing else None,
        "unique_rows_exact": not p.packing or seqs_read >= n_seqs,
        "wall_s": round(wall, 2),
        # since this run (re)started, so a resumed run reports its real speed; over the trainer's wall, the first
        # step included (the clock's steady rate leaves it out)
        "tokens_per_s": round((tokens - start_tokens) / wall, 1),
        **clock.summary(started, start_tokens),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "processes": procs,
        "plan": plan.metrics(),
        # rows each process trained on since this run (re)started; null when packed
        "rows_by_process": [len(rows) for rows in by_process] if by_process else None,
        "rows_on_several_processes": (sum(len(rows) for rows in by_process) - len(set().union(*by_process))
                                      if by_process else None),
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in log if "loss" in h],
    }
    tmp = final.with_name(final.name + ".tmp")
    if fsdp:
        # the adapter's shards are on every process: gather a full state dict, which the main process writes
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        if trainer.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(tmp))
    if trainer.accelerator.is_main_process:
        if not fsdp:
            shutil.rmtree(tmp, ignore_errors=True)
            trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics))
        tmp.replace(final)  # a finished sub-model is skipped on resume only once it is complete
    trainer.accelerator.wait_for_everyone()
    return metrics


def train(*, rows: list[dict], base_dir: str, out_dir: str, p, val_rows: list[dict] | None = None, callbacks=(),
          dtype: str = "auto") -> dict:
    """Train `p.submodels` adapters on `rows` (validation loss on `val_rows`); write them to `out_dir`; return metrics.

    `callbacks`: extra transformers TrainerCallbacks (progress, early stop ...), given to every sub-model's trainer.
    `dtype`: `compute.dtype` (auto | bfloat16 | float32), resolved by `llamaduo.hardware.compute_dtype`.
    """
    import torch
    from transformers import AutoTokenizer

    started = time.perf_counter()
    if not rows:
        raise DataError("no training rows (train split and curated synthetic data are both empty)")
    if p.threads:
        torch.set_num_threads(p.threads)
    val_rows = list(val_rows or [])
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    examples, val_examples = to_examples(rows, tokenizer), to_examples(val_rows, tokenizer)
    lengths = token_lengths(tokenizer, examples)
    truncated, tokens = count_truncated(tokenizer, examples, p.max_length, lengths)
    r, alpha = lora_shape(p, len(rows))
    state = process_state()
    dt = compute_dtype(dtype)
    quantize, quantize_source = resolve_quantize(p, base_dir, dt["dtype"])
    # the process layout is in the key although runtime: a checkpoint's RNG states, data position and (FSDP)
    # sharded optimizer are per process, so another layout starts afresh instead of resuming a mismatched state
    key = checkpoint_key(rows, val_rows, base_dir, p, dtype=dt["dtype"], quantize=quantize,
                         processes=state.num_processes, strategy=p.strategy)
    root = Path(p.checkpoint_dir) / f"train-{key}"

    subs = []
    for i in range(p.submodels):
        final = root / f"sub-{i}" / "final"
        if (final / "metrics.json").is_file():
            subs.append(json.loads((final / "metrics.json").read_text()))
            continue
        subs.append(_train_one(examples=examples, val_examples=val_examples, base_dir=base_dir, tokenizer=tokenizer,
                               p=p, r=r, alpha=alpha, data_seed=p.seed + i, ckpt=root / f"sub-{i}", final=final,
                               quantize=quantize, dtype=dt["dtype"], lengths=lengths, callbacks=callbacks,
                               started=started if i == 0 else None))

    if state.is_main_process:
        with replacing_dir(out_dir) as tmp:
            paths = []
            for i in range(p.submodels):
                dest = tmp if i == 0 else tmp / "submodels" / str(i)
                shutil.copytree(root / f"sub-{i}" / "final", dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("metrics.json"))
                paths.append("." if i == 0 else f"submodels/{i}")
            (tmp / SUBMODELS_FILE).write_text(json.dumps({"submodels": paths, "data_seeds": [s["data_seed"] for s in subs]}, indent=1))
        shutil.rmtree(root, ignore_errors=True)  # the adapters are out: the checkpoints have served
    state.wait_for_everyone()

    head = subs[0]
    metrics = {
        "loss_curve": head["loss_curve"],  # sub-model 0's; the others' final losses are under `submodels`
        "rows": len(rows),
        "val_rows": len(val_rows),
        "truncated_rows": truncated,
        "tokens_in_data": tokens,
        **{k: v for k, v in head.items() if k not in ("loss_curve", "data_seed")},
        "quantized": quantize,
        "quantize_source": quantize_source,
        "packing": p.packing,
        "dtype": dt["dtype"],
        "dtype_source": dt["source"],
        "cpu_flags": dt["cpu_flags"],
        "lora_r": r,
        "lora_alpha": alpha,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if p.submodels > 1:
        metrics["submodels"] = [{k: v for k, v in s.items() if k != "loss_curve"} for s in subs]
        metrics["total_wall_s"] = round(sum(s["wall_s"] for s in subs), 2)
    return metrics
