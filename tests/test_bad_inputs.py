"""The bad-input corpus, each case run through the real CLI.

Every case must end with exit code 2 and exactly one line on stderr that starts with the place
of the problem (file, line, key path, or the option), with no traceback, nothing written
(neither under --out nor in the working directory) and within 2 s: a robustness bound that
catches hangs and alias bombs, not a benchmark (see within_time for what is measured).

A case is data: its args and expected message are in CASES below; its config is a file in
tests/bad_inputs/ ({bad}) or, where a committed file makes no sense (binary, UTF-16, 10 MB),
written by a `setup` into the case's temporary directory ({tmp}). Cases marked proc=True run
as a separate `python -m gradlab.cli` process: those where a real process matters (python
tags, alias bombs under a memory limit, binary input, the stderr of a whole process).
"""

from __future__ import annotations

import errno
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from conftest import cli

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).resolve().parent / "bad_inputs"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SENTINEL = "gradlab-pwned"  # what the python-tag payloads would create in the working directory
TIME_LIMIT = 2.0
HANG_LIMIT = 10.0
MEMORY_LIMIT = 1 << 30  # address space of a subprocess case: an alias bomb must not need more
ERROR_LINE = re.compile(r"gradlab(?: (?:run|sweep|plot|report|validate))?: error: (?P<message>.+)\n")


@dataclass
class Case:
    id: str
    args: list  # formatted with bad=, tmp=, root=, quickstart=
    where: str  # the message starts with this (formatted like args): file:line: key or the option
    want: str  # and contains this
    proc: bool = False
    setup: Optional[Callable] = None  # setup(tmp, monkeypatch), before the snapshot


def run_config(name: str, *more) -> list:
    return ["run", f"{{bad}}/{name}", "--out", "{tmp}/out", *more]


def sweep(*more) -> list:
    return ["sweep", "{quickstart}", "--out", "{tmp}/out", *more]


def write_gen(name: str, data: bytes) -> Callable:
    def setup(tmp: Path, monkeypatch) -> None:
        (tmp / name).write_bytes(data)
    return setup


def ten_megabytes() -> bytes:
    """A syntactically valid config of 10 MB: a seeds list nobody would write by hand."""
    seeds = ", ".join(str(i) for i in range(1_240_000))
    text = f"name: huge\nseeds: [{seeds}]\n"
    assert 10_000_000 < len(text) < 11_000_000
    return text.encode()


def lm_text(tail: bytes, seq_len: int = 16) -> Callable:
    """An lm config in tmp whose text.txt (beside it) is 200 good characters, then `tail`."""
    def setup(tmp: Path, monkeypatch) -> None:
        (tmp / "text.txt").write_bytes(b"abcdefghij" * 20 + b"xyz" + (tail or b"k" * 197))
        (tmp / "lm.yaml").write_text(f"name: lm\nmodel: {{kind: gru, depth: 1, width: 8}}\ntask:\n  kind: lm\n"
                                     f"  seq_len: {seq_len}\n  path: text.txt\n")
    return setup


def unreadable(tmp: Path, monkeypatch) -> None:
    p = tmp / "secret.yaml"
    p.write_text("name: secret\n")
    if os.geteuid() != 0:
        p.chmod(0)
    else:  # root reads through chmod 000: the same refusal, simulated where the loader opens
        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        monkeypatch.setattr("gradlab.config.loading.open", denied, raising=False)


SMALL = ["--set", "train.steps=3", "--set", "model.depth=2", "--seeds", "0", "--workers", "1", "--quiet"]


def file_system_error(code: int, experiment: bool = False) -> Callable:
    """--out on a file system that refuses writes (read-only mount, no permission), simulated
    below the CLI (os.mkdir, os.open) because root, who may run the tests, bypasses modes.
    With `experiment`, --out already holds a complete experiment (of `SMALL`, without plots)."""
    def setup(tmp: Path, monkeypatch) -> None:
        out = tmp / "out"
        out.mkdir()
        if experiment:
            assert cli("run", QUICKSTART, *SMALL, "--no-plots", "--out", out) == 0
        real_mkdir, real_open = os.mkdir, os.open

        def refuse(path) -> None:
            if str(path).startswith(str(out)):
                raise OSError(code, os.strerror(code), str(path))

        def mkdir(path, *args, **kwargs):
            refuse(path)
            return real_mkdir(path, *args, **kwargs)

        def open_(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)
    return setup


def experiment_like(config: Optional[str]) -> Callable:
    """A directory tmp/exp of someone's own files, with this config.yaml (None: none at all)."""
    def setup(tmp: Path, monkeypatch) -> None:
        d = tmp / "exp"
        (d / "runs" / "none-s0").mkdir(parents=True)
        (d / "notes.txt").write_text("my own files\n")
        if config is not None:
            (d / "config.yaml").write_text(config)
    return setup


def real_experiment_without_runs(tmp: Path, monkeypatch) -> None:
    from gradlab.config import dump_yaml, experiment_dir, load_config
    from gradlab.io import write_text

    cfg = load_config(QUICKSTART)
    exp = experiment_dir(cfg, tmp / "outs")
    write_text(exp / "config.yaml", dump_yaml(cfg))


def a_file(name: str) -> Callable:
    def setup(tmp: Path, monkeypatch) -> None:
        (tmp / name).write_text("not a directory\n")
    return setup


