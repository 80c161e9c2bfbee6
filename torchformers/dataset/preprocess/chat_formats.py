"""Conversation records -> `(input_ids, labels)` in four chat formats, as MindFormers' `llama_preprocess.py`.

`conversation_messages` accepts the `alpaca_converter` output and ShareGPT `conversations` (`from`/`value`)
or `messages` (`role`/`content`). `encode_conversation` renders and encodes one conversation:

- `vicuna`: MindFormers' format (the vicuna_v1.1 template, split into rounds on "</s>", each round
  `<s> round </s>` with the `<s>` dropped; labels are -100 on the BOS and each round's instruction part);
- `llama2`: Meta's `[INST]` format; `llama3`: Meta's header/`<|eot_id|>` format;
- `template`: the tokenizer's `apply_chat_template`.

Labels equal `input_ids` on the assistant's tokens (and the end-of-turn token that closes them) and
are -100 (`IGNORE_TOKEN_ID`) elsewhere.
"""

from __future__ import annotations

from typing import Any

from torchformers.dataset.preprocess.conversation import get_default_conv_template
from torchformers.dataset.preprocess.errors import PreprocessError
from torchformers.dataset.preprocess.tokenizer import encode_text, special_id

__all__ = ["CHAT_FORMATS", "IGNORE_TOKEN_ID", "ROLE_NAMES", "conversation_messages", "encode_conversation"]

IGNORE_TOKEN_ID = -100
CHAT_FORMATS = ("vicuna", "llama2", "llama3", "template")
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def conversation_messages(record: Any, where: str) -> list[tuple[str, str]]:
    """`[(role, text)]` with roles system/user/assistant from the accepted record shapes."""
    if not isinstance(record, dict):
        raise PreprocessError(f"{where}: expected a JSON object per conversation, got {type(record).__name__}")
    if "conversations" in record:
        turns, role_key, text_key = record["conversations"], "from", "value"
    elif "messages" in record:
        turns, role_key, text_key = record["messages"], "role", "content"
    else:
        raise PreprocessError(
            f"{where}: the record has neither 'conversations' (from/value) nor 'messages' (role/content); "
            f"keys seen: {sorted(record)} (convert Alpaca data with alpaca_converter first)"
        )
    if not isinstance(turns, list) or not turns:
        raise PreprocessError(f"{where}: '{'conversations' if role_key == 'from' else 'messages'}' is empty")
    out = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise PreprocessError(f"{where}: turn {k} lacks '{role_key}' or '{text_key}': {turn!r:.200}")
        role = ROLE_NAMES.get(str(turn[role_key]).lower())
        if role is None:
            raise PreprocessError(
                f"{where}: turn {k} has {role_key}={turn[role_key]!r}; expected one of {sorted(ROLE_NAMES)}"
            )
        if not isinstance(turn[text_key], str):
            raise PreprocessError(f"{where}: turn {k} '{text_key}' is not a string")
        out.append((role, turn[text_key]))
    system = [m for m in out if m[0] == "system"]
    if len(system) > 1 or (system and out[0][0] != "system"):
        raise PreprocessError(f"{where}: a system message may only come first")
    dialog = out[1:] if system else out
    if dialog and dialog[0][0] != "user":  # as MindFormers: a conversation opening with the assistant loses that turn
        dialog = dialog[1:]
    for k, (role, _) in enumerate(dialog):
        want = "user" if k % 2 == 0 else "assistant"
        if role != want:
            raise PreprocessError(f"{where}: turn {k} is from {role!r}, expected {want!r} (turns must alternate)")
    if not any(role == "assistant" for role, _ in dialog):
        raise PreprocessError(f"{where}: the conversation has no assistant turn to learn from")
    return system + dialog


def encode_conversation(
    tokenizer: Any, messages: list[tuple[str, str]], chat_format: str = "vicuna"
) -> tuple[list[int], list[int], bool]:
    """`(input_ids, labels, mismatch)` of one conversation; labels are -100 except on assistant tokens.

    `mismatch` is True when the per-round token count disagrees with the whole (MindFormers then
    masks every label of the sample, and so does the caller).
    """
    if chat_format == "vicuna":
        return _encode_vicuna(tokenizer, messages)
    if chat_format == "llama2":
        return _encode_llama2(tokenizer, messages)
    if chat_format == "llama3":
        return _encode_llama3(tokenizer, messages)
    if chat_format == "template":
        return _encode_template(tokenizer, messages)
    raise PreprocessError(f"--chat_format {chat_format!r}: expected one of {CHAT_FORMATS}")


