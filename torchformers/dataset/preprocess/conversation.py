"""Conversation prompt templates, as MindFormers' `tools/dataset_preprocess/llama/conversation.py`.

MindFormers took this file from FastChat: a `Conversation` holds a system prompt, two role names and
the messages, and `get_prompt()` renders them with one of two separator styles. The `vicuna` chat
format (`chat_formats`) uses the **vicuna_v1.1** template (`get_default_conv_template("vicuna")`):

    "<system> USER: <q1> ASSISTANT: <a1></s>USER: <q2> ASSISTANT: <a2></s>"

MindFormers' `conv_one_shot` also carries a worked example exchange; it is not reproduced here
(only its system prompt, roles and separators), since no code path of the preprocessing uses it.
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto

__all__ = [
    "Conversation",
    "SeparatorStyle",
    "conv_one_shot",
    "conv_templates",
    "conv_vicuna_v1_1",
    "get_default_conv_template",
]


class SeparatorStyle(Enum):
    """How messages are joined."""

    ADD_COLON_SINGLE = auto()  # "<role>: <message><sep>" for every message
    ADD_COLON_TWO = auto()  # alternates sep (after the user) and sep2 (after the assistant)


@dataclasses.dataclass
class Conversation:
    """A conversation and the template that renders it."""

    system: str
    roles: tuple[str, str]
    messages: list[list[str | None]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.ADD_COLON_SINGLE
    sep: str = "###"
    sep2: str | None = None
    stop_str: str | None = None
    stop_token_ids: list[int] | None = None
    name: str = ""

    def get_prompt(self) -> str:
        """Render the conversation; a message of `None` ends with the bare role (generation prompt)."""
        if self.sep_style == SeparatorStyle.ADD_COLON_SINGLE:
            ret = self.system + self.sep
            for role, message in self.messages:
                ret += f"{role}: {message}{self.sep}" if message else f"{role}:"
            return ret
        if self.sep_style == SeparatorStyle.ADD_COLON_TWO:
            seps = [self.sep, self.sep2]
            ret = self.system + seps[0]
            for i, (role, message) in enumerate(self.messages):
                ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
            return ret
        raise ValueError(f"invalid separator style: {self.sep_style}")

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        return dataclasses.replace(self, roles=tuple(self.roles), messages=[list(m) for m in self.messages])


conv_one_shot = Conversation(
    system="A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    roles=("Human", "Assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.ADD_COLON_SINGLE,
    sep="\n### ",
    stop_str="###",
    name="one_shot",
)

conv_vicuna_v1_1 = Conversation(
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.ADD_COLON_TWO,
    sep=" ",
    sep2="</s>",
    name="vicuna_v1.1",
)

conv_templates: dict[str, Conversation] = {"conv_one_shot": conv_one_shot, "vicuna_v1.1": conv_vicuna_v1_1}


def get_default_conv_template(model_name: str) -> Conversation:
    """A fresh copy of the template MindFormers picks for `model_name` (vicuna for "vicuna"/"output")."""
    name = model_name.lower()
    if "vicuna" in name or "output" in name:
        return conv_vicuna_v1_1.copy()
    return conv_one_shot.copy()
