"""mkdocs hooks: the component catalogues, generated from the installed registry at build time.

Each kind in :data:`ddkit.KINDS` gets one page, ``catalogue/<kind>s.md``, listing every name
``ddkit.names(kind)`` returns, with its summary, the distribution that registers it, the paper
it implements and the parameters of its factory (``ddkit.describe``). The pages therefore list
exactly what is installed where the docs are built. ``tests/test_docs.py`` calls
:func:`catalogue_markdown` directly and checks that no registered name is missing.

The pages are also committed under ``docs/catalogue/`` (``python docs/hooks.py`` rewrites
them from the installed registry), so that links to them resolve when reading a checkout; the
site build regenerates them.

Links from a page to files outside ``docs/`` (``../examples/...``, ``../packages/...``) are
not pages of the site: :func:`on_page_markdown` turns them into code spans naming the
repository path, so a strict build does not fail on them.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import ddkit

#: Page of the catalogue of each kind, relative to ``docs/``.
CATALOGUE_PAGES: dict[str, str] = {kind: f"catalogue/{kind}s.md" for kind in ddkit.KINDS}

_TITLES = {
    "schedule": "Noise schedules",
    "parameterization": "Parameterizations",
    "model": "Models",
    "sampler": "Samplers",
    "guidance": "Guidance",
    "resampler": "Timestep resamplers",
    "autoencoder": "Autoencoders",
}
_INTROS = {
    "schedule": "A schedule gives the T betas of the training chain and ᾱ(t) for continuous t "
    "(`ddkit.Schedule`). Config table: `[schedule]`.",
    "parameterization": "What the network predicts and how its variance is given "
    "(`ddkit.Parameterization`). Config table: `[parameterization]`.",
    "model": "Networks called as `model(x_t, t, **conditioning)`. Config table: `[model]`.",
    "sampler": "Samplers walk the denoiser from noise to data (`ddkit.Sampler`). Config table: `[sampler]`; "
    "switch on a built pipeline with `pipe.with_sampler(name, **params)`.",
    "guidance": "Guidance changes what the denoiser returns (`ddkit.Guidance`). Config: one "
    "`[[guidance]]` table per guidance, applied in the order of the denoiser (see Concepts).",
    "resampler": "Resamplers draw the training timesteps with importance weights "
    "(`ddkit.TimestepResampler`). Config table: `[resampler]`.",
    "autoencoder": "Autoencoders map data to the latents a latent pipeline's model works in and back "
    "(`ddkit.Autoencoder`). Config table: `[autoencoder]`.",
}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "&#124;")


def _paper(text: str) -> str:
    """The paper reference, with arXiv ids and URLs turned into links."""
    if not text:
        return "—"
    if re.fullmatch(r"https?://\S+", text):
        return f"<{text}>"
    return re.sub(r"arXiv:(\d{4}\.\d{4,5})", r"[arXiv:\1](https://arxiv.org/abs/\1)", text)


def _factory_doc(kind: str, name: str) -> str:
    """The first paragraph of the factory's docstring (importing it; fine at build time)."""
    from ddkit.registry import get_registry

    try:
        factory = get_registry().resolve(kind, name).load()
    except Exception:
        return ""
    doc = (getattr(factory, "__doc__", None) or "").strip()
    if not doc or (isinstance(factory, type) and factory.__init__.__doc__ == doc):
        return ""
    first = doc.split("\n\n", 1)[0]
    # Sphinx roles (:class:`x`) and rst double backticks read as plain code in Markdown.
    first = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", first)
    return " ".join(first.replace("``", "`").split())


def catalogue_markdown(kind: str) -> str:
    """The catalogue page of ``kind``: every installed name, its summary, paper and parameters."""
    if kind not in ddkit.KINDS:
        raise ValueError(f"kind must be one of {', '.join(ddkit.KINDS)} (got {kind!r})")
    names = ddkit.names(kind)
    lines = [
        f"# {_TITLES[kind]}",
        "",
        _INTROS[kind],
        "",
        f"Generated from the registry when these pages were built: the {len(names)} {kind} "
        f'name(s) installed there. `ddkit plugins` and `ddkit.describe("{kind}", name)` show the same '
        "for your own environment.",
        "",
        "| name | summary | distribution |",
        "| --- | --- | --- |",
    ]
    sections: list[str] = []
    for name in names:
        try:
            d = ddkit.describe(kind, name)
        except Exception as exc:  # a conflict or a broken plugin: list the name with the reason
            lines.append(f"| [`{name}`](#{_anchor(name)}) | {_cell(str(exc))} | |")
            sections += [f"## `{name}` {{ #{_anchor(name)} }}", "", f"Not usable here: {exc}", ""]
            continue
        lines.append(f"| [`{name}`](#{_anchor(name)}) | {_cell(d.summary)} | {d.distribution} {d.version} |")
        sections += [f"## `{name}` {{ #{_anchor(name)} }}", "", d.summary, ""]
        doc = _factory_doc(kind, name)
        if doc and doc != d.summary:
            sections += [doc, ""]
        sections += [
            f"- **distribution:** {d.distribution} {d.version}",
            f"- **paper:** {_paper(d.paper)}",
        ]
        if d.status != "ok":
            sections.append(f"- **status:** {d.status}")
        if d.parameters:
            sections.append("- **parameters:**")
            for param, text in d.parameters.items():
                sections.append(f"    - `{param}`: `{text}`" if text else f"    - `{param}`")
        else:
            sections.append("- **parameters:** none")
        sections += ["", "```python", f'ddkit.create("{kind}", "{name}")', "```", ""]
    return "\n".join([*lines, "", *sections])


def _anchor(name: str) -> str:
    return "c-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")


# -- mkdocs hooks ----------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    """Add the catalogue pages to the site, generated afresh (replacing the committed copies)."""
    from mkdocs.structure.files import File

    for kind, path in CATALOGUE_PAGES.items():
        committed = files.get_file_from_path(path)
        if committed is not None:
            files.remove(committed)
        files.append(File.generated(config, path, content=catalogue_markdown(kind)))
    return files


def write_catalogue(folder: Path | None = None) -> list[Path]:
    """Write every catalogue page under ``folder`` (``docs/``), so links resolve in a checkout too."""
    folder = Path(__file__).resolve().parent if folder is None else folder
    written = []
    for kind, page in CATALOGUE_PAGES.items():
        path = folder / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(catalogue_markdown(kind) + "\n", encoding="utf-8")
        written.append(path)
    return written


_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Turn links to repository files outside ``docs/`` into code spans of their repository path."""
    here = posixpath.dirname(page.file.src_uri)

    def replace(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"[a-z]+:|#|/", target):
            return match.group(0)
        path = posixpath.normpath(posixpath.join("docs", here, target.split("#")[0]))
        if path.startswith("docs/") or path == "docs":
            return match.group(0)
        return f"{text} (`{path}` in the repository)"

    return _LINK.sub(replace, markdown)


if __name__ == "__main__":
    for written in write_catalogue():
        print(f"wrote {written}")
