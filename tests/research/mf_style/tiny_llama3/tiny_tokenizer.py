"""Test fixture: a tokenizer written the way MindFormers' research code is (`research/<model>/*.py`).

It imports the library's research tokenizer by its absolute `research.` module name (the repository root
on `sys.path`, as MindFormers' run_mindformer.py has it), a sibling both absolutely and relatively, and
registers itself with the decorator; a YAML also names it through
`auto_register: tiny_tokenizer.TinyLlama3Tokenizer` with `--register_path research/tiny_llama3`.
"""

import sys

from research.tiny_llama3.tiny_state import MARKER

from research.llama3_1.llama3_1_tokenizer import Llama3Tokenizer
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

from . import tiny_state
from .tiny_state import CREATED


@MindFormerRegister.register(MindFormerModuleType.TOKENIZER, search_names="tiny_llama3_tokenizer")
class TinyLlama3Tokenizer(Llama3Tokenizer):
    """`Llama3Tokenizer` that records each instance and says which module it came from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        CREATED.append(type(self).__module__)
        same = tiny_state.MARKER is MARKER
        print(f"{MARKER}: {type(self).__module__} (one state module: {same})", file=sys.stderr)
