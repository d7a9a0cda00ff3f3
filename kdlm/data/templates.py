"""The one place prompts are formatted: training, generation and evaluation all call `format_prompt`.

The reference code trains with one prompt and evaluates with another; routing every stage through
this function makes that impossible here.
"""

from __future__ import annotations

TEMPLATES: dict[str, str] = {
    # the paper's training prompt (Zhong et al., 2024)
    "paper": "Human:\n{query}\n\nAssistant:\n",
    # Stanford Alpaca's prompt, without and with an input field
    "alpaca": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{query}\n\n### Response:\n"
    ),
}


def format_prompt(instruction: str, input: str = "", template: str = "paper") -> str:
    """The prompt a model sees before its response.

    The paper joins instruction and input with one space; an empty input adds nothing.

    Raises:
        ValueError: if `template` is not a known template name.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; allowed: {sorted(TEMPLATES)}")
    query = f"{instruction} {input}" if input else instruction
    return TEMPLATES[template].format(query=query)
