"""Prompt templates: placeholders filled, a task's own template or the fallback, the hash that follows the text."""

import pytest

from llamaduo import prompts
from llamaduo.errors import DataError


@pytest.fixture
def prompt_dir(tmp_path):
    (tmp_path / "synthesize").mkdir()
    (tmp_path / "synthesize" / "default.md").write_text("Write $n pairs like: $instruction\n")
    (tmp_path / "synthesize" / "coding.md").write_text("Write $n coding pairs like: $instruction\n")
    prompts.load.cache_clear()
    yield str(tmp_path)
    prompts.load.cache_clear()


def test_render_fills_placeholders_and_falls_back(prompt_dir):
    assert prompts.render("synthesize/coding", fallback="synthesize/default", prompt_dir=prompt_dir, n=3,
                          instruction="Add two numbers") == "Write 3 coding pairs like: Add two numbers\n"
    assert prompts.render("synthesize/summarize", fallback="synthesize/default", prompt_dir=prompt_dir, n=2,
                          instruction="Sum up") == "Write 2 pairs like: Sum up\n"


def test_a_missing_template_or_placeholder_names_it(prompt_dir):
    with pytest.raises(DataError, match="no value for placeholder \\$instruction"):
        prompts.render("synthesize/default", prompt_dir=prompt_dir, n=2)
    with pytest.raises(DataError, match="summarize.md not found"):
        prompts.render("synthesize/summarize", prompt_dir=prompt_dir, n=2, instruction="x")


def test_the_hash_follows_the_text(prompt_dir, tmp_path):
    before = prompts.template_sha("synthesize/default", prompt_dir)
    assert len(before) == 12 and before == prompts.template_sha("synthesize/default", prompt_dir)
    (tmp_path / "synthesize" / "default.md").write_text("Write $n better pairs like: $instruction\n")
    prompts.load.cache_clear()
    assert prompts.template_sha("synthesize/default", prompt_dir) != before
