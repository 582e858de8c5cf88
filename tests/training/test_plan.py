"""How a device runs the global batch (llamaduo.training.plan): the micro-batch from free GPU memory and the rows'
lengths, the CPU's measured choice, the kernels, and the errors that name the key; the trainer's clock and its
checkpoints by time."""

from types import SimpleNamespace

import pytest

from llamaduo.config import TrainParams
from llamaduo.errors import ParamsError
from llamaduo.training import plan

GIB = 2**30
# a Llama 7B shape (hidden 4096, 32 layers, GQA 32/8, intermediate 14336): what the GPU figures were measured on
LLAMA_7B = SimpleNamespace(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=128)


def test_the_activation_estimate_counts_what_lora_keeps_per_token():
    kept = plan.activation_bytes_per_token(LLAMA_7B, dtype_bytes=2, lora_dropout=True, gradient_checkpointing=False)
    # 128,000 elements a layer (attention 4h + 3q + 3kv, MLP 4f, dropout copies 6h + f) x 32 layers x 2 bytes
    assert kept == pytest.approx(128_000 * 32 * 2 * plan.ACTIVATION_MARGIN)
    assert plan.activation_bytes_per_token(LLAMA_7B, dtype_bytes=2, lora_dropout=False, gradient_checkpointing=False) < kept
    # checkpointing keeps each layer's input and one layer's worth: under a tenth of it
    ckpt = plan.activation_bytes_per_token(LLAMA_7B, dtype_bytes=2, lora_dropout=True, gradient_checkpointing=True)
    assert ckpt < kept / 10


@pytest.mark.parametrize("free_gib,lengths,padding_free,checkpointing,micro", [
    (134, [1024] * 16, True, False, 8),        # an H200 after a 7B 4-bit base: 16 full rows (16k tokens) do not fit
    (134, [400] * 16, True, False, 16),        # summarize-length rows: the whole step in one pass
    (40, [1024] * 16, True, False, 2),
    (40, [1024] * 16, True, True, 16),         # gradient checkpointing: a tenth of the activations
    (134, [1024] + [200] * 15, True, False, 16),   # one long row among short ones: 4,024 tokens end to end ...
    (134, [1024] + [200] * 15, False, False, 8),   # ... but 16 x 1,024 padded
    (2, [1024] * 16, True, False, 1),          # nothing fits: one row, and a warning
])
def test_the_gpu_micro_batch_is_the_largest_that_its_free_memory_holds(free_gib, lengths, padding_free, checkpointing, micro):
    per_token = plan.activation_bytes_per_token(LLAMA_7B, dtype_bytes=2, lora_dropout=True,
                                                gradient_checkpointing=checkpointing)
    m, why = plan.micro_batch_for_memory(share=16, lengths=lengths, budget_bytes=plan.MEMORY_SHARE * free_gib * GIB,
                                         bytes_per_token=per_token, padding_free=padding_free)
    assert m == micro
    assert ("gradient_checkpointing" in why) == (free_gib == 2)


def test_the_micro_batch_divides_the_share_of_each_process():
    # 12 rows of 100 tokens a step at 1,000 bytes a token (plus the [T, T] mask): 3 MB holds 8 rows (2.72 MB), but a
    # step is whole micro-batches, so 6; 6 MB holds all 12 (5.52 MB)
    def micro(budget):
        return plan.micro_batch_for_memory(share=12, lengths=[100] * 12, budget_bytes=budget, bytes_per_token=1000,
                                           padding_free=True)[0]

    assert (micro(3e6), micro(6e6), micro(1e6)) == (6, 12, 4)


def test_a_cuda_plan_takes_the_memory_and_runs_padding_free(monkeypatch):
    import importlib.util

    p = TrainParams()  # shipped-like: 16 rows a step, everything auto
    gpu = plan.decide(p, num_processes=1, lengths=[1024] * 400, cuda=True, free_bytes=134 * GIB, config=LLAMA_7B)
    assert (gpu.micro_batch_size, gpu.grad_accum, gpu.padding_free, gpu.device) == (8, 2, True, "cuda")
    assert gpu.pad_to_multiple_of is None
    assert gpu.attn_implementation == ("flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa_varlen")
    assert gpu.liger == (importlib.util.find_spec("liger_kernel") is not None)
    # two GPUs: 8 rows each a step, which one pass holds
    two = plan.decide(p, num_processes=2, lengths=[1024] * 400, cuda=True, free_bytes=134 * GIB, config=LLAMA_7B)
    assert (two.micro_batch_size, two.grad_accum) == (8, 1)
    # packing: trl's packed sequences are max_length long whatever the rows
    packed = plan.decide(p.model_copy(update={"packing": True}), num_processes=1, lengths=[100] * 400, cuda=True,
                         free_bytes=134 * GIB, config=LLAMA_7B)
    assert packed.micro_batch_size == 8 and packed.padding_free
    # the params' own micro-batch wins over memory
    fixed = plan.decide(p.model_copy(update={"micro_batch_size": 4, "padding_free": False}), num_processes=1,
                        lengths=[1024] * 400, cuda=True, free_bytes=134 * GIB, config=LLAMA_7B)
    assert (fixed.micro_batch_size, fixed.grad_accum, fixed.padding_free, fixed.why) == (4, 4, False, "params")
    assert fixed.pad_to_multiple_of is None  # a GPU's padded batch is not rounded by default


