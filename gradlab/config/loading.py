"""Reading a config: the YAML file (safely, with the line of every key), `--set` overrides,
`--seeds` and `--thresholds`, then validation and the memory check; and the resolved form
written back (config.yaml, its hash, the experiment directory)."""

from __future__ import annotations

import codecs
import os
import re
import stat
from pathlib import Path
from typing import Any, Optional, Sequence, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from gradlab.errors import UserError, clip
from gradlab.io import data_hash

from .base import KeyPath
from .memory import _check_memory
from .messages import _dotted, _show, _show_typed, _unwrap, _user_error
from .schema import NAME_PATTERN, ExperimentConfig, _tag_of

MAX_CONFIG_BYTES = 1_000_000
MAX_ALIASES = 100
# A config has a few dozen values; 10_000 seeds is the largest legitimate list. The budget
# bounds what aliases can expand to (billion laughs) and recursive anchors.
MAX_VALUES = 100_000
MAX_NESTING = 32
_TOO_DEEP = f"nested more than {MAX_NESTING} levels deep; a config needs 3"

_YAML = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_YAML + t for t in ("null", "bool", "int", "float", "str", "timestamp")}


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs and deep nesting while composing, before any
    value is constructed."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self.file, self.aliases, self.depth = file, 0, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        line = self.peek_event().start_mark.line + 1
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise UserError(f"more than {MAX_ALIASES} aliases (*name); a config needs none",
                                file=self.file, line=line)
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise UserError(_TOO_DEEP, file=self.file, line=line)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Dumper(yaml.SafeDumper):
    pass


# PyYAML follows YAML 1.1, where `1e-3` is a string; users mean a number (as YAML 1.2 does).
# The dumper learns the same rule so that a string such as "1e3" gets quoted.
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        _YAML + "float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
    )


_BASES = {"x": ("a hexadecimal", 16), "o": ("an octal", 8), "b": ("a binary", 2)}
_PREFIXED = re.compile(r"^[-+]?0([xXoObB])[0-9a-fA-F_]+$")
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_WORD_BOOLS = {"yes": True, "on": True, "no": False, "off": False}


def _yaml11_surprise(node: yaml.ScalarNode, loader: yaml.SafeLoader) -> Optional[str]:
    """Why an unquoted scalar is refused: a form that YAML 1.1 (PyYAML) and YAML 1.2 read
    differently, or that reads as something other than it looks (`1:30` is 90, `017` is 15,
    `no` is false). A quoted scalar is a string, and an explicit tag says what it means."""
    if node.style is not None or node.tag != loader.resolve(yaml.ScalarNode, node.value, (True, False)):
        return None
    text = node.value
    shown = _show(text)
    quote = f"or quote it (\"{text}\") for a string" if len(text) <= 30 else "or quote it for a string"
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-").replace("_", "")
    short = len(digits) <= 30  # the number is worth spelling out (and int() of 100 KB of digits is slow)
    m = _PREFIXED.match(text)
    if m:
        base, radix = _BASES[m.group(1).lower()]
        try:
            n = sign * int(digits[2:], radix) if short else None
        except ValueError:  # `0b12`: a string in YAML 1.1 and 1.2 alike
            return None
        write = f"write {n}" if n is not None else "write it in decimal"
        return f"{shown} is {base} number; gradlab reads decimal numbers only: {write}, {quote}"
    if _LEADING_ZERO.match(text):
        decimal = f"{sign * int(digits)}" if short else "it without the leading zero"
        if set(digits) <= set("01234567"):
            octal = sign * int(digits, 8) if short else None
            write = decimal if octal is None or str(octal) == decimal else f"{octal} (octal) or {decimal} (decimal)"
            return (f"{shown} is octal{f' {octal}' if octal is not None else ''} in YAML 1.1, decimal in YAML 1.2; "
                    f"write {write}, {quote}")
        return f"{shown} has a leading zero (a string in YAML 1.1, a number in YAML 1.2); write {decimal}, {quote}"
    if _SEXAGESIMAL.match(text):
        if not short:
            return f"{shown} is a base-60 number in YAML 1.1 (as in times), a string in YAML 1.2; {quote}"
        head, _, frac = digits.partition(".")
        n = 0
        for part in head.split(":"):
            n = n * 60 + int(part)
        value = f"{sign * (n + float('0.' + (frac or '0'))):g}" if "." in digits else f"{sign * n}"
        return f"{shown} is {value} in YAML 1.1 (base 60, as in times), a string in YAML 1.2; write {value}, {quote}"
    if text.lower() in _WORD_BOOLS:
        flag = str(_WORD_BOOLS[text.lower()]).lower()
        return f"{shown} is {flag} in YAML 1.1, a string in YAML 1.2; write {flag}, {quote}"
    return None


