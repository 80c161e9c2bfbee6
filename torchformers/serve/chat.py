"""A terminal chat on the engine: the conversation goes through the tokenizer's chat template, the answer is
printed token by token as it is generated. `/reset` starts the conversation anew, `/exit` (or end of input)
quits, Ctrl-C stops the answer being written."""

from __future__ import annotations

import itertools
import sys
from typing import Any, TextIO

from torchformers.generation.engine import LLMEngine, SamplingParams
from torchformers.serve.app import ServeSettings
from torchformers.serve.detokenize import IncrementalText

__all__ = ["chat_loop"]

PROMPT = ">>> "


def _params(settings: ServeSettings, room: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=min(settings.default_max_tokens or room, room),
        temperature=settings.temperature if settings.do_sample else 0.0,
        top_p=settings.top_p if settings.do_sample else 1.0,
        top_k=settings.top_k if settings.do_sample else 0,
        repetition_penalty=settings.repetition_penalty,
    )


def chat_loop(
    engine: LLMEngine,
    tokenizer: Any,
    settings: ServeSettings,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> None:
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    ids = itertools.count()
    history: list[dict[str, str]] = []
    out.write(f"chat with {settings.served_model_name}: /reset starts over, /exit quits\n")
    while True:
        out.write(PROMPT)
        out.flush()
        line = stdin.readline()
        if not line:  # end of input
            out.write("\n")
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            history.clear()
            out.write("(conversation cleared)\n")
            continue
        history.append({"role": "user", "content": text})
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        room = engine.max_model_len - len(prompt_ids)
        if room < 1:
            history.pop()
            out.write(
                f"(the conversation has {len(prompt_ids)} tokens, the context {engine.max_model_len}: "
                "/reset to start over)\n"
            )
            continue
        request_id = f"chat-{next(ids)}"
        engine.add_request(request_id, prompt_ids, _params(settings, room))
        answer = IncrementalText(tokenizer)
        try:
            done = False
            while not done:
                for o in engine.step():
                    if o.request_id != request_id:
                        continue
                    answer.add(o.token_ids, final=o.finished)
                    out.write(answer.take())
                    out.flush()
                    done = done or o.finished
        except KeyboardInterrupt:
            engine.abort_request(request_id)
            answer.add([], final=True)
            out.write(answer.take() + " [stopped]")
        out.write("\n")
        history.append({"role": "assistant", "content": answer.text})
