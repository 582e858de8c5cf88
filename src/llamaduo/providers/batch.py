"""The Batch API driver: the calls a run's cache misses, answered through the vendor's Batch API. It submits
what no recorded job covers, polls every job, submits once more the calls of a job the vendor lost, and
collects each answer into the cache.

Job ids live in the cache DB, so nothing is paid twice whatever runs beside it or crashes: a submission is
recorded with an idempotency tag before it is sent (one whose answer never came back is looked up at the
vendor instead of submitted again), and its job id the moment it comes back (a restart resumes polling it).
"""

from __future__ import annotations

import asyncio
import sys
import time

from llamaduo.errors import ProviderError
from llamaduo.providers.base import ChatResult, Provider
from llamaduo.providers.cache import BatchJob, Submission
from llamaduo.providers.calls import Ledger, Sender
from llamaduo.usage import cost_bound


class BatchDriver:
    """Answers the calls of `ledger.todo` through `provider`'s Batch API; every request to the vendor goes
    through `sender` (pacing, timeout, retries), every answer and failure into `ledger`."""

    def __init__(self, provider: Provider, ledger: Ledger, sender: Sender):
        self.provider, self.p, self.ledger, self.sender = provider, provider.params, ledger, sender
        self.cache, self.identity, self.todo = ledger.cache, ledger.identity, ledger.todo

    async def run(self) -> None:
        prov, p = self.provider, self.p
        wanted = list(self.todo)
        announced = False
        while True:
            # submissions are recorded (with their tag) before they are sent, in the same transaction that
            # decides which keys nothing covers yet: two processes never submit the same keys
            plan = self.cache.plan_batches(self.identity, [k for k in wanted if k not in self.ledger.failures],
                                           chunk=p.batch_max_requests, stale_s=self.sender.stale_s)
            if plan.jobs and not announced:
                print(f"[{prov.name}] resuming {len(plan.jobs)} batch job(s) recorded in {self.cache.path}", file=sys.stderr)
                announced = True
            for sub in plan.mine:
                await self._submit(sub)
            if not plan.mine and not plan.waiting:
                jobs = plan.jobs
                break
            if not plan.mine:  # another live process is submitting these keys: its job will be recorded
                await asyncio.sleep(min(p.batch_poll_s, 1.0))
        await self._poll(jobs)

    async def _submit(self, sub: Submission) -> None:
        """Send one recorded submission; never twice: after a timeout, a 5xx or a kill (a submission taken over
        from a dead process) the vendor is asked for a job with the submission's tag before sending again."""
        prov, p, ledger, sender = self.provider, self.p, self.ledger, self.sender
        keys = [k for k in sub.keys if k in self.todo]
        items = [(k, self.todo[k][0].request) for k in keys]
        look_first = sub.recovered
        for attempt in range(p.max_retries + 1):
            if look_first:
                try:
                    found = await sender.attempt(lambda: prov.batch_find(sub.tag, list(sub.keys), sub.created - 60),
                                                 what="batch lookup")
                except ProviderError as exc:
                    # the job may exist: keep the submission recorded and stop the stage (a rerun looks again)
                    ledger.failed(ProviderError(f"looking up an earlier batch submission (tag {sub.tag}) failed; it stays "
                                                f"recorded and a rerun looks again: {exc}", status=exc.status,
                                                retryable=True, fatal=exc.fatal), keys)
                    return
                if found is not None:
                    self.cache.add_batch(found, self.identity, list(sub.keys), tag=sub.tag, resubmit_of=sub.resubmit_of)
                    print(f"[{prov.name}] found batch {found} submitted before (tag {sub.tag}); not submitting again",
                          file=sys.stderr)
                    return
                if len(keys) != len(sub.keys):
                    # left by a run that wanted other calls, and never created: its keys in this run are planned anew
                    self.cache.drop_submission(sub.tag)
                    return
            over = ledger.reserve({k: cost_bound(p.price, self.todo[k][0].request, batch=True) for k in keys})
            if over is not None:  # the whole job could cross the budget: not submitted
                self.cache.drop_submission(sub.tag)
                ledger.failed(over, keys)
                return
            try:
                job_id = await sender.attempt(lambda: prov.batch_submit(items, sub.tag), what="batch submission", retry=False)
            except ProviderError as exc:
                if exc.retryable and not exc.fatal and attempt < p.max_retries:
                    # a timeout or a 5xx does not say the job was not created: look before sending again
                    look_first = True
                    await sender.backoff(attempt, exc)
                    continue
                if not exc.retryable or exc.fatal:
                    self.cache.drop_submission(sub.tag)  # refused: the vendor created nothing
                ledger.failed(exc, keys)
                return
            # at once: from now on a restart resumes the job, never resubmits
            self.cache.add_batch(job_id, self.identity, keys, tag=sub.tag, resubmit_of=sub.resubmit_of)
            print(f"[{prov.name}] submitted batch {job_id} ({len(keys)} calls)", file=sys.stderr)
            return

    async def _poll(self, jobs: list[BatchJob]) -> None:
        prov, p, sender = self.provider, self.p, self.sender
        deadline = time.monotonic() + p.batch_wait_s
        pending = list(jobs)
        while pending:
            for job in list(pending):
                try:
                    status = await sender.attempt(lambda job=job: prov.batch_status(job.job_id), what="batch status poll")
                    if not status.done:
                        continue
                    results = await sender.attempt(lambda job=job: prov.batch_results(job.job_id), what="batch results download")
                except ProviderError as exc:
                    pending.remove(job)
                    if exc.status == 404:
                        replacement = await self._replace_lost(job, exc)
                        if replacement is not None:
                            pending.append(replacement)
                        continue
                    self.ledger.failed(exc, job.keys)
                    continue
                self._collect(job, status, results)
                pending.remove(job)
            if pending:
                if time.monotonic() > deadline:
                    ids = ", ".join(j.job_id for j in pending)
                    err = prov.error(f"batch job(s) {ids} still running after {p.batch_wait_s:g} s "
                                     f"(`providers.{prov.name}.batch_wait_s`); they stay recorded: rerun to resume", retryable=True)
                    self.ledger.failed(err, [k for j in pending for k in j.keys])
                    return
                await asyncio.sleep(p.batch_poll_s)

    async def _replace_lost(self, job: BatchJob, exc: ProviderError) -> BatchJob | None:
        """A recorded job the vendor no longer knows (404: deleted, expired from its records, another
        account's): its calls are submitted once more; a replacement that is lost too fails with the reason."""
        self.cache.finish_batch(job.job_id, "missing")
        keys = [k for k in job.keys if k in self.todo and k not in self.ledger.answers]
        if job.resubmit_of is not None:
            self.ledger.failed(self.provider.error(
                f"batch job {job.job_id} is unknown to the vendor, and so was {job.resubmit_of}, which it replaced; "
                f"not submitting a third time (check the account and `providers.{self.provider.name}.base_url`): {exc}",
                status=404, retryable=False), keys)
            return None
        if not keys:
            return None
        print(f"[{self.provider.name}] batch {job.job_id} is unknown to the vendor (HTTP 404): submitting its "
              f"{len(keys)} call(s) once more", file=sys.stderr)
        sub = self.cache.resubmission(job, keys)
        await self._submit(sub)
        return next((j for j in self.cache.pending_batches(self.identity) if j.tag == sub.tag), None)

    def _collect(self, job: BatchJob, status, results: dict) -> None:
        ledger, todo = self.ledger, self.todo
        for key in job.keys:
            res = results.get(key)
            if isinstance(res, ChatResult):
                if key not in ledger.answers:
                    # a call this run did not ask for (another run's in a shared job, an earlier run's with other
                    # params) is kept too: it was paid, and is there when it is asked again
                    ledger.collected(key, res)
            elif key in todo:
                err = res if isinstance(res, ProviderError) else self.provider.error(
                    f"batch {job.job_id} ({status.state}) has no result for this call" + (f": {status.error}" if status.error else ""),
                    retryable=True)  # expired, cancelled: a rerun can submit it again
                ledger.failed(err, [key])
        self.cache.finish_batch(job.job_id, status.state)
