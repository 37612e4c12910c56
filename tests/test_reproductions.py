"""The reproduction framework (`gradlab reproduce`) and the contract every registered
reproduction keeps: its configs load, its docs section exists, its fields say what it is."""

import re
from pathlib import Path

import pytest

import gradlab.reproductions as registry
from gradlab.errors import UserError
from gradlab.io import read_json
from gradlab.reproductions import Context, Outcome, Reproduction, reproductions
from gradlab.reproductions.runner import load_configs, papers_dir, run_reproduction

from conftest import cli

ROOT = Path(__file__).resolve().parents[1]
KNOWN = reproductions()


@pytest.mark.parametrize("name", list(KNOWN))
def test_every_reproduction_keeps_the_contract(name):
    rep = KNOWN[name]
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", rep.name)
    assert rep.title.strip() and rep.paper.strip() and rep.claim.strip()
    assert rep.minutes > 0 and rep.configs
    cfgs = load_configs(rep)  # every shipped config loads as it is
    assert list(cfgs) == [Path(c).stem for c in rep.configs]
    assert (ROOT / "docs" / "reproductions" / f"{name}.md").is_file()


def test_every_paper_config_belongs_to_a_reproduction():
    owned = {c for rep in KNOWN.values() for c in rep.configs}
    shipped = {p.name for p in (ROOT / "configs" / "papers").glob("*.yaml")}
    assert shipped <= owned, f"configs/papers/ files no reproduction runs: {sorted(shipped - owned)}"


def test_docs_page_is_assembled_from_the_sections_and_the_registry():
    """docs/reproductions.md is generated; a section or a title edited without rerunning
    `python docs/assemble_reproductions.py` leaves it stale."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("assemble", ROOT / "docs" / "assemble_reproductions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "reproductions.md").read_text(encoding="utf-8")
    assert page == module.assemble(), "docs/reproductions.md is stale: run python docs/assemble_reproductions.py"
    for figure in re.findall(r"\]\((reproductions/[\w.-]+\.png)\)", page):
        assert (ROOT / "docs" / figure).is_file(), figure


def test_papers_dir_is_the_checkouts():
    assert papers_dir() == ROOT / "configs" / "papers"


TINY = """\
name: tiny_repro
seeds: [0]
model: {kind: mlp, depth: 2, width: 8, activation: tanh}
task: {kind: teacher, input_dim: 4, output_dim: 2, batch_size: 8}
train: {steps: 6}
clipping:
  - {method: none}
  - {method: norm, max_norm: 0.5}
"""


def _fake(seen: list) -> Reproduction:
    def analyse(ctx: Context) -> Outcome:
        seen.append(ctx)
        (ctx.plots / "figure.txt").write_text("drawn")
        steps = ctx.configs["tiny"].train.steps
        n = len(list((ctx.experiments["tiny"] / "runs").glob("*/report.json")))
        return Outcome("partly", f"{n} runs of {steps} steps", f"measured: {n} runs, {steps} steps")

    return Reproduction(name="fake-paper", title="Fake et al. 2099, Figure 1", paper="Fake et al. (2099)",
                        claim="Clipping helps.", configs=("tiny.yaml",), analyse=analyse, minutes=0.1)


@pytest.fixture
def papers(tmp_path):
    d = tmp_path / "papers"
    d.mkdir()
    (d / "tiny.yaml").write_text(TINY)
    return d


def test_a_reproduction_runs_its_configs_analyses_and_writes_its_page(tmp_path, papers):
    seen = []
    rep = _fake(seen)
    root = run_reproduction(rep, tmp_path / "out", configs_dir=papers, plots=False)
    assert root == tmp_path / "out" / "reproductions" / "fake-paper"
    ctx = seen[0]
    assert ctx.experiments["tiny"].parent == root and (ctx.experiments["tiny"] / "summary.json").is_file()
    assert (root / "plots" / "figure.txt").read_text() == "drawn"
    page = (root / "reproduction.md").read_text()
    for part in ("# Fake et al. 2099, Figure 1", "## The paper's claim\n\nClipping helps.",
                 "measured: 2 runs, 6 steps", "## Verdict: partly\n\n2 runs of 6 steps",
                 "`gradlab reproduce fake-paper`", "configs/papers/tiny.yaml", "2 run(s) trained, 0 already complete"):
        assert part in page
    rec = read_json(root / "reproduction.json")
    assert rec["verdict"] == "partly" and rec["runs_trained"] == 2 and rec["sets"] == []
    # Again: nothing trains, the analysis runs again on the same experiment.
    run_reproduction(rep, tmp_path / "out", configs_dir=papers, plots=False)
    rec = read_json(root / "reproduction.json")
    assert (rec["runs_trained"], rec["runs_reused"]) == (0, 2) and seen[1].experiments == seen[0].experiments


def test_overrides_reach_every_config_and_the_page_says_so(tmp_path, papers):
    seen = []
    root = run_reproduction(_fake(seen), tmp_path, sets=["train.steps=3"], configs_dir=papers, plots=False)
    assert seen[0].configs["tiny"].train.steps == 3 and seen[0].sets == ("train.steps=3",)
    page = (root / "reproduction.md").read_text()
    assert "`gradlab reproduce fake-paper --set train.steps=3`" in page and "not the shipped setting" in page


def test_a_bad_override_is_refused_before_anything_is_written(tmp_path, papers):
    with pytest.raises(UserError, match="--set train.stepz"):
        run_reproduction(_fake([]), tmp_path / "out", sets=["train.stepz=3"], configs_dir=papers)
    assert not (tmp_path / "out").exists()


def test_an_analysis_must_give_a_verdict_it_can_defend():
    with pytest.raises(ValueError, match="verdict"):
        Outcome("mostly", "why", "body")
    with pytest.raises(ValueError, match="why"):
        Outcome("not", " ", "body")


@pytest.fixture
def fake_registry(monkeypatch, papers):
    rep = _fake([])
    monkeypatch.setattr(registry, "reproductions", lambda: {rep.name: rep})
    import gradlab.reproductions.runner as runner

    monkeypatch.setattr(runner, "papers_dir", lambda: papers)
    return rep


def test_cli_lists_runs_and_refuses(tmp_path, capsys, fake_registry):
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    assert cli("reproduce") == 0
    out = capsys.readouterr().out
    assert "fake-paper" in out and "configs in configs/papers/" in out and "tiny.yaml" in out
    assert cli("reproduce", "fake-papr", "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert "NAME: no reproduction `fake-papr` (did you mean `fake-paper`?)" in err and not list(tmp_path.iterdir())
    assert cli("reproduce", "fake-paper", "--all", "--out", tmp_path) == 2
    assert cli("reproduce", "fake-paper", "--set", "train.steps=0", "--out", tmp_path) == 2
    assert "train.steps" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert cli("reproduce", "--all", "--out", tmp_path, "--quiet", "--no-plots", "--workers", "1") == 0
    page = Path(capsys.readouterr().out.strip())
    assert page == tmp_path / "reproductions" / "fake-paper" / "reproduction.md" and page.is_file()
