"""Alpaca -> conversation -> masked tokens (spec §8.1-8.3), with the real Llama 2 and Llama 3 tokenizers."""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from torchformers.dataset.preprocess import runner
from torchformers.tools.dataset_preprocess.llama import alpaca_converter, llama_preprocess
from torchformers.tools.dataset_preprocess.llama.llama_preprocess import IGNORE_TOKEN_ID, PreprocessError, preprocess

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def read_rows(path):
    table = pq.read_table(path)
    return {
        c: table.column(c).combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1) for c in table.column_names
    }


@pytest.fixture(scope="module")
def alpaca_records():
    return json.loads((ASSETS_DIR / "alpaca_tiny.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def conversation_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "alpaca-conversation.json"
    alpaca_converter.convert(ASSETS_DIR / "alpaca_tiny.json", out)
    return out


def test_alpaca_converter_matches_the_alpaca_templates(conversation_file, alpaca_records, tmp_path):
    converted = json.loads(conversation_file.read_text(encoding="utf-8"))
    assert len(converted) == len(alpaca_records)
    for i, (rec, conv) in enumerate(zip(alpaca_records, converted)):
        assert conv["id"] == str(i + 1)
        human, gpt = conv["conversations"]
        assert (human["from"], gpt["from"], gpt["value"]) == ("human", "gpt", rec["output"])
        # torchtune's `text` field is the same Alpaca prompt followed by "\n" and the output
        assert rec["text"] == human["value"] + "\n" + rec["output"]
        assert ("### Input:" in human["value"]) == bool(rec["input"])
    with pytest.raises(alpaca_converter.ConversionError, match="already exists"):
        alpaca_converter.convert(ASSETS_DIR / "alpaca_tiny.json", conversation_file)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "x", "output": "y"},\n {"instruction": 1}]')
    with pytest.raises(alpaca_converter.ConversionError, match="record 1 lacks"):
        alpaca_converter.convert(bad, tmp_path / "new" / "o.json")
    assert not (tmp_path / "new").exists()  # a refused input creates no folder


def test_alpaca_converter_creates_the_output_folder(alpaca_records, tmp_path):
    out = tmp_path / "a" / "b" / "conversation.json"
    assert alpaca_converter.main(["--data_path", str(ASSETS_DIR / "alpaca_tiny.json"), "--output_path", str(out)]) == 0
    assert len(json.loads(out.read_text(encoding="utf-8"))) == len(alpaca_records)
    assert [p.name for p in out.parent.iterdir()] == ["conversation.json"]  # no temporary file left
    (tmp_path / "file").write_text("")
    with pytest.raises(alpaca_converter.ConversionError, match="cannot create its folder"):
        alpaca_converter.convert(ASSETS_DIR / "alpaca_tiny.json", tmp_path / "file" / "o.json")


def _check_masking(tokenizer, ids, labels, pad_id, prompt_text, answers):
    """-100 exactly on prompt and padding; labels == ids on each answer span, which decodes to the answer."""
    learnt = labels != IGNORE_TOKEN_ID
    assert (labels[learnt] == ids[learnt]).all()
    # learnt positions form one span per assistant turn, each closed by EOS
    edges = np.flatnonzero(np.diff(np.concatenate([[0], learnt.astype(int), [0]])))
    spans = list(zip(edges[::2], edges[1::2]))
    assert len(spans) == len(answers)
    for (a, b), answer in zip(spans, answers):
        assert ids[b - 1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[a : b - 1]) == answer
    # everything after the last EOS is padding
    end = spans[-1][1]
    assert (ids[end:] == pad_id).all() and not learnt[end:].any()
    assert tokenizer.decode(ids[:end], skip_special_tokens=True) == prompt_text