class _Tree:
    """Plain data from a composed YAML node tree, with the 1-based line of every key path."""

    def __init__(self, loader: _Loader) -> None:
        self.loader, self.lines, self.count = loader, {}, 0

    def fail(self, message: str, node: yaml.Node, path: KeyPath) -> UserError:
        return UserError(message, file=self.loader.file, key=_dotted(path) or None, line=node.start_mark.line + 1)

    def check_tag(self, node: yaml.Node, path: KeyPath) -> None:
        allowed = _SCALAR_TAGS if isinstance(node, yaml.ScalarNode) else {
            _YAML + ("seq" if isinstance(node, yaml.SequenceNode) else "map")}
        if node.tag not in allowed:
            what = "merge keys (<<)" if node.tag == _YAML + "merge" else "YAML tag " + clip(node.tag.replace(_YAML, "!!"))
            raise self.fail(f"unsupported {what}; a config holds only plain values, lists and mappings", node, path)

    def build(self, node: yaml.Node, path: KeyPath = ()) -> Any:
        self.count += 1
        # Name only the top-level key: the full path of an expanded alias means nothing.
        if self.count > MAX_VALUES:
            raise self.fail(f"the document holds more than {MAX_VALUES} values (through aliases?)", node, path[:1])
        if len(path) > MAX_NESTING:  # only reachable through a recursive anchor
            raise self.fail(_TOO_DEEP, node, path[:1])
        self.check_tag(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[path + (i,)] = item.start_mark.line + 1
                items.append(self.build(item, path + (i,)))
            return items
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                self.check_tag(key_node, path)
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail("a key must be a plain name, not a list or mapping", key_node, path)
                # The key as written: `on:` or `1:` are names here, not YAML 1.1 booleans/ints.
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in out:
                    first = self.lines[path + (key,)]
                    raise self.fail(f"duplicate key `{_dotted(path + (key,))}` (lines {first} and {line})",
                                    key_node, path + (key,))
                self.lines[path + (key,)] = line
                out[key] = self.build(value_node, path + (key,))
            return out
        surprise = _yaml11_surprise(node, self.loader)
        if surprise:
            raise self.fail(surprise, node, path)
        try:
            return self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, LookupError, AttributeError):  # e.g. `!!int abc`
            raise self.fail(f"cannot read {_show(node.value)} as {node.tag.replace(_YAML, '!!')}", node, path) from None


