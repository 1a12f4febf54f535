"""Typed, strict configuration shared by every entry point.

A config is a tree of dataclasses (the schema, with documented defaults), overridden by one
YAML file, overridden by dotted ``key=value`` arguments::

    cfg = load_config(PretrainConfig, "configs/pretrain/demo.yaml", ["optim.lr=1e-4"])

Rules:
- unknown keys raise :class:`ConfigError` naming the closest valid key;
- values are coerced to the declared type (``int``, ``float``, ``bool``, ``str``, ``Optional``,
  ``Literal``, ``tuple``/``list``) and a value that does not fit raises;
- numeric constraints declared with :func:`opt` (``ge``/``gt``/``le``/``lt``) are checked;
- the resolved config is written back as YAML with :func:`save_config`.

Schemas declare fields with :func:`opt` so that ``--help`` can list every key with its default
and one line of advice. Library code takes a few plain arguments or one section whole, never long
copies of its fields. Sections that several entry points share are declared once
(:mod:`solider.run_config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import operator
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from solider.utils.atomic import atomic_write

__all__ = [
    "ConfigError",
    "opt",
    "section",
    "load_config",
    "config_from_dict",
    "to_dict",
    "save_config",
    "flat_keys",
    "describe",
    "build_arg_parser",
    "config_from_args",
]


class ConfigError(ValueError):
    """A config file, override or value that does not fit the schema."""


def opt(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None) -> Any:
    """A documented schema field. Mutable defaults (lists, dicts) are copied per instance."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, doc: str = "", **defaults: Any) -> Any:
    """A nested config section (a dataclass with its own defaults). ``defaults``: this schema's own
    defaults for keys of a section that several schemas share (their advice and bounds stay declared
    once, in ``cls``)."""
    unknown = set(defaults) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"section({cls.__name__}): no keys {sorted(unknown)}")
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata={"doc": doc})


class UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: plain YAML keeps the last
    one, so a second ``train:`` section would silently replace the first one whole."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} at line {seen[key] + 1} and again at line "
                    f"{key_node.start_mark.line + 1} (give it once: YAML would keep the last silently)")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# ------------------------------------------------------------------------------------ coercion

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parse_scalar_text(text: str) -> Any:
    """Interpret a command-line string the way YAML would (numbers, bools, lists, null)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        members = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in members:
                return None
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: value {value!r} does not fit {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        if isinstance(value, str):
            for choice in choices:
                if str(choice) == value:
                    return choice
        raise ConfigError(f"{key}: value {value!r} is not one of {list(choices)}")
    if origin in (tuple, list):
        if isinstance(value, str):
            parsed = _parse_scalar_text(value)
            if isinstance(parsed, (list, tuple)):
                value = parsed
            elif "," in value:
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif "x" in value and origin is tuple:  # "256x128" for image sizes
                value = value.split("x")
            else:
                value = [parsed]
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values ({_type_name(tp)}), "
                                  f"got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected a bool (true/false), got {value!r}")
    if tp in (int, float):
        return _coerce_number(value, tp, key)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _coerce_number(value: Any, tp: type, key: str) -> int | float:
    """``value`` as an int or a float; an int also from an integral float or text such as ``1e3``."""
    what = "an int" if tp is int else "a float"
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected {what}, got the bool {value!r}")
    if isinstance(value, int) or (isinstance(value, float) and (tp is float or value.is_integer())):
        return tp(value)
    if isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            pass
        parsed = _parse_scalar_text(value) if tp is int else None
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            return _coerce_number(parsed, int, key)
    raise ConfigError(f"{key}: expected {what}, got {value!r}")


_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"),
           "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _check_bounds(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for name, (op, sym) in _BOUNDS.items():
        bound = meta.get(name)
        if bound is not None and not op(value, bound):
            raise ConfigError(f"{key}: value {value!r} must be {sym} {bound}")


# ------------------------------------------------------------------------------- schema walking

def _fields(cls: type) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def flat_keys(cls: type, prefix: str = "") -> list[str]:
    """Every valid dotted key of a schema (sections themselves excluded)."""
    keys = []
    for name, f in _fields(cls).items():
        if dataclasses.is_dataclass(f.type):
            keys.extend(flat_keys(f.type, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def _unknown_key_error(key: str, schema: type, where: str) -> ConfigError:
    valid = flat_keys(schema)
    sections = sorted({k.rsplit(".", 1)[0] for k in valid if "." in k})
    close = difflib.get_close_matches(key, valid + sections, n=1, cutoff=0.5)
    if not close:  # a typo in the last component only: compare against that section's keys
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in valid if k.rsplit(".", 1)[-1] in difflib.get_close_matches(
            leaf, [v.rsplit(".", 1)[-1] for v in valid], n=3, cutoff=0.6)][:1]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _apply(obj: Any, data: dict, schema_root: type, where: str, prefix: str = "") -> None:
    """Recursively write ``data`` (a nested mapping) onto the dataclass instance ``obj``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: section '{prefix.rstrip('.') or '<root>'}' must be a mapping, "
                          f"got {type(data).__name__}")
    fields = _fields(type(obj))
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            while isinstance(value, dict) and value:  # report the full dotted key, e.g. optm.lr
                sub, value = next(iter(value.items()))
                key = f"{key}.{sub}"
            raise _unknown_key_error(key, schema_root, where)
        f = fields[name]
        if dataclasses.is_dataclass(f.type):
            if value is None:
                continue
            _apply(getattr(obj, name), value, schema_root, where, key + ".")
            continue
        coerced = _coerce(value, f.type, key)
        _check_value_rules(name, coerced, key)
        _check_bounds(coerced, f.metadata, key)
        setattr(obj, name, coerced)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: typing.Sequence[str]) -> dict:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict of raw strings (typed later by the schema)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        _set_dotted(tree, key, value)
    return tree


