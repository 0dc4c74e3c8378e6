"""Settings are dataclasses, the one source of their defaults, help texts and types; the command lines,
lmms-eval's `--model_args` strings and the flat record a checkpoint carries are derived from them here,
by one mapper. A field says what the mapper needs in its metadata (`setting`):

    @dataclass
    class RunConfig:
        seed: int = setting(0, "random seed", group="run")

    add_flags(parser, RunConfig)               # argparse: --seed, typed, its help, its default shown
    cfg = from_flags(RunConfig, namespace)     # the parsed flags -> the config (nested parts included)
    cfg = from_strings(RunConfig, {"seed": "3"}, "--model_args")   # strings -> the field types
    flat(cfg)                                  # {name: value} over the nested parts (checkpoints' `args`)

Field -> flag: a nested dataclass contributes its own fields (flag names are unique in a tree); a bool
is `--name` (off by default) or `--no_name` (on by default; the parsed name stays `no_name`, as the
original scripts'); an Optional[bool] is `--name` / `--no_name` (None: neither); `switches` make one
flag per value (`--llama2` / `--llama3` for `family`), recorded as one boolean each; `shortcut` adds a
flag that stands for a value (`--test` for `--split test`); `cli=False` keeps a field off the command
line (an API-only setting). Nothing here imports torch: `--help` stays fast.
"""
import argparse
import dataclasses
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from util.errors import ConfigError

TRUE, FALSE, NONE = ("1", "true", "yes", "on"), ("0", "false", "no", "off"), ("", "none")
# the compute precisions every --precision names (util/dist.py maps them to torch dtypes)
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def setting(default: Any = MISSING, help: str = "", *, factory: Optional[Callable[[], Any]] = None,
            group: Optional[str] = None, choices: Optional[Sequence] = None, switches: Optional[Dict[str, str]] = None,
            no_help: Optional[str] = None, shortcut: Optional[Tuple[str, Any, str]] = None,
            parse: Optional[Callable[[str], Any]] = None, nargs: Optional[str] = None, aliases: Sequence[str] = (),
            metavar: Optional[str] = None, positional: bool = False, cli: bool = True, flag_default: Any = MISSING):
    """A dataclass field with what the mapper needs: `help` (every flag has one), `group` (the help
    section; default: the class's `GROUP`), `choices`, `switches` ({value: help}: one flag per value),
    `no_help` (the `--no_name` flag of an Optional[bool]), `shortcut` ((flag, value, help): a flag that
    stands for `--name value`), `parse` (str -> value, for flags and strings), `nargs`, `aliases`
    (other spellings: `-q`), `metavar`, `positional`, `cli` (False: not a flag), `flag_default` (the
    flag's default where it differs from the field's: None where `from_args` decides from other flags).
    The help of a bool that is on by default says what its `--no_name` flag does."""
    meta = {"help": help, "group": group, "choices": tuple(choices) if choices else None, "switches": switches,
            "no_help": no_help, "shortcut": shortcut, "parse": parse, "nargs": nargs, "aliases": tuple(aliases),
            "metavar": metavar, "positional": positional, "cli": cli, "flag_default": flag_default}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------- types

def _unwrap(tp) -> Tuple[Any, bool]:
    """(the type without Optional, whether None is allowed)."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def leaves(cls) -> Iterator[Tuple[dataclasses.Field, Any, type]]:
    """(field, its type, its class) for every field of `cls` and of its nested dataclass parts, in order.
    Names are unique in a tree (one flag, one `--model_args` key and one record per name)."""
    seen = set()

    def walk(c):
        hints = _hints(c)
        for f in fields(c):
            tp = hints[f.name]
            if isinstance(tp, type) and is_dataclass(tp):
                yield from walk(tp)
                continue
            if f.name in seen:
                raise TypeError(f"{cls.__name__}: the setting {f.name!r} appears twice among its parts")
            seen.add(f.name)
            yield f, tp, c
    yield from walk(cls)


def comma_list(text) -> List[str]:
    """"a, b,,c" -> ["a", "b", "c"]: a list setting's text form (blank entries dropped)."""
    return [s.strip() for s in str(text).split(",") if s.strip()]


def _scalar(text: str, tp, name: str, what: str):
    try:
        if tp is bool:
            s = str(text).strip().lower()
            if s in TRUE or s in FALSE:
                return s in TRUE
            raise ValueError
        return tp(text)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(tp, tp.__name__)
        raise ConfigError(f"{what}: {name}={text!r} is not {kind}") from None


def _from_string(f: dataclasses.Field, tp, text: str, what: str):
    base, optional = _unwrap(tp)
    if f.metadata.get("parse"):
        return f.metadata["parse"](text)
    if optional and str(text).strip().lower() in NONE:
        return None
    if str(text).strip() == "" and f.metadata.get("switches") is None:
        return _default(f)
    if typing.get_origin(base) in (list, List):
        return comma_list(text)
    if f.metadata.get("switches") is not None and text not in f.metadata["switches"]:
        raise ConfigError(f"{what}: {f.name}={text!r}: one of {', '.join(f.metadata['switches'])}")
    return _scalar(text, base, f.name, what)


# ---------------------------------------------------------------- flags

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (its example commands keep their lines); the help of every flag that
    takes a value ends with its default, unless the help text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs == 0 or action.required or action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        return text + " (default: %(default)s)"