Q = "{quickstart}"
CASES = [
    # --- the file is not YAML, or not one mapping
    Case("syntax_unclosed_bracket", run_config("syntax_unclosed_bracket.yaml"),
         "{bad}/syntax_unclosed_bracket.yaml:5", "YAML syntax error: expected ',' or ']'", proc=True),
    Case("syntax_colon_in_value", run_config("syntax_colon_in_value.yaml"),
         "{bad}/syntax_colon_in_value.yaml:4", "mapping values are not allowed here"),
    Case("syntax_bad_indentation", run_config("syntax_bad_indentation.yaml"),
         "{bad}/syntax_bad_indentation.yaml:4", "indentation of this line does not match"),
    Case("tabs", run_config("tabs.yaml"), "{bad}/tabs.yaml:3", "tab character in indentation"),
    Case("empty", run_config("empty.yaml"), "{bad}/empty.yaml", "empty config", proc=True),
    Case("comments_only", run_config("comments_only.yaml"), "{bad}/comments_only.yaml", "empty config"),
    Case("top_level_list", run_config("top_level_list.yaml"), "{bad}/top_level_list.yaml",
         "the top level must be a mapping of keys, got a list"),
    Case("top_level_scalar", run_config("top_level_scalar.yaml"), "{bad}/top_level_scalar.yaml",
         "the top level must be a mapping of keys, got `just some words` (str)"),
    Case("two_documents", run_config("two_documents.yaml"), "{bad}/two_documents.yaml:2",
         "a config is one document"),
    Case("duplicate_key", run_config("duplicate_key.yaml"), "{bad}/duplicate_key.yaml:6: model.depth",
         "duplicate key `model.depth` (lines 3 and 6)"),
    Case("duplicate_top_key", run_config("duplicate_top_key.yaml"), "{bad}/duplicate_top_key.yaml:5: train",
         "duplicate key `train` (lines 2 and 5)"),
    # --- clipping rules: methods, their keys and ranges, chains
    Case("rule_unknown_method", run_config("rule_unknown_method.yaml"),
         "{bad}/rule_unknown_method.yaml:4: clipping.1.method", "got `agcc` (did you mean `agc`?)"),
    Case("rule_percentile_zero", run_config("rule_percentile_zero.yaml"),
         "{bad}/rule_percentile_zero.yaml:4: clipping.0.percentile", "must be > 0, got 0"),
    Case("rule_percentile_above_100", run_config("rule_percentile_above_100.yaml"),
         "{bad}/rule_percentile_above_100.yaml:4: clipping.0.percentile", "must be <= 100, got 101"),
    Case("rule_chain_in_chain", run_config("rule_chain_in_chain.yaml"),
         "{bad}/rule_chain_in_chain.yaml:6: clipping.0.rules.1.method", "a chain cannot hold a chain"),
    Case("rule_chain_two_directions", run_config("rule_chain_two_directions.yaml"),
         "{bad}/rule_chain_two_directions.yaml:6: clipping.0.rules.1.method",
         "at most one rule that changes the gradient's direction"),
    Case("rule_zclip_alpha_one", run_config("rule_zclip_alpha_one.yaml"),
         "{bad}/rule_zclip_alpha_one.yaml:3: clipping.0.alpha", "must be < 1, got 1.0"),
    Case("rule_agc_exclude_unknown_layer", run_config("rule_agc_exclude_unknown_layer.yaml"),
         "{bad}/rule_agc_exclude_unknown_layer.yaml:4: clipping.0.exclude.0",
         "no layer `layer9` in this mlp to exclude: its layers are layer0 ... layer3 and head"),
    Case("rule_skip_typo", run_config("rule_skip_typo.yaml"),
         "{bad}/rule_skip_typo.yaml:3: clipping.0.windw", "did you mean `window`?"),
    # --- learning-rate schedules
    Case("schedule_unknown_kind", run_config("schedule_unknown_kind.yaml"),
         "{bad}/schedule_unknown_kind.yaml:4: train.schedule.kind", "got `cosin` (did you mean `cosine`?)"),
    Case("schedule_warmup_beyond_steps", run_config("schedule_warmup_beyond_steps.yaml"),
         "{bad}/schedule_warmup_beyond_steps.yaml:6: train.schedule.warmup_steps",
         "warmup_steps must be <= train.steps (10), got 20"),
    Case("schedule_min_lr_above_lr", run_config("schedule_min_lr_above_lr.yaml"),
         "{bad}/schedule_min_lr_above_lr.yaml:6: train.schedule.min_lr",
         "min_lr must be <= the optimizer's lr (0.001), got 0.01"),
    Case("schedule_negative_warmup", run_config("schedule_negative_warmup.yaml"),
         "{bad}/schedule_negative_warmup.yaml:5: train.schedule.warmup_steps", "must be >= 0, got -5"),
    Case("schedule_negative_min_lr", run_config("schedule_negative_min_lr.yaml"),
         "{bad}/schedule_negative_min_lr.yaml:5: train.schedule.min_lr", "must be >= 0, got -0.001"),
    Case("schedule_warmup_on_cosine", run_config("schedule_warmup_on_cosine.yaml"),
         "{bad}/schedule_warmup_on_cosine.yaml:5: train.schedule.warmup_steps",
         "warmup_steps applies to kinds linear_warmup and warmup_cosine, not cosine"),
    Case("set_steps_below_warmup", ["validate", "{bad}/schedule_warmup_on_cosine.yaml", "--set",
         "train.schedule.kind=linear_warmup", "--set", "train.steps=5"],
         "--set train.steps=5: train.steps", "warmup_steps must be <= train.steps (5), got 10"),
    # --- loss scaling (train.precision)
    Case("precision_growth_factor_one", run_config("precision_growth_factor_one.yaml"),
         "{bad}/precision_growth_factor_one.yaml:5: train.precision.growth_factor", "must be > 1, got 1.0"),
    Case("precision_backoff_above_one", run_config("precision_backoff_above_one.yaml"),
         "{bad}/precision_backoff_above_one.yaml:5: train.precision.backoff_factor", "must be < 1, got 1.5"),
    Case("precision_backoff_zero", run_config("precision_backoff_zero.yaml"),
         "{bad}/precision_backoff_zero.yaml:5: train.precision.backoff_factor", "must be > 0, got 0"),
    Case("precision_unknown_compute", run_config("precision_unknown_compute.yaml"),
         "{bad}/precision_unknown_compute.yaml:4: train.precision.compute",
         "must be one of float32, float16, bfloat16; got `float8`"),
    Case("precision_float64_low_compute", run_config("precision_float64_low_compute.yaml"),
         "{bad}/precision_float64_low_compute.yaml:5: train.precision.compute",
         "compute float16 needs train.dtype float32"),
    Case("precision_growth_interval_on_static", run_config("precision_growth_interval_on_static.yaml"),
         "{bad}/precision_growth_interval_on_static.yaml:5: train.precision.growth_interval",
         "growth_interval applies to loss_scale dynamic, not static"),
    Case("precision_clip_without_scaling", run_config("precision_clip_without_scaling.yaml"),
         "{bad}/precision_clip_without_scaling.yaml:4: train.precision.clip",
         "clip applies to loss_scale static and dynamic, not none"),
    Case("precision_init_scale_subnormal", run_config("precision_init_scale_subnormal.yaml"),
         "{bad}/precision_init_scale_subnormal.yaml:5: train.precision.init_scale",
         "must be >= 1.2e-38, float32's smallest normal number"),
    Case("set_static_with_growth_interval", ["validate", "{quickstart}", "--set", "train.precision.loss_scale=static",
         "--set", "train.precision.growth_interval=10"],
         "--set train.precision.growth_interval=10: train.precision.growth_interval",
         "growth_interval applies to loss_scale dynamic, not static"),
    # --- the new tasks and the held-out split
    Case("lm_missing_file", run_config("lm_missing_file.yaml"), "{bad}/lm_missing_file.yaml:6: task.path",
         "no_such_text.txt: no such file"),
    Case("lm_directory", run_config("lm_directory.yaml"), "{bad}/lm_directory.yaml:6: task.path",
         "is a directory, expected a UTF-8 text file"),
    Case("lm_not_utf8", ["run", "{tmp}/lm.yaml", "--out", "{tmp}/out"], "{tmp}/lm.yaml:6: task.path",
         "text.txt: is not UTF-8 text (byte 0xe9 at byte offset 206)", setup=lm_text("caf\xe9".encode("latin-1"))),
    Case("lm_too_short", ["run", "{tmp}/lm.yaml", "--out", "{tmp}/out"], "{tmp}/lm.yaml:6: task.path",
         "text.txt has 400 characters; seq_len 40 needs at least 410", setup=lm_text(b"", seq_len=40)),
    Case("dyck_odd_seq_len", run_config("dyck_odd_seq_len.yaml"), "{bad}/dyck_odd_seq_len.yaml:5: task.seq_len",
         "seq_len must be even"),
    Case("recall_too_few_keys", run_config("recall_too_few_keys.yaml"),
         "{bad}/recall_too_few_keys.yaml:6: task.n_keys", "n_keys must be at least n_pairs (8)"),
    Case("eval_every_zero", run_config("eval_every_zero.yaml"), "{bad}/eval_every_zero.yaml:4: train.eval_every",
         "must be >= 1, got 0"),
    # --- not text
    Case("binary", ["run", "{tmp}/model.yaml", "--out", "{tmp}/out"], "{tmp}/model.yaml", "NUL bytes",
         proc=True, setup=write_gen("model.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)),
    Case("utf16", ["run", "{tmp}/utf16.yaml", "--out", "{tmp}/out"], "{tmp}/utf16.yaml",
         "is UTF-16 text; save it as UTF-8", proc=True, setup=write_gen("utf16.yaml", "name: a\n".encode("utf-16"))),
    Case("utf16_without_bom", ["run", "{tmp}/utf16le.yaml", "--out", "{tmp}/out"], "{tmp}/utf16le.yaml",
         "binary or UTF-16?", setup=write_gen("utf16le.yaml", "name: a\n".encode("utf-16-le"))),
    Case("latin1", ["run", "{tmp}/latin1.yaml", "--out", "{tmp}/out"], "{tmp}/latin1.yaml:2",
         "is not UTF-8 text (byte 0xe9)", setup=write_gen("latin1.yaml", "name: a\n# caf\xe9\n".encode("latin-1"))),
    Case("ten_megabytes", ["run", "{tmp}/huge.yaml", "--out", "{tmp}/out"], "{tmp}/huge.yaml",
         "config is 10.", proc=True, setup=write_gen("huge.yaml", ten_megabytes())),
    Case("endless_device", ["run", "/dev/zero", "--out", "{tmp}/out"], "/dev/zero",
         "is a character device, not a regular file"),
    Case("fifo", ["validate", "{tmp}/pipe.yaml"], "{tmp}/pipe.yaml", "is a FIFO (named pipe), not a regular file",
         proc=True, setup=lambda tmp, mp: os.mkfifo(tmp / "pipe.yaml")),
    Case("symlink_to_fifo", ["run", "{tmp}/link.yaml", "--out", "{tmp}/out"], "{tmp}/link.yaml", "is a FIFO",
         proc=True, setup=lambda tmp, mp: (os.mkfifo(tmp / "pipe"), (tmp / "link.yaml").symlink_to("pipe"))),
    # --- YAML features a config must not use; python tags must never run
    Case("python_object_apply", run_config("python_object_apply.yaml"), "{bad}/python_object_apply.yaml:2: model",
         "unsupported YAML tag !!python/object/apply:os.system", proc=True),
    Case("python_object_new", run_config("python_object_new.yaml"), "{bad}/python_object_new.yaml:3: train.steps",
         "unsupported YAML tag !!python/object/new:subprocess.Popen", proc=True),
    Case("python_exec", run_config("python_exec.yaml"), "{bad}/python_exec.yaml:2: seed",
         "unsupported YAML tag !!python/object/apply:builtins.exec", proc=True),
    Case("python_name", run_config("python_name.yaml"), "{bad}/python_name.yaml:1: name",
         "unsupported YAML tag !!python/name:os.system"),
    Case("python_tag_in_key", run_config("python_tag_in_key.yaml"), "{bad}/python_tag_in_key.yaml:2",
         "unsupported YAML tag !!python/object/apply:os.system", proc=True),
    Case("python_tag_in_set", ["run", Q, "--out", "{tmp}/out", "--set", f'name=!!python/object/apply:os.system ["touch {SENTINEL}"]'],
         "--set name=!!python/object/apply:os.system", "unsupported YAML tag", proc=True),
    Case("merge_key", run_config("merge_key.yaml"), "{bad}/merge_key.yaml:4: model", "unsupported merge keys (<<)"),
    Case("billion_laughs", run_config("billion_laughs.yaml"), "{bad}/billion_laughs.yaml:",
         "more than 100000 values (through aliases?)", proc=True),
    Case("alias_flood", run_config("alias_flood.yaml"), "{bad}/alias_flood.yaml:", "more than 100 aliases", proc=True),
    Case("deep_nesting", run_config("deep_nesting.yaml"), "{bad}/deep_nesting.yaml:2", "nested more than 32 levels"),
    # --- wrong types: no coercion
    Case("bool_for_int", run_config("bool_for_int.yaml"), "{bad}/bool_for_int.yaml:3: model.depth",
         "must be an integer, got true (bool)"),
    Case("string_for_int", run_config("string_for_int.yaml"), "{bad}/string_for_int.yaml:3: train.steps",
         "must be an integer, got `3` (str)"),
    Case("float_for_int", run_config("float_for_int.yaml"), "{bad}/float_for_int.yaml:3: model.depth",
         "must be an integer, got 3.0 (float)"),
    Case("fraction_for_int", run_config("fraction_for_int.yaml"), "{bad}/fraction_for_int.yaml:3: model.depth",
         "must be an integer, got 3.5 (float)"),
    Case("string_for_float", run_config("string_for_float.yaml"), "{bad}/string_for_float.yaml:3: train.optimizer.lr",
         "must be a number, got `0.1` (str)"),
    Case("null_for_list", run_config("null_clipping.yaml"), "{bad}/null_clipping.yaml:2: clipping",
         "must be a list, got null"),
    # --- YAML 1.1 forms that read as something other than they look
    Case("yaml11_sexagesimal", run_config("yaml11_sexagesimal.yaml"), "{bad}/yaml11_sexagesimal.yaml:3: train.steps",
         "`1:30` is 90 in YAML 1.1 (base 60, as in times)"),
    Case("yaml11_octal", run_config("yaml11_octal.yaml"), "{bad}/yaml11_octal.yaml:3: model.depth",
         "`017` is octal 15 in YAML 1.1, decimal in YAML 1.2"),
    Case("yaml11_yes", run_config("yaml11_yes.yaml"), "{bad}/yaml11_yes.yaml:3: train.optimizer.nesterov",
         "`yes` is true in YAML 1.1, a string in YAML 1.2; write true"),
    # --- numbers out of range
    Case("nan", run_config("nan_lr.yaml"), "{bad}/nan_lr.yaml:5: train.optimizer.lr", "must be finite, got nan"),
    Case("inf", run_config("inf_max_norm.yaml"), "{bad}/inf_max_norm.yaml:4: clipping.1.max_norm",
         "must be finite, got inf"),
    Case("zero_size", run_config("zero_width.yaml"), "{bad}/zero_width.yaml:4: model.width", "must be >= 1, got 0"),
    Case("negative_size", run_config("negative_batch_size.yaml"), "{bad}/negative_batch_size.yaml:4: task.batch_size",
         "must be >= 1, got -8"),
    Case("too_big_for_memory", run_config("too_big_for_memory.yaml"), "{bad}/too_big_for_memory.yaml:2: model",
         "GiB available; reduce model.width"),
    # --- names and keys
    Case("unknown_key", run_config("unknown_key.yaml"), "{bad}/unknown_key.yaml:4: model.widht",
         "unknown key `widht`; did you mean `width`?"),
    Case("unknown_top_key", run_config("unknown_top_key.yaml"), "{bad}/unknown_top_key.yaml:2: modle",
         "did you mean `model`?"),
    Case("bad_choice", run_config("bad_choice.yaml"), "{bad}/bad_choice.yaml:3: model.activation",
         "got `tahn` (did you mean `tanh`?)"),
    Case("transformer_heads", run_config("transformer_heads.yaml"), "{bad}/transformer_heads.yaml:5: model.heads",
         "width must be divisible by heads: 30 does not split into 4 heads"),
    Case("transformer_norm", run_config("transformer_norm.yaml"), "{bad}/transformer_norm.yaml:4: model.norm",
         "must be one of pre, post; got `middle`"),
    Case("transformer_max_len", run_config("transformer_max_len.yaml"),
         "{bad}/transformer_max_len.yaml:4: model.max_len", "the task's sequences (30 tokens) are longer"),
    Case("transformer_tbptt", run_config("transformer_tbptt.yaml"), "{bad}/transformer_tbptt.yaml:4: train.tbptt",
         "applies to recurrent models on sequence tasks only, not to model transformer on task copy"),
    Case("transformer_activation", run_config("transformer_activation.yaml"),
         "{bad}/transformer_activation.yaml:4: model.activation", "unknown key `activation`"),
    Case("name_slash", run_config("name_slash.yaml"), "{bad}/name_slash.yaml:1: name",
         "must be 1-64 letters, digits, - or _; got `a/b`"),
    Case("name_dotdot", run_config("name_dotdot.yaml"), "{bad}/name_dotdot.yaml:1: name", "got `..`"),
    Case("name_space", run_config("name_space.yaml"), "{bad}/name_space.yaml:1: name", "got `my experiment`"),
    Case("name_from_bad_stem", ["validate", "{tmp}/exp.v2.yaml"], "{tmp}/exp.v2.yaml: name",
         "its file name `exp.v2` is not a valid one", setup=write_gen("exp.v2.yaml", b"seed: 1\n")),
    # --- the config path
    Case("missing_file", ["run", "{tmp}/nope.yaml", "--out", "{tmp}/out"], "{tmp}/nope.yaml", "no such file"),
    Case("directory_as_config", ["run", "{bad}", "--out", "{tmp}/out"], "{bad}", "is a directory, expected a YAML file"),
    Case("unreadable_file", ["run", "{tmp}/secret.yaml", "--out", "{tmp}/out"], "{tmp}/secret.yaml",
         "permission denied: cannot read this file", setup=unreadable),
    Case("symlink_loop", ["run", "{tmp}/loop.yaml", "--out", "{tmp}/out"], "{tmp}/loop.yaml",
         "cannot read: too many levels of symbolic links", setup=lambda tmp, mp: (tmp / "loop.yaml").symlink_to("loop.yaml")),
    Case("config_under_a_file", ["validate", "{tmp}/plain/x.yaml"], "{tmp}/plain/x.yaml", "not a directory",
         setup=a_file("plain")),
    # --- options of run and sweep
    Case("thresholds_empty_item", sweep("--thresholds", "1,,2"), "--thresholds", "an empty item"),
    Case("thresholds_not_a_number", sweep("--thresholds", "abc"), "--thresholds", "`abc` is not a number"),
    Case("thresholds_negative", sweep("--thresholds", "-1"), "--thresholds", "`-1` is not a positive finite number"),
    Case("thresholds_nan", sweep("--thresholds", "nan"), "--thresholds", "`nan` is not a positive finite number"),
    Case("thresholds_missing", sweep(), "--thresholds: missing", "or a --grid axis", proc=True),
    # Grid axes (gradlab.config.grid): every bad one names --grid (or the file's grid.KEY line)
    # and the key, and the value when one value is at fault.
    Case("grid_unknown_key", sweep("--grid", "train.optimizer.lrr=0.1,1"), "--grid train.optimizer.lrr=0.1: "
         "train.optimizer.lrr", "unknown key `lrr`; did you mean `lr`?"),
    Case("grid_wrong_type", sweep("--grid", "model.depth=4,deep"), "--grid model.depth=deep: model.depth",
         "must be an integer"),
    Case("grid_one_value", sweep("--grid", "train.optimizer.lr=0.1"), "--grid: train.optimizer.lr",
         "one value (0.1); a grid axis takes two or more"),
    Case("grid_duplicates", sweep("--grid", "train.optimizer.lr=0.1,1,0.1"), "--grid: train.optimizer.lr",
         "0.1 appears twice"),
    Case("grid_same_in_the_config", sweep("--grid", "train.optimizer.lr=1,1.0"), "--grid: train.optimizer.lr",
         "1 and 1.0 are the same value"),
    Case("grid_empty", sweep("--grid", "train.optimizer.lr="), "--grid: train.optimizer.lr", "an empty list"),
    Case("grid_no_key", sweep("--grid", "0.1,1"), "--grid: 0.1,1", "expected KEY.PATH=V1,V2"),
    Case("grid_axis_twice", sweep("--grid", "model.depth=2,3", "--grid", "model.depth=4,5"), "--grid: model.depth",
         "given twice"),
    Case("grid_axis_inside_axis", sweep("--grid", "train.optimizer.lr=0.1,1", "--grid",
                                        "train.optimizer={{lr: 0.1}},{{lr: 1}}"), "--grid: train.optimizer.lr",
         "overlaps axis train.optimizer"),
    Case("grid_and_set", sweep("--grid", "model.depth=2,3", "--set", "model.depth=4"), "--grid: model.depth",
         "--set model.depth=4 sets it too"),
    Case("grid_seeds", sweep("--grid", "seeds=[0],[1]"), "--grid: seeds", "seeds are an axis of their own (--seeds)"),
    Case("grid_set_grid", sweep("--thresholds", "1", "--set", "grid.model.depth=[2,3]"), "--set grid.model.depth=[2,3]: grid",
         "the grid is given with --grid"),
    Case("grid_too_big", sweep("--grid", "model.width=64,40000"), "--grid model.width=40000: model.width",
         "GiB available"),
    Case("grid_invalid_pair", sweep("--set", "train.schedule.kind=cosine", "--grid", "train.optimizer.lr=0.1,0.0005",
                                    "--grid", "train.schedule.min_lr=0,0.001"),
         "--grid train.schedule.min_lr=0.001: train.schedule.min_lr",
         "min_lr must be <= the optimizer's lr (0.0005), got 0.001 (with train.optimizer.lr=0.0005)"),
    Case("grid_too_many_points", sweep("--grid", "train.optimizer.lr=" + ",".join(f"{i + 1}e-4" for i in range(200)),
                                       "--grid", "model.depth=" + ",".join(str(i + 1) for i in range(60))),
         "--grid: model.depth", "12,000 grid points; at most 10,000"),
    Case("grid_one_value_file", run_config("grid_one_value.yaml"), "{bad}/grid_one_value.yaml:5: grid.train.optimizer.lr",
         "one value (0.1)"),
    Case("grid_bad_point_file", run_config("grid_bad_point.yaml"), "{bad}/grid_bad_point.yaml:6: grid.train.optimizer.lr",
         "-0.5: must be > 0, got -0.5"),
    Case("grid_not_a_list_file", run_config("grid_not_a_list.yaml"),
         "{bad}/grid_not_a_list.yaml:4: grid.train.optimizer.lr", "must be a list of two or more values"),
    Case("thresholds_subnormal", sweep("--thresholds", "1,1e-320"), "--thresholds: sweep.thresholds",
         "a threshold must be >= 1.2e-38, about the smallest normal float32 (train.dtype), got 1e-320", proc=True),
    Case("thresholds_subnormal_float64", sweep("--thresholds", "1e-320", "--set", "train.dtype=float64"),
         "--thresholds: sweep.thresholds", "must be >= 2.3e-308, about the smallest normal float64"),
    Case("thresholds_beyond_float32", sweep("--thresholds", "1e39"), "--thresholds: sweep.thresholds",
         "must be <= 3.4e+38, about the largest float32 (train.dtype), got 1e+39"),
    Case("set_clip_value_subnormal", ["validate", Q, "--set", "clipping.1={{method: value, clip_value: 1e-40}}"],
         "--set clipping.1={{method: value, clip_value: 1e-40}}: clipping.1.clip_value",
         "clip_value must be >= 1.2e-38, about the smallest normal float32"),
    Case("method_unknown", sweep("--thresholds", "1", "--method", "clip"), "--method",
         "must be one of norm, value, per_tensor, agc, autoclip, zclip, skip; got `clip` (did you mean `zclip`?)"),
    Case("seeds_negative", ["run", Q, "--out", "{tmp}/out", "--seeds", "-1"], "--seeds", "got `-1`"),
    Case("seeds_sweep_not_a_number", sweep("--thresholds", "1", "--seeds", "0,x"), "--seeds", "got `x`"),
    Case("seeds_twice", ["run", Q, "--out", "{tmp}/out", "--seeds", "0,0"], "--seeds", "seeds must be distinct"),
    Case("workers_zero", ["run", Q, "--out", "{tmp}/out", "--workers", "0"], "Invalid value for '--workers'", ""),
    Case("workers_zero_sweep", sweep("--thresholds", "1", "--workers", "0"), "Invalid value for '--workers'", ""),
    Case("workers_not_a_number", ["run", Q, "--out", "{tmp}/out", "--workers", "two"],
         "Invalid value for '--workers'", "unable to parse string as an integer"),
    Case("set_without_equals", ["run", Q, "--out", "{tmp}/out", "--set", "model.depth"],
         "--set: model.depth", "expected key.path=value"),
    Case("set_unknown_key", ["run", Q, "--out", "{tmp}/out", "--set", "model.depht=3"],
         "--set model.depht=3: model.depht", "did you mean `depth`?"),
    Case("set_mistyped_value", ["run", Q, "--out", "{tmp}/out", "--set", "model.depth=abc"],
         "--set model.depth=abc: model.depth", "must be an integer, got `abc` (str)"),
    Case("set_bool_for_int", ["run", Q, "--out", "{tmp}/out", "--set", "train.steps=true"],
         "--set train.steps=true: train.steps", "must be an integer, got true (bool)"),
    Case("set_yaml11_yes", ["run", Q, "--out", "{tmp}/out", "--set", "train.steps=yes"],
         "--set train.steps=yes: train.steps", "`yes` is true in YAML 1.1, a string in YAML 1.2; write true"),
    Case("set_yaml11_hex", ["validate", Q, "--set", "train.steps=0x1F"],
         "--set train.steps=0x1F: train.steps", "`0x1F` is a hexadecimal number; gradlab reads decimal numbers only"),
    Case("set_bad_index", ["run", Q, "--out", "{tmp}/out", "--set", "clipping.7.max_norm=1"],
         "--set clipping.7.max_norm=1: clipping.7", "is not an index in it"),
    Case("set_yaml_syntax", ["run", Q, "--out", "{tmp}/out", "--set", "model.depth=[1"],
         "--set model.depth=[1: model.depth", "YAML syntax error"),
    Case("set_tbptt_on_an_mlp", ["run", Q, "--out", "{tmp}/out", "--set", "train.tbptt=5"],
         "--set train.tbptt=5: train.tbptt", "recurrent models on sequence tasks only"),
    Case("set_model_kind_that_cannot_learn_the_task", ["validate", Q, "--set", "model.kind=rnn"],
         "--set model.kind=rnn: model.kind", "model rnn cannot learn task teacher"),
    Case("set_task_kind_leaves_a_key_of_the_old_one", ["validate", Q, "--set", "task.kind=copy"],
         "--set task.kind=copy: task.input_dim", "`input_dim` ({quickstart} line 17) does not apply to kind `copy`"),
    Case("set_method_leaves_a_key_of_the_old_one", ["run", Q, "--out", "{tmp}/out", "--set", "clipping.1.method=value",
         "--set", "clipping.1.clip_value=0.1"], "--set clipping.1.method=value: clipping.1.max_norm",
         "`max_norm` ({quickstart} line 25) does not apply to method `value`, which --set clipping.1.method=value chose"),
    Case("unknown_option", ["run", Q, "--out", "{tmp}/out", "--bogus"], "No such option: --bogus", ""),
    Case("option_of_another_command", ["plot", "--thresholds", "1"], "No such option: --thresholds",
         "(--thresholds is an option of sweep, not of plot)"),
    Case("option_of_other_commands", ["validate", Q, "--workers", "2"], "No such option: --workers",
         "(--workers is an option of run, sweep and reproduce, not of validate)"),
    Case("option_before_the_command", ["--seeds", "1", "validate", Q], "No such option: --seeds",
         "(an option of run, sweep and validate: give it after the command name)"),
    # --- where results go
    Case("out_under_a_file", ["run", Q, "--out", "{tmp}/plain/sub"], "--out", "{tmp}/plain is a file, not a directory",
         setup=a_file("plain")),
    Case("out_in_proc", ["run", Q, "--out", "/proc/gradlab-bad-input/out"], "/proc/gradlab-bad-input",
         "cannot create this directory"),
    Case("out_read_only", ["run", Q, "--out", "{tmp}/out"], "{tmp}/out/quickstart-", "(read-only file system)",
         setup=file_system_error(errno.EROFS)),
    Case("out_permission_denied", ["run", Q, "--out", "{tmp}/out"], "{tmp}/out/quickstart-", "(permission denied)",
         setup=file_system_error(errno.EACCES)),
    Case("rerun_read_only", ["run", Q, *SMALL, "--no-plots", "--out", "{tmp}/out"], "{tmp}/out/quickstart-",
         "/.lock: cannot write (read-only file system)", setup=file_system_error(errno.EROFS, experiment=True)),
    Case("plot_read_only", ["plot", "--out", "{tmp}/out"], "{tmp}/out/quickstart-", "/plots: cannot create this directory (read-only file system)",
         setup=file_system_error(errno.EROFS, experiment=True)),
    Case("report_permission_denied", ["report", "--out", "{tmp}/out"], "{tmp}/out/quickstart-",
         "cannot write this file (permission denied)", setup=file_system_error(errno.EACCES, experiment=True)),
    # --- plot and report
    Case("plot_missing_experiment", ["plot", "{tmp}/nowhere"], "{tmp}/nowhere", "no such experiment directory"),
    Case("report_missing_experiment", ["report", "{tmp}/nowhere"], "{tmp}/nowhere", "no such experiment directory"),
    Case("plot_nothing_under_out", ["plot", "--out", "{tmp}/out"], "{tmp}/out", "no experiment found"),
    Case("report_out_is_a_file", ["report", "--out", "{tmp}/plain"], "{tmp}/plain", "no experiment found",
         setup=a_file("plain")),
    Case("plot_a_file", ["plot", "{tmp}/plain"], "{tmp}/plain", "is a file; expected an experiment directory",
         setup=a_file("plain")),
    Case("plot_foreign_directory", ["plot", "{tmp}/exp"], "{tmp}/exp", "not a gradlab experiment directory",
         setup=experiment_like(None)),
    Case("report_foreign_directory", ["report", "{tmp}/exp"], "{tmp}/exp", "not a gradlab experiment directory",
         setup=experiment_like(None)),
    Case("report_foreign_config", ["report", "{tmp}/exp"], "{tmp}/exp/config.yaml",
         "`seeds` is missing; gradlab writes every key", setup=experiment_like("name: mine\n")),
    Case("report_broken_config", ["report", "{tmp}/exp"], "{tmp}/exp/config.yaml:2",
         "YAML syntax error", setup=experiment_like("model: [1\n")),
    Case("plot_foreign_config_list", ["plot", "{tmp}/exp"], "{tmp}/exp/config.yaml",
         "got a list (is {tmp}/exp a gradlab experiment directory?)", setup=experiment_like("- 1\n- 2\n")),
    Case("plot_no_complete_run", ["plot", "--out", "{tmp}/outs"], "{tmp}/outs/quickstart-",
         "no complete run to plot yet", setup=real_experiment_without_runs),
    Case("plot_unknown_option", ["plot", "--bogus"], "No such option: --bogus", ""),
]


def snapshot(*roots: Path) -> dict:
    """Every path under the roots with its size and mtime: anything written changes it."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            if p.exists() or p.is_symlink():
                st = p.lstat()
                out[p] = (st.st_size, st.st_mtime_ns)
    return out


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def within_time(wall: float, cpu: float, by_cpu: bool, what: str) -> None:
    """Under 2 s. In this process that is wall time (a case takes ~20 ms). A new process
    spends ~0.3 s starting Python alone, and on a shared 2-core machine (load 5) its wall time
    passed 2 s with the work unchanged: there the bound is its CPU time, and wall time only
    has to show that nothing hung."""
    if by_cpu:
        assert cpu < TIME_LIMIT and wall < HANG_LIMIT, f"{what}: {cpu:.2f} s CPU, {wall:.2f} s wall"
    else:
        assert wall < TIME_LIMIT, f"{what} took {wall:.2f} s"


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_process(args: list, cwd: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "GRADLAB_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "gradlab.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, preexec_fn=limit_memory)
    return proc.returncode, proc.stderr


def test_the_corpus_is_large_and_every_file_is_used():
    assert len(CASES) >= 35 and len({c.id for c in CASES}) == len(CASES)
    used = {a for c in CASES for a in c.args}
    unused = [p.name for p in BAD.glob("*.yaml") if f"{{bad}}/{p.name}" not in used]
    assert not unused


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"  # the working directory: `outputs/` would land here
    work.mkdir()
    if case.setup:
        case.setup(tmp_path, monkeypatch)
    fmt = dict(bad=BAD, tmp=tmp_path, root=ROOT, quickstart=QUICKSTART)
    args = [a.format(**fmt) for a in case.args]
    where = case.where.format(**fmt)
    before = snapshot(tmp_path, BAD)

    start, cpu = time.perf_counter(), cpu_seconds()
    if case.proc:
        code, err = run_process(args, work)
    else:
        capsys.readouterr()
        code = cli(*args, cwd=work)
        err = capsys.readouterr().err
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    monkeypatch.undo()  # before the checks: they must see the real file system

    assert code == 2, err
    assert "Traceback" not in err
    m = ERROR_LINE.fullmatch(err)
    assert m, f"not exactly one error line: {err!r}"
    assert m["message"].startswith(where), m["message"]
    assert case.want.format(**fmt) in m["message"]
    assert snapshot(tmp_path, BAD) == before, "something was written"
    assert not (work / SENTINEL).exists() and not (ROOT / SENTINEL).exists()
    assert not Path("/proc/gradlab-bad-input").exists()
    within_time(elapsed, cpu, case.proc, case.id)


# ----------------------------------------------------------------------------- a disk that fills up

TINY = ["--set", "train.steps=5", "--set", "model.depth=3", "--seeds", "0,1", "--no-plots", "--quiet",
        "--workers", "1"]  # in this process, where the simulated disk is


def files(root: Path) -> dict:
    """Relative path -> bytes of every result file (the lock is not a result)."""
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".lock")}


def test_disk_full_mid_run_keeps_finished_runs_and_the_next_run_completes_the_rest(tmp_path, monkeypatch, capsys):
    """ENOSPC is bad input's cousin: exit 2, one line naming the file that could not be
    written, every run finished before it kept whole, no temporary file, nothing half-written;
    once there is space again the same command computes only what is missing."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli("run", QUICKSTART, *TINY, "--out", ref) == 0
    (ref_exp,) = ref.iterdir()
    expected = files(ref_exp)
    # config.yaml, .lock.owner, 3 files x 3 runs of seed 0, then the first run of seed 1: the
    # disk fills up while the second run of seed 1 is being written (its layer_norms.csv).
    room = 2 + 3 * 3 + 3 + 1
    real_fsync, writes = os.fsync, []

    def fsync(fd):
        writes.append(fd)
        if len(writes) > room:  # the data is in the temporary file, half of it on a real disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    capsys.readouterr()
    start, cpu = time.perf_counter(), cpu_seconds()
    code = cli("run", QUICKSTART, *TINY, "--out", out)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    monkeypatch.undo()
    err = capsys.readouterr().err

    assert code == 2, err
    m = ERROR_LINE.fullmatch(err)
    assert m and "Traceback" not in err, err
    (exp,) = out.iterdir()
    assert m["message"].startswith(f"{exp}/runs/norm-1-s1/layer_norms.csv: cannot write this file (no space left on device;")
    assert m["message"].endswith(f"; 4 complete run(s) kept in {exp}")
    within_time(elapsed, cpu, True, "disk full")  # training: NumPy, whose time the load stretches
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    broken = files(exp)
    complete = {p.parent.name for p in broken if p.name == "report.json"}
    assert complete == {"none-s0", "norm-1-s0", "norm-10-s0", "none-s1"}
    for rel, data in broken.items():  # every file there is whole: what a run with room writes
        assert data == expected[rel], rel
    kept = {p: p.stat().st_mtime_ns for p in exp.rglob("report.json")}

    assert cli("run", QUICKSTART, *TINY, "--out", out) == 0  # space is back
    assert exp.name == ref_exp.name and files(exp) == expected
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished runs were not recomputed
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


HUGE = "x" * 100_000
HUGE_SEEDS = ",".join(map(str, range(20_001)))
HUGE_VALUES = [  # (what, args) with one huge value in each option and argument of each command
    *[(f"{cmd}-{what}", [cmd, *pre, *args]) for cmd, pre in
      [("run", [Q]), ("sweep", [Q, "--thresholds", "1"]), ("validate", [Q])] for what, args in [
          ("seeds", ["--seeds", HUGE_SEEDS]), ("seeds-item", ["--seeds", "1," + HUGE]),
          ("set", ["--set", HUGE]), ("set-key", ["--set", HUGE + "=1"]), ("set-value", ["--set", "model.depth=" + HUGE]),
          ("set-name", ["--set", "name=" + HUGE]), ("set-list", ["--set", f"seeds=[{HUGE_SEEDS}]"]),
          ("set-tag", ["--set", f"name=!!{HUGE} 1"]), ("set-hex", ["--set", "model.depth=0x" + "f" * 100_000]),
          ("extra-argument", [HUGE]), ("unknown-option", ["--" + HUGE])]],
    *[(f"{cmd}-workers", [cmd, Q, "--workers", HUGE]) for cmd in ("run", "sweep")],
    ("sweep-thresholds", ["sweep", Q, "--thresholds", HUGE_SEEDS]),
    ("sweep-thresholds-item", ["sweep", Q, "--thresholds", "1," + HUGE]),
    ("sweep-method", ["sweep", Q, "--thresholds", "1", "--method", HUGE]),
    *[(f"{cmd}-{what}", [cmd, *args]) for cmd in ("plot", "report") for what, args in [
        ("unknown-option", ["--" + HUGE]), ("extra-argument", ["{tmp}", HUGE])]],
    ("unknown-command", [HUGE]),
    *[(f"{cmd}-config", [cmd, "{tmp}/" + HUGE + ".yaml"]) for cmd in ("run", "validate")],
    *[(f"{cmd}-out", [cmd, Q, "--out", "{tmp}/" + HUGE]) for cmd in ("run", "validate")],
    *[(f"{cmd}-out", [cmd, "--out", "{tmp}/" + HUGE]) for cmd in ("plot", "report")],
    *[(f"{cmd}-experiment", [cmd, "{tmp}/" + HUGE]) for cmd in ("plot", "report")],
]


@pytest.mark.parametrize("what, args", HUGE_VALUES, ids=[w for w, _ in HUGE_VALUES])
def test_a_huge_value_in_any_option_gives_a_short_line(what, args, tmp_path, capsys, monkeypatch):
    """`--seeds $(seq -s, 0 20000)` and the like: what the message echoes is cut, so the one
    line stays readable."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # a crash log, if any, goes here
    fmt = dict(tmp=tmp_path, quickstart=QUICKSTART)
    capsys.readouterr()
    code = cli(*[a.format(**fmt) if len(a) < 1000 else a.replace("{tmp}", str(tmp_path)) for a in args],
               cwd=tmp_path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400, f"{len(err)} characters: {err[:500]!r}"
    assert code == 2 and ERROR_LINE.fullmatch(err), err


@pytest.mark.parametrize("args", [["run", "{quickstart}", "--out", "{tmp}/" + "x" * 5000],
                                  ["plot", "{tmp}/" + "x" * 5000]])
def test_a_path_too_long_for_the_os_is_bad_input(args, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    capsys.readouterr()
    code = cli(*[a.format(tmp=tmp_path, quickstart=QUICKSTART) for a in args])
    assert code == 2, capsys.readouterr().err


def test_did_you_mean_suggests_only_the_commands_own_options(capsys):
    """Every option of every command, and typos of it, given to each other command."""
    import typer

    from gradlab.cli import app

    group = typer.main.get_command(app)
    options = {name: {o for p in cmd.params for o in p.opts if o.startswith("--")} | {"--help"}
               for name, cmd in group.commands.items()}
    every = set().union(*options.values())
    assert {"--thresholds", "--workers", "--force", "--seeds"} <= every
    for name, own in options.items():
        for typo in sorted({t for o in every - own for t in (o, o[:-1], o + "s", o[:3] + o[4:])} - own):
            capsys.readouterr()
            assert cli(name, *(["{x}.yaml"] if name in ("run", "sweep", "validate") else []), typo) == 2
            err = capsys.readouterr().err
            m = re.search(r"\(Possible options: ([^)]*)\)", err)
            suggested = set(m.group(1).split(", ")) if m else set()
            assert suggested <= own, f"gradlab {name} {typo}: {err}"


def test_the_extreme_thresholds_allowed_train_and_plot_without_a_warning(tmp_path):
    """The smallest and largest threshold float32 allows, through a real process: exit 0, no
    Python warning on stderr, run ids that read as the thresholds given."""
    proc = subprocess.run([sys.executable, "-m", "gradlab.cli", "sweep", str(QUICKSTART), "--thresholds", "1.2e-38,3.4e38",
                           *SMALL, "--out", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    (exp,) = tmp_path.glob("quickstart-*")
    assert sorted(p.name for p in (exp / "runs").iterdir()) == ["none-s0", "norm-1.2e-38-s0", "norm-3.4e+38-s0"]
    assert (exp / "plots" / "sweep_grad_norm_s0.png").is_file()


def test_stdin_that_is_a_pipe_is_refused_without_waiting_for_it(tmp_path):
    """`gradlab validate /dev/stdin` with a writer that never closes the pipe."""
    proc = subprocess.Popen([sys.executable, "-m", "gradlab.cli", "validate", "/dev/stdin"], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=HANG_LIMIT)  # with stdin open: nothing is ever written to it
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("blocked reading a pipe")
    _, err = proc.communicate()
    assert proc.returncode == 2 and ERROR_LINE.fullmatch(err), err
    assert "/dev/stdin: is a FIFO (named pipe), not a regular file" in err


def test_a_user_error_crosses_a_process_boundary_whole():
    """Worker processes send their errors to the parent by pickling."""
    import pickle

    from gradlab.errors import UserError

    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "x")
        except OSError as cause:
            raise UserError("cannot write this file", file="a/b.csv", key="k", line=3) from cause
    except UserError as e:
        copy = pickle.loads(pickle.dumps(e))
    assert (str(copy), copy.file, copy.key, copy.line) == ("a/b.csv:3: k: cannot write this file", "a/b.csv", "k", 3)
    assert isinstance(copy.__cause__, OSError) and copy.__cause__.errno == errno.ENOSPC


def test_disk_full_while_worker_processes_train_is_exit_2(tmp_path, monkeypatch, capsys):
    args = [*TINY[:-1], "2"]  # --workers 2: seeds in forked processes, their runs written by this one
    real_fsync, writes = os.fsync, []

    def fsync(fd):  # config, lock owner, then the runs as they come back
        writes.append(fd)
        if len(writes) > 2 + 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # a crash log, while this fails, goes here
    capsys.readouterr()
    code = cli("run", QUICKSTART, *args, "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2 and ERROR_LINE.fullmatch(err) and "no space left on device" in err, err
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
