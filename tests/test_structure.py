"""The package's shape holds: every module has a docstring and stays under 400 lines, and imports point down the
data flow (data -> models -> configs -> train -> sample/eval -> play -> demo/bench -> cli)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "jasmine"
# Each top-level part of the package and its layer; a module may import only its own layer or lower ones.
LAYERS = {"viz": 0, "data": 1, "models": 2, "config": 3, "presets": 3, "train": 4, "sample": 5, "eval": 5, "play": 6,
          "demo": 7, "bench": 7, "sweep": 7, "cli": 8, "__main__": 8, "__init__": 8}  # fmt: skip


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PKG.parent).with_suffix("").parts): p for p in sorted(PKG.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jasmine."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("jasmine.")}
    return found


def upward_imports() -> list[str]:
    return [f"{mod} -> {target}" for mod, path in modules().items() for target in imports(path)
            if layer(target) > layer(mod)]  # fmt: skip


def test_every_module_is_short_and_says_what_it_is():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
    undocumented = [
        m for m, p in modules().items() if p.stat().st_size and not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not undocumented, f"modules without a docstring: {undocumented}"


def test_imports_point_down_the_data_flow():
    assert set(LAYERS) >= {m.split(".")[1] for m in modules() if "." in m}, "a new part of the package needs a layer"
    assert not upward_imports()


def test_the_import_check_sees_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "jasmine"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "x.py").write_text('"""x."""\nfrom jasmine.train.loop import train\n')
    monkeypatch.setattr(__import__(__name__), "PKG", fake)
    assert upward_imports() == ["jasmine.data.x -> jasmine.train.loop"]
