"""TOML settings of the command line: the Python argument names, type-checked and written back.

A settings file holds, at the top level or in the tables ``[setup]``, ``[model]``, ``[train]``
and ``[run]``, the arguments of :meth:`ZIPO.setup_anndata <zipo_scvi.ZIPO.setup_anndata>`, the
module hyperparameters of :mod:`zipo_scvi._defaults` (plus ``preset``), the arguments of
:meth:`ZIPO.train <zipo_scvi.ZIPO.train>` (plus the preset's schedule and stopping settings), and
the command line's own ``threads``, ``transpose``, ``backed``, ``transform_batch``,
``label_key`` and ``log_normalized``; ``zipo tune`` also reads a
``[search]`` table (``name = [kind, ...]``, see :func:`zipo_scvi.tune`). Precedence: preset <
file < flags.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import operator
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tomli_w

from ._defaults import PAPER_MODULE, PAPER_TRAIN
from ._defaults import preset as get_preset
from ._settings import split_settings

GROUPS = ("run", "setup", "model", "train")

#: Settings of the command line itself (not arguments of ZIPO).
RUN_TYPES: dict[str, Any] = {
    "threads": int,
    "transpose": bool,
    "backed": bool,
    "transform_batch": str,  # decode every cell as if from this batch (zipo denoise)
    "label_key": str,  # obs column the report's UMAP is also coloured by
    "log_normalized": bool,  # also write layers["zipo_log_normalized"] (zipo denoise)
}

#: Command-line default seed (a run must be repeatable from its settings file).
DEFAULT_SEED = 0


class ConfigError(ValueError):
    """A settings file or value that cannot be used: unknown key, wrong type, bad TOML."""


def _hints(fn, skip: Sequence[str]) -> dict[str, Any]:
    hints = typing.get_type_hints(fn)
    names = [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in skip
    ]
    return {name: hints.get(name, Any) for name in names}


@functools.cache
def parameter_types() -> dict[str, dict[str, Any]]:
    """Every key a settings file may hold, by group, with the type it must have.

    Returns
    -------
    ``{"run": {...}, "setup": {...}, "model": {...}, "train": {...}}``, name -> type hint.

    Examples
    --------
    >>> types_ = parameter_types()
    >>> "alpha_z" in types_["model"] and "max_epochs" in types_["train"]
    True
    """
    from ._model import ZIPO
    from ._module import ZiPoModule

    module_hints = typing.get_type_hints(ZiPoModule.__init__)
    model_hints = typing.get_type_hints(ZIPO.__init__)
    model = {"preset": model_hints["preset"]}
    for key, default in PAPER_MODULE.items():
        # ZIPO's type without its None ("the preset's"), which may take more than the
        # module's (input_target_sum="median"); the module's where ZIPO has none
        hint = model_hints.get(key)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else []
        if args:
            hint = functools.reduce(operator.or_, args)
        model[key] = hint or module_hints.get(key, type(default))
    train = _hints(ZIPO.train, skip=("self",))
    for key, default in PAPER_TRAIN.items():  # schedule names ZIPO.train takes by keyword
        train.setdefault(key, type(default))
    setup = _hints(ZIPO.setup_anndata, skip=("cls", "adata"))
    return {"run": dict(RUN_TYPES), "setup": setup, "model": model, "train": train}


def _group_of(key: str) -> str | None:
    for group, keys in parameter_types().items():
        if key in keys:
            return group
    return None


# ---------------------------------------------------------------------- type checks
def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether ``value`` (as TOML gives it) fits ``hint``, and the value converted to fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if hint is type(None):
        return value is None, value
    if _is_union(hint):
        for arg in args:
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if hint is dict or origin in (dict, Mapping):
        return isinstance(value, dict), value
    if hint in (list, tuple) or origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            return False, value
        item = args[0] if args else Any
        items = [_coerce(v, item) for v in value]
        if not all(ok for ok, _ in items):
            return False, value
        return True, [v for _, v in items]
    return isinstance(value, hint) if isinstance(hint, type) else True, value


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if hint is dict or origin in (dict, Mapping):
        return "a table"
    if hint in (list, tuple) or origin in (list, tuple, Sequence):
        item = _describe(args[0]) if args else "values"
        plural = {"an integer": "integers", "a string": "strings", "a number": "numbers"}
        return f"a list of {plural.get(item, item)}"
    return getattr(hint, "__name__", str(hint))


def _toml_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}.get(
        type(value), "table" if isinstance(value, dict) else type(value).__name__
    )


def check_value(key: str, value: Any, source: str = "settings") -> Any:
    """Type-check one setting and return it converted (ints to floats, lists kept as lists).

    Parameters
    ----------
    key
        A setting's name (any group).
    value
        Its value as TOML or the command line gives it.
    source
        Where it came from, for the error message.

    Returns
    -------
    The value, converted where the type allows (an integer where a number is expected).

    Raises
    ------
    ConfigError
        If the key is unknown or the value has the wrong type; the message names both.

    Examples
    --------
    >>> check_value("alpha_z", 1)
    1.0
    """
    group = _group_of(key)
    if group is None:
        raise ConfigError(f"{source}: unknown key {key!r}{_suggest(key)}")
    hint = parameter_types()[group][key]
    ok, converted = _coerce(value, hint)
    if not ok:
        raise ConfigError(
            f"{source}: {key!r} must be {_describe(hint)}, not {_toml_type(value)} {_short(value)}"
        )
    return converted


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _suggest(key: str) -> str:
    every = sorted({k for keys in parameter_types().values() for k in keys})
    close = difflib.get_close_matches(key, every, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; valid keys: {', '.join(every)}"


# ---------------------------------------------------------------------- files
def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and type-check a TOML settings file.

    Parameters
    ----------
    path
        The ``.toml`` file. Keys may sit at the top level or in ``[run]``, ``[setup]``,
        ``[model]`` or ``[train]``; a key in the wrong table is an error. An optional
        ``[search]`` table holds a search space for ``zipo tune`` (``name = [kind, ...]``).

    Returns
    -------
    The settings by group (only the keys the file sets), plus ``"search"`` if present.

    Raises
    ------
    ConfigError
        If the file is missing or not TOML, or a key is unknown, misplaced or of the wrong
        type; the message names the file and the key.

    Examples
    --------
    >>> from zipo_scvi.data import write_text_atomic
    >>> write_text_atomic(dump_toml({"model": {"encoder_sizes": [16, 4]}}), "zipo.toml")
    >>> settings = load_config("zipo.toml")
    >>> settings["model"]["encoder_sizes"]
    [16, 4]
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        raw = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{str(p)!r} is not valid TOML: {err}") from err
    out: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
    for key, value in raw.items():
        if key == "search" and isinstance(value, dict):
            out["search"] = _check_search(value, f"{p.name} [search]")
        elif key in GROUPS and isinstance(value, dict):
            for sub, sub_value in value.items():
                where = f"{p.name} [{key}]"
                owner = _group_of(sub)
                if owner is not None and owner != key:
                    raise ConfigError(f"{where}: {sub!r} belongs in [{owner}], not [{key}]")
                out[key][sub] = check_value(sub, sub_value, where)
        elif isinstance(value, dict) and _group_of(key) is None:
            tables = [*GROUPS, "search"]
            close = difflib.get_close_matches(key, tables, n=1)
            hint = f"did you mean [{close[0]}]?" if close else "tables: " + ", ".join(tables)
            raise ConfigError(f"{p.name}: unknown table [{key}] ({hint})")
        else:
            out[_group_of(key) or "run"][key] = check_value(key, value, p.name)
    return out


def _check_search(table: Mapping[str, Any], where: str) -> dict[str, list]:
    """A ``[search]`` table: ``name = [kind, ...]`` for :func:`zipo_scvi.tune` (checked there)."""
    out = {}
    for key, spec in table.items():
        if key != "preset" and _group_of(key) not in ("model", "train"):
            raise ConfigError(f"{where}: {key!r} is not a model or training argument")
        if not isinstance(spec, list) or not spec or not isinstance(spec[0], str):
            raise ConfigError(
                f"{where}: {key!r} must be a list [kind, ...] such as "
                f'["loguniform", 0.01, 1.0] or ["categorical", [[512, 128, 32], [256, 32]]], '
                f"not {_toml_type(spec)} {_short(spec)}"
            )
        out[key] = spec
    return out


def merge(*sources: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The settings given explicitly, later sources winning; ``None`` values are skipped.

    Parameters
    ----------
    *sources
        Settings by group (:func:`load_config` output, flags); a ``"search"`` group is left out.

    Returns
    -------
    Type-checked settings by group, without preset defaults.

    Examples
    --------
    >>> merge({"train": {"max_epochs": 5}}, {"train": {"max_epochs": 2, "seed": None}})
    {'run': {}, 'setup': {}, 'model': {}, 'train': {'max_epochs': 2}}
    """
    given: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
    for source in sources:
        for group, values in (source or {}).items():
            if group not in GROUPS:
                continue
            for key, value in values.items():
                if value is not None:
                    given[group][key] = check_value(key, value, "command line")
    return given


