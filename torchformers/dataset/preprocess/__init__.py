"""Data set preprocessing: the machinery behind `tools/dataset_preprocess/llama/` (MindFormers' scripts).

- `alpaca`: Alpaca records -> conversation records (`alpaca_converter`);
- `json_stream`: conversation input, a JSON list or JSON lines, streamed with line numbers;
- `conversation`, `chat_formats`: conversations -> `(input_ids, labels)` in the vicuna, llama2, llama3
  and template formats;
- `wiki`: raw text cleaned (`clean_wikitext`) and encoded paragraph by paragraph;
- `tokenizer`: the tokenizer the command line names, and the few calls the preprocessing makes;
- `worker_pool`, `packing`, `parquet_writer`, `runner`: the process pool, the packing of several
  conversations per sample, the Parquet output and `preprocess`, which runs them all.
"""

from torchformers.dataset.preprocess.alpaca import PROMPT_DICT, ConversionError, alpaca_to_conversations, convert
from torchformers.dataset.preprocess.chat_formats import (
    CHAT_FORMATS,
    IGNORE_TOKEN_ID,
    conversation_messages,
    encode_conversation,
)
from torchformers.dataset.preprocess.errors import PreprocessError
from torchformers.dataset.preprocess.json_stream import iter_json_records
from torchformers.dataset.preprocess.parquet_writer import PARQUET_OPTIONS, meta_path, output_files, parquet_writer
from torchformers.dataset.preprocess.runner import QaOptions, preprocess
from torchformers.dataset.preprocess.tokenizer import SentencePieceTokenizer, encode_text, load_tokenizer
from torchformers.dataset.preprocess.wiki import clean_wikitext, iter_wiki_chunks, tokenize_wiki_text

__all__ = [
    "CHAT_FORMATS",
    "IGNORE_TOKEN_ID",
    "PARQUET_OPTIONS",
    "PROMPT_DICT",
    "ConversionError",
    "PreprocessError",
    "QaOptions",
    "SentencePieceTokenizer",
    "alpaca_to_conversations",
    "clean_wikitext",
    "conversation_messages",
    "convert",
    "encode_conversation",
    "encode_text",
    "iter_json_records",
    "iter_wiki_chunks",
    "load_tokenizer",
    "meta_path",
    "output_files",
    "parquet_writer",
    "preprocess",
    "tokenize_wiki_text",
]