def _yaml_error(e: yaml.YAMLError, text: str, file: str) -> UserError:
    """One line, no YAML context dump."""
    if isinstance(e, yaml.reader.ReaderError):
        line = text[: e.position].count("\n") + 1
        return UserError(f"character U+{e.character:04X} is not allowed in YAML", file=file, line=line)
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    start = getattr(e, "context_mark", None)
    if "\\t" in problem or "tab" in problem:
        message = "tab character in indentation; YAML indents with spaces only"
    elif problem.startswith("expected <block end>"):
        message = f"YAML syntax error: the indentation of this line does not match the lines above ({problem})"
    elif "another document" in problem:
        message = "a second YAML document starts here (---); a config is one document"
    else:
        if context and start is not None and mark is not None and start.line != mark.line:
            context += f" started on line {start.line + 1}"  # the unclosed bracket is there
        message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return UserError(message, file=file, line=mark.line + 1 if mark else None)


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[KeyPath, int]]:
    try:
        loader = _Loader(text, file)
        node = loader.get_single_node()
    except yaml.YAMLError as e:
        raise _yaml_error(e, text, file) from None
    if node is None:
        return None, {}
    tree = _Tree(loader)
    return tree.build(node), tree.lines


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _regular_file(st: os.stat_result, file: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(file)
    if not stat.S_ISREG(st.st_mode):
        what = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise UserError(f"is {what}, not a regular file; a config must be a file", file=file)


def _read_text(path: Path) -> str:
    file = str(path)
    try:
        # A FIFO, a terminal or a device would block the read (or never end): only a regular
        # file (or a symlink to one) is a config. Checked before opening, so that opening has
        # no side effect, and again on what was opened, without blocking, should it change.
        _regular_file(os.stat(path), file)
        with open(path, "rb", opener=_open_nonblocking) as fh:
            _regular_file(os.fstat(fh.fileno()), file)
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise UserError("no such file", file=file) from None
    except IsADirectoryError:
        raise UserError("is a directory, expected a YAML file", file=file) from None
    except PermissionError:
        raise UserError("permission denied: cannot read this file", file=file) from None
    except OSError as e:
        why = e.strerror or str(e)
        raise UserError(f"cannot read: {why[:1].lower()}{why[1:]}", file=file) from None
    if len(raw) > MAX_CONFIG_BYTES:
        size = path.stat().st_size  # smaller than what was read if the file is growing
        what = f"{size / 1e6:.1f} MB" if size > MAX_CONFIG_BYTES else f"more than {MAX_CONFIG_BYTES / 1e6:.0f} MB"
        raise UserError(f"config is {what}; a config is a few hundred bytes", file=file)
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError("is UTF-16 text; save it as UTF-8", file=file)
    if b"\0" in raw:
        raise UserError("is not a text file (it contains NUL bytes: binary or UTF-16?); save the config as UTF-8",
                        file=file)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"is not UTF-8 text (byte 0x{raw[e.start]:02x})", file=file, line=line) from None


def _field_default(data: dict, path: Sequence[Union[str, int]]) -> Any:
    """The schema default of the field at `path`, for the kinds the data names (or their
    defaults): what `--set clipping.1.max_norm=2` edits when the file has no clipping."""
    tp: Any = ExperimentConfig
    cur: Any = data
    default: Any = None
    for part in path:
        tp = _unwrap(tp)
        if get_origin(tp) is Union:  # a discriminated union: the member the data (or the default) names
            members = get_args(tp)
            tag = _tag_of(members[0])
            kind = cur.get(tag) if isinstance(cur, dict) else None
            if kind is None and isinstance(default, BaseModel):
                kind = getattr(default, tag)
            tp = next((m for m in members if kind in get_args(m.model_fields[tag].annotation)), None)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str) and part in tp.model_fields:
            field = tp.model_fields[part]
            tp, default = field.annotation, field.get_default(call_default_factory=True)
        elif get_origin(tp) is list and isinstance(part, int):
            tp, default = get_args(tp)[0], None
        else:
            return None
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            cur = None
    return default


