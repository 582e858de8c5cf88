"""llamaduo.chat: one row's conversation (system prompt, earlier turns, instruction, response), and the system prompt
folded into the first user turn for chat templates without a system role (detected by rendering the template)."""

import pytest

from llamaduo import chat
from llamaduo.training import count_truncated, to_examples

SYSTEM = "You are a terse pirate."
HISTORY = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A pirate."}]
ROW = {"id": "a", "task": "t", "instruction": "Name your ship.", "response": "The Gull.", "system": SYSTEM, "history": HISTORY}

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Gemma's shape: no system role, the template raises
RAISES = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
          "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] }}<end_of_turn>\n"
          "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
# a template that renders only the roles it knows: the system text silently disappears
DROPS = ("{% for m in messages %}{% if m['role'] in ['user', 'assistant'] %}[{{ m['role'] }}] {{ m['content'] }}\n"
         "{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")


def tokenizer(template: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "you are a terse pirate who name your ship the gull".split()
    tk = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="[UNK]")
    tok.chat_template = template
    return tok


def test_messages_are_system_history_instruction_response():
    assert chat.messages(ROW) == [{"role": "system", "content": SYSTEM}, *HISTORY,
                                  {"role": "user", "content": "Name your ship."}, {"role": "assistant", "content": "The Gull."}]
    assert chat.messages(ROW, response=False)[-1] == {"role": "user", "content": "Name your ship."}
    plain = {"instruction": "Hi", "response": "Ho", "system": None, "history": None}
    assert chat.messages(plain, response=False) == [{"role": "user", "content": "Hi"}]
    assert chat.as_request(chat.messages(plain, response=False)) == (("user", "Hi"),)  # the request as it always was


def test_folding_puts_the_system_prompt_in_front_of_the_first_user_turn():
    folded = chat.messages(ROW, response=False, system_role=False)
    assert folded[0] == {"role": "user", "content": f"{SYSTEM}\n\nWho are you?"} and len(folded) == 3
    single = dict(ROW, history=None)
    assert chat.messages(single, response=False, system_role=False) == [{"role": "user", "content": f"{SYSTEM}\n\nName your ship."}]


@pytest.mark.parametrize("template,has_system", [(CHATML, True), (RAISES, False), (DROPS, False)])
def test_system_role_detected_by_rendering_the_template(template, has_system):
    tok = tokenizer(template)
    assert chat.supports_system(tok) is has_system
    prompt = chat.for_tokenizer(ROW, tok, response=False)
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    # whichever way the template goes, the system prompt reaches the rendered text exactly once, before the history
    assert text.count(SYSTEM) == 1 and text.index(SYSTEM) < text.index("Who are you?") < text.index("Name your ship.")


def test_training_examples_carry_the_context_in_the_prompt_and_the_loss_on_the_answer():
    (ex,) = to_examples([ROW])
    assert ex["prompt"] == chat.messages(ROW, response=False) and ex["completion"] == [{"role": "assistant", "content": "The Gull."}]
    (folded,) = to_examples([ROW], tokenizer(RAISES))
    assert folded["prompt"][0]["content"].startswith(SYSTEM) and all(m["role"] != "system" for m in folded["prompt"])
    # the whole conversation is counted: the history's words are tokens too
    tok = tokenizer(CHATML)
    _, with_history = count_truncated(tok, to_examples([ROW], tok), 10_000)
    _, without = count_truncated(tok, to_examples([dict(ROW, history=None)], tok), 10_000)
    assert with_history > without


def test_render_context_for_the_judge():
    assert chat.render_context(ROW) == f"[system]\n{SYSTEM}\n\n[user]\nWho are you?\n\n[assistant]\nA pirate."
    assert chat.render_context({"instruction": "x", "system": None, "history": None}) == ""
