"""MindFormerRegister: registration, lookup, building from config blocks, auto_register errors."""

import pytest

from torchformers.tools.register import MindFormerModuleType, MindFormerRegister, RegistryError
from torchformers.tools.register.build import build_callback, build_model


def test_all_27_module_types():
    types = MindFormerModuleType.all()
    assert len(types) == 27
    assert MindFormerModuleType.CALLBACK == "callback"
    assert {"trainer", "tokenizer", "models", "config", "lr", "optimizer", "data_handler"} <= set(types)


def test_register_lookup_and_alias():
    @MindFormerRegister.register(MindFormerModuleType.TOOLS)
    class RegToolA:
        pass

    MindFormerRegister.register_cls(RegToolA, MindFormerModuleType.TOOLS, alias="reg_tool_a")
    assert MindFormerRegister.is_exist(MindFormerModuleType.TOOLS, "RegToolA")
    assert MindFormerRegister.get_cls(MindFormerModuleType.TOOLS, "reg_tool_a") is RegToolA
    assert not MindFormerRegister.is_exist(MindFormerModuleType.TOOLS, "NoSuchThing")


def test_duplicate_name_of_a_different_class_is_an_error():
    class DupTool:
        pass

    MindFormerRegister.register_cls(DupTool, MindFormerModuleType.TOOLS, alias="dup_name")
    MindFormerRegister.register_cls(DupTool, MindFormerModuleType.TOOLS, alias="dup_name")  # same class: fine

    class Other:
        pass

    with pytest.raises(RegistryError, match="already taken"):
        MindFormerRegister.register_cls(Other, MindFormerModuleType.TOOLS, alias="dup_name")


def test_unknown_class_names_what_is_registered():
    class LrUnique:
        pass

    MindFormerRegister.register_cls(LrUnique, MindFormerModuleType.LR)
    with pytest.raises(ValueError, match=r"Can't find class type lr class name LrUniqe.*did you mean 'LrUnique'"):
        MindFormerRegister.get_cls(MindFormerModuleType.LR, "LrUniqe")


def test_get_instance_from_cfg_default_args_override_and_class_type():
    class Point:
        def __init__(self, x, y=0):
            self.x, self.y = x, y

    MindFormerRegister.register_cls(Point, MindFormerModuleType.TOOLS, alias="RegPoint")
    p = MindFormerRegister.get_instance_from_cfg({"type": "RegPoint", "x": 1, "y": 2}, "tools", default_args={"y": 5})
    assert (p.x, p.y) == (1, 5)
    q = MindFormerRegister.get_instance_from_cfg({"type": Point, "x": 3}, "tools")
    assert (q.x, q.y) == (3, 0)
    r = MindFormerRegister.get_instance("tools", "RegPoint", x=7)
    assert r.x == 7


def test_errors_while_building_name_the_class():
    class Broken:
        def __init__(self, size):
            raise ValueError(f"size {size} too big")

    MindFormerRegister.register_cls(Broken, MindFormerModuleType.TOOLS, alias="RegBroken")
    with pytest.raises(ValueError, match="Broken: size 3 too big"):
        MindFormerRegister.get_instance_from_cfg({"type": "RegBroken", "size": 3}, "tools")
    with pytest.raises(TypeError, match="Broken: .*unexpected keyword argument 'colour'"):
        MindFormerRegister.get_instance_from_cfg({"type": "RegBroken", "colour": 3}, "tools")
    with pytest.raises(RegistryError, match="has no 'type' key"):
        MindFormerRegister.get_instance_from_cfg({"size": 3}, "tools")
    with pytest.raises(RegistryError, match="must be a mapping"):
        MindFormerRegister.get_instance_from_cfg(["RegBroken"], "tools")


def test_build_callback_list_and_build_model_needs_both_blocks():
    class CbA:
        def __init__(self, n=1):
            self.n = n

    MindFormerRegister.register_cls(CbA, MindFormerModuleType.CALLBACK, alias="RegCbA")
    cbs = build_callback([{"type": "RegCbA"}, {"type": "RegCbA", "n": 2}])
    assert [c.n for c in cbs] == [1, 2]
    with pytest.raises(RegistryError, match="model_config"):
        build_model({"arch": {"type": "X"}})


def _write(path, text):
    path.write_text(text)
    return path


def test_auto_register_errors(tmp_path, clean_register_env):
    cfg = {"type": "AutoA", "auto_register": "auto_mod_a.AutoA"}
    with pytest.raises(RegistryError, match="needs a register path: pass --register_path"):
        MindFormerRegister.get_instance_from_cfg(dict(cfg), "tools")
    clean_register_env.setenv("REGISTER_PATH", str(tmp_path))
    with pytest.raises(RegistryError, match=r"the file .*auto_mod_a\.py does not exist"):
        MindFormerRegister.get_instance_from_cfg(dict(cfg), "tools")
    _write(tmp_path / "auto_mod_a.py", "class Other:\n    pass\n")
    with pytest.raises(RegistryError, match=r"auto_mod_a\.py has no class 'AutoA' \(classes defined there: Other\)"):
        MindFormerRegister.get_instance_from_cfg(dict(cfg), "tools")
    _write(tmp_path / "auto_mod_b.py", "import no_such_module_xyz\n")
    with pytest.raises(
        RegistryError,
        match=r"importing .*auto_mod_b\.py failed: ModuleNotFoundError: No module named 'no_such_module_xyz'",
    ):
        MindFormerRegister.auto_register("auto_mod_b.Thing", "tools")
    with pytest.raises(RegistryError, match="'module_file.ClassName'"):
        MindFormerRegister.auto_register("a.b.C", "tools")


def test_auto_register_imports_sibling_modules_and_writes_nothing_to_cwd(tmp_path, clean_register_env, monkeypatch):
    ext = tmp_path / "ext"
    ext.mkdir()
    _write(ext / "ext_helper_c.py", "FACTOR = 3\n")
    _write(
        ext / "ext_mod_c.py",
        "from ext_helper_c import FACTOR\n\nclass ExtC:\n    def __init__(self, v):\n        self.v = v * FACTOR\n",
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    clean_register_env.setenv("REGISTER_PATH", str(ext))
    obj = MindFormerRegister.get_instance_from_cfg({"type": "ExtC", "auto_register": "ext_mod_c.ExtC", "v": 2}, "tools")
    assert obj.v == 6
    assert list(work.iterdir()) == []
