"""MindFormerRegister: registration, lookup, building from config blocks, auto_register and its imports."""

import sys

import pytest

from torchformers.errors import run_cli
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


def test_a_different_class_under_a_taken_name_replaces_the_earlier_one():
    """MindFormers' semantics: re-registering a name silently replaces the class (a debug line here)."""

    class DupTool:
        pass

    MindFormerRegister.register_cls(DupTool, MindFormerModuleType.TOOLS, alias="dup_name")
    MindFormerRegister.register_cls(DupTool, MindFormerModuleType.TOOLS, alias="dup_name")  # same class: fine

    class Other:
        pass

    MindFormerRegister.register_cls(Other, MindFormerModuleType.TOOLS, alias="dup_name")
    assert MindFormerRegister.get_cls(MindFormerModuleType.TOOLS, "dup_name") is Other

    @MindFormerRegister.register(MindFormerModuleType.TOOLS, alias="dup_name")
    class Third:
        pass

    assert MindFormerRegister.get_cls(MindFormerModuleType.TOOLS, "dup_name") is Third


def test_register_takes_legacy_and_search_names():
    @MindFormerRegister.register(MindFormerModuleType.TOOLS, search_names="reg_sn_tool")
    class RegSnTool:
        pass

    class RegSnModel:
        pass

    MindFormerRegister.register_cls(
        RegSnModel, MindFormerModuleType.MODELS, legacy=False, search_names=["RegSnModelA", "RegSnModelB"]
    )
    assert MindFormerRegister.get_cls(MindFormerModuleType.TOOLS, "RegSnTool") is RegSnTool
    assert MindFormerRegister.get_cls(MindFormerModuleType.TOOLS, "reg_sn_tool") is RegSnTool
    assert MindFormerRegister.is_exist(MindFormerModuleType.TOOLS, "reg_sn_tool")
    # non-legacy MODELS/CONFIG classes live under MindFormers' mcore_ prefix, search names too
    assert MindFormerRegister.get_cls(MindFormerModuleType.MODELS, "mcore_RegSnModel") is RegSnModel
    assert MindFormerRegister.get_cls(MindFormerModuleType.MODELS, "mcore_RegSnModelB") is RegSnModel
    assert not MindFormerRegister.is_exist(MindFormerModuleType.MODELS, "RegSnModel")
    with pytest.raises(RegistryError, match=r"search_names must be a string or a list.*got 3"):
        MindFormerRegister.register_cls(RegSnTool, MindFormerModuleType.TOOLS, search_names=3)


def test_user_errors_are_also_the_builtin_types_mindformers_raises(clean_register_env, capsys):
    with pytest.raises(TypeError, match="must be a mapping with a 'type' key, got list"):
        MindFormerRegister.get_instance_from_cfg(["RegBroken"], "tools")
    with pytest.raises(KeyError) as missing:
        MindFormerRegister.get_instance_from_cfg({"size": 3}, "tools")
    assert str(missing.value) == "the tools config {'size': 3} has no 'type' key (expected the class name)"
    with pytest.raises(EnvironmentError, match="needs a register path"):
        MindFormerRegister.auto_register("mod_x.X", "tools")

    def bad():
        MindFormerRegister.get_instance_from_cfg({"size": 3}, "tools")

    assert run_cli(bad) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == "error: the tools config {'size': 3} has no 'type' key (expected the class name)"


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


def test_relative_imports_in_a_register_path_outside_sys_path(tmp_path, clean_register_env):
    """`from .sibling import X` and `from . import sibling` work in a file `auto_register` imports, with and
    without an `__init__.py` in the folder; a plain sibling import gets the same module."""
    for i, init in enumerate(["", "PACKAGE_MARK = 1\n", None]):
        ext = tmp_path / f"rel{i}"
        ext.mkdir()
        if init is not None:
            _write(ext / "__init__.py", init)
        _write(ext / f"rel_helper_{i}.py", "FACTOR = 4\n")
        _write(
            ext / f"rel_mod_{i}.py",
            f"from .rel_helper_{i} import FACTOR\nfrom . import rel_helper_{i} as helper\n"
            f"import rel_helper_{i}\n\n"
            f"SAME = helper is rel_helper_{i}\n\n"
            f"class RelC{i}:\n    def __init__(self, v):\n        self.v = v * FACTOR * helper.FACTOR\n",
        )
        clean_register_env.setenv("REGISTER_PATH", str(ext))
        cfg = {"type": f"RelC{i}", "auto_register": f"rel_mod_{i}.RelC{i}", "v": 2}
        obj = MindFormerRegister.get_instance_from_cfg(cfg, "tools")
        assert obj.v == 32
        module = sys.modules[type(obj).__module__]
        assert module.__package__ and module.__name__.endswith(f".rel_mod_{i}")
        assert module.SAME
        assert sys.modules[f"rel_mod_{i}"] is module  # the plain name is the same module
        assert MindFormerRegister.auto_register(f"rel_mod_{i}.RelC{i}", "tools") is type(obj)  # reused


def test_mindformers_absolute_imports_and_auto_register_give_one_class(tmp_path, clean_register_env, monkeypatch):
    """MindFormers' research style: the repository root on sys.path, `from research.x.mod import C` in one
    file and `auto_register: mod.C` with `--register_path research/x` in the YAML: one module, no error."""
    root = tmp_path / "repo"
    ext = root / "research" / "tf_reg_abs"
    ext.mkdir(parents=True)
    _write(ext / "abs_helper.py", "FACTOR = 5\n")
    _write(
        ext / "abs_mod.py",
        "from research.tf_reg_abs.abs_helper import FACTOR\nfrom .abs_helper import FACTOR as F2\n\n"
        "class AbsC:\n    def __init__(self, v):\n        self.v = v * FACTOR * F2\n",
    )
    _write(ext / "abs_user.py", "from research.tf_reg_abs.abs_mod import AbsC\n\nUSED = AbsC\n")
    monkeypatch.syspath_prepend(str(root))
    for name in [n for n in sys.modules if n == "research" or n.startswith("research.")]:
        monkeypatch.delitem(sys.modules, name)
    clean_register_env.setenv("REGISTER_PATH", str(ext))
    user = MindFormerRegister.auto_register("abs_user.USED", "tools")
    cls = MindFormerRegister.auto_register("abs_mod.AbsC", "tools")
    assert cls is user and cls.__module__ == "research.tf_reg_abs.abs_mod"
    assert MindFormerRegister.get_instance_from_cfg({"type": "AbsC", "v": 1}, "tools").v == 25
