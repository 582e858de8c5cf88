"""The report stage: what one cycle of the pipeline came to, for the loop, for `dvc metrics` and for people.

- `gate.py`: the promotion gate's decision (non-inferiority to the service, threshold or point), and no-regression
  against the champion, on the bounds of `llamaduo.intervals`;
- `summary.py`: metrics/summary.json (with the gate's decision), metrics/headline.json (the DVC metric), the
  per-answer points `dvc plots` draws, the cycle's service usage;
- `page_data.py`: what metrics/report.html shows, read from metrics/ and data/ into plain structures;
- `plots.py`: the page's figures (matplotlib PNGs); `html_report.py`: the page itself, rendered and written.

The loop (`llamaduo.cycle`) rewrites the page after each cycle with its history; nothing here needs MLflow or git.
"""