def _as_written(value: Any) -> Any:
    """A default as a user would write it: only what differs from the defaults below it, so
    that its kind's own defaults (orthogonal for a recurrent init) still apply."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_defaults=True)
    return [_as_written(v) for v in value] if isinstance(value, list) else value


def _apply_override(data: dict, text: str, sources: dict[KeyPath, str], made: set[KeyPath]) -> None:
    """`--set key.path=value`, applied to what the file says, before any default: digit parts
    index lists, missing mappings are created empty (a missing list the indexes go into is
    its default, as a user would write it)."""
    key, eq, raw = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not eq or not all(parts):
        raise UserError("expected key.path=value, e.g. --set model.depth=64", file="--set", key=clip(text))
    source = f"--set {clip(text)}"
    try:
        value, _ = _parse_yaml(raw, source)
    except UserError as e:
        e.line, e.key = None, e.key or _dotted(parts)  # the line of a one-line option says nothing
        raise
    _set_value(data, parts, value, source, sources, made)


def _set_value(data: dict, parts: Sequence[str], value: Any, source: str, sources: dict[KeyPath, str],
               made: set[KeyPath]) -> None:
    """Put `value` at the key path `parts` of `data` as `--set` does (`source` names the
    option in errors); a grid point sets its values this way too (gradlab.config.grid)."""
    node: Any = data
    path: list[Union[str, int]] = []
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not (part.isascii() and part.isdigit() and int(part) < len(node)):
                raise UserError(f"`{_dotted(path)}` is a list of {len(node)}; {_show(part)} is not an index in it",
                                file=source, key=_dotted(path + [part]))
            part = int(part)
        elif not isinstance(node, dict):
            raise UserError(f"`{_dotted(path)}` is {_show_typed(node)}, not a mapping or a list",
                            file=source, key=_dotted(path + [part]))
        path.append(part)
        if i == len(parts) - 1:
            if part in ("kind", "method") and isinstance(node, dict) and node.get(part) != value:
                # A default belongs to its kind: another kind does not inherit it. What the file
                # wrote stays, and is refused if the new kind has no such key (see _user_error).
                for k in [k for k in node if tuple(path[:-1]) + (k,) in made]:
                    del node[k]
            node[part] = value
            break
        if isinstance(node, dict) and part not in node:
            below = parts[i + 1]
            if below.isascii() and below.isdigit():
                default = _field_default(data, path)
                if not isinstance(default, list):
                    raise UserError(f"`{_dotted(path)}` is not in the config and has no default list to index; "
                                    f"set it whole, e.g. --set {_dotted(path)}=[...]", file=source, key=_dotted(path))
                node[part] = _as_written(default)
                made.update(_paths(node[part], tuple(path)))
            else:
                node[part] = {}
        node = node[part]
    sources[tuple(path)] = source
    made.difference_update([p for p in made if p[: len(path)] == tuple(path)])


def _paths(value: Any, path: KeyPath) -> list[KeyPath]:
    """Every key path in `value` (placed at `path`), itself included."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [path] + [p for k, v in items for p in _paths(v, path + (k,))]


class _Origins:
    """Where each value came from: an option (`--set ...`, `--seeds`, `--thresholds`) or the
    file, with the line of every key path the file writes."""

    def __init__(self, file: str, lines: dict[KeyPath, int], sources: Optional[dict[KeyPath, str]] = None) -> None:
        self.file, self.lines, self.sources = file, lines, sources or {}

    def option(self, path: KeyPath) -> Optional[str]:
        """The option that set `path` (it or an ancestor) or changed it (something below it);
        for a key the file does not write, the option that set the kind of its mapping
        (`--set clipping.0.method=norm` makes max_norm required)."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.sources:
                return self.sources[path[:n]]
        below = [s for k, s in self.sources.items() if k[: len(path)] == path]
        if below:
            return below[0]
        return self.tag_option(path) if path and path not in self.lines else None

    def tag_option(self, path: KeyPath) -> Optional[str]:
        """The option that changed the kind (or method) of the mapping holding `path`."""
        return next((self.sources[path[:-1] + (t,)] for t in ("kind", "method") if path[:-1] + (t,) in self.sources),
                    None)

    def locate(self, path: KeyPath) -> dict:
        option = self.option(path)
        if option is not None:
            return {"file": option, "line": None}
        prefixes = [path[:n] for n in range(len(path), -1, -1)]
        return {"file": self.file, "line": next((self.lines[p] for p in prefixes if p in self.lines), None)}


# ----------------------------------------------------------------------------- public API


def load_config(path: Union[str, os.PathLike], overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None,
                sweep: Optional[dict] = None, grid: Sequence[str] = ()) -> ExperimentConfig:
    """Read, override (`--set`, `--seeds`), validate and size-check a config; every problem
    is one UserError naming the file (or option), the key path and the line.

    `sweep` ({method, thresholds, baseline}, from `gradlab sweep`) replaces the config's
    clipping list by the baseline plus `method` at each threshold. `grid` (`--grid KEY=V1,V2`
    options) adds axes to the file's `grid:` (gradlab.config.grid); every point is checked."""
    return _load_config(path, overrides, seeds, sweep, explain=True, grid=grid)


