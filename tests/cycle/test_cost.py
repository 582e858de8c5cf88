from llamaduo.config import CostParams, PriceParams
from llamaduo.cycle.cost import plot, report


def test_break_even_by_hand(tmp_path):
    # service: 1000 in + 200 out tokens at $2.5 / $10 per 1M = $0.0045 a request; 100k requests = $450 a month
    # local: 100k x 200 tokens / 1000 tok/s = 5.56 GPU hours, billed at least 100 h x $1 = $100 a month
    # migration: $300 of service calls + 40 GPU hours x $1 = $340 -> local 340 + 100m < service 450m from m = 1
    p = CostParams(requests_per_month=100_000, gpu_price_per_hour=1.0, local_tokens_per_s=1000, min_gpu_hours_per_month=100,
                   training_gpu_hours=40, horizon_months=12)
    rep = report(input_tokens_per_request=1000, output_tokens_per_request=200,
                 price=PriceParams(input_per_mtok=2.5, output_per_mtok=10), loop_cost_usd=300, p=p)
    assert abs(rep["service_usd_per_request"] - 0.0045) < 1e-12
    assert abs(rep["service_usd_per_month"] - 450) < 1e-9 and rep["local_usd_per_month"] == 100
    assert rep["migration_cost_usd"] == 340 and rep["break_even_month"] == 1
    assert len(rep["curve"]) == 12 and rep["curve"][-1]["local_usd"] == 340 + 1200
    plot(rep, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 1000


def test_no_break_even_when_local_costs_more():
    p = CostParams(requests_per_month=10, gpu_price_per_hour=5, min_gpu_hours_per_month=730, horizon_months=6)
    rep = report(input_tokens_per_request=100, output_tokens_per_request=100, price=PriceParams(input_per_mtok=1, output_per_mtok=1),
                 loop_cost_usd=0, p=p)
    assert rep["break_even_month"] is None


def test_tokens_per_request_come_from_the_measured_baseline():
    from llamaduo.cycle.cost import service_tokens_per_request
    from llamaduo.reporting.summary import usage

    baseline = {"services": {"gpt4o": {"answers": 4}},
                "usage": {"answers": {"gpt4o": {"calls": 4, "input_tokens": 400, "output_tokens": 1000}},
                          "judging": {"gpt4o": {"calls": 4}, "total": {"calls": 4}}}}
    assert service_tokens_per_request(baseline, "gpt4o") == (100, 250)
    assert service_tokens_per_request(baseline, "claude") is None and service_tokens_per_request({}, "gpt4o") is None
    # a cycle's usage adds each provider's once (a `total` stands for its siblings)
    assert usage([baseline])["calls"] == 8
