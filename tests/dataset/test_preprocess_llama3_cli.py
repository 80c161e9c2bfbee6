"""Llama 3 preprocessing through the command line with the external Llama3Tokenizer (research/llama3_1),
as MindFormers' research/llama3_1/llama3_1_preprocess.py does: the real tokenizer, the Llama 3 chat format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from torchformers.tools.assets import fetch
from torchformers.tools.dataset_preprocess.llama import alpaca_converter, llama_preprocess
from torchformers.tools.dataset_preprocess.llama.llama_preprocess import IGNORE_TOKEN_ID, load_tokenizer

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def test_alpaca_with_llama3_tokenizer_from_register_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conv = tmp_path / "conv.json"
    alpaca_converter.convert(ASSETS_DIR / "alpaca_tiny.json", conv)
    model_file = str(fetch("llama3/tokenizer.model"))
    out = tmp_path / "alpaca_llama3.parquet"
    argv = ["--dataset_type", "qa", "--input_glob", str(conv), "--output_file", str(out), "--seq_length", "512",
            "--tokenizer_type", "Llama3Tokenizer", "--register_path", "research/llama3_1", "--model_file", model_file,
            "--chat_format", "llama3", "--num_workers", "1", "--no_progress"]  # fmt: skip
    assert llama_preprocess.main(argv) == 0

    tok = load_tokenizer(model_file=model_file, tokenizer_type="Llama3Tokenizer", register_path="research/llama3_1")
    assert type(tok).__name__ == "Llama3Tokenizer"
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    table = pq.read_table(out)
    ids_rows = np.array(table.column("input_ids").to_pylist())
    label_rows = np.array(table.column("labels").to_pylist())
    conversations = json.loads(conv.read_text(encoding="utf-8"))
    assert ids_rows.shape == (100, 513) and label_rows.shape == ids_rows.shape
    for ids, labels, record in zip(ids_rows, label_rows, conversations):
        human, gpt = (turn["value"] for turn in record["conversations"])
        learnt = np.flatnonzero(labels != IGNORE_TOKEN_ID)
        # labels are the response tokens (ending in <|eot_id|>) and -100 on the prompt and the padding
        assert (labels[learnt] == ids[learnt]).all()
        assert (np.diff(learnt) == 1).all() and ids[learnt[-1]] == eot
        assert tok.decode(ids[learnt[:-1]].tolist()) == gpt
        prompt = tok.decode(ids[: learnt[0]].tolist())
        assert prompt == (
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
            f"{human}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        assert (ids[learnt[-1] + 1 :] == tok.pad_token_id).all()


def test_mindformers_tokenizer_and_samples_num_flags(tmp_path, monkeypatch, capsys, wiki_text_file):
    """`--tokenizer llama3` is llama3_1_preprocess.py's Llama3Tokenizer; `--samples_num` sizes only MindFormers'
    'wikipedia' type, so wiki output is the same with it."""
    monkeypatch.chdir(tmp_path)  # research/llama3_1 is found from the repository root
    text = tmp_path / "wiki.txt"
    text.write_text(wiki_text_file.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    model_file = str(fetch("llama3/tokenizer.model"))
    common = ["--dataset_type", "wiki", "--input_glob", str(text), "--seq_length", "255", "--model_file", model_file,
              "--num_workers", "1", "--no_progress"]  # fmt: skip
    flags = tmp_path / "flags.parquet"
    mindformers_flags = ["--tokenizer", "llama3", "--samples_num", "3"]
    assert llama_preprocess.main([*common, "--output_file", str(flags), *mindformers_flags]) == 0
    explicit = tmp_path / "explicit.parquet"
    argv = [*common, "--output_file", str(explicit), "--tokenizer_type", "Llama3Tokenizer"]
    assert llama_preprocess.main([*argv, "--register_path", "research/llama3_1"]) == 0
    got, want = pq.read_table(flags), pq.read_table(explicit)
    assert got.num_rows > 3 and got.column("input_ids").equals(want.column("input_ids"))
    meta = json.loads(Path(f"{flags}.meta.json").read_text(encoding="utf-8"))
    assert meta["tokenizer"] == "Llama3Tokenizer(tokenizer.model)"

    capsys.readouterr()
    clash = [*common, "--output_file", str(tmp_path / "x.parquet"), "--tokenizer", "llama"]
    clash += ["--tokenizer_type", "Llama3Tokenizer"]
    assert llama_preprocess.main(clash) == 2
    assert "--tokenizer llama means --tokenizer_type LlamaTokenizer" in capsys.readouterr().err
