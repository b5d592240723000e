"""The documentation cannot rot: its examples run, its catalogues and hook reference are complete.

- every ```python block of the quickstart and migration pages runs, in order, in one namespace
  per page, in a temporary working directory;
- the catalogue generator of ``docs/hooks.py`` (what the mkdocs build renders) lists every
  name the registry has, for every kind;
- every hook of ``ddkit.hookspecs`` appears in ``docs/plugins.md`` with its exact signature.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch
from _modules import load_module

import ddkit
from ddkit import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: Pages whose Python blocks are executed, and their CI budget (they train and sample tiny models).
EXECUTED_PAGES = ("quickstart.md", "migrating-guided-diffusion.md", "from-diffusers.md")
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of ``docs/<page>``, in order."""
    return _BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))


def _hooks_module() -> ModuleType:
    return load_module("ddkit_docs_hooks", DOCS / "hooks.py")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_page_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page)
    assert blocks, f"docs/{page} has no ```python blocks to run"
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    namespace: dict[str, object] = {"__name__": f"docs_{page.replace('-', '_').removesuffix('.md')}"}
    try:
        for i, block in enumerate(blocks, 1):
            code = compile(block, f"docs/{page} (python block {i})", "exec")
            exec(code, namespace)  # running the documentation is the point
    finally:
        torch.set_num_threads(threads)


def test_python_block_extraction() -> None:
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x + 1\n```\n"
    assert _BLOCK.findall(text) == ["x = 1\n", "y = x + 1\n"]


@pytest.mark.parametrize("kind", ddkit.KINDS)
def test_catalogue_lists_every_registered_name(kind: str) -> None:
    hooks = _hooks_module()
    page = hooks.catalogue_markdown(kind)
    names = ddkit.names(kind)
    assert names, f"no {kind} is registered: the catalogue test needs the four packages installed"
    missing = [name for name in names if f"## `{name}`" not in page]
    assert not missing, f"the {kind} catalogue lacks {missing}"
    assert kind in hooks.CATALOGUE_PAGES


def test_catalogue_shows_parameters_and_papers() -> None:
    page = _hooks_module().catalogue_markdown("sampler")
    assert "`eta`: `float = 0.0`" in page  # ddim's parameter, from its factory's signature
    assert "arxiv.org/abs/2010.02502" in page  # the DDIM paper


def test_catalogue_pages_are_in_the_nav() -> None:
    hooks = _hooks_module()
    nav = (DOCS.parent / "mkdocs.yml").read_text(encoding="utf-8")
    for path in hooks.CATALOGUE_PAGES.values():
        assert path in nav, f"mkdocs.yml's nav does not list the generated page {path}"
    assert "plugins.md" in nav


def _signature(name: str) -> str:
    fn = getattr(hookspecs, name)
    returns = inspect.signature(fn).return_annotation
    params = ", ".join(inspect.signature(fn).parameters)
    return f"{name}({params}) -> {returns}"


def test_every_hookspec_is_documented_in_plugins_page() -> None:
    page = (DOCS / "plugins.md").read_text(encoding="utf-8")
    hooks = sorted(hookspecs.HOOK_BY_KIND.values())
    declared = sorted(n for n, f in vars(hookspecs).items() if n.startswith("ddkit_") and callable(f))
    assert hooks == declared, "HOOK_BY_KIND and the hookspec functions disagree"
    missing = [_signature(name) for name in hooks if _signature(name) not in page]
    assert not missing, f"docs/plugins.md does not document the hooks {missing}"


def test_hookspec_signature_text() -> None:
    assert _signature("ddkit_samplers") == "ddkit_samplers() -> list[Record]"


@pytest.mark.parametrize("kind", ddkit.KINDS)
def test_committed_catalogue_pages_list_every_installed_name(kind: str) -> None:
    """Links to catalogue/*.md resolve in a checkout: the committed pages exist and are current."""
    hooks = _hooks_module()
    page = DOCS / hooks.CATALOGUE_PAGES[kind]
    assert page.is_file(), f"{page} is missing: run `python docs/hooks.py` to write the catalogue pages"
    text = page.read_text(encoding="utf-8")
    missing = [name for name in ddkit.names(kind) if f"`{name}`" not in text]
    assert not missing, f"{page} lacks {missing}: run `python docs/hooks.py` to rewrite it"