SEED_RANGE = (0, 2**32)  # numpy's seed range; torch takes more, but a seed must work everywhere


def _check_value_rules(name: str, value: Any, key: str) -> None:
    """Rules that hold for every schema, by value kind and field name: no NaN/inf anywhere, sizes and
    normalisation std > 0, seeds in ``SEED_RANGE``, no empty ``output_dir``."""
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    for i, v in enumerate(items):
        where = f"{key}[{i}]" if isinstance(value, (tuple, list)) else key
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}: value {v!r} is not a finite number")
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        if numeric and (name == "std" or name.endswith("size")) and not v > 0:
            what = "a normalisation std" if name == "std" else "a size"
            raise ConfigError(f"{where}: value {v!r} must be > 0 ({what})")
    if name == "seed" and isinstance(value, int) and not SEED_RANGE[0] <= value < SEED_RANGE[1]:
        raise ConfigError(f"{key}: value {value!r} must be in [0, 2**32)")
    if name == "output_dir" and isinstance(value, str) and not value.strip():
        raise ConfigError(f"{key}: must not be empty (the folder all outputs of the run go to)")


def _validate(obj: Any, schema_root: type, prefix: str = "") -> None:
    """Check declared bounds and the general value rules on defaults too, then call an optional
    ``validate()`` hook."""
    for name, f in _fields(type(obj)).items():
        value = getattr(obj, name)
        if dataclasses.is_dataclass(f.type):
            _validate(value, schema_root, f"{prefix}{name}.")
        else:
            _check_value_rules(name, value, prefix + name)
            _check_bounds(value, f.metadata, prefix + name)
    hook = getattr(obj, "validate", None)
    if callable(hook):
        hook()


def config_from_dict(schema: type, data: dict | None, where: str = "<dict>") -> Any:
    """Build a schema instance from a nested mapping (e.g. the ``config`` of a checkpoint)."""
    cfg = schema()
    if data:
        _apply(cfg, data, schema, where)
    _validate(cfg, schema)
    return cfg


def load_config(schema: type, path: str | os.PathLike | None = None,
                overrides: typing.Sequence[str] = ()) -> Any:
    """Defaults of ``schema`` ← YAML file at ``path`` ← dotted ``overrides``; strict."""
    cfg = schema()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.load(path.read_text(), Loader=UniqueKeySafeLoader) or {}  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        _apply(cfg, data, schema, f"config file {path}")
    if overrides:
        _apply(cfg, parse_overrides(overrides), schema, "command-line overrides")
    _validate(cfg, schema)
    return cfg


def to_dict(cfg: Any) -> dict:
    """The config as plain nested data (tuples become lists) for YAML, JSON and checkpoints."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically), loadable again with :func:`load_config`."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def describe(schema: type, prefix: str = "", instance: Any = None) -> str:
    """One line per key: ``key = default  # advice`` — printed by every entry point's --help."""
    lines = []
    instance = schema() if instance is None else instance  # a section's defaults are its schema's
    for name, f in _fields(schema).items():
        key = prefix + name
        if dataclasses.is_dataclass(f.type):
            doc = f.metadata.get("doc", "")
            lines.append(f"\n[{key}]" + (f"  {doc}" if doc else ""))
            lines.append(describe(f.type, key + ".", getattr(instance, name)))
        else:
            default = yaml.safe_dump(to_dict(getattr(instance, name)), default_flow_style=True,
                                     width=1000).strip().removesuffix("...").strip()
            doc = f.metadata.get("doc", "")
            lines.append(f"  {key} = {default}" + (f"    # {doc}" if doc else ""))
    return "\n".join(line for line in lines if line)


# --------------------------------------------------------------------------------- entry points

def build_arg_parser(schema: type, description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``--config FILE`` and trailing ``key=value`` overrides.

    Entry points add their own flags to the returned parser; ``--help`` lists every config key.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (override with key=value):\n" + describe(schema))
    parser.add_argument("--config", type=str, default=None, help="YAML file overriding the defaults")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides applied after the YAML file, e.g. optim.lr=1e-4")
    return parser


def config_from_args(schema: type, args: argparse.Namespace, flags: dict[str, str] | None = None) -> Any:
    """Resolve the config from parsed arguments; print it and exit for ``--print-config``.

    ``flags`` maps config keys that an entry point sets from its own flags (``output_dir`` from
    ``--out``) to those flags: an error about such a key names the flag the user typed.
    """
    try:
        cfg = load_config(schema, args.config, args.overrides)
    except ConfigError as exc:
        message = str(exc)
        for key, flag in (flags or {}).items():
            for form in (f"{key}:", f"override '{key}="):
                if message.startswith(form) or form in message:
                    message = message.replace(key, f"{flag} ({key})", 1)
        if message == str(exc):
            raise
        raise ConfigError(message) from None
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return cfg