def test_qa_llama2_labels_mask_exactly_the_prompt_and_padding(
    conversation_file, llama2_factory, llama2_tokenizer, alpaca_records, tmp_path
):
    out = tmp_path / "qa.parquet"
    meta = preprocess("qa", str(conversation_file), out, llama2_factory, seq_length=512, num_workers=1, progress=False)
    assert meta["counts"]["records"] == meta["counts"]["samples"] == len(alpaca_records)
    assert meta["counts"]["truncated"] == 0 and meta["pad_token_id"] == 0
    rows = read_rows(out)
    assert rows["input_ids"].shape == (len(alpaca_records), 513)
    conversations = json.loads(conversation_file.read_text(encoding="utf-8"))
    for ids, labels, conv in zip(rows["input_ids"], rows["labels"], conversations):
        human, gpt = (t["value"] for t in conv["conversations"])
        assert ids[0] == llama2_tokenizer.bos_token_id and labels[0] == IGNORE_TOKEN_ID
        text = f"{VICUNA_SYSTEM} USER: {human} ASSISTANT: {gpt}"
        _check_masking(llama2_tokenizer, ids, labels, 0, text, [gpt])
    # the worker pool gives the same bytes as the inline loop
    out2 = tmp_path / "qa2.parquet"
    preprocess(
        "qa",
        str(conversation_file),
        out2,
        llama2_factory,
        seq_length=512,
        num_workers=2,
        progress=False,
        chunk_records=16,
    )
    rows2 = read_rows(out2)
    assert all((rows[c] == rows2[c]).all() for c in rows)


def test_qa_multi_turn_with_system_prompt(llama2_factory, llama2_tokenizer, tmp_path):
    out = tmp_path / "chat.parquet"
    preprocess(
        "qa", str(ASSETS_DIR / "chat_tiny.json"), out, llama2_factory, seq_length=128, num_workers=1, progress=False
    )
    turns = json.loads((ASSETS_DIR / "chat_tiny.json").read_text())[0]["conversations"]
    rows = read_rows(out)
    system, q1, a1, q2, a2 = (t["value"] for t in turns)
    text = f"{system} USER: {q1} ASSISTANT: {a1} USER: {q2} ASSISTANT: {a2}"
    _check_masking(llama2_tokenizer, rows["input_ids"][0], rows["labels"][0], 0, text, [a1, a2])


def test_qa_packing_keeps_each_conversation_and_its_boundaries(conversation_file, llama2_factory, tmp_path):
    plain, packed = tmp_path / "plain.parquet", tmp_path / "packed.parquet"
    preprocess("qa", str(conversation_file), plain, llama2_factory, seq_length=512, num_workers=1, progress=False)
    meta = preprocess(
        "qa", str(conversation_file), packed, llama2_factory, seq_length=512, num_workers=1, progress=False, pack=True
    )
    a, b = read_rows(plain), read_rows(packed)
    assert meta["counts"]["samples"] < meta["counts"]["records"]
    pieces = []
    for ids, labels, pos, seg in zip(b["input_ids"], b["labels"], b["position_ids"], b["segment_ids"]):
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            assert (pos[where] == np.arange(len(where))).all()  # positions restart per conversation
            pieces.append((ids[where], labels[where]))
        assert (labels[seg == 0] == IGNORE_TOKEN_ID).all()
    assert len(pieces) == len(a["input_ids"])
    for (ids, labels), full_ids, full_labels in zip(pieces, a["input_ids"], a["labels"]):
        assert (full_ids[: len(ids)] == ids).all() and (full_labels[: len(ids)] == labels).all()
        assert (full_labels[len(ids) :] == IGNORE_TOKEN_ID).all()


def test_qa_llama3_tokenizer_vicuna_and_llama3_chat_formats(conversation_file, llama3_factory, tmp_path):
    tok = llama3_factory()
    assert tok.encode("Hello world") == [9906, 1917]
    conversations = json.loads(conversation_file.read_text(encoding="utf-8"))[:20]
    small = tmp_path / "conv20.json"
    small.write_text(json.dumps(conversations))
    out = tmp_path / "vicuna.parquet"
    preprocess("qa", str(small), out, llama3_factory, seq_length=512, num_workers=1, progress=False)
    rows = read_rows(out)
    for ids, labels, conv in zip(rows["input_ids"], rows["labels"], conversations):
        human, gpt = (t["value"] for t in conv["conversations"])
        learnt = np.flatnonzero(labels != IGNORE_TOKEN_ID)
        assert (labels[learnt] == ids[learnt]).all() and ids[learnt[-1]] == tok.eos_token_id
        assert tok.decode(ids[learnt[:-1]]).strip() == gpt.strip()
        assert tok.decode(ids[: learnt[0]], skip_special_tokens=True).rstrip() == (
            f"{VICUNA_SYSTEM} USER: {human} ASSISTANT:"
        )
        assert (ids[learnt[-1] + 1 :] == tok.pad_token_id).all()

    builtin, template = tmp_path / "l3.parquet", tmp_path / "tpl.parquet"
    chat = ASSETS_DIR / "chat_tiny.json"
    for fmt, path in (("llama3", builtin), ("template", template)):
        preprocess(
            "qa",
            [str(small), str(chat)],
            path,
            llama3_factory,
            seq_length=512,
            num_workers=1,
            progress=False,
            chat_format=fmt,
        )
    a, b = read_rows(builtin), read_rows(template)
    assert all((a[c] == b[c]).all() for c in a)  # token-level format == the chat template, ids and labels
    eot = tok.special_tokens["<|eot_id|>"]
    ids, labels = a["input_ids"][-1], a["labels"][-1]
    learnt = labels != IGNORE_TOKEN_ID
    assert tok.decode(ids[learnt]) == "The meaning of life is 42.<|eot_id|>I agree.<|eot_id|>"
    assert ids[0] == tok.bos_token_id and (ids == eot).sum() == 5


