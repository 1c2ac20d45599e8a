"""The documentation: the mkdocs site builds with --strict (no broken link or anchor, no page left out
of the nav), its reference pages hold every config key and every command the code has, and the README
stays a front page whose links resolve and whose setup and test commands are the ones CI runs."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess

import pytest
from markdown.extensions.toc import slugify

from conftest import BIN, ROOT

README = ROOT / "README.md"


def _build(config, site, cwd=ROOT) -> subprocess.CompletedProcess:
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}  # Material's notice about its successor, not a problem
    return subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    proc = _build(ROOT / "mkdocs.yml", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _text(html_file) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", html_file.read_text()))


def test_every_page_under_docs_is_built(site):
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md"))
    assert len(pages) >= 15, pages
    for page in pages:
        name = "" if page.stem in ("index", "README") else page.stem
        assert (site / page.parent / name / "index.html").is_file(), page


def test_the_config_reference_holds_every_key_of_every_model(site):
    from ftscale.config import ExperimentConfig
    from ftscale.docs_reference import config_rows
    from ftscale.eval.evaluators import EVALUATORS
    from ftscale.sweepconfig import SweepConfig

    page = _text(site / "reference" / "config" / "index.html")
    keys = [k for k, *_ in config_rows(ExperimentConfig)]
    # nested sections are walked, not only the top level
    assert {"train.lora.r", "train.watchdog.patience", "eval.batch_size", "cost.prices"} <= set(keys)
    assert set(ExperimentConfig.model_fields) <= set(keys)
    for key, *_ in config_rows(ExperimentConfig) + config_rows(SweepConfig):
        assert f"{key}" in page, key
    for name, ev in EVALUATORS.items():
        assert name in page, name
        for key, *_ in config_rows(ev.params):
            assert key in page, (name, key)
    # a Literal's choices are listed (what the file may say), and each key's description
    assert "openai_chat | alpaca | sharegpt | prompt_completion" in page
    assert ExperimentConfig.model_fields["num_train_examples"].description in page


def test_the_commands_reference_holds_every_command_and_flag(site):
    import argparse

    from ftscale.cli import build_parser
    from ftscale.docs_reference import _subcommands

    page = _text(site / "reference" / "commands" / "index.html")

    def walk(parser, path):
        for name, sub, _ in _subcommands(parser):
            here = [*path, name]
            assert f"ftscale {' '.join(here)}" in page, here
            if here == ["distill"]:
                continue  # its flags are its own parser's, checked below
            for action in sub._actions:
                for flag in action.option_strings:
                    if flag.startswith("--") and not isinstance(action, argparse._HelpAction):
                        assert flag in page, (here, flag)
            walk(sub, here)

    walk(build_parser(), [])
    assert "--teacher" in page and "--prices" in page  # distill's own parser
    assert "dashes or underscores" in page  # the flag rule, said once


def test_a_page_left_out_of_the_nav_or_a_broken_link_fails_the_build(tmp_path):
    """The validation settings are what make --strict catch these: a copy of the site with an orphan
    page and a dead link must not build."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "ftscale").mkdir()
    shutil.copy(ROOT / "ftscale" / "docs_reference.py", tmp_path / "ftscale" / "docs_reference.py")
    (tmp_path / "docs" / "orphan.md").write_text("# Not in the nav\n")
    with open(tmp_path / "docs" / "statistics.md", "a") as f:
        f.write("\nSee [nowhere](no-such-page.md).\n")
    proc = _build(tmp_path / "mkdocs.yml", tmp_path / "site", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "orphan.md" in out and "not included in the \"nav\"" in out, out[-2000:]
    assert "no-such-page.md" in out, out[-2000:]


def _links(markdown: str) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", markdown) if not t.startswith(("http://", "https://", "#"))]


def _anchors(path) -> set[str]:
    return {slugify(h.strip("#").strip(), "-") for h in path.read_text().splitlines() if h.startswith("#")}


def test_the_readme_is_a_front_page_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    links = _links(text)
    assert any(t.startswith("docs/getting-started.md") for t in links)
    for target in links:
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), target
        if anchor:
            assert anchor in _anchors(ROOT / path), target


def test_ci_runs_exactly_the_readmes_setup_and_test_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if line.strip()]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["make setup", "make test"]
    assert commands[0] == "make setup" and "make test" in commands
    # the main job the README shows is the Makefile's
    main_job = next(c for c in commands if " run " in c)
    assert main_job.removeprefix(".venv/bin/ftscale ") in (ROOT / "Makefile").read_text().replace("$(BIN)/ftscale ", "")
