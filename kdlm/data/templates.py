"""The one place prompts are formatted: training, generation and evaluation all call `format_prompt`.

The reference code trains with one prompt and evaluates with another; routing every stage through
this function makes that impossible here (tests/kdlm/test_templates.py checks the three stages agree).

Templates:
- `paper` (default): the paper's `"Human:\\n{instruction} {input}\\n\\nAssistant:\\n"` (Zhong et al., 2024).
- `alpaca`: Stanford Alpaca's two prompts, one for records without and one for records with an input
  (https://github.com/tatsu-lab/stanford_alpaca, `PROMPT_DICT`).
- any FastChat conversation template by name (`vicuna_v1.1`, `llama-2`, ...), rendered by fschat's own
  `fastchat.conversation.get_conv_template` with one user turn (instruction and input joined by a space,
  as in the paper) and an open assistant turn. Built-in names win; `fschat:<name>` always means
  fschat's template (e.g. `fschat:alpaca`, which differs from ours in whitespace).
"""

from __future__ import annotations

from functools import cache

from fastchat.conversation import get_conv_template

PAPER = "Human:\n{query}\n\nAssistant:\n"
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
BUILTIN = ("paper", "alpaca")
DEFAULT_TEMPLATE = "paper"  # the reference code's prompt
FSCHAT_PREFIX = "fschat:"


def _query(instruction: str, input: str) -> str:
    """The paper joins instruction and input with one space; an empty input adds nothing."""
    return f"{instruction} {input}" if input else instruction


@cache
def fschat_templates() -> tuple[str, ...]:
    """Names of the conversation templates the installed fschat registers ((), if fschat is missing)."""
    try:
        from fastchat.conversation import conv_templates
    except ImportError:
        return ()
    return tuple(sorted(conv_templates))


def check_template(template: str) -> None:
    """Raise if `template` names no template.

    Raises:
        ValueError: naming the template and listing the allowed names.
    """
    name = template.removeprefix(FSCHAT_PREFIX)
    if template in BUILTIN or name in fschat_templates():
        return
    fschat = fschat_templates()
    hint = f"or an fschat conversation template: {list(fschat)}" if fschat else "(fschat is not installed)"
    raise ValueError(f"unknown prompt template {template!r}; allowed: {list(BUILTIN)} {hint}")


def _fschat_prompt(name: str, query: str) -> str:
    conv = get_conv_template(name)  # a fresh copy: appending does not touch the registry
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def format_prompt(instruction: str, input: str = "", template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt a model sees before its response.

    Raises:
        ValueError: if `template` is not a known template name (see `check_template`).
    """
    if template == "paper":
        return PAPER.format(query=_query(instruction, input))
    if template == "alpaca":
        if input:
            return ALPACA_INPUT.format(instruction=instruction, input=input)
        return ALPACA_NO_INPUT.format(instruction=instruction)
    check_template(template)
    return _fschat_prompt(template.removeprefix(FSCHAT_PREFIX), _query(instruction, input))
