"""Cost report (the paper's Table 2 and Figure 4): the service's measured tokens per request at its prices,
against serving the local model on a rented GPU, and the month where the local model has paid for itself."""

from __future__ import annotations

from pathlib import Path


def report(*, input_tokens_per_request: float, output_tokens_per_request: float, price, loop_cost_usd: float, p) -> dict:
    """`price` is the service provider's `price` params, `p` the `cost` section, `loop_cost_usd` what the loop's
    service calls cost. Costs in USD; months from 1 to `p.horizon_months`."""
    service_per_request = (input_tokens_per_request * price.input_per_mtok + output_tokens_per_request * price.output_per_mtok) / 1e6
    migration = loop_cost_usd + p.training_gpu_hours * p.gpu_price_per_hour
    # one GPU serving at the measured throughput, billed by the hour, for the monthly request volume
    gpu_hours = p.requests_per_month * output_tokens_per_request / p.local_tokens_per_s / 3600
    local_monthly = max(gpu_hours, p.min_gpu_hours_per_month) * p.gpu_price_per_hour
    service_monthly = service_per_request * p.requests_per_month
    months = list(range(1, p.horizon_months + 1))
    service_cum = [service_monthly * m for m in months]
    local_cum = [migration + local_monthly * m for m in months]
    break_even = next((m for m, s, l in zip(months, service_cum, local_cum) if l <= s), None)
    return {
        "service_usd_per_request": service_per_request,
        "local_usd_per_request": local_monthly / p.requests_per_month if p.requests_per_month else None,
        "service_usd_per_month": service_monthly,
        "local_usd_per_month": local_monthly,
        "input_tokens_per_request": input_tokens_per_request,
        "output_tokens_per_request": output_tokens_per_request,
        "migration_cost_usd": migration,
        "break_even_month": break_even,
        "curve": [{"month": m, "service_usd": s, "local_usd": l} for m, s, l in zip(months, service_cum, local_cum)],
    }


def plot(rep: dict, out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months = [c["month"] for c in rep["curve"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(months, [c["service_usd"] for c in rep["curve"]], label="service LLM")
    ax.plot(months, [c["local_usd"] for c in rep["curve"]], label="local model (incl. migration)")
    if rep["break_even_month"]:
        ax.axvline(rep["break_even_month"], ls="--", c="grey", label=f"break-even: month {rep['break_even_month']}")
    ax.set_xlabel("month")
    ax.set_ylabel("cumulative cost (USD)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def service_tokens_per_request(baseline: dict, service: str) -> tuple[float, float] | None:
    """Measured (input, output) tokens per answer of `service` in metrics/baseline.json, or None without a baseline.

    From the tokens of every answer, paid in that run or taken from the call cache (which keeps each call's
    tokens), so a rerun from the cache measures what the first run did; a baseline written before usage counted
    cached answers has only the paid tokens."""
    usage = (baseline.get("usage") or {}).get("answers", {}).get(service)
    answers = (baseline.get("services") or {}).get(service, {}).get("answers")
    if not usage or not answers:
        return None
    if "answered_input_tokens" in usage:
        return usage["answered_input_tokens"] / answers, usage["answered_output_tokens"] / answers
    return usage["input_tokens"] / answers, usage["output_tokens"] / answers


def write(*, params, baseline: dict, loop_cost_usd: float, json_out: str | Path, plot_out: str | Path) -> dict | None:
    """metrics/cost.json and its plot, from the measured baseline and the `cost` params; None (and nothing
    written) when there is no baseline to measure the service's tokens from."""
    from llamaduo.atomic import write_json

    service = params.cost.service_provider or params.judge.panel[0]
    tokens = service_tokens_per_request(baseline, service)
    if tokens is None:
        return None
    rep = report(input_tokens_per_request=tokens[0], output_tokens_per_request=tokens[1],
                 price=params.providers[service].price, loop_cost_usd=loop_cost_usd, p=params.cost) | {"service": service}
    write_json(json_out, rep)
    Path(plot_out).parent.mkdir(parents=True, exist_ok=True)
    plot(rep, plot_out)
    return rep