def resolve(
    file_settings: Mapping[str, Mapping[str, Any]] | None = None,
    flag_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Merge the preset's defaults, a settings file and command-line flags (flags win).

    Parameters
    ----------
    file_settings
        Output of :func:`load_config`.
    flag_settings
        The same structure from command-line flags (``None`` values are ignored).

    Returns
    -------
    Complete settings by group: every module hyperparameter and training setting resolved, so
    the result repeats the run when written with :func:`dump_toml` and read back.

    Examples
    --------
    >>> resolve(flag_settings={"model": {"preset": "paper"}})["model"]["encoder_sizes"]
    [2048, 1024, 512, 256, 128]
    """
    given = merge(file_settings, flag_settings)
    preset_name = given["model"].get("preset", "default")
    module_defaults, train_defaults = get_preset(preset_name)
    signature = inspect.signature(_train_fn()).parameters
    train = {k: p.default for k, p in signature.items() if k in parameter_types()["train"]}
    train.update({k: v for k, v in train_defaults.items() if k in parameter_types()["train"]})
    train["seed"] = DEFAULT_SEED
    resolved = {
        "run": {},
        "setup": {},
        "model": {"preset": preset_name, **module_defaults},
        "train": train,
    }
    for group in GROUPS:
        resolved[group].update(given[group])
    return {g: {k: _plain(v) for k, v in resolved[g].items() if v is not None} for g in GROUPS}


def _train_fn():
    from ._model import ZIPO

    return ZIPO.train


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------- ZIPO arguments
def setup_kwargs(settings: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Keyword arguments of ``ZIPO.setup_anndata`` from resolved settings.

    Examples
    --------
    >>> setup_kwargs({"setup": {"batch_key": "batch"}})
    {'batch_key': 'batch'}
    """
    return dict(settings.get("setup", {}))


def zipo_arguments(
    settings: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of ``ZIPO(adata, ...)`` and of ``ZIPO.train`` from resolved settings.

    The ``[model]`` and ``[train]`` tables are routed by
    :func:`~zipo_scvi._settings.split_settings`; the seed goes to both (it seeds the weights
    and the training).

    Examples
    --------
    >>> settings = {"model": {"preset": "paper", "alpha_z": 0.5}, "train": {"seed": 1}}
    >>> zipo_arguments(settings)
    ({'preset': 'paper', 'alpha_z': 0.5, 'seed': 1}, {'seed': 1})
    """
    flat = {**settings.get("model", {}), **settings.get("train", {})}
    preset, model, train = split_settings(flat)
    return {"preset": preset, **model, "seed": train.get("seed")}, train


# ---------------------------------------------------------------------- writing
def dump_toml(settings: Mapping[str, Mapping[str, Any]], header: Sequence[str] = ()) -> str:
    """Write settings as TOML (with ``tomli-w``) that :func:`load_config` reads back.

    Parameters
    ----------
    settings
        Settings by group (see :func:`resolve`); empty groups are left out.
    header
        Comment lines written first.

    Returns
    -------
    The TOML text.

    Raises
    ------
    ConfigError
        For a value TOML cannot hold (``None``, an object).

    Examples
    --------
    >>> print(dump_toml({"model": {"likelihood": "zip", "alpha_z": 0.5}}, ["a run"]))
    # a run
    <BLANKLINE>
    [model]
    likelihood = "zip"
    alpha_z = 0.5
    <BLANKLINE>
    """
    tables = {group: dict(settings[group]) for group in GROUPS if settings.get(group)}
    try:
        body = tomli_w.dumps(tables)
    except TypeError as err:
        raise ConfigError(f"cannot write these settings to TOML: {err}") from err
    comments = "".join(f"# {line}\n" for line in header)
    return comments + ("\n" if comments and body else "") + body
