"""The config loader: every user mistake is one UserError naming file (or option), key and line."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gradlab.config import (
    ExperimentConfig,
    config_hash,
    dump_yaml,
    estimate_memory_bytes,
    experiment_dir,
    load_config,
    variant_id,
)
from gradlab.errors import UserError


@pytest.fixture
def write(tmp_path):
    def _write(text: str | bytes, name: str = "exp.yaml"):
        p = tmp_path / name
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        return p

    return _write


def refused(path, *args, **kwargs) -> UserError:
    with pytest.raises(UserError) as info:
        load_config(path, *args, **kwargs)
    return info.value


# ----------------------------------------------------------------------------- happy paths


def test_defaults_filled_and_resolved_form(write):
    cfg = load_config(write("name: demo\nmodel:\n  depth: 3\n"))
    assert cfg.name == "demo" and cfg.model.depth == 3 and cfg.model.width == 64
    assert cfg.train.optimizer.lr == 0.01 and [c.method for c in cfg.clipping] == ["none", "norm"]
    resolved = cfg.resolved()
    assert resolved["seeds"] == [0] and "seed" not in resolved


def test_seed_becomes_seeds(write):
    assert load_config(write("name: a\nseed: 7\n")).resolved()["seeds"] == [7]


def test_name_defaults_to_file_stem(write):
    assert load_config(write("seed: 1\n", "deep-tanh_1.yaml")).name == "deep-tanh_1"



@pytest.mark.parametrize("stem", ["exp.v2", "my exp", "exp\u00e9", "x" * 65])
def test_a_file_stem_that_is_not_a_name_says_so_and_how_to_set_one(write, stem):
    p = write("seed: 1\n", stem + ".yaml")
    e = refused(p)
    assert (e.file, e.key, e.line) == (str(p), "name", None)
    assert "its file name" in e.message and "is not a valid one" in e.message
    assert "add `name: ...` to the file or pass --set name=..." in e.message
    assert load_config(p, ["name=ok"]).name == "ok"


@pytest.mark.parametrize("text", ["norm_type: inf", "norm_type: .inf", "norm_type: Infinity"])
def test_norm_type_inf_accepted(write, text):
    cfg = load_config(write(f"name: a\nclipping:\n  - {{method: norm, max_norm: 1, {text}}}\n"))
    assert cfg.clipping[0].norm_type == math.inf


def test_exponent_without_dot_is_a_number(write):
    # YAML 1.1 (PyYAML) would read `1e-3` as a string.
    assert load_config(write("name: a\ntrain: {optimizer: {lr: 1e-3}}\n")).train.optimizer.lr == 1e-3


@pytest.mark.parametrize("value, fragment", [
    ("1:30", "`1:30` is 90 in YAML 1.1 (base 60, as in times), a string in YAML 1.2; write 90, or quote it"),
    ("1:30.5", "`1:30.5` is 90.5 in YAML 1.1 (base 60"),
    ("017", "`017` is octal 15 in YAML 1.1, decimal in YAML 1.2; write 15 (octal) or 17 (decimal), or quote it "
            "(\"017\") for a string"),
    ("-017", "octal -15"),
    ("09", "`09` has a leading zero"),
    ("0x1F", "`0x1F` is a hexadecimal number; gradlab reads decimal numbers only: write 31"),
    ("0b101", "`0b101` is a binary number; gradlab reads decimal numbers only: write 5"),
    ("0o17", "`0o17` is an octal number; gradlab reads decimal numbers only: write 15"),
    ("no", "`no` is false in YAML 1.1, a string in YAML 1.2; write false, or quote it (\"no\") for a string"),
    ("Yes", "`Yes` is true in YAML 1.1"),
    ("OFF", "`OFF` is false"),
    ("on", "`on` is true"),
    ("0x" + "f" * 100_000, "write it in decimal, or quote it for a string"),
])
def test_yaml11_number_and_boolean_forms_are_refused_in_the_file_and_in_set(write, value, fragment):
    """YAML 1.1 reads them as something other than they look (and other YAML readers differently)."""
    p = write(f"name: a\ntrain:\n  steps: {value}\n")
    e = refused(p)
    assert (e.file, e.line, e.key) == (str(p), 3, "train.steps") and fragment in e.message
    assert len(str(e)) < 300
    e = refused(write("name: a\n"), [f"train.steps={value}"])
    assert e.key == "train.steps" and e.line is None and fragment in e.message


@pytest.mark.parametrize("text", ['name: "017"', "name: '0b101'", 'name: "no"', "name: !!str 0x1F", "name: y",
                                  "train: {steps: 1_000}", "train: {optimizer: {lr: 0.5, nesterov: false, momentum: 0.1}}",
                                  "train: {tbptt: ~}", "seed: 0", "model: {init: {gain: 0.5}}", "model: {depth: +3}"])
def test_quoted_and_unambiguous_forms_are_read_as_written(write, text):
    load_config(write(text + ("\nname: a\n" if not text.startswith("name") else "\n")))


# ----------------------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    "text, key, line, fragment",
    [
        ("model:\n  depth: true\n", "model.depth", 3, "must be an integer, got true (bool)"),
        ("model:\n  depth: \"3\"\n", "model.depth", 3, "must be an integer, got `3` (str)"),
        ("model:\n  depth: 2.5\n", "model.depth", 3, "must be an integer, got 2.5 (float)"),
        ("train:\n  steps: 10\n  optimizer:\n    lr: .nan\n", "train.optimizer.lr", 5, "must be finite, got nan"),
        ("train:\n  optimizer:\n    lr: .inf\n", "train.optimizer.lr", 4, "must be finite, got inf"),
        ("model:\n  width: 0\n", "model.width", 3, "must be >= 1, got 0"),
        ("model:\n  width: -1\n", "model.width", 3, "must be >= 1, got -1"),
        ("clipping:\n  - method: none\n  - {method: norm, max_norm: -3}\n", "clipping.1.max_norm", 4,
         "must be > 0, got -3"),
        ("clipping:\n  - method: none\n  - method: norm\n", "clipping.1.max_norm", 4, "required key is missing"),
        ("model: 3\n", "model", 2, "must be a mapping, got 3 (int)"),
    ],
)
def test_strict_types_and_ranges(write, text, key, line, fragment):
    p = write("name: a\n" + text)
    e = refused(p)
    assert (e.key, e.line) == (key, line)
    assert fragment in e.message
    assert str(e) == f"{p}:{line}: {key}: {e.message}"


def test_str_of_user_error_has_file_line_key(write):
    p = write("name: a\nmodel:\n  depth: true\n")
    assert str(refused(p)) == f"{p}:3: model.depth: must be an integer, got true (bool)"


def test_several_errors_are_counted(write):
    e = refused(write("name: a\nmodel:\n  depth: true\n  width: 0\n  activation: x\n"))
    assert e.key == "model.depth" and e.message.endswith("(and 2 more problems)")


@pytest.mark.parametrize(
    "text, key, line, fragment",
    [
        ("modle:\n  depth: 3\n", "modle", 2, "unknown key `modle`; did you mean `model`?"),
        ("model:\n  widht: 3\n", "model.widht", 3, "unknown key `widht`; did you mean `width`?"),
        ("clipping:\n  - {method: norm, max_norm: 1, max_nrom: 2}\n", "clipping.0.max_nrom", 3,
         "did you mean `max_norm`?"),
        ("model:\n  zzz: 3\n", "model.zzz", 3, "allowed keys: kind, depth, width, activation, init"),
    ],
)
def test_unknown_keys(write, text, key, line, fragment):
    e = refused(write("name: a\n" + text))
    assert (e.key, e.line) == (key, line) and fragment in e.message


def test_bad_literal_with_suggestion(write):
    e = refused(write("name: a\nmodel:\n  activation: tahn\n"))
    assert (e.key, e.line) == ("model.activation", 3)
    assert e.message == "must be one of tanh, relu, sigmoid, gelu, identity; got `tahn` (did you mean `tanh`?)"


def test_bad_or_missing_clipping_method_lists_methods(write):
    e = refused(write("name: a\nclipping:\n  - method: none\n  - method: nrom\n"))
    assert (e.key, e.line) == ("clipping.1.method", 4)
    assert "none, norm, value" in e.message and "did you mean `norm`" in e.message
    e = refused(write("name: a\nclipping:\n  - max_norm: 1\n"))
    assert e.key == "clipping.0.method" and "none, norm, value" in e.message


@pytest.mark.parametrize("name", ["a/b", "..", "a b", "", "x" * 65])
def test_bad_names(write, name):
    e = refused(write(f"name: '{name}'\n"))
    assert (e.key, e.line) == ("name", 1) and "letters, digits" in e.message


def test_seed_and_seeds_together(write):
    e = refused(write("name: a\nseed: 1\nseeds: [1, 2]\n"))
    assert e.key == "seed" and e.line == 2 and "either `seed` or `seeds`" in e.message


def test_duplicate_seeds(write):
    e = refused(write("name: a\nseeds: [1, 1]\n"))
    assert (e.key, e.line) == ("seeds", 2) and "distinct" in e.message


def test_duplicate_clipping_variants(write):
    e = refused(write("name: a\nclipping:\n  - {method: norm, max_norm: 1}\n  - {method: norm, max_norm: 1.0}\n"))
    assert (e.key, e.line) == ("clipping.1", 4) and "same variant as clipping.0 (norm-1)" in e.message


def test_nesterov_names_its_mapping(write):
    e = refused(write("name: a\ntrain:\n  optimizer:\n    nesterov: true\n"))
    assert e.key == "train.optimizer.nesterov" and e.line == 4 and "momentum" in e.message


# ----------------------------------------------------------------------------- YAML level


def test_duplicate_key_names_both_lines(write):
    e = refused(write("name: a\nmodel:\n  depth: 3\n  width: 4\n\n\n  depth: 5\n"))
    assert (e.key, e.line) == ("model.depth", 7)
    assert e.message == "duplicate key `model.depth` (lines 3 and 7)"


def test_python_tags_refused_and_never_executed(write, tmp_path):
    target = tmp_path / "pwned"
    e = refused(write(f"name: a\nmodel: !!python/object/apply:os.mkdir [{target}]\n"))
    assert not target.exists()
    assert (e.key, e.line) == ("model", 2) and "unsupported YAML tag !!python/object/apply:os.mkdir" in e.message
    e = refused(write("name: !!python/name:os.system\n"))
    assert e.line == 1 and "!!python/name:os.system" in e.message


def _laughs(levels: int, fan: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fan) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels, fan, fragment", [(9, 9, "more than 100000 values"), (5, 30, "more than 100 aliases")])
def test_billion_laughs_refused_quickly(write, levels, fan, fragment):
    start = time.perf_counter()
    e = refused(write(_laughs(levels, fan)))
    assert time.perf_counter() - start < 2
    assert fragment in e.message


def test_recursive_anchor_and_deep_nesting_refused(write):
    assert "levels deep" in refused(write("a: &x [1, *x]\n")).message
    assert "levels deep" in refused(write("a: " + "[" * 500 + "]" * 500 + "\n")).message


def test_syntax_error_gives_its_line(write):
    e = refused(write("name: a\nmodel:\n  depth: 3\n  width: [1, 2\nseed: 0\n"))
    assert e.line == 5 and e.message.startswith("YAML syntax error") and "\n" not in str(e)


def test_tab_indentation(write):
    e = refused(write("name: a\nmodel:\n\tdepth: 3\n"))
    assert e.line == 3 and "tab" in e.message and "spaces" in e.message


def test_several_documents_refused(write):
    assert refused(write("name: a\n---\nname: b\n")).line == 2


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_config(write, text):
    assert refused(write(text)).message == "empty config"


def test_top_level_must_be_a_mapping(write):
    assert refused(write("- a\n- b\n")).message == "the top level must be a mapping of keys, got a list"


_YAMLISH = st.lists(st.sampled_from(
    ["name: a\n", "model:\n", "  depth: 3\n", "  - ", "{", "}", "[", "]", ": ", "&x ", "*x ", "!!int ", "!!set ",
     "? ", "<<: ", "\t", "\n", "-", "'", '"', "#", "---\n", "!foo ", "|\n  x\n", ".nan", "1e400", "\x85", "\x07"]),
    max_size=12).map("".join)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=_YAMLISH, item=_YAMLISH)
def test_any_text_gives_a_config_or_one_line_user_error(tmp_path_factory, text, item):
    p = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    p.write_text(text, encoding="utf-8")
    try:
        load_config(p, [f"model.depth={item}", f"{item}=1"])
    except UserError as e:
        assert "\n" not in str(e) and "\r" not in str(e)


# ----------------------------------------------------------------------------- the file itself


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    e = refused(p)
    assert e.file == str(p) and e.message == "no such file"


def test_a_symlink_to_a_regular_file_is_a_config(write, tmp_path):
    (tmp_path / "link.yaml").symlink_to(write("seed: 3\n", "real.yaml"))
    cfg = load_config(tmp_path / "link.yaml")
    assert cfg.name == "link" and cfg.seeds == [3]


def test_directory(tmp_path):
    assert refused(tmp_path).message == "is a directory, expected a YAML file"


def test_unreadable(write, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # chmod 0 would not stop root, who runs the tests in some containers.
    monkeypatch.setattr("gradlab.config.loading.open", denied, raising=False)
    assert "permission denied" in refused(write("name: a\n")).message


def test_binary_file(write):
    assert "NUL" in refused(write(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")).message


def test_utf16_file(write):
    assert "UTF-16" in refused(write("name: a\n".encode("utf-16"))).message


def test_not_utf8(write):
    e = refused(write("name: a\n# caf\xe9\n".encode("latin-1")))
    assert "UTF-8" in e.message and e.line == 2


def test_too_big(write):
    e = refused(write("# " + "x" * 2_000_000 + "\n"))
    assert "MB; a config is a few hundred bytes" in e.message


# ----------------------------------------------------------------------------- --set and --seeds


def test_set_happy_path(write):
    cfg = load_config(
        write("name: a\nclipping:\n  - {method: none}\n  - {method: norm, max_norm: 1}\n"),
        ["model.depth=5", "train.optimizer.lr=0.5", "train.optimizer.momentum=0.9", "train.optimizer.nesterov=true",
         "clipping.1.max_norm=2", "model.activation=relu", "seeds=[1, 2]"],
    )
    assert cfg.model.depth == 5 and isinstance(cfg.model.depth, int)
    assert cfg.train.optimizer.lr == 0.5 and cfg.train.optimizer.nesterov is True
    assert cfg.clipping[1].max_norm == 2.0 and cfg.model.activation == "relu" and cfg.seeds == [1, 2]


def test_set_indexes_the_default_clipping_list(write):
    cfg = load_config(write("name: a\n"), ["clipping.1.max_norm=3"])
    assert [c.method for c in cfg.clipping] == ["none", "norm"] and cfg.clipping[1].max_norm == 3.0


def test_set_switches_a_kind_the_file_leaves_out(write):
    """--set applies to what the file says, before any default: the new kind gets its own defaults."""
    p = write("name: o2\n")
    opt = load_config(p, ["train.optimizer.kind=adam"]).train.optimizer
    assert opt.kind == "adam" and opt.lr == 0.001 and opt.betas == [0.9, 0.999]
    model = load_config(write("name: c\ntask: {kind: copy}\n", "c.yaml"), ["model.kind=lstm"]).model
    assert (model.kind, model.init.scheme, model.input_init.scheme) == ("lstm", "orthogonal", "xavier")
    cfg = load_config(p, ["clipping.1.method=value", "clipping.1.clip_value=0.1"])
    assert [variant_id(c) for c in cfg.clipping] == ["none", "value-0.1"]
    cfg = load_config(p, ["train.optimizer.kind=adam", "train.optimizer.betas.1=0.99"])
    assert cfg.train.optimizer.betas == [0.9, 0.99]


@pytest.mark.parametrize("kind, task, scheme", [("rnn", "adding", "orthogonal"), ("gru", "copy", "orthogonal"),
                                                ("mlp", "teacher", "xavier")])
def test_an_init_without_scheme_gets_the_kinds_default_scheme(write, kind, task, scheme):
    p = write(f"name: a\nmodel: {{kind: {kind}, init: {{gain: 1.1}}}}\ntask: {{kind: {task}}}\n")
    assert load_config(p).model.init.scheme == scheme and load_config(p).model.init.gain == 1.1
    assert load_config(write("name: a\n", "b.yaml"), [f"model.kind={kind}", f"task.kind={task}",
                                                     "model.init.gain=2"]).model.init.scheme == scheme


def test_a_method_changed_by_set_refuses_the_files_keys_of_the_old_one(write):
    p = write("name: n\nclipping: [{method: norm, max_norm: 1}]\n")
    e = refused(p, ["clipping.0.method=value", "clipping.0.clip_value=0.1"])
    assert (e.file, e.key, e.line) == ("--set clipping.0.method=value", "clipping.0.max_norm", None)
    assert e.message == (f"`max_norm` ({p} line 2) does not apply to method `value`, which --set "
                         "clipping.0.method=value chose; remove it from the file or leave the method as it is")
    e = refused(write("name: n\nclipping: [{method: none}]\n"), ["clipping.0.method=norm"])
    assert (e.file, e.key, e.message) == ("--set clipping.0.method=norm", "clipping.0.max_norm",
                                          "required key is missing")


@pytest.mark.parametrize("text, overrides, where, key, fragment", [
    ("name: b\nmodel:\n  depth: 2\ntrain:\n  steps: 5\n", ["train.tbptt=5"], "--set train.tbptt=5", "train.tbptt",
     "recurrent models on sequence tasks only"),
    ("name: b\n", ["task.kind=adding"], "--set task.kind=adding", "task.kind", "model mlp cannot learn task adding"),
    ("name: b\ntask: {kind: adding}\n", [], "{file}:2", "task.kind", "model mlp cannot learn task adding"),
    ("name: b\nmodel: {kind: gru}\ntask: {kind: teacher}\n", [], "{file}:2", "model.kind", "cannot learn"),
    ("name: b\nmodel: {activation: gelu}\n", ["model.kind=rnn", "task.kind=adding"], "--set model.kind=rnn",
     "model.kind", "an rnn takes activation tanh or relu"),
    ("name: b\nmodel: {kind: rnn, activation: gelu}\ntask: {kind: adding}\n", [], "{file}:2", "model.activation",
     "an rnn takes activation tanh or relu"),
    ("name: b\nmodel: {kind: lstm, activation: relu}\ntask: {kind: adding}\n", [], "{file}:2",
     "model.activation", "gates are fixed"),
    ("name: b\nmodel: {input_init: {scheme: he}}\n", [], "{file}:2", "model.input_init", "recurrent models only"),
    ("name: b\nmodel: {kind: lstm}\ntask:\n  kind: copy\n  seq_len: 11\n", ["task.copy_len=6"],
     "--set task.copy_len=6", "task.copy_len", "at least 2 x copy_len + 1 = 13"),
    ("name: b\nmodel: {kind: lstm}\ntask:\n  kind: copy\n  copy_len: 6\n  seq_len: 11\n", [], "{file}:6",
     "task.seq_len", "at least 2 x copy_len + 1 = 13"),
    ("name: b\ntrain:\n  optimizer: {momentum: 0.9}\n", ["train.optimizer.dampening=0.5",
     "train.optimizer.nesterov=true"], "--set train.optimizer.nesterov=true", "train.optimizer.nesterov",
     "dampening 0.5"),
    ("name: b\nseed: 1\n", ["seeds=[1, 2]"], "--set seeds=[1, 2]", "seeds", "either `seed` or `seeds`"),
    ("name: b\nsweep: {thresholds: [1]}\n", ["clipping.0.method=value", "clipping.0.clip_value=1"],
     "--set clipping.0.method=value", "clipping", "give either sweep or clipping"),
    ("name: b\nclipping:\n  - {method: value, clip_value: 1}\n  - {method: none}\n", ["clipping.1.method=value",
     "clipping.1.clip_value=1"], "--set clipping.1.method=value", "clipping.1", "same variant as clipping.0"),
])
def test_a_models_check_names_the_key_and_the_option_that_set_it(write, text, overrides, where, key, fragment):
    p = write(text)
    e = refused(p, overrides)
    got = e.file if e.line is None else f"{e.file}:{e.line}"
    assert (got, e.key) == (where.format(file=p), key) and fragment in e.message, str(e)


@pytest.mark.parametrize("dtype, clip, ok", [
    ("float32", "{method: value, clip_value: 1e-40}", False), ("float32", "{method: norm, max_norm: 1e-39}", False),
    ("float32", "{method: norm, max_norm: 1.2e-38}", True), ("float32", "{method: norm, max_norm: 1e39}", False),
    ("float64", "{method: norm, max_norm: 1e-300}", True), ("float64", "{method: value, clip_value: 1e-320}", False),
    ("float64", "{method: norm, max_norm: 1e300}", True),
])
def test_a_threshold_must_be_a_normal_number_of_the_training_dtype(write, dtype, clip, ok):
    p = write(f"name: a\ntrain: {{dtype: {dtype}}}\nclipping:\n  - {clip}\n")
    if ok:
        load_config(p)
        return
    e = refused(p)
    assert (e.line, e.key.rsplit(".", 1)[0]) == (4, "clipping.0") and f" {dtype} (train.dtype), got" in e.message
    e = refused(write(f"name: a\nclipping:\n  - {clip}\n"), [f"train.dtype={dtype}"])
    assert e.file == f"--set train.dtype={dtype}" and e.key == "train.dtype"


@pytest.mark.parametrize("text", [
    "name: a\n" + "k" * 100_000 + ": 1\n",  # a key
    "name: a\nmodel:\n  activation: " + "t" * 100_000 + "\n",  # a value
    "name: a\nseed: *" + "a" * 100_000 + "\n",  # an alias PyYAML names in its message
    "name: a\nseed: !" + "t" * 100_000 + " 1\n",  # a tag
    "t" * 100_000 + "\n",  # the whole file
    "name: a\nmodel: {depth: 3, " + "w" * 100_000 + "\n",  # a syntax error around it
], ids=["key", "value", "alias", "tag", "file", "syntax"])
def test_huge_text_in_a_file_gives_a_short_line(write, text):
    e = refused(write(text))
    assert len(str(e)) < 400 and "\n" not in str(e), str(e)[:500]


def test_seeds_option_that_repeats_is_named(write):
    e = refused(write("name: a\n"), seeds=[1, 2, 1])
    assert (e.file, e.key, e.line) == ("--seeds 1,2,1", "seeds", None)


@pytest.mark.parametrize("item", ["model.depth", "=3", ".depth=3", "model..depth=3"])
def test_set_needs_key_equals_value(write, item):
    e = refused(write("name: a\n"), [item])
    assert e.file == "--set" and e.key == item and "key.path=value" in e.message


def test_set_unknown_key_names_the_option(write):
    e = refused(write("name: a\n"), ["model.widht=3"])
    assert e.file == "--set model.widht=3" and e.line is None and "did you mean `width`?" in e.message
    e = refused(write("name: a\n"), ["modle.depth=3"])
    assert e.file == "--set modle.depth=3" and "did you mean `model`?" in e.message


def test_set_bad_value_names_the_option(write):
    e = refused(write("name: a\nmodel:\n  depth: 3\n"), ["model.depth=abc"])
    assert str(e) == "--set model.depth=abc: model.depth: must be an integer, got `abc` (str)"


@pytest.mark.parametrize("item, fragment", [("clipping.5.max_norm=1", "not an index"),
                                            ("name.x=1", "not a mapping or a list"),
                                            ("model.depth=[1", "YAML syntax error"),
                                            ("name=!!python/name:os.system", "unsupported YAML tag")])
def test_set_bad_path_or_value(write, item, fragment):
    e = refused(write("name: a\n"), [item])
    assert e.file == f"--set {item}" and fragment in e.message and e.line is None


def test_seeds_override(write):
    cfg = load_config(write("name: a\nseed: 3\n"), seeds=[0, 1, 2])
    assert cfg.seeds == [0, 1, 2] and "seed" not in cfg.resolved()
    e = refused(write("name: a\n"), seeds=[4, 4])
    assert e.file == "--seeds 4,4" and e.key == "seeds" and "distinct" in e.message


# ----------------------------------------------------------------------------- memory


def test_memory_refusal_is_fast(write):
    start = time.perf_counter()
    e = refused(write("name: a\nseed: 0\nmodel:\n  width: 1000000\n  depth: 10000\n"))
    assert time.perf_counter() - start < 1
    assert (e.key, e.line) == ("model", 3)
    assert "GiB" in e.message and "reduce model.width" in e.message


def test_memory_message_and_estimate(write, monkeypatch):
    monkeypatch.setattr("gradlab.config.memory.available_memory_bytes", lambda: 2**30)
    cfg = load_config(write("name: a\n"))  # the defaults fit in 1 GiB
    m, t = cfg.model, cfg.task
    params = (t.input_dim * m.width + m.width) + (m.depth - 2) * (m.width**2 + m.width) + (m.width * t.output_dim + 1)
    heldout = 4 * t.batch_size * (t.input_dim + 1)  # four held-out batches of vectors and targets
    expected = (4 * (2 * (4 * params + 3 * t.batch_size * m.width * m.depth) + heldout)
                + 8 * cfg.train.steps * 2 * (4 * m.depth + 12))
    assert estimate_memory_bytes(cfg) == expected
    # float16 compute holds one more parameter set per variant: the step's compute copy.
    half = load_config(write("name: a\ntrain: {precision: {compute: float16}}\n", "half.yaml"))
    assert estimate_memory_bytes(half) == expected + 4 * 2 * params
    e = refused(write("name: a\nmodel: {width: 4096, depth: 16}\n"))
    assert "more than 80% of the 1.0 GiB available" in e.message and "2 variants x" in e.message


def test_memory_refusal_names_the_option_that_made_it_too_big(write, monkeypatch):
    monkeypatch.setattr("gradlab.config.memory.available_memory_bytes", lambda: 2**30)
    p = write("name: a\nmodel: {width: 64}\ntask: {batch_size: 8}\n")
    load_config(p)  # the file alone fits
    e = refused(p, ["train.steps=5", "task.batch_size=1000000"])
    assert (e.file, e.key, e.line) == ("--set task.batch_size=1000000", "task.batch_size", None)
    assert "GiB available" in e.message
    e = refused(p, ["model.width=1000", "model.depth=100"])  # each fits, not both: the last is named
    assert (e.file, e.key, e.line) == ("--set model.depth=100", "model.depth", None)
    e = refused(p, seeds=list(range(2)), overrides=["model.width=100000"])
    assert (e.file, e.key, e.line) == ("--set model.width=100000", "model.width", None)
    big = write("name: a\nseed: 1\nmodel: {width: 4096, depth: 16}\n", "big.yaml")
    e = refused(big, ["model.depth=15"])  # too big already in the file: the file's model is named
    assert (e.file, e.key, e.line) == (str(big), "model", 3)


def test_list_length_of_a_sweeps_clipping_names_where_the_sweep_came_from(write):
    thresholds = list(range(1, 1001))
    e = refused(write("name: a\n"), sweep={"method": "norm", "thresholds": thresholds, "baseline": True})
    assert (e.file, e.key, e.line) == ("--thresholds", "clipping", None) and "at most 1000 items" in e.message
    e = refused(write(f"name: a\nseed: 1\nsweep:\n  thresholds: {thresholds}\n"))
    assert (e.key, e.line) == ("clipping", 3) and "at most 1000 items" in e.message


# ----------------------------------------------------------------------------- hash and round trip


def test_hash_ignores_key_order_and_tracks_values(write):
    a = load_config(write("name: a\nmodel: {depth: 3, width: 8}\nseed: 1\n", "a.yaml"))
    b = load_config(write("seed: 1\nmodel: {width: 8, depth: 3}\nname: a\n", "b.yaml"))
    c = load_config(write("name: a\nmodel: {depth: 3, width: 9}\nseed: 1\n", "c.yaml"))
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert len(config_hash(a)) == 8 and int(config_hash(a), 16) >= 0
    assert experiment_dir(a, "out").as_posix() == f"out/a-{config_hash(a)}"


@pytest.mark.parametrize("name", ["demo", "1e3", "yes", "123", "null"])
def test_dump_yaml_round_trip(write, name):
    cfg = load_config(
        write(f"name: '{name}'\nseeds: [0, 5]\nclipping:\n  - {{method: none}}\n"
              "  - {method: norm, max_norm: 0.5, norm_type: inf}\n  - {method: value, clip_value: 1e-3}\n")
    )
    again = load_config(write(dump_yaml(cfg), "again.yaml"))
    assert again == cfg and config_hash(again) == config_hash(cfg) and again.name == name


def test_config_is_frozen(write):
    cfg = load_config(write("name: a\n"))
    assert isinstance(cfg, ExperimentConfig)
    with pytest.raises(Exception):
        cfg.name = "b"


def test_recurrent_memory_estimate_counts_torch_parameters(write):
    """rnn/lstm/gru layers hold gates x hidden x (input + hidden + 2 biases), as in torch."""
    from gradlab.config import _parameter_count

    cfg = load_config(write("name: a\nmodel: {kind: lstm, depth: 2, width: 8}\ntask: {kind: adding, seq_len: 10}\n"))
    assert _parameter_count(cfg) == 4 * 8 * (2 + 8 + 2) + 4 * 8 * (8 + 8 + 2) + 8 * 1 + 1
    e = refused(write("name: a\nmodel: {kind: gru, width: 20000, depth: 4}\ntask: {kind: adding, seq_len: 1000}\n"))
    assert e.key == "model" and "GiB" in e.message


def test_task_and_optimizer_kinds(write):
    cfg = load_config(write("name: a\nmodel: {kind: gru}\ntask: {kind: copy, seq_len: 12, copy_len: 3}\n"
                            "train:\n  optimizer: {kind: adamw}\n"))
    assert cfg.model.init.scheme == "orthogonal" and cfg.model.input_init.scheme == "xavier"
    assert cfg.train.optimizer.weight_decay == 0.01 and cfg.train.optimizer.betas == [0.9, 0.999]
    e = refused(write("name: a\ntask: {kind: addng}\n"))
    assert e.key == "task.kind" and e.line == 2 and "did you mean `adding`" in e.message
    e = refused(write("name: a\nmodel: {kind: rnn}\ntask: {kind: adding, seq_lem: 3}\n"))
    assert e.key == "task.seq_lem" and "did you mean `seq_len`" in e.message
    e = refused(write("name: a\ntrain:\n  optimizer: {kind: adam, betas: [0.9, 1.5]}\n"))
    assert e.key == "train.optimizer.betas.1" and e.line == 3
    e = refused(write("name: a\ntask: {kind: adding}\n"))
    assert "needs a sequence model" in e.message
    e = refused(write("name: a\nmodel: {kind: rnn, activation: gelu}\ntask: {kind: adding}\n"))
    assert e.key == "model.activation" and e.line == 2


def test_rule_defaults_are_their_references_and_survive_the_resolved_form(tmp_path):
    """agc as optax (0.01, 1e-3), autoclip as its reference (10th percentile, all history),
    zclip as its reference (0.97, 2.5, 25, cap 1.0), skip as OLMo-core (6 sigma, 128 steps)
    with optax's 5 consecutive non-finite steps; a chain's rules keep theirs."""
    cfg = ExperimentConfig.model_validate(dict(name="r", clipping=[
        {"method": "agc"}, {"method": "autoclip"}, {"method": "zclip"}, {"method": "skip"},
        {"method": "per_tensor", "max_norm": 2.0},
        {"method": "chain", "rules": [{"method": "skip", "nonfinite": True}, {"method": "zclip", "max_norm": None}]}]))
    agc, auto, z, skip, per_tensor, chain = cfg.clipping
    assert (agc.clipping, agc.eps, agc.exclude) == (0.01, 0.001, [])
    assert (auto.percentile, auto.history) == (10.0, None)
    assert (z.alpha, z.z_thresh, z.warmup, z.max_norm) == (0.97, 2.5, 25, 1.0)
    assert (skip.sigma, skip.window, skip.nonfinite, skip.max_consecutive) == (6.0, 128, False, 5)
    assert chain.rules[1].max_norm is None and chain.rules[0].nonfinite
    path = tmp_path / "r.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


def test_a_per_tensor_threshold_must_be_a_normal_number_of_the_dtype():
    with pytest.raises(ValidationError, match="max_norm must be >= 1.2e-38"):
        ExperimentConfig.model_validate(dict(name="r", clipping=[{"method": "per_tensor", "max_norm": 1e-40}]))
    # a percentile or a z-score is no gradient value: any positive one is fine in float32
    ExperimentConfig.model_validate(dict(name="r", clipping=[{"method": "autoclip", "percentile": 1e-3}]))


def test_existing_methods_keep_their_ids_and_hash():
    """Adding rules changed no resolved config of none, norm or value: their run ids and
    experiment directories stay."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    assert [variant_id(c) for c in cfg.clipping] == ["none", "norm-1", "norm-10"]
    assert config_hash(cfg) == "fa8d9505"
