"""Fuzzing the config loader from the real configs.

Mutate every config in configs/ (drop keys, swap values, insert random values at random key
paths, replace values by random text, add --set overrides; or, on the text itself, splice
random bytes and YAML fragments in, cut lines, truncate) and require that load_config either
returns a config, whose resolved form reads back to the same config, or raises a UserError of
one line. Any other exception is a bug that `gradlab` would report as exit 1.

The default budget suits CI; GRADLAB_FUZZ_EXAMPLES=20000 runs that many examples in total
(split between the two tests), randomised rather than derandomized.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import gradlab.config as config
from gradlab.config import dump_yaml, load_config, load_resolved
from gradlab.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "configs").glob("*.yaml"))}
_ENV = os.environ.get("GRADLAB_FUZZ_EXAMPLES")


def budget(default: int):
    """`default` examples, the same ones every run (CI); or half of GRADLAB_FUZZ_EXAMPLES, random."""
    return settings(max_examples=max(1, int(_ENV) // 2) if _ENV else default, deadline=None, derandomize=not _ENV,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Every key the schema knows, so that insertions land on real fields as well as on typos.
FIELDS = sorted({f for m in vars(config).values()
                 if isinstance(m, type) and issubclass(m, BaseModel) and m is not BaseModel
                 for f in m.model_fields})
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=10))

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-3, max_value=3),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "3", "true", "no", ".nan", ".inf", "-.inf", "1e400", "1e-3", "0x10", "0o7", "1_000",
                     "~", "null", "norm", "none", "value", "mlp", "lstm", "copy", "adam", "float64", "inf",
                     "2001-12-14", "a/b", "..", "*x", "&x", "!!python/name:os.system", "\t", "\x00", "\ufeff"]),
    st.sampled_from([0, -1, 1, 2, 10**6, 10**7, 2**32, 2**63, 10**100, 0.5, -0.0, 1e308, 3.0]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=6)

# Fragments that stress the YAML layer rather than the schema.
FRAGMENTS = st.sampled_from([
    "\t", "\n", ": ", "- ", "{", "}", "[", "]", "&a ", "*a", "*nope", "!!python/object/apply:os.system [x] ",
    "!!int ", "!!float ", "!!binary ", "!!set ", "!!omap ", "!foo ", "<<: ", "? ", "---\n", "...\n", "%YAML 1.1\n",
    "'", '"', "\\", "#", "|\n", ">-\n", "\x85", "\u2028", "\x07", "\x00", "\ufeff", "\ud7ff", "\r", "\r\n",
    "a: &a [*a]\n", "k: 1\nk: 2\n", "é", "\U0001f600",
])
# Tags, where they change what a value is: right after a key or a list dash.
TAGS = st.sampled_from(["!!int", "!!float", "!!bool", "!!str", "!!null", "!!binary", "!!timestamp", "!!set",
                        "!!omap", "!!pairs", "!!seq", "!!map", "!!merge", "!!value", "!!yaml", "!local",
                        "!<tag:yaml.org,2002:int>", "!!python/tuple", "!!python/object/apply:os.getcwd []"])


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in the data (the root included), mappings and lists alike."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, prefix + (i,))
    return out


def at(root: Any, path: tuple) -> Any:
    for p in path:
        root = root[p]
    return root


def mutate_tree(data: dict, draw) -> None:
    """One of: drop, replace, insert, swap, stringify; at a random key path."""
    every = paths(data)
    op = draw(st.sampled_from(["drop", "replace", "insert", "swap", "stringify"]))
    path = draw(st.sampled_from(every))
    if op == "insert" or not path:
        parent = at(data, path)
        if isinstance(parent, dict):
            parent[draw(KEYS)] = draw(VALUES)
        elif isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), draw(VALUES))
        return
    parent, key = at(data, path[:-1]), path[-1]
    if op == "drop":
        del parent[key]
    elif op == "replace":
        parent[key] = draw(VALUES)
    elif op == "stringify":  # the same value, but quoted: "3" is not 3
        parent[key] = str(parent[key])
    else:
        other = draw(st.sampled_from(every))
        if other and other[: len(path)] != path and path[: len(other)] != other:
            other_parent = at(data, other[:-1])
            parent[key], other_parent[other[-1]] = other_parent[other[-1]], parent[key]


def check(path: Path, overrides: list[str] = ()) -> None:
    """The property: a valid config (that reads back from its resolved form) or one UserError line."""
    try:
        cfg = load_config(path, overrides)
    except UserError as e:
        text = str(e)
        assert text and len(text.splitlines()) == 1 and text.strip() == text, repr(text)
        event("refused")
        return
    event("valid")
    again = path.with_name("resolved.yaml")
    again.write_text(dump_yaml(cfg), encoding="utf-8")
    assert load_config(again) == cfg
    assert load_resolved(again) == cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@budget(100)  # ~40 ms each: pure-Python YAML, validated twice when valid
@given(name=st.sampled_from(sorted(CONFIGS)), data=st.data())
def test_mutated_configs_load_or_fail_with_one_line(workdir, name, data):
    tree = yaml.safe_load(CONFIGS[name])
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        mutate_tree(tree, data.draw)
    overrides = data.draw(st.lists(
        st.builds(lambda p, v: f"{'.'.join(map(str, p))}={v}",
                  st.sampled_from(paths(tree)[1:] or [("name",)]),
                  st.one_of(SCALARS.map(lambda v: yaml.safe_dump(v).split("\n...")[0].strip()), st.text(max_size=12)))
        | st.text(max_size=20), max_size=2), label="overrides")
    path = workdir / "mutated.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=data.draw(st.booleans())), encoding="utf-8")
    check(path, overrides)


@budget(400)  # ~10 ms each
@given(name=st.sampled_from(sorted(CONFIGS)), data=st.data())
def test_damaged_config_files_load_or_fail_with_one_line(workdir, name, data):
    raw = CONFIGS[name].encode("utf-8")
    for _ in range(data.draw(st.integers(1, 4), label="damages")):
        pos = data.draw(st.integers(0, len(raw)), label="position")
        op = data.draw(st.sampled_from(["bytes", "fragment", "tag", "truncate", "cut", "duplicate line"]))
        if op == "tag":  # after the n-th `: ` or `- `, so that the tag applies to a value
            spots = [i + 2 for i in range(len(raw) - 1) if raw[i:i + 2] in (b": ", b"- ")] or [0]
            pos = spots[pos % len(spots)]
            raw = raw[:pos] + data.draw(TAGS).encode() + b" " + raw[pos:]
        elif op == "bytes":
            raw = raw[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + raw[pos:]
        elif op == "fragment":
            raw = raw[:pos] + data.draw(FRAGMENTS).encode("utf-8", "surrogatepass") + raw[pos:]
        elif op == "truncate":
            raw = raw[:pos]
        elif op == "cut":
            raw = raw[:pos] + raw[pos + data.draw(st.integers(1, 40)):]
        else:
            lines = raw.split(b"\n")
            i = pos % len(lines)
            lines.insert(i, lines[i])
            raw = b"\n".join(lines)
    path = workdir / "damaged.yaml"
    path.write_bytes(raw)
    check(path)
