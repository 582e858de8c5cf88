"""How this device runs the global batch: the runtime half of training. None of it changes what a step computes
(training/budget.py: the rows of a step and its token-weighted loss are fixed by `train.batch_size`), only how fast
it goes, so every knob here is a runtime param (`config.runtime`): a change reruns no stage and keeps the
checkpoints.

- The micro-batch (`train.micro_batch_size`, null = decided here). On a GPU: the most rows a forward pass can take
  in the memory left free once the base is loaded, for the longest rows of this data (`micro_batch_for_memory`,
  from an estimate of the activations LoRA training keeps per token). On a CPU: the size measured fastest there.
- Padding-free batches (`train.padding_free`): a micro-batch runs as one sequence of its rows end to end, with
  positions restarting at each row, and the attention kernel keeps the rows apart (sequence boundaries), so each
  row sees only itself, as in a padded batch, and no compute goes to padding. On a GPU always; on a CPU as
  measured.
- The attention kernel (`train.attn_implementation`): FlashAttention 2 where the package is installed on a GPU,
  else PyTorch's SDPA with each row of a padding-free batch on its own (training/attention.py).
- Liger's Triton kernels (`train.liger`): RMSNorm, RoPE and SwiGLU, on a GPU where liger-kernel is installed.
  Its fused linear cross-entropy is left off: trl's SFT trainer fuses the LM head and the loss itself.
- trl's fused LM head (`train.fused_lm_head`): on a GPU; on a CPU the model's own head (training/sft.py says why).
- Padding a micro-batch up to a multiple of some tokens (`train.pad_to_multiple_of`): on a CPU, where every distinct
  sequence length costs memory that stays (oneDNN keeps a kernel per shape, the allocator keeps blocks of each size
  freed), so an epoch over rows of many lengths grows the resident set step after step; rounding the lengths up
  bounds how many shapes there are. The padding sits after each row's tokens, which causal attention already hides
  from them (training/attention.py builds no mask for it) and which carries no loss: the result is the same.
  Padding-free batches have no padding, so none is added there.
- `train.torch_compile`: as set (off by default: each new sequence length compiles again, and no bench has measured compiling against eager steps).

The CPU's figures (bench/results/train_cpu_micro.json): see CPU_MICRO_BATCH.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

from llamaduo.errors import ParamsError

# bench/results/train_cpu_micro.json (AMD EPYC Zen 4 with AVX512-BF16, 2 cores, bf16, 48 summarize rows, 16 a
# step), steady tokens/s and peak RSS: micro-batch 1: 252 and 2.8 GB; 2 padded: 235 and 4.4 GB; padding-free 2, 4
# and 8: 264, 288, 292 and 3.5, 4.9, 7.7 GB. Larger passes run the matmuls a little faster but hold every row's
# activations at once: one row a pass keeps the stage under 3 GB (the longest row, 1,024 tokens, is the peak) at
# 0.87 of the fastest; `train.micro_batch_size: 4` buys the 14% where memory is plenty (runtime: no rerun)
CPU_MICRO_BATCH = 1
CPU_PADDING_FREE = False  # one row a pass has no padding to save
# tokens a CPU micro-batch's length is rounded up to: 1,024-token rows fall into 16 shapes (see the docstring)
CPU_PAD_MULTIPLE = 64

# share of the GPU memory left free after loading the base that activations may take; the rest absorbs the
# allocator's fragmentation, the LoRA weights' gradients and AdamW states, and the CUDA workspace
MEMORY_SHARE = 0.85
# the activation estimate below against what was measured on an H200 (a 7.4B Llama shape, QLoRA): a plain peft step
# on 8 x 512 blocks peaked at 38.8 GB, 8.4 MB a token over the 4-bit weights, against 8.2 MB estimated; the stage
# with trl's packing took 8.7 MB a token. 1.25 covers the stage's extra and the allocator's fragmentation
ACTIVATION_MARGIN = 1.25
# attention masks held per forward pass where a kernel needs one: a boolean [T, T] mask and its additive copy in
# the compute dtype (sdpa_varlen and FlashAttention build none for a padding-free batch: an overestimate there)
MASK_BYTES_PER_ENTRY = 3


@dataclass(frozen=True)
class Plan:
    """What this device does with each process's share of the global batch (`rows_per_process` rows a step)."""

    micro_batch_size: int
    grad_accum: int
    padding_free: bool
    pad_to_multiple_of: int | None
    attn_implementation: str
    liger: bool
    fused_lm_head: bool
    torch_compile: bool
    device: str
    why: str

    def metrics(self) -> dict:
        return asdict(self)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def attention_kernel(p, cuda: bool | None = None) -> str:
    """`train.attn_implementation` resolved: auto = flash_attention_2 on a GPU where `flash-attn` is installed, else
    sdpa_varlen (training/attention.py); ParamsError naming the key for a kernel this machine lacks."""
    cuda = _cuda() if cuda is None else cuda
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if p.attn_implementation == "flash_attention_2" and not (cuda and has_flash):
        raise ParamsError("`train.attn_implementation` is flash_attention_2, which needs a CUDA GPU and the `flash-attn` "
                          "package (pip install flash-attn); set it to auto or sdpa_varlen")
    if p.attn_implementation == "auto":
        return "flash_attention_2" if cuda and has_flash else "sdpa_varlen"
    return p.attn_implementation