def _encode_vicuna(tokenizer, messages):
    conv = get_default_conv_template("vicuna")
    if messages[0][0] == "system":
        conv.system, messages = messages[0][1], messages[1:]
    for j, (_, text) in enumerate(messages):
        conv.append_message(conv.roles[j % 2], text)
    rounds = conv.get_prompt().split(conv.sep2)
    sep = conv.sep + conv.roles[1] + ": "
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids, labels = [bos], [IGNORE_TOKEN_ID]
    labelled = True  # MindFormers stops labelling at the first round without the assistant separator
    for rou in rounds:
        if rou == "":
            break
        round_ids = [*encode_text(tokenizer, rou), eos]  # "<s> round </s>" without the <s>
        parts = rou.split(sep)
        if labelled and len(parts) == 2:
            # len(tokenizer(parts[0] + sep)) - 3 in MindFormers: BOS, EOS and the trailing "▁" of "ASSISTANT: ",
            # which merges with the answer's first word in the full round
            instruction_len = max(len(encode_text(tokenizer, parts[0] + sep)) - 1, 0)
            labels += [IGNORE_TOKEN_ID] * instruction_len + round_ids[instruction_len:]
        else:
            labelled = False
            labels += [IGNORE_TOKEN_ID] * len(round_ids)
        ids += round_ids
    labels = labels[: len(ids)]
    mismatch = not labelled
    return ids, labels, mismatch


_B_INST, _E_INST = "[INST]", "[/INST]"
_B_SYS, _E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def _encode_llama2(tokenizer, messages):
    """Meta's Llama 2 chat format: `<s>[INST] q [/INST] a </s>` per exchange, system folded into the first q."""
    if messages[0][0] == "system":
        (_, system), (role, first) = messages[0], messages[1]
        messages = [(role, _B_SYS + system + _E_SYS + first), *messages[2:]]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids, labels, mismatch = [], [], False
    for (_, question), (_, answer) in zip(messages[::2], messages[1::2]):
        prompt = f"{_B_INST} {question.strip()} {_E_INST}"
        full = encode_text(tokenizer, f"{prompt} {answer.strip()} ")
        prompt_ids = encode_text(tokenizer, prompt)
        if full[: len(prompt_ids)] != prompt_ids:
            mismatch = True
        ids += [bos, *full, eos]
        labels += [IGNORE_TOKEN_ID] * (1 + len(prompt_ids)) + full[len(prompt_ids) :] + [eos]
    return ids, labels, mismatch


def _encode_llama3(tokenizer, messages):
    """Meta's Llama 3 chat format, built from tokens (`ChatFormat.encode_dialog_prompt`)."""
    start, end = special_id(tokenizer, "<|start_header_id|>"), special_id(tokenizer, "<|end_header_id|>")
    eot = special_id(tokenizer, "<|eot_id|>")
    ids, labels = [tokenizer.bos_token_id], [IGNORE_TOKEN_ID]
    for role, content in messages:
        header = [start, *encode_text(tokenizer, role), end, *encode_text(tokenizer, "\n\n")]
        body = [*encode_text(tokenizer, content.strip()), eot]
        ids += header + body
        labels += [IGNORE_TOKEN_ID] * len(header) + (body if role == "assistant" else [IGNORE_TOKEN_ID] * len(body))
    return ids, labels, False


def _encode_template(tokenizer, messages):
    """Through `tokenizer.apply_chat_template`: the text each assistant message adds is learnt, the rest masked.

    The rendered text is cut at the end of each generation prompt and each assistant message, and the
    pieces are encoded one by one (the template's special-token text must be understood by `encode`).
    """
    if not hasattr(tokenizer, "apply_chat_template"):
        raise PreprocessError(f"--chat_format template: {type(tokenizer).__name__} has no apply_chat_template")
    chat = [{"role": role, "content": text} for role, text in messages]

    def render(msgs, generation_prompt):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    full = render(chat, False)
    cuts, mismatch = [], False  # (start, end) of learnt spans in `full`
    for i, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        before, after = render(chat[:i], True), render(chat[: i + 1], False)
        if not (full.startswith(after) and after.startswith(before)):
            mismatch = True
            continue
        cuts.append((len(before), len(after)))
    ids, labels, pos = [], [], 0
    for start, end in cuts:
        prompt_ids, answer_ids = encode_text(tokenizer, full[pos:start]), encode_text(tokenizer, full[start:end])
        ids += prompt_ids + answer_ids
        labels += [IGNORE_TOKEN_ID] * len(prompt_ids) + answer_ids
        pos = end
    tail = encode_text(tokenizer, full[pos:])
    ids += tail
    labels += [IGNORE_TOKEN_ID] * len(tail)
    return ids, labels, mismatch
