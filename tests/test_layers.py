"""The package's imports go one way: each module imports only from its own or earlier layers."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "zipo_scvi"

#: The layers, first to last. A module (or subpackage) sits in exactly one.
LAYERS = (
    {"_version", "_defaults", "_distributions", "_components"},  # settings, likelihoods, parts
    {"_checks", "_metrics", "_outputs", "_settings", "data"},  # built on them, no model
    {"_module", "_training", "_sparsity"},  # the maths, its training and sparsity
    {"_model"},  # the user-facing model class
    {"_tune", "pp"},  # searches and comparisons of models, one-call denoising
    {"pl"},  # plots
    {"_config", "cli", "__init__", "__main__"},  # the command line and the package's face
)
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: Path) -> str:
    """The layer unit of a file: its module name, or its subpackage's name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported_units(path: Path, root: Path = PACKAGE) -> set[str]:
    """Units of zipo_scvi that a file imports (anywhere in it, also inside functions); a name
    imported from the package itself that is no module (``__version__``) is ``__init__``."""
    units = {p.name.removesuffix(".py") for p in root.iterdir()}
    package = ["zipo_scvi", *path.relative_to(root).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = [*base, *(node.module.split(".") if node.module else [])]
            else:
                module = (node.module or "").split(".")
            if module == ["zipo_scvi"] or not node.module:
                names = [".".join([*module, alias.name]) for alias in node.names]
            else:
                names = [".".join(module)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "zipo_scvi":
                found.add(parts[1] if len(parts) > 1 and parts[1] in units else "__init__")
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        graph.setdefault(unit, set()).update(_imported_units(path) - {unit})
    return graph


def test_every_module_has_a_layer():
    assert set(_graph()) <= set(RANK), sorted(set(_graph()) - set(RANK))


def test_imports_never_reach_a_later_layer():
    backward = [
        f"{unit} (layer {RANK[unit]}) imports {other} (layer {RANK[other]})"
        for unit, imports in _graph().items()
        for other in imports
        if RANK[other] > RANK[unit]
    ]
    assert not backward, backward


def test_no_cycle_within_a_layer():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(unit: str, trail: list[str]) -> None:
        state[unit] = 1
        for other in graph.get(unit, ()):
            assert state.get(other) != 1, " -> ".join([*trail, unit, other])
            if other not in state:
                visit(other, [*trail, unit])
        state[unit] = 2

    for unit in graph:
        if unit not in state:
            visit(unit, [])


def test_the_checker_sees_relative_lazy_and_package_imports(tmp_path):
    root = tmp_path / "zipo_scvi"
    (root / "data").mkdir(parents=True)
    for name in ("_model.py", "pl.py", "cli.py"):
        (root / name).write_text("")
    probe = root / "data" / "_probe.py"
    probe.write_text(
        "from .._model import ZIPO\nimport zipo_scvi.cli\nfrom zipo_scvi import __version__\n"
        "def f():\n    from ..pl import report\n"
    )
    assert _imported_units(probe, root) == {"_model", "cli", "__init__", "pl"}


def test_zipo_shows_every_preset_hyperparameter():
    import inspect

    from zipo_scvi import ZIPO
    from zipo_scvi._defaults import PRESETS

    params = inspect.signature(ZIPO.__init__).parameters
    for module_settings, _train in PRESETS.values():
        for key in module_settings:
            assert key in params, key
            assert params[key].kind is inspect.Parameter.KEYWORD_ONLY
            assert params[key].default is None  # None: the preset's value
            assert f"{key}," in ZIPO.__doc__ or f"{key}\n" in ZIPO.__doc__, key
