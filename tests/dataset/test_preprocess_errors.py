"""The preprocessing errors belong to the one error tree, and the programs print them as one line."""

from __future__ import annotations

import json

import pytest

from torchformers.dataset import DatasetFormatError
from torchformers.dataset.preprocess import ConversionError, PreprocessError
from torchformers.errors import DataError
from torchformers.tools.dataset_preprocess.llama import alpaca_converter, llama_preprocess


@pytest.mark.parametrize("error", [PreprocessError, ConversionError, DatasetFormatError])
def test_data_errors_are_data_errors_and_value_errors(error):
    assert issubclass(error, DataError) and issubclass(error, ValueError)


def test_the_programs_reexport_the_machinery():
    assert llama_preprocess.PreprocessError is PreprocessError
    assert alpaca_converter.ConversionError is ConversionError


def test_alpaca_converter_prints_a_bad_input_as_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TORCHFORMERS_DEBUG", raising=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x"}]), encoding="utf-8")
    assert alpaca_converter.main(["--data_path", str(bad), "--output_path", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "record 0 lacks the string field(s) ['output']" in err[0]
    assert not (tmp_path / "o.json").exists()


def test_llama_preprocess_prints_a_bad_argument_as_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TORCHFORMERS_DEBUG", raising=False)
    src = tmp_path / "in.json"
    src.write_text("[]", encoding="utf-8")
    argv = ["--dataset_type", "qa", "--input_glob", str(src), "--output_file", str(tmp_path / "o.parquet")]
    assert llama_preprocess.main([*argv, "--no_progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: give a tokenizer: --model_file (SentencePiece model) or --tokenizer_type NAME"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]
