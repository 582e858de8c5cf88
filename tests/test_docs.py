"""The docs: a README a newcomer reads in minutes, a site that builds with no broken link, a params page that
matches the schema, every measured figure traced to the results file that holds it, and no tracked text that
speaks of how the project was made instead of what it is."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from llamaduo import params_doc

README_MAX_LINES = 160
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]

# ---- figures -----------------------------------------------------------------------------------------------
# A measured figure carries a marker in the same block of text (or in a block of markers right after it):
#   <!-- trace bench/results/train.json: stage.steady_tokens_per_s=224.3; mfu=0.29 -->
# KEY is a dotted path into the JSON (list items by index), optionally scaled (`*100`, `/60`) or averaged over a
# list (`mean(path)`); FIGURE is the number as the text shows it, rounded to the digits it shows.
TRACE = re.compile(r"<!--\s*trace\s+(?P<file>[^\s:]+):\s*(?P<items>.*?)\s*-->", re.S)
ITEM = re.compile(r"^(?P<key>mean\([^)]+\)|[\w.\-]+)(?:(?P<op>[*/])(?P<factor>[\d.e]+))?=(?P<shown>[+-]?[\d,]*\.?\d+)$")
NUMBER = r"(?<![\w.\-])[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
# a number followed by a unit of time, memory, rate, ratio or share: what a reader takes for a measurement
UNIT = re.compile(NUMBER + r"(?:\s?(?:ms|s|sec|seconds?|min|minutes?|h|hours?|GB|GiB|MB|MiB|KB|KiB|TB|tokens/s|rows/s|"
                  r"requests/s|TFLOP/s|USD)(?![\w/])|x(?!\w)|%)")
# Reviewed figures that are constants, limits or examples, not measurements: each is a fixed value of the code,
# the params or a vendor's published rule, quoted where it is explained.
ALLOWED = {
    "1 MiB",      # coverage.prepare.MAX_ROW_BYTES: the row size limit in every format
    "1%",         # curate.max_coverage_drop's default
    "5%",         # bench/curate.py plants this share of near duplicates (a setting, not a result)
    "95%",        # the bootstrap interval's level
    "80%",        # llamaduo.intervals.POWER: the power the detectable difference and prompts needed are quoted at
    "100%",       # all of a task's train rows (the learning curve's last point)
    "2 minutes",  # train.save_steps: null checkpoints every 2 minutes of training
}


def blocks(text: str) -> list[str]:
    """The text split into blocks at blank lines; a block of markers only is joined to the block before it."""
    text = re.sub(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", "", text, flags=re.S | re.M)  # code blocks hold examples, not figures
    out: list[str] = []
    for block in re.split(r"\n[ \t]*\n", text):
        if out and block.strip() and not TRACE.sub("", block).strip():
            out[-1] += "\n" + block
        else:
            out.append(block)
    return out


def prose(block: str) -> str:
    """A block without its markers and inline code (params keys, commands), where figures are read."""
    return re.sub(r"`[^`\n]*`", "", TRACE.sub("", block))


def resolve(data, key: str) -> float:
    if key.startswith("mean("):
        values = resolve_path(data, key[5:-1])
        return sum(values) / len(values)
    return resolve_path(data, key)


def resolve_path(data, path: str):
    node = data
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def check_block(block: str, where: str) -> list[str]:
    """What is wrong with one block's figures: a marker that misses its file or key, a figure that differs from
    what its key holds or that the text does not show, a figure with a unit that is neither traced nor allowed."""
    errors, traced = [], set()
    block = re.sub(r"`[^`\n]*`", "", block)  # a marker quoted as code is an example of one
    text = prose(block)
    shown_numbers = set(re.findall(NUMBER, text))
    for m in TRACE.finditer(block):
        path = ROOT / m["file"]
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            errors.append(f"{where}: trace names {m['file']}, which does not load ({exc})")
            continue
        for item in filter(None, (i.strip() for i in m["items"].split(";"))):
            parsed = ITEM.match(item)
            if not parsed:
                errors.append(f"{where}: trace item {item!r} is not KEY=FIGURE")
                continue
            shown = parsed["shown"]
            try:
                value = float(resolve(data, parsed["key"]))
            except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
                errors.append(f"{where}: {m['file']} has no number at {parsed['key']}")
                continue
            if parsed["op"]:
                value = value * float(parsed["factor"]) if parsed["op"] == "*" else value / float(parsed["factor"])
            digits = len(shown.split(".")[1]) if "." in shown else 0
            figure = float(shown.replace(",", ""))
            if not math.isclose(value, figure, abs_tol=0.5 * 10 ** -digits + 1e-9):
                errors.append(f"{where}: the text shows {shown} but {m['file']} {parsed['key']} gives {value:g}")
            if shown not in shown_numbers and shown.lstrip("+") not in shown_numbers:
                errors.append(f"{where}: trace cites {shown} ({parsed['key']}), which the text does not show")
            traced.add(shown.lstrip("+").replace(",", ""))
    for m in UNIT.finditer(text):
        number = re.match(NUMBER, m[0])[0]
        if number.lstrip("+").replace(",", "") not in traced and m[0] not in ALLOWED:
            errors.append(f"{where}: {m[0]!r} is a figure with a unit that no trace marker backs (trace it to its "
                          f"results file, or add it to ALLOWED in tests/test_docs.py if it is a constant)")
    return errors


def figure_errors(path: Path) -> list[str]:
    errors = []
    for block in blocks(path.read_text()):
        first = next((line for line in block.splitlines() if line.strip()), "")[:60]
        errors += check_block(block, f"{path.relative_to(ROOT)} ({first!r})")
    return errors


def test_every_figure_in_readme_and_docs_is_traced_or_allowed():
    errors = [e for page in PAGES for e in figure_errors(page)]
    assert not errors, "\n".join(errors)


def test_each_benchmark_section_names_the_machine_of_the_files_it_cites():
    # a results file records its machine; the section quoting it says which CPU that was (a CPU's flags decide
    # the compute dtype, so a figure without them cannot be compared)
    errors = []
    for section in re.split(r"^## ", (ROOT / "docs" / "benchmarks.md").read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0]
        for m in TRACE.finditer(section):
            machine = json.loads((ROOT / m["file"]).read_text()).get("machine")
            if not isinstance(machine, dict):
                continue
            flags = machine.get("cpu_flags") or []
            named = ("AVX512-BF16", "Zen 4") if "avx512_bf16" in flags else ("AVX2",)
            gpu = machine.get("gpu")
            if (gpu and gpu not in section) or (not gpu and (machine["cpu_model"] not in section or not any(n in section for n in named))):
                errors.append(f"benchmarks.md, {title!r}: cites {m['file']} but does not name its machine ({machine})")
    assert not errors, "\n".join(errors)


def test_the_figure_check_catches_a_stale_an_unshown_and_an_untraced_figure():
    # the committed file's value, so that re-running bench/merge.py leaves this test meaningful
    held = json.loads((ROOT / "bench/results/merge.json").read_text())["methods"]["weighted_average_k2"]["s_per_billion_params"]
    other = round(held + 1.3, 1)
    marker = "<!-- trace bench/results/merge.json: methods.weighted_average_k2.s_per_billion_params={} -->"
    good = f"Merging took {held} s a billion.\n" + marker.format(held)
    assert check_block(good, "t") == []
    stale = f"Merging took {other} s a billion.\n" + marker.format(other)
    assert f"the text shows {other}" in check_block(stale, "t")[0]
    unshown = "Merging was quick.\n" + marker.format(held)
    assert "which the text does not show" in check_block(unshown, "t")[0]
    assert "no trace marker backs" in check_block("A cycle took 12.3 min.", "t")[0]
    assert check_block("Rows are capped at 1 MiB; `timeout_s: 300 s` is code; UTF-8 bytes are no figure.", "t") == []
    missing = "It took 5 s.\n<!-- trace bench/results/merge.json: methods.nope=5 -->"
    assert "has no number at methods.nope" in check_block(missing, "t")[0]
    # a block of markers alone belongs to the block before it (a table, a list)
    assert blocks("| a | 9 s |\n\n<!-- trace x.json: k=9 -->")[0].endswith("-->")
    assert "12 s" not in "".join(blocks("- a step:\n\n  ```bash\n  sleep 12 s\n  ```\n"))


# ---- the README, the site and the params page -----------------------------------------------------------------

def test_readme_is_short_and_keeps_the_two_commands_at_the_top():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    top = "\n".join(lines[:8])
    assert "./scripts/run.sh" in top and "./scripts/test.sh" in top
    assert "pip install llamaduo" not in "\n".join(lines)  # no such package is published


def test_params_page_matches_the_schema():
    page = ROOT / params_doc.PAGE
    assert page.read_text() == params_doc.render(), f"{params_doc.PAGE} is stale: run `{params_doc.COMMAND}`"


def test_params_page_lists_every_key_with_its_description():
    text = params_doc.render()
    # a nested section, a provider's field and a runtime knob, each with the description from config.py
    assert "## `judge.baseline`" in text and "## `providers.<name>.server`" in text
    assert re.search(r"\| `threads` \| integer \\\| null \| `null` \| runtime \| torch threads; null = torch's default. \|", text)


def test_site_builds_in_strict_mode(tmp_path):
    # strict: a broken link or a page missing from the nav fails the build
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "site" / "benchmarks" / "index.html").exists()


# ---- words that speak of how the project was made --------------------------------------------------------------

DENY = re.compile(r"\bissues? ?#\d+|\bissue \d+\b|\bthe issue asks\b|\bthe issue's\b|\bissue_rows\b|\bthe session's\b|"
                  r"\.\./shared\b", re.I)
# third-party text (no_robots rows), not the project's words
NOT_OURS = ("data/coverage/",)


def tracked_text_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return [p for p in out.split("\0") if p and not p.startswith(NOT_OURS)]


def test_no_tracked_text_speaks_of_how_the_project_was_made():
    hits = []
    for rel in tracked_text_files():
        path = ROOT / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary (a PNG)
        for n, line in enumerate(text.splitlines(), 1):
            if DENY.search(line) and rel != "tests/test_docs.py":
                hits.append(f"{rel}:{n}: {line.strip()[:120]}")
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("line", ["measured in issue #16", "issue 18's table", "The issue asks ~20k rows",
                                  "the session's time ran short", "see ../shared/MEASURED.md", "issue_rows = 2"])
def test_the_denylist_catches(line):
    assert DENY.search(line)


@pytest.mark.parametrize("line", ["a known issue with Ray", "these issues", "shared/ folder"])
def test_the_denylist_lets_pass(line):
    assert not DENY.search(line)