def test_qa_llama2_chat_format(llama2_factory, llama2_tokenizer, tmp_path):
    out = tmp_path / "l2.parquet"
    preprocess(
        "qa",
        str(ASSETS_DIR / "chat_tiny.json"),
        out,
        llama2_factory,
        seq_length=128,
        num_workers=1,
        progress=False,
        chat_format="llama2",
    )
    ids, labels = read_rows(out)["input_ids"][0], read_rows(out)["labels"][0]
    learnt = labels != IGNORE_TOKEN_ID
    # Meta's format learns "{answer} " then </s>: the trailing space is part of each answer span
    assert llama2_tokenizer.decode(ids[learnt], skip_special_tokens=True) == "The meaning of life is 42.  I agree. "
    expected = (
        "[INST] <<SYS>>\nYou are an AI assistant.\n<</SYS>>\n\nWhat is the meaning of life? [/INST] "
        "The meaning of life is 42."
    )
    first_eos = int(np.flatnonzero(ids == llama2_tokenizer.eos_token_id)[0])
    assert llama2_tokenizer.decode(ids[1:first_eos]).strip() == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ('[{"conversations": []},\n {"conversations": [}]', r"broken\.json:2: malformed JSON"),
        (
            '{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}\n{"oops"\n',
            r"broken\.json:2:\d+: malformed JSON line",
        ),
        ('[\n{"id": "1"}\n]', r"broken\.json:2: the record has neither 'conversations'"),
        (
            '[\n{"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}]',
            r"broken\.json:2: turn 1 has from='bot'",
        ),
    ],
)
def test_bad_input_names_file_and_line(llama2_factory, tmp_path, content, message):
    bad = tmp_path / "broken.json"
    bad.write_text(content)
    with pytest.raises(PreprocessError, match=message):
        preprocess("qa", str(bad), tmp_path / "o.parquet", llama2_factory, seq_length=64, num_workers=1, progress=False)
    assert not list(tmp_path.glob("o.parquet*")) and not list(tmp_path.glob(".o.parquet*"))


def test_long_samples_are_counted_and_policy_applies(conversation_file, llama2_factory, tmp_path):
    meta = preprocess(
        "qa",
        str(conversation_file),
        tmp_path / "t.parquet",
        llama2_factory,
        seq_length=200,
        num_workers=1,
        progress=False,
    )
    truncated = meta["counts"]["truncated"]
    assert truncated > 0 and meta["counts"]["samples"] == 100
    meta = preprocess(
        "qa",
        str(conversation_file),
        tmp_path / "d.parquet",
        llama2_factory,
        seq_length=200,
        num_workers=1,
        progress=False,
        on_long="drop",
    )
    assert meta["counts"]["dropped_too_long"] == truncated and meta["counts"]["samples"] == 100 - truncated
    with pytest.raises(PreprocessError, match=r"alpaca-conversation\.json:\d+: the conversation has \d+ tokens"):
        preprocess(
            "qa",
            str(conversation_file),
            tmp_path / "e.parquet",
            llama2_factory,
            seq_length=200,
            num_workers=1,
            progress=False,
            on_long="error",
        )


