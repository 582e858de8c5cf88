"""The trainer's callbacks: a clock that splits a run into start-up and steady state (and notes the resident memory
after each step), and checkpoints by time.

Imported when training starts (transformers with it), not with the params."""

from __future__ import annotations

import os
import time

from transformers import TrainerCallback


def resident_mb() -> float | None:
    """This process's resident memory now, in MB (Linux /proc; None elsewhere). Read at every step: one small file."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _sync_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()  # a step's kernels are queued: its end is when the GPU is done with them


class StepClock(TrainerCallback):
    """When training's first step began, (time, tokens seen) at the end of every optimizer step, and the resident
    memory then (`rss`, MB)."""

    def __init__(self):
        self.first_begin: float | None = None
        self.marks: list[tuple[float, int]] = []
        self.rss: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_begin is None:
            self.first_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync_cuda()
        self.marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))
        rss = resident_mb()
        if rss is not None:
            self.rss.append(rss)

    def summary(self, since: float, start_tokens: int = 0) -> dict:
        """{setup_s: `since` (the run's start) to the first step, first_step_s, steady_tokens_per_s and
        steady_s_per_step over the steps after the first (None with fewer than two), steady_steps}. The first
        step carries one-off costs (allocator growth, kernel selection, compilation), hence apart.

        Memory: `rss_mb_first_step` (resident after the first step), `rss_mb_max_step` (the most after any step),
        `rss_mb_last_step` and `rss_growth_mb` (the most after any later step less after the first): whether the
        resident memory stays flat over the run or grows with what it has seen."""
        rss = self.rss
        memory = {"rss_mb_first_step": round(rss[0], 1) if rss else None,
                  "rss_mb_max_step": round(max(rss), 1) if rss else None,
                  "rss_mb_last_step": round(rss[-1], 1) if rss else None,
                  "rss_growth_mb": round(max(rss[1:]) - rss[0], 1) if len(rss) > 1 else None}
        if self.first_begin is None or not self.marks:
            return {"setup_s": None, "first_step_s": None, "steady_tokens_per_s": None, "steady_s_per_step": None,
                    "steady_steps": 0, **memory}
        (t1, n1), (tn, nn) = self.marks[0], self.marks[-1]
        steady = len(self.marks) - 1
        return {"setup_s": round(self.first_begin - since, 2), "first_step_s": round(t1 - self.first_begin, 2),
                "first_step_tokens": n1 - start_tokens,
                "steady_tokens_per_s": round((nn - n1) / (tn - t1), 1) if steady else None,
                "steady_s_per_step": round((tn - t1) / steady, 3) if steady else None, "steady_steps": steady, **memory}


class CheckpointEvery(TrainerCallback):
    """Ask for a checkpoint at the first step end `seconds` after the last one (or the start). Every process must
    take part in a save (each writes its RNG state; FSDP gathers shards), so the main process's clock decides
    for all."""

    def __init__(self, seconds: float, num_processes: int = 1):
        self.seconds, self.num_processes = seconds, num_processes
        self.last = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        due = time.perf_counter() - self.last >= self.seconds and state.global_step < state.max_steps
        if self.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            due = broadcast_object_list([due], from_process=0)[0]
        if due:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last = time.perf_counter()