def use_liger(p, cuda: bool | None = None) -> bool:
    """`train.liger` resolved: auto = on a GPU where liger-kernel is installed; ParamsError naming the key when true
    cannot be honoured."""
    cuda = _cuda() if cuda is None else cuda
    installed = importlib.util.find_spec("liger_kernel") is not None
    if p.liger == "auto":
        return cuda and installed
    if p.liger and not cuda:
        raise ParamsError("`train.liger` is true, but Liger's kernels are Triton kernels for CUDA GPUs and this machine has "
                          "none: set it to auto or false")
    if p.liger and not installed:
        raise ParamsError("`train.liger` is true, but liger-kernel is not installed (pip install liger-kernel); or set it "
                          "to auto")
    return bool(p.liger)


def activation_bytes_per_token(config, *, dtype_bytes: int, lora_dropout: bool, gradient_checkpointing: bool) -> float:
    """Bytes of activations LoRA training keeps for the backward pass, per token, for a Llama-style decoder `config`
    (transformers' config: hidden_size, intermediate_size, num_hidden_layers, attention and KV heads, head_dim).

    Per layer and token, in elements of the compute dtype: the attention block keeps its input and its norm's
    output (2 hidden), q, k, v before and after RoPE and the attention output (3 q + 3 kv widths); the MLP block
    its input and norm output (2 hidden) and gate, up, their activation and product (4 intermediate). With LoRA
    dropout each adapted linear keeps its dropped-out input too (q, k, v, o, gate, up: 6 hidden-wide; down:
    intermediate). Under gradient checkpointing only each layer's input is kept, and one layer is recomputed at a
    time. The frozen base needs no weight gradients, so nothing else scales with the tokens (trl's fused LM head
    scores the vocabulary in tiles: no logits tensor).
    """
    h = config.hidden_size
    f = config.intermediate_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q = heads * head_dim
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    per_layer = 4 * h + 3 * q + 3 * kv + 4 * f + ((6 * h + f) if lora_dropout else 0)
    layers = config.num_hidden_layers
    kept = layers * h + per_layer if gradient_checkpointing else layers * per_layer
    return kept * dtype_bytes * ACTIVATION_MARGIN


def batch_tokens(lengths: list[int], m: int, *, padding_free: bool) -> int:
    """Tokens of the worst micro-batch of `m` rows with these `lengths`: its m longest rows end to end (padding-free)
    or m rows padded to the longest."""
    longest = sorted(lengths, reverse=True)[:m]
    return sum(longest) if padding_free else m * (longest[0] if longest else 0)