def test_interrupted_run_leaves_no_output(conversation_file, llama2_factory, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = runner.encode_conversation

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "encode_conversation", interrupted)
    with pytest.raises(KeyboardInterrupt):
        preprocess(
            "qa",
            str(conversation_file),
            tmp_path / "x.parquet",
            llama2_factory,
            seq_length=512,
            num_workers=1,
            progress=False,
            chunk_records=8,
            rows_per_group=4,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_runs_and_refuses_to_overwrite(conversation_file, llama2_model_file, tmp_path, capsys):
    src = tmp_path / "in.json"
    shutil.copy(conversation_file, src)
    args = [
        "--dataset_type",
        "qa",
        "--input_glob",
        str(src),
        "--model_file",
        str(llama2_model_file),
        "--seq_length",
        "256",
        "--output_file",
        str(tmp_path / "o.parquet"),
        "--num_workers",
        "1",
        "--no_progress",
        "--file_partition",
        "2",
    ]
    assert llama_preprocess.main(args) == 0
    assert sorted(p.name for p in tmp_path.glob("o.parquet*")) == ["o.parquet.meta.json", "o.parquet0", "o.parquet1"]
    assert llama_preprocess.main(args) == 2
    assert "already exist" in capsys.readouterr().err


def test_register_path_resolves_like_run_mindformer(llama3_model_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the repository root, where research/llama3_1 still resolves
    monkeypatch.setenv("REGISTER_PATH", "")  # restored afterwards; the call sets it
    tok = llama_preprocess.load_tokenizer(
        model_file=str(llama3_model_file), tokenizer_type="Llama3Tokenizer", register_path="research/llama3_1"
    )
    assert type(tok).__name__ == "Llama3Tokenizer"
    assert tok("Hello world")["input_ids"][-2:] == [9906, 1917]
    with pytest.raises(PreprocessError, match=r"--register_path 'research/nothing': no such folder \(tried "):
        llama_preprocess.load_tokenizer(
            model_file=str(llama3_model_file), tokenizer_type="Llama3Tokenizer", register_path="research/nothing"
        )


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("layout", ["json_lines", "json_list"])
def test_workers_match_inline(conversation_file, llama2_factory, tmp_path, pack, layout):
    """Two processes (each reads the input and claims chunks; the main one also pads and writes in
    input order) give the inline run's rows, counts and partition layout."""
    records = json.loads(conversation_file.read_text(encoding="utf-8"))
    records.insert(37, {"id": "bad"})  # skipped and counted
    src = tmp_path / "conv.jsonl"
    if layout == "json_lines":
        lines = [json.dumps(r) for r in records]
        src.write_text("\n".join(lines[:50]) + "\n\n" + "\n".join(lines[50:]) + "\n", encoding="utf-8")
    else:
        src.write_text(json.dumps(records, indent=1), encoding="utf-8")
    # seq_length 120: some prompts fill the whole sample, leaving a conversation without a label token
    kwargs = dict(seq_length=120, progress=False, pack=pack, on_error="skip", file_partition=2, chunk_records=7)
    inline = preprocess("qa", str(src), tmp_path / "a.parquet", llama2_factory, num_workers=1, **kwargs)
    pooled = preprocess("qa", str(src), tmp_path / "b.parquet", llama2_factory, num_workers=2, **kwargs)
    assert inline["counts"] == pooled["counts"]
    counts = inline["counts"]
    assert counts["records_skipped_bad"] == 1 and counts["truncated"] > 0 and counts["no_label_tokens"] > 0
    unlabelled_rows = 0
    for k in range(2):
        a, b = read_rows(tmp_path / f"a.parquet{k}"), read_rows(tmp_path / f"b.parquet{k}")
        assert a.keys() == b.keys() and all((a[c] == b[c]).all() for c in a)
        unlabelled_rows += int((a["labels"] == IGNORE_TOKEN_ID).all(axis=1).sum())
    if not pack:  # one conversation per row
        assert counts["no_label_tokens"] == unlabelled_rows


def test_malformed_json_line_in_a_worker_names_file_and_line(conversation_file, llama2_factory, tmp_path):
    records = json.loads(conversation_file.read_text(encoding="utf-8"))
    lines = [json.dumps(r) for r in records[:40]]
    lines[33] = lines[33][:-5]
    src = tmp_path / "broken.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PreprocessError, match=r"broken\.jsonl:34:\d+: malformed JSON line"):
        preprocess(
            "qa",
            str(src),
            tmp_path / "o.parquet",
            llama2_factory,
            seq_length=64,
            num_workers=2,
            progress=False,
            chunk_records=4,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jsonl"]


def test_malformed_json_list_with_workers_names_file_and_line(conversation_file, llama2_factory, tmp_path):
    text = json.dumps(json.loads(conversation_file.read_text(encoding="utf-8"))[:40], indent=1)
    lines = text.split("\n")
    cut = next(i for i, line in enumerate(lines) if i > len(lines) // 2 and line.strip().startswith('"value"'))
    lines[cut] = lines[cut].replace('": "', '" "', 1)  # a missing colon
    src = tmp_path / "broken.json"
    src.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(PreprocessError, match=rf"broken\.json:{cut + 1}: malformed JSON"):
        preprocess("qa", str(src), tmp_path / "o.parquet", llama2_factory, seq_length=64, num_workers=2,
                   progress=False, chunk_records=3)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json"]


class _FailingTokenizer:
    """The Llama 2 tokenizer, except that it raises on one text (a bug in user code, not bad input)."""

    def __init__(self, model_file):
        self.inner = llama_preprocess.SentencePieceTokenizer(model_file)
        self.bos_token_id, self.eos_token_id = self.inner.bos_token_id, self.inner.eos_token_id
        self.pad_token_id = self.inner.pad_token_id

    def encode(self, text, add_special_tokens=False):
        if "Dublin" in text:
            raise ValueError("tokenizer bug on Dublin")
        return self.inner.encode(text, add_special_tokens)


@pytest.mark.parametrize("bad_record", [3, 17, 28])
def test_a_failing_worker_stops_the_run_with_its_traceback(llama2_model_file, tmp_path, bad_record):
    """An unexpected exception stops the run, raised as it is when this process hit it, or as a
    RuntimeError carrying the forked worker's traceback; which process takes a chunk varies."""
    records = [{"conversations": [{"from": "human", "value": f"Question {i}"}, {"from": "gpt", "value": "Answer"}]}
               for i in range(30)]  # fmt: skip
    records[bad_record]["conversations"][1]["value"] = "Dublin"
    src = tmp_path / "conv.json"
    src.write_text(json.dumps(records), encoding="utf-8")
    factory = functools.partial(_FailingTokenizer, llama2_model_file)
    with pytest.raises((RuntimeError, ValueError)) as raised:
        preprocess("qa", str(src), tmp_path / "o.parquet", factory, seq_length=64, num_workers=2, progress=False,
                   chunk_records=2)  # fmt: skip
    if isinstance(raised.value, RuntimeError):
        assert re.search(r"(?s)a preprocessing worker failed.*ValueError: tokenizer bug on Dublin", str(raised.value))
    else:
        assert str(raised.value) == "tokenizer bug on Dublin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.json"]


_TRICKY_LIST = (
    '  [ {"a": "x, ], [ } \\" \\n"},{"b": [1, 2, {"c": null}]}\n'
    '  ,\n\n  12345 ,\t"str,ing" , [ ] ,{"d": "é\\u00e9 ü"}  ,\n  -1.5e3, true ]\n  '
)


@pytest.mark.parametrize("read_size", [1, 2, 3, 5, 8, 13, 64, 1 << 20])
def test_json_list_reader_matches_json_at_any_buffer_size(tmp_path, read_size):
    """The streaming JSON-list reader gives json's values, with the line each value starts on,
    whatever the read size cuts through (strings with brackets and commas, numbers, nesting)."""
    src = tmp_path / "l.json"
    src.write_text(_TRICKY_LIST, encoding="utf-8")
    got = list(llama_preprocess.iter_json_records(src, read_size=read_size))
    assert [value for _, value in got] == json.loads(_TRICKY_LIST)
    assert [line for line, _ in got] == [1, 1, 4, 4, 4, 4, 5, 5]
    for broken, line in [(_TRICKY_LIST.replace("null", "nul"), 1), (_TRICKY_LIST.replace("-1.5e3,", "-1.5e3"), 5),
                         (_TRICKY_LIST.replace("]\n  ", "\n  "), 6), (_TRICKY_LIST + "x", 5)]:  # fmt: skip
        src.write_text(broken, encoding="utf-8")
        with pytest.raises(PreprocessError, match=rf"l\.json:{line}: "):
            list(llama_preprocess.iter_json_records(src, read_size=read_size))
