"""baseline: the service LLMs answer the test prompts and are judged exactly like the local model (the paper's
Table 1) -> their answers, their judgments, metrics/baseline.json. Every call goes through the call cache."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.budget import loop_budget
from llamaduo.judging.baseline import baseline
from llamaduo.judging.report import baseline_report
from llamaduo.providers import open_providers
from llamaduo.providers.cache import CallCache
from llamaduo.stage import run


def main(params, test, responses_out, judgments_out, metrics_out):
    j = params.judge
    with CallCache(params.cache.path, budget=loop_budget(params)) as cache, open_providers(params.providers, j.services + j.panel) as providers:
        answers, judgments, answer_usage, judge_usage = baseline(test=tables.read(test, "split"), providers=providers, j=j,
                                                                 cache=cache)
    tables.write(responses_out, "baseline_responses", answers)
    tables.write(judgments_out, "judgments", judgments)
    write_json(metrics_out, baseline_report(judgments=judgments, answers=answers, answer_usage=answer_usage,
                                            judge_usage=judge_usage, judge_params=j))


if __name__ == "__main__":
    run(main, "test", "responses_out", "judgments_out", "metrics_out")