def _load_config(path: Union[str, os.PathLike], overrides: Sequence[str], seeds: Optional[Sequence[int]],
                 sweep: Optional[dict], explain: bool, grid: Sequence[str] = ()) -> ExperimentConfig:
    """load_config; without `explain`, a memory refusal does not look for the option to
    blame (that search loads the config again, in this way)."""
    path = Path(path)
    file = str(path)
    data, lines = _parse_yaml(_read_text(path), file)
    if data is None:
        raise UserError("empty config", file=file)
    if not isinstance(data, dict):
        raise UserError(f"the top level must be a mapping of keys, got {_show_typed(data)}", file=file)
    axes, pin = _grid_axes(data, lines, file, overrides, grid)
    sources: dict[KeyPath, str] = {}
    made: set[KeyPath] = set()
    for item in overrides:
        _apply_override(data, item, sources, made)
    if seeds is not None:
        data.pop("seed", None)
        data["seeds"] = list(seeds)
        sources[("seeds",)] = "--seeds " + clip(",".join(map(str, seeds)))
    if sweep is not None:
        data.pop("clipping", None)
        data["sweep"] = dict(sweep)
        sources[("sweep",)] = sources[("clipping",)] = "--thresholds"  # the clipping list is made from it
    elif "clipping" not in data and isinstance(data.get("sweep"), dict) and ("sweep",) in lines:
        lines[("clipping",)] = lines[("sweep",)]  # made from the file's sweep
    if "name" not in data:
        if not re.match(NAME_PATTERN, path.stem):
            raise UserError(f"the config has no `name` and its file name {_show(path.stem)} is not a valid one "
                            "(1-64 letters, digits, - or _); add `name: ...` to the file or pass --set name=...",
                            file=file, key="name")
        data["name"] = path.stem

    origins = _Origins(file, lines, sources)
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise _user_error(e, data, origins) from None

    def fits(overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None, sweep: Optional[dict] = None) -> bool:
        try:
            _load_config(path, overrides, seeds, sweep, explain=False)
        except UserError:
            return False
        return True

    def blame() -> tuple[str, str, Optional[int]]:
        """The size is a product of several sections: the file's model, unless the file alone
        fits; then the first option that alone makes it too big, else the last one (with
        those before it). Only computed when refusing."""
        options = [(f"--set {clip(o)}", _dotted(o.partition("=")[0].split(".")), {"overrides": [o]})
                   for o in overrides]
        if seeds is not None:
            options.append((sources[("seeds",)], "seeds", {"seeds": seeds}))
        if sweep is not None:
            options.append(("--thresholds", "clipping", {"sweep": sweep}))
        if not explain or not options or not fits():
            return file, "model", lines.get(("model",))
        option, key, _ = next((o for o in options if not fits(**o[2])), options[-1])
        return option, key, None

    cfg = _resolve_text(cfg, path, origins)
    _check_memory(cfg, blame)
    if axes and explain:  # (a memory refusal's search for the option to blame needs the base alone)
        cfg = _with_grid(cfg, path, data, lines, sources, made, axes, pin)
    return cfg


def _grid_axes(data: dict, lines: dict[KeyPath, int], file: str, overrides: Sequence[str],
               options: Sequence[str]) -> tuple[list, Optional[str]]:
    """The grid's axes (the file's `grid:`, taken out of `data`, and the --grid options) and
    the file's `grid_sha256` pin, if any (checked once the points are built)."""
    for o in overrides:
        if o.partition("=")[0].split(".")[0].strip() in ("grid", "grid_sha256"):
            raise UserError("the grid is given with --grid KEY=V1,V2,..., not --set", file=f"--set {clip(o)}",
                            key="grid")
    if "grid" not in data and not options:
        return [], None  # a grid_sha256 alone is refused by the schema
    from .grid import file_axes, merge_axes, parse_option

    pin = data.pop("grid_sha256", None)
    if pin is not None and not (isinstance(pin, str) and re.fullmatch(r"[0-9a-f]{16}", pin)):
        raise UserError(f"must be 16 hexadecimal digits (what gradlab writes), got {_show(pin)}", file=file,
                        key="grid_sha256", line=lines.get(("grid_sha256",)))
    parsed = [parse_option(o) for o in options]
    return merge_axes(file_axes(data.pop("grid", None), file, lines), parsed, overrides, file), pin


