"""Optional parameters are keyword-only in the package (../shared/STYLE.md): a call reads without counting commas."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "marsseg"


def optional_positional(source: str) -> list[str]:
    """Functions of `source` with an optional parameter that may be passed by position, other than the first
    (after self): `load(path=None)` reads well, `predict(model, images, True)` does not. A module's forward is
    torch's signature."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name == "forward":
            continue
        positional = node.args.posonlyargs + node.args.args
        first = 1 if positional and positional[0].arg in ("self", "cls") else 0
        optional = positional[len(positional) - len(node.args.defaults) :]
        late = [arg.arg for arg in optional if positional.index(arg) > first]
        if late:
            found.append(f"{node.name}({', '.join(late)})")
    return found


def test_the_check_finds_an_optional_positional_parameter():
    assert optional_positional("def f(x, tta=True):\n    pass\n") == ["f(tta)"]
    assert optional_positional("def f(x, *, tta=True):\n    pass\n") == []
    assert optional_positional("def load(path=None):\n    pass\n") == []
    assert optional_positional("class A:\n    def __init__(self, width=32, depth=4):\n        pass\n") == [
        "__init__(depth)"
    ]


def test_every_optional_parameter_in_the_package_is_keyword_only():
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := optional_positional(path.read_text()))
    }
    assert offenders == {}