def test_a_cpu_plan_takes_the_measured_micro_batch():
    cpu = plan.decide(TrainParams(), num_processes=1, lengths=[300] * 40, cuda=False)
    assert (cpu.micro_batch_size, cpu.grad_accum) == (plan.CPU_MICRO_BATCH, 16 // plan.CPU_MICRO_BATCH)
    assert cpu.padding_free is plan.CPU_PADDING_FREE and not cpu.liger and cpu.attn_implementation == "sdpa_varlen"
    assert cpu.pad_to_multiple_of == plan.CPU_PAD_MULTIPLE
    # the rounding is a CPU's, none where rows run end to end, and params win
    assert plan.decide(TrainParams(padding_free=True), num_processes=1, lengths=[300], cuda=False).pad_to_multiple_of is None
    assert plan.decide(TrainParams(pad_to_multiple_of=None), num_processes=1, lengths=[300],
                       cuda=False).pad_to_multiple_of is None
    assert plan.decide(TrainParams(pad_to_multiple_of=8), num_processes=1, lengths=[300],
                       cuda=False).pad_to_multiple_of == 8
    # a share smaller than the measured size: the largest divisor of it
    small = plan.decide(TrainParams(batch_size=3), num_processes=1, lengths=[300], cuda=False)
    assert small.micro_batch_size * small.grad_accum == 3 and small.micro_batch_size <= plan.CPU_MICRO_BATCH


def test_what_this_machine_cannot_run_names_the_key():
    with pytest.raises(ParamsError, match="`train.liger` is true.*no"):
        plan.use_liger(TrainParams(liger=True), cuda=False)
    assert plan.use_liger(TrainParams(liger=False), cuda=True) is False
    with pytest.raises(ParamsError, match="`train.attn_implementation` is flash_attention_2"):
        plan.attention_kernel(TrainParams(attn_implementation="flash_attention_2"), cuda=False)
    assert plan.attention_kernel(TrainParams(attn_implementation="eager"), cuda=False) == "eager"
    with pytest.raises(ValueError, match=r"`train.micro_batch_size` \(3\) must divide .* 16: one of \[1, 2, 4, 8, 16\]"):
        TrainParams(micro_batch_size=3)
    with pytest.raises(ValueError, match=r"`train.micro_batch_size` \(4\) must divide .* = 2"):
        TrainParams(batch_size=4, micro_batch_size=4, num_processes=2)
    with pytest.raises(ValueError, match=r"`train.grad_accum` is no longer a key.*\(1 x 2 = 2\)"):
        TrainParams(batch_size=1, grad_accum=2)


def test_the_clock_splits_start_up_from_steady_state():
    from llamaduo.training.callbacks import StepClock

    clock = StepClock()
    clock.first_begin = 10.0
    clock.marks = [(14.0, 1000), (16.0, 3000), (18.0, 5000)]  # a slow first step, then 1,000 tokens/s
    s = clock.summary(since=2.0)
    assert (s["setup_s"], s["first_step_s"], s["steady_tokens_per_s"], s["steady_s_per_step"], s["steady_steps"]) == (
        8.0, 4.0, 1000.0, 2.0, 2)
    assert StepClock().summary(since=0)["steady_tokens_per_s"] is None


def test_the_clock_reports_resident_memory_growth_after_the_first_step():
    from llamaduo.training.callbacks import StepClock, resident_mb

    clock = StepClock()
    clock.first_begin, clock.marks = 0.0, [(1.0, 10), (2.0, 20), (3.0, 30), (4.0, 40)]
    clock.rss = [2000.0, 2400.0, 2100.0, 2050.0]  # the first step's growth is start-up; 400 MB more later is growth
    s = clock.summary(since=0.0)
    assert (s["rss_mb_first_step"], s["rss_mb_max_step"], s["rss_mb_last_step"], s["rss_growth_mb"]) == (
        2000.0, 2400.0, 2050.0, 400.0)
    clock.rss = [2000.0]
    assert clock.summary(since=0.0)["rss_growth_mb"] is None
    # the reading is this process's: 200 MB of fresh pages (an anonymous map, not heap the allocator may already hold
    # resident from earlier tests in this worker), touched page by page, show up in it
    import mmap

    before = resident_mb()
    buf = mmap.mmap(-1, 200 * 2**20)
    for at in range(0, len(buf), mmap.PAGESIZE):
        buf[at] = 1
    assert resident_mb() - before > 150
    del buf


def test_checkpoints_come_by_time_and_not_after_the_last_step(monkeypatch):
    from transformers import TrainerControl, TrainerState

    from llamaduo.training import callbacks

    now = [100.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    every = callbacks.CheckpointEvery(120)
    state, control = TrainerState(max_steps=10), TrainerControl()
    every.on_train_begin(None, state, control)
    for step, t, due in [(1, 150.0, False), (2, 221.0, True), (3, 300.0, False), (4, 341.0, True), (10, 999.0, False)]:
        now[0], state.global_step, control.should_save = t, step, False
        every.on_step_end(None, state, control)
        assert control.should_save is due, step
        if due:
            every.on_save(None, state, control)
