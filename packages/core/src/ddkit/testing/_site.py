"""A temporary site directory with fake installed distributions, for in-process discovery tests."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

__all__ = ["FakeSite"]


class FakeSite:
    """A folder put first on ``sys.path`` holding ``*.dist-info`` folders and plugin modules.

    ``importlib.metadata`` reads it like real site-packages, so entry-point discovery, the
    allow-list and import failures can be tested without installing anything::

        with FakeSite(tmp_path) as site:
            site.add_distribution("toy-plugin", {"toy_plugin": SOURCE})
            registry = Registry.discover()

    Leaving the block takes the folder off ``sys.path`` and forgets the modules imported from it.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._active = False

    def add_distribution(
        self,
        name: str,
        modules: Mapping[str, str] | None = None,
        *,
        version: str = "0.0.1",
        entry_points: Mapping[str, str] | None = None,
        group: str = "ddkit",
    ) -> Path:
        """Write distribution ``name`` with ``modules`` (dotted name -> source) and its entry points.

        ``entry_points`` maps entry-point names to values; by default the distribution name
        points at the first module, the convention ddkit's own packages follow. Returns the
        ``.dist-info`` folder.
        """
        modules = dict(modules or {})
        for module, source in modules.items():
            self._write_module(module, source, is_package=any(m.startswith(module + ".") for m in modules))
        if entry_points is None:
            entry_points = {name: next(iter(modules))} if modules else {}
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = [f"[{group}]", *(f"{key} = {value}" for key, value in entry_points.items())]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()
        return info

    def _write_module(self, module: str, source: str, *, is_package: bool) -> None:
        parts = module.split(".")
        folder = self.root.joinpath(*parts[:-1])
        for depth in range(1, len(parts)):
            init = self.root.joinpath(*parts[:depth], "__init__.py")
            init.parent.mkdir(parents=True, exist_ok=True)
            if not init.exists():
                init.write_text("")
        path = folder / parts[-1] / "__init__.py" if is_package else folder / f"{parts[-1]}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))

    def __enter__(self) -> FakeSite:
        sys.path.insert(0, str(self.root))
        importlib.invalidate_caches()
        self._active = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if str(self.root) in sys.path:
            sys.path.remove(str(self.root))
        sys.path_importer_cache.pop(str(self.root), None)
        prefixes = tuple({str(self.root) + os.sep, str(self.root.resolve()) + os.sep})
        for name, module in list(sys.modules.items()):
            origin = getattr(module, "__file__", None)
            if isinstance(origin, str) and origin.startswith(prefixes):
                del sys.modules[name]
        importlib.invalidate_caches()
        self._active = False
