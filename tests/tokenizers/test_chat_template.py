"""Chat templates equal the published Llama 2 and Llama 3 chat formats, character for character.

The expected strings are written from the format definitions: Llama 2 from Meta's
`llama/generation.py` (B_INST, E_INST = "[INST]", "[/INST]"; B_SYS, E_SYS = "<<SYS>>\\n", "\\n<</SYS>>\\n\\n";
each exchange is `f"{bos}{B_INST} {prompt.strip()} {E_INST} {answer.strip()} {eos}"`, the system
prompt is put in front of the first user message), Llama 3 from Meta's model card prompt format
(`<|begin_of_text|>` once, then `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>` per
message, and `<|start_header_id|>assistant<|end_header_id|>\\n\\n` to ask for the reply).
"""

from __future__ import annotations

import pytest

from torchformers.models.tokenization_utils_base import TokenizerError

SYSTEM = "You are a helpful assistant."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def test_llama2_format(llama_slow, llama_fast):
    b_inst, e_inst = "[INST]", "[/INST]"
    b_sys, e_sys = "<<SYS>>\n", "\n<</SYS>>\n\n"
    first = b_sys + SYSTEM + e_sys + CONVERSATION[1]["content"]
    expected = (
        f"<s>{b_inst} {first.strip()} {e_inst} {CONVERSATION[2]['content'].strip()} </s>"
        f"<s>{b_inst} {CONVERSATION[3]['content'].strip()} {e_inst}"
    )
    for tok in (llama_slow, llama_fast):
        assert tok.apply_chat_template(CONVERSATION, tokenize=False) == expected
    ids = llama_slow.apply_chat_template(CONVERSATION)
    assert ids == llama_fast.apply_chat_template(CONVERSATION)
    assert ids.count(1) == 2 and ids.count(2) == 1 and ids[0] == 1  # two BOS, one EOS, no extra BOS


def test_llama3_format(llama3):
    def turn(role, content):
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"

    expected = "<|begin_of_text|>" + "".join(turn(m["role"], m["content"]) for m in CONVERSATION)
    expected += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert llama3.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == expected
    ids = llama3.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert ids[0] == 128000 and ids.count(128000) == 1 and ids.count(128009) == 4
    assert ids[-4:] == [128006, 78191, 128007, 271]  # <|start_header_id|>assistant<|end_header_id|>\n\n


def test_alternation_error(llama_slow):
    with pytest.raises(TokenizerError, match="alternate"):
        llama_slow.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_custom_template_and_missing_template(llama_fast):
    assert (
        llama_fast.apply_chat_template(
            [{"role": "user", "content": "hi"}], chat_template="{{ messages[0]['content'] }}!", tokenize=False
        )
        == "hi!"
    )
    from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast

    bare = PretrainedTokenizerFast(tokenizer_object=llama_fast.backend_tokenizer)
    with pytest.raises(TokenizerError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])
