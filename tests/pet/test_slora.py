"""S-LoRA (`pet_type: slora`): several LoRA adapters on one base model, one adapter (or none) per batch row.

The reference for each row is the same prompt run alone on a model with that row's adapter merged into
its weights (`merge_lora`), or on the base model: the batched, unmerged S-LoRA rows must give the same
logits and the same tokens. The two adapters differ in format (MindFormers' `adapter_model.ckpt` with
`<module>.lora_a/.lora_b`, and the `adapter_model.safetensors` + `adapter_config.json` that `save_adapters`
writes), in rank, alpha and target modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchformers.checkpoint import save_checkpoint
from torchformers.errors import CheckpointError, ConfigError
from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
from torchformers.pet import get_pet_model, merge_lora, save_adapters
from torchformers.pet.lora import LORA_A, LORA_B, LoRALinear
from torchformers.pet.slora import SLoRALinear, get_slora_model

TINY = {"vocab_size": 256, "num_layers": 2, "hidden_size": 64, "num_heads": 4, "n_kv_heads": 2,
        "intermediate_size": 128, "seq_length": 64,
        "compute_dtype": "float32", "param_init_type": "float32"}  # fmt: skip
# adapter name -> (rank, alpha, target modules, weights file)
ADAPTERS = {
    "math": (4, 8.0, ["wq", "wv", "w2"], "adapter_model.ckpt"),
    "code": (2, 6.0, ["wk", "wo", "w1", "lm_head"], "adapter_model.safetensors"),
}
PROMPTS = [[5, 9, 23, 7, 81, 2, 44], [17, 3], [100, 31, 8, 8, 91], [12, 250, 6, 19]]
ROW_ADAPTERS = ["math", None, "code", "math"]


def base_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    return model.eval()


def lora_config(name: str) -> dict:
    rank, alpha, targets, _ = ADAPTERS[name]
    return {"pet_type": "lora", "lora_rank": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
            "target_modules": "|".join(f".*{t}" for t in targets)}  # fmt: skip


def trained_lora(name: str, seed: int, alpha: float | None = None) -> LlamaForCausalLM:
    """The base model with adapter `name`, A and B random (as after finetuning)."""
    model = get_pet_model(base_model(), {**lora_config(name), **({} if alpha is None else {"lora_alpha": alpha})})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith((LORA_A, LORA_B)):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> Path:
    """`lora_adapter.json` naming two adapter folders, in MindFormers' and in save_adapters' format."""
    root = tmp_path_factory.mktemp("slora")
    for seed, (name, (rank, alpha, targets, weights)) in enumerate(ADAPTERS.items(), start=1):
        model = trained_lora(name, seed)
        folder = root / name
        if weights == "adapter_model.ckpt":  # MindFormers: <module>.lora_a / .lora_b in a MindSpore checkpoint
            state = {}
            for module_name, module in model.named_modules():
                if isinstance(module, LoRALinear):
                    state[f"{module_name}.lora_a"] = getattr(module, LORA_A).detach().clone()
                    state[f"{module_name}.lora_b"] = getattr(module, LORA_B).detach().clone()
            folder.mkdir()
            save_checkpoint(state, folder / weights)
            config = {"lora_alpha": alpha, "lora_dropout": 0.05, "r": rank, "target_modules": targets}
            (folder / "adapter_config.json").write_text(json.dumps(config))
        else:
            save_adapters(model, folder)  # writes adapter_config.json beside the weights
    path = root / "lora_adapter.json"
    path.write_text(json.dumps({name: str(root / name) for name in ADAPTERS}))
    return path


def reference(name: str | None) -> LlamaForCausalLM:
    """One adapter merged into plain weights, or the base model."""
    if name is None:
        return base_model()
    return merge_lora(trained_lora(name, list(ADAPTERS).index(name) + 1)).eval()


def slora_model(adapter_json: Path) -> LlamaForCausalLM:
    return get_slora_model(base_model(), {"pet_type": "slora", "adapter_path": str(adapter_json)})


def test_adapters_load_stacked_and_unmerged(adapters):
    model = slora_model(adapters)
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, SLoRALinear)}
    targets = ("wq", "wv", "w2", "wk", "wo", "w1", "lm_head")
    assert len(wrapped) == 6 * 2 + 1 and all(n.endswith(targets) for n in wrapped)
    q = wrapped["model.layers.0.attention.wq"]
    assert q.lora_a.shape == (3, 4, 64) and q.lora_b.shape == (3, 64, 4)  # base + 2 adapters, rank 4 (max)
    assert not q.lora_a[0].any() and not q.lora_a[2].any()  # row 0: base; 'code' does not adapt wq
    base = base_model()
    assert torch.equal(q.weight, base.model.layers[0].attention.wq.weight)  # base weights are not merged
    with torch.no_grad():
        ids = torch.tensor([p[:2] for p in PROMPTS])
        assert torch.equal(model(ids), base(ids))  # outside generate no adapter is selected


@pytest.mark.parametrize("use_past", [True, False])
def test_each_row_matches_its_adapter_merged_run_alone(adapters, use_past):
    model = slora_model(adapters)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "use_past": use_past, "eos_token_id": [],
              "return_dict_in_generate": True, "output_logits": True}  # fmt: skip
    out = model.generate(PROMPTS, adapter_ids=ROW_ADAPTERS + [], **kwargs)
    distinct = set()
    for row, (prompt, name) in enumerate(zip(PROMPTS, ROW_ADAPTERS)):
        alone = reference(name).generate([prompt], **kwargs)
        assert out.sequences[row].tolist() == alone.sequences[0].tolist(), (row, name)
        batched = torch.stack([step[row] for step in out.logits])
        single = torch.stack([step[0] for step in alone.logits])
        torch.testing.assert_close(batched, single, atol=2e-5, rtol=1e-4)
        distinct.add(tuple(out.sequences[row][len(prompt) :].tolist()))
    # the test can fail: each adapter changes the logits of the base model
    base_alone = reference(None).generate([PROMPTS[0]], **kwargs)
    assert not torch.allclose(torch.stack([s[0] for s in out.logits]), torch.stack([s[0] for s in base_alone.logits]))


def test_adapter_id_applies_to_every_row_and_unknown_names_run_the_base(adapters, caplog):
    model = slora_model(adapters)
    kwargs = {"max_new_tokens": 4, "do_sample": False, "eos_token_id": []}
    batched = model.generate(PROMPTS[:2], adapter_id="code", **kwargs)
    for prompt, seq in zip(PROMPTS[:2], batched):
        assert seq.tolist() == reference("code").generate([prompt], **kwargs)[0].tolist()
    with caplog.at_level("WARNING", logger="torchformers"):
        unknown = model.generate(PROMPTS[:1], adapter_ids=["nope"], **kwargs)
        none = model.generate(PROMPTS[:1], **kwargs)
    assert unknown[0].tolist() == none[0].tolist() == reference(None).generate(PROMPTS[:1], **kwargs)[0].tolist()
    assert any("Can not find nope" in m for m in caplog.messages)
    assert any("adapter ids got none" in m for m in caplog.messages)


def test_beam_search_keeps_each_prompts_adapter(adapters):
    model = slora_model(adapters)
    kwargs = {"max_new_tokens": 5, "num_beams": 3, "eos_token_id": []}
    out = model.generate(PROMPTS[:2], adapter_ids=["code", "math"], **kwargs)
    for prompt, name, seq in zip(PROMPTS[:2], ["code", "math"], out):
        assert seq.tolist() == reference(name).generate([prompt], **kwargs)[0].tolist()


def test_adapter_errors_name_what_to_pass(adapters, tmp_path):
    with pytest.raises(ConfigError, match="--model.model_config.pet_config.adapter_path"):
        get_slora_model(base_model(), {"pet_type": "slora", "adapter_path": ""})
    with pytest.raises(ConfigError, match="unknown keys"):
        get_slora_model(base_model(), {"pet_type": "slora", "adapter_path": str(adapters), "lora_rank": 8})
    with pytest.raises(ConfigError, match="this model has none"):
        base_model().generate(PROMPTS[:1], adapter_id="math", max_new_tokens=1)
    with pytest.raises(ConfigError, match="4 entries for a batch of 2"):
        slora_model(adapters).generate(PROMPTS[:2], adapter_ids=ROW_ADAPTERS, max_new_tokens=1)
    # an adapter_config.json whose r does not match the weights
    folder = Path(json.loads(adapters.read_text())["math"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_model.ckpt").write_bytes((folder / "adapter_model.ckpt").read_bytes())
    config = json.loads((folder / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    mapping = tmp_path / "adapters.json"
    mapping.write_text(json.dumps({"bad": str(bad)}))
    with pytest.raises(CheckpointError, match="expected \\(r, in\\) and \\(out, r\\) with r = 8"):
        slora_model(mapping)


def test_adapter_path_folder_and_rslora_scaling(adapters, tmp_path):
    """MindFormers 1.5+: `adapter_path` is the folder holding lora_adapter.json; `use_rslora` scales by
    lora_alpha / sqrt(r)."""
    import shutil

    folder = Path(json.loads(adapters.read_text())["math"])
    shutil.copytree(folder, tmp_path / "math")
    config = json.loads((folder / "adapter_config.json").read_text())
    (tmp_path / "math" / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    (tmp_path / "lora_adapter.json").write_text(json.dumps({"math": "math"}))  # relative to the JSON's folder
    model = get_slora_model(base_model(), {"pet_type": "slora", "adapter_path": str(tmp_path)})
    rank, alpha = ADAPTERS["math"][:2]
    # lora_alpha / sqrt(r) is what LoRA with lora_alpha * sqrt(r) / r computes
    merged = merge_lora(trained_lora("math", 1, alpha=alpha * rank**0.5)).eval()
    kwargs = {"max_new_tokens": 3, "do_sample": False, "eos_token_id": [], "return_dict_in_generate": True,
              "output_logits": True}  # fmt: skip
    out = model.generate(PROMPTS[:1], adapter_id="math", **kwargs)
    ref = merged.generate(PROMPTS[:1], **kwargs)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(ref.logits), atol=2e-5, rtol=1e-4)