def make_parser(doc: str, prog: Optional[str] = None) -> argparse.ArgumentParser:
    """An entry point's parser: its module docstring as the description, defaults shown."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)


def group_of(p: argparse.ArgumentParser, title: str):
    """The parser's help group of this title (made once)."""
    found = [g for g in p._action_groups if g.title == title]
    return found[0] if found else p.add_argument_group(title)


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def add_flags(p: argparse.ArgumentParser, cls, nested: bool = True,
              skip: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The flags of `cls` (and of its nested parts unless `nested=False`), in field order, each in its
    help group (the field's `group`, else its class's `GROUP`); `skip`: names left out."""
    for f, tp, owner in leaves(cls):
        m = f.metadata
        if not m.get("cli", False) or f.name in skip or (not nested and owner is not cls):
            continue
        g = group_of(p, m.get("group") or getattr(owner, "GROUP", "settings"))
        _add_flag(g, f, tp)
    return p


def _add_flag(g, f: dataclasses.Field, tp):
    m, name, default = f.metadata, f.name, _default(f)
    base, optional = _unwrap(tp)
    helptext = _escape(m["help"])
    if m["switches"]:
        x = g.add_mutually_exclusive_group()
        for value, text in m["switches"].items():
            x.add_argument(f"--{value}", action="store_true", help=_escape(text))
        return
    if base is bool and optional:
        x = g.add_mutually_exclusive_group()
        x.add_argument(f"--{name}", action="store_true", default=None, help=helptext)
        x.add_argument(f"--no_{name}", dest=name, action="store_false", help=_escape(m["no_help"] or ""))
        return
    if base is bool:
        flag = f"--no_{name}" if default else f"--{name}"
        g.add_argument(flag, *m["aliases"], action="store_true", help=helptext)
        return
    kw = dict(default=default if m["flag_default"] is MISSING else m["flag_default"], help=helptext)
    if m["parse"]:
        kw["type"] = m["parse"]
    elif typing.get_origin(base) not in (list, List):
        kw["type"] = base
    for key in ("choices", "nargs", "metavar"):
        if m[key] is not None:
            kw[key] = m[key]
    if default is MISSING:
        kw.pop("default")
        if not m["positional"]:
            kw["required"] = True
    if m["positional"]:
        g.add_argument(name, **kw)
    else:
        g.add_argument(f"--{name}", *m["aliases"], **kw)
    if m["shortcut"]:
        flag, _, text = m["shortcut"]
        g.add_argument(f"--{flag}", action="store_true", help=_escape(text))


def _flag_value(f: dataclasses.Field, tp, ns: argparse.Namespace):
    m, name = f.metadata, f.name
    if m["switches"]:
        on = [v for v in m["switches"] if getattr(ns, v)]
        return on[-1] if on else _default(f)
    base, optional = _unwrap(tp)
    if base is bool and not optional and _default(f):
        return not getattr(ns, f"no_{name}")
    value = getattr(ns, name)
    if m["shortcut"] and getattr(ns, m["shortcut"][0]):
        flag, short = m["shortcut"][:2]
        if value is not None and value != short:
            raise ConfigError(f"--{flag} means --{name} {short}, but --{name} says {value}: drop one of them")
        value = short
    return value


def _build(cls, values: Dict[str, Any]):
    """`cls` (its nested parts built the same way) from `values` by setting name; the rest: defaults."""
    hints, kw = _hints(cls), {}
    for f in fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and is_dataclass(tp):
            kw[f.name] = _build(tp, values)
        elif f.name in values:
            kw[f.name] = values[f.name]
    return cls(**kw)


def from_flags(cls, ns: argparse.Namespace, **given):
    """The config `cls` of parsed flags; `given` (names of `cls` or of its parts) replace what the flags
    say. Fields that are not flags keep their defaults."""
    values = {f.name: _flag_value(f, tp, ns) for f, tp, _ in leaves(cls) if f.metadata.get("cli", False)}
    return _build(cls, {**values, **given})


def from_strings(cls, strings: Dict[str, Any], what: str, **given):
    """The config `cls` of `key=value` strings (lmms-eval's `--model_args`), each key a setting of `cls`
    or of its parts, each value read with the field's type ("none" or "": None where None is allowed;
    true/false, 1/0, yes/no, on/off for booleans); `given` are already typed. An unknown key is a
    ConfigError naming it."""
    known = {f.name: (f, tp) for f, tp, _ in leaves(cls)}
    unknown = sorted(set(strings) - set(known))
    if unknown:
        raise ConfigError(f"{what}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    values = {k: v if not isinstance(v, str) else _from_string(known[k][0], known[k][1], v, what)
              for k, v in strings.items()}
    return _build(cls, {**values, **given})


def flat(cfg) -> Dict[str, Any]:
    """{name: value} over `cfg` and its nested parts, a `switches` field as one boolean per value (the
    flags the original scripts had: `llama2`, `llama3`), lists as lists. Checkpoints record it."""
    out: Dict[str, Any] = {}

    def walk(obj):
        for f in fields(obj):
            v = getattr(obj, f.name)
            if is_dataclass(v):
                walk(v)
            elif f.metadata.get("switches"):
                out.update({s: v == s for s in f.metadata["switches"]})
            else:
                out[f.name] = list(v) if isinstance(v, (list, tuple)) else v
    walk(cfg)
    return out

