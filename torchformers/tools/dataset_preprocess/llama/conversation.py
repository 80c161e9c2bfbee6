"""Conversation prompt templates, at MindFormers' path `tools/dataset_preprocess/llama/conversation.py`.

The templates live in `torchformers.dataset.preprocess.conversation` (the data layer, where the chat
formats use them); this module keeps MindFormers' import path.
"""

from torchformers.dataset.preprocess.conversation import (
    Conversation,
    SeparatorStyle,
    conv_one_shot,
    conv_templates,
    conv_vicuna_v1_1,
    get_default_conv_template,
)

__all__ = [
    "Conversation",
    "SeparatorStyle",
    "conv_one_shot",
    "conv_templates",
    "conv_vicuna_v1_1",
    "get_default_conv_template",
]