def micro_batch_for_memory(*, share: int, lengths: list[int], budget_bytes: float, bytes_per_token: float,
                           padding_free: bool) -> tuple[int, str]:
    """(micro-batch, why): the largest divisor of `share` (the rows a process takes a step) whose worst micro-batch
    of these `lengths` fits `budget_bytes` of activations and attention masks; 1 with a warning when none does."""
    for m in sorted((d for d in range(1, share + 1) if share % d == 0), reverse=True):
        tokens = batch_tokens(lengths, m, padding_free=padding_free)
        # a padding-free batch is one sequence: its mask is [T, T]; a padded one is m masks of the longest row
        mask = tokens**2 if padding_free else m * (tokens // m) ** 2
        need = tokens * bytes_per_token + mask * MASK_BYTES_PER_ENTRY
        if need <= budget_bytes:
            return m, (f"gpu memory: {m} of {share} rows a step, worst micro-batch {tokens} tokens needs "
                       f"{need / 2**30:.1f} of {budget_bytes / 2**30:.1f} GiB")
    return 1, (f"gpu memory: even one row of {max(lengths, default=0)} tokens may not fit "
               f"{budget_bytes / 2**30:.1f} GiB; set train.gradient_checkpointing: true")


def free_gpu_bytes() -> int:
    """Memory this process's GPU can still give: the driver's free memory plus what PyTorch holds cached unused."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    return free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()


def decide(p, *, num_processes: int, lengths: list[int], cuda: bool | None = None, free_bytes: int | None = None,
           config=None, dtype_bytes: int = 2, attn_implementation: str | None = None) -> Plan:
    """The plan for `p` (the `train` section) on this device: `lengths` are the training rows' token counts (capped
    at max_length), `free_bytes` the GPU memory free after loading the base (measured when None), `config` the
    model's transformers config; on a CPU neither is read. ParamsError naming the key for a setting this machine
    cannot run."""
    cuda = _cuda() if cuda is None else cuda
    share = p.rows_per_process(num_processes)
    padding_free = (cuda or CPU_PADDING_FREE) if p.padding_free == "auto" else bool(p.padding_free)
    if p.packing:
        # trl's packed sequences are padding-free already (best-fit packing), each `max_length` long at most
        lengths, padding_free = [p.max_length] * max(len(lengths), 1), True
    if p.micro_batch_size is not None:
        micro, why = p.micro_batch_size, "params"
    elif cuda:
        budget = MEMORY_SHARE * (free_gpu_bytes() if free_bytes is None else free_bytes)
        per_token = activation_bytes_per_token(config, dtype_bytes=dtype_bytes, lora_dropout=p.lora_dropout > 0,
                                               gradient_checkpointing=p.gradient_checkpointing)
        micro, why = micro_batch_for_memory(share=share, lengths=lengths, budget_bytes=budget, bytes_per_token=per_token,
                                            padding_free=padding_free)
    else:
        micro = max(d for d in range(1, min(CPU_MICRO_BATCH, share) + 1) if share % d == 0)
        why = "cpu: the micro-batch measured fastest (training/plan.py CPU_MICRO_BATCH)"
    micro, accum = p.split_batch(num_processes, micro)
    pad = p.pad_to_multiple_of if p.pad_to_multiple_of != "auto" else (None if cuda else CPU_PAD_MULTIPLE)
    return Plan(micro_batch_size=micro, grad_accum=accum, padding_free=padding_free,
                pad_to_multiple_of=None if padding_free else pad,
                attn_implementation=attn_implementation or attention_kernel(p, cuda), liger=use_liger(p, cuda),
                fused_lm_head=cuda if p.fused_lm_head == "auto" else bool(p.fused_lm_head),
                torch_compile=p.torch_compile, device="cuda" if cuda else "cpu", why=why)
