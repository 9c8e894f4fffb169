"""Rendering a user message with the model's chat template (or plainly, without one)."""

from __future__ import annotations

from typing import Any


def render(tokenizer: Any, user_text: str, assistant_prefix: str = "") -> str:
    """The text the model sees: templated user turn, open assistant turn, optional prefix.

    Models without a chat template (base models) get the plain prompt and a newline.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False,
            add_generation_prompt=True,
        )
    else:
        text = user_text + "\n"
    return text + assistant_prefix
