"""judge: each local answer graded M times by every judge of the panel against the reference, and compared
with the service's answer in both orders -> judgments, pairwise verdicts, scores (metrics/eval.json), worst answers;
beside them every local and service answer's reference metrics (ROUGE-L, chrF, exact match) -> reference table.
With a judge metric as the gate's, the prompts are judged in rounds, stopping once the gate will not pass at its level."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.budget import loop_budget
from llamaduo.judging.grading import evaluate
from llamaduo.judging.names import LOCAL
from llamaduo.judging.reference import reference_scores
from llamaduo.judging.report import eval_report, worst_answers
from llamaduo.judging.scores import select
from llamaduo.judging.sequential import judge_in_rounds
from llamaduo.providers import open_providers
from llamaduo.providers.cache import CallCache
from llamaduo.stage import run
from llamaduo.usage import total

# paths a stage may go without: no baseline -> no pairwise comparison and no P-Match
OPTIONAL = ("baseline_responses", "baseline_judgments", "pairwise_out", "worst_out", "reference_out")


def main(params, responses, test, out, metrics_out, baseline_responses=None, baseline_judgments=None, pairwise_out=None,
         worst_out=None, reference_out=None):
    j = params.judge
    answers, split = tables.read(responses, "responses"), tables.read(test, "split")
    service_answers = tables.read(baseline_responses, "baseline_responses") if baseline_responses else []
    service_judgments = tables.read(baseline_judgments, "judgments") if baseline_judgments else []
    with CallCache(params.cache.path, budget=loop_budget(params)) as cache, open_providers(params.providers, j.panel) as judges:
        def judge(some):
            return evaluate(responses=some, test=split, judges=judges, j=j, cache=cache,
                            service_answers=service_answers if pairwise_out else None)

        judgments, pairwise, rounds, sequential = judge_in_rounds(answers, judge=judge, gate=params.gate, rounds=j.rounds,
                                                                  seed=j.seed, baseline_judgments=service_judgments)
    usages = {name: total([u[name] for u in rounds]) for name in rounds[0]} if rounds else {}
    # no judge here: every answer (local and service) against the test row's reference, judged or not (it costs nothing)
    reference = reference_scores(answers, split) + reference_scores(service_answers, split)
    report = eval_report(judgments=judgments, pairwise=pairwise, baseline_judgments=service_judgments, usages=usages,
                         test=split, judge_params=j, reference=reference)
    tables.write(out, "judgments", judgments)
    if pairwise_out:
        tables.write(pairwise_out, "pairwise", pairwise)
    if reference_out:
        tables.write(reference_out, "reference", reference)
    if worst_out:
        primary = select(judgments, judge=j.provider, answerer=LOCAL)
        write_json(worst_out, worst_answers(primary, n=j.worst, test_by_id={r["id"]: r for r in split}, answers=answers))
    write_json(metrics_out, report | {"sequential": sequential})


if __name__ == "__main__":
    run(main, "responses", "test", "out", "metrics_out", optional=OPTIONAL)