def _with_grid(cfg: ExperimentConfig, path: Path, data: dict, lines: dict[KeyPath, int], sources: dict[KeyPath, str],
               made: set[KeyPath], axes: list, pin: Optional[str]) -> ExperimentConfig:
    """The base config with its grid, every point's config built as `--set` would build it
    from what the file and the options wrote, validated and size-checked; and the points'
    digest, which must be the file's `pin` when it has one (a config.yaml run again)."""
    import copy

    from .grid import expand, points_digest, source
    file = str(path)

    def build(given: list) -> ExperimentConfig:
        d, srcs, mk = copy.deepcopy(data), dict(sources), set(made)
        for axis, value in given:
            _set_value(d, axis.parts, copy.deepcopy(value), source(axis, value), srcs, mk)
        origins = _Origins(file, lines, srcs)
        try:
            point = ExperimentConfig.model_validate(d)
        except ValidationError as e:
            raise _user_error(e, d, origins) from None
        return _resolve_text(point, path, origins)

    canonical, points = expand(axes, build, lambda c: _check_memory(c, lambda: (None, None, None)), file)
    digest = points_digest(points)
    if pin is not None and pin != digest:
        raise UserError(f"the grid's points hash to {digest}, not to the {pin} pinned here: this config makes other "
                        "points than the one gradlab resolved it from (the defaults a grid value picks, e.g. an "
                        "optimizer kind's, differ); run the original config, or remove grid_sha256 to run these",
                        file=file, key="grid_sha256", line=lines.get(("grid_sha256",)))
    out = cfg.model_copy(update={"grid": canonical, "grid_sha256": digest})
    out._points = points
    return out


def _resolve_text(cfg: ExperimentConfig, config_path: Path, origins: _Origins) -> ExperimentConfig:
    """An lm task's text, read and checked here, where the config's file and lines are known:
    `path` made absolute (relative to the config file's directory, so a config and its text
    move together) and the text's sha256 pinned, so that the experiment's hash covers the
    data itself and a later edit of the file is caught rather than trained on."""
    task = cfg.task
    if task.kind != "lm":
        return cfg
    from gradlab.texts import TextError, lm_text, min_chars, read_text, sha256

    key = ("task", "path") if task.path is not None else ("task",)
    where = origins.locate(key)
    if task.path is None:
        text, path = lm_text(None), None
    else:
        path = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(config_path)),
                                            os.path.expanduser(task.path)))
        try:
            text = read_text(path)
        except TextError as e:
            raise UserError(f"{clip(task.path)}: {e}", key=_dotted(key), **where) from None
    digest = sha256(text)
    if task.sha256 is not None and task.sha256 != digest:
        raise UserError(f"the text's sha256 is {digest}, not the {task.sha256} the config pins (edited since?)",
                        key="task.sha256", **origins.locate(("task", "sha256")))
    need = min_chars(task.seq_len)
    if len(text) < need:
        what = "gradlab's source" if path is None else clip(task.path)
        raise UserError(f"{what} has {len(text)} characters; seq_len {task.seq_len} needs at least {need} "
                        f"(a window of seq_len + 1 in the training part and in the held-out last tenth)",
                        key=_dotted(key), **where)
    return cfg.model_copy(update={"task": task.model_copy(update={"path": path, "sha256": digest})})


def load_resolved(path: Union[str, os.PathLike]) -> ExperimentConfig:
    """An experiment directory's config.yaml, as gradlab wrote it: the resolved form, every
    key present. No memory check: the experiment may come from a larger machine."""
    path = Path(path)
    file = str(path)
    data, lines = _parse_yaml(_read_text(path), file)
    if not isinstance(data, dict):
        raise UserError(f"expected the resolved config of an experiment, got {_show_typed(data)}", file=file)
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise _user_error(e, data, _Origins(file, lines)) from None
    missing = [k for k in cfg.resolved() if k not in data]
    if missing:
        raise UserError(f"`{missing[0]}` is missing; gradlab writes every key of the resolved config here",
                        file=file)
    return cfg


def config_hash(cfg: ExperimentConfig) -> str:
    """First 8 hex digits of the sha256 of the canonical JSON of the resolved config."""
    return data_hash(cfg.resolved())


def experiment_dir(cfg: ExperimentConfig, out: Union[str, os.PathLike] = "outputs") -> Path:
    return Path(out) / f"{cfg.name}-{config_hash(cfg)}"


def dump_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML; load_config reads it back to an equal config."""
    return yaml.dump(cfg.resolved(), Dumper=_Dumper, sort_keys=False)
