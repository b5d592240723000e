"""nox sessions for the ddkit monorepo. ``nox -s ci`` runs every session in order, as CI does.

Each session gets a fresh virtual environment (``-r`` reuses them locally) with ``torch`` pinned
explicitly, so an unpinned resolve can never pull a multi-GB CUDA build. The find-links folder
holding the CPU torch wheel is ``$DDKIT_TORCH_FIND_LINKS``, else ``/opt/wheels`` when it exists.

The per-package sessions install that package and core only, from real (non-editable)
installs, so entry points come from installed metadata and a hidden dependency on a sibling
package fails there. pytest exiting 5 (no tests collected) fails a session like any error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "types", "tests"]  # plain `nox`; `nox -s ci` runs everything

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
#: Local package folder -> distribution name.
PACKAGES = {
    "core": "ddkit-core",
    "samplers": "ddkit-samplers",
    "models": "ddkit-models",
    "guidance": "ddkit-guidance",
    "diffusers": "ddkit-diffusers",
}
DEV = ["pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100"]
LINT = ["ruff==0.17.6", "import-linter==2.16"]
TYPES = ["mypy==2.4.1"]
#: Parity references: guided-diffusion-sdk is installed with --no-deps (its pins would move torch).
PARITY = ["diffusers"]
PARITY_NO_DEPS = ["guided-diffusion-sdk"]

#: What `nox -s ci` runs, in order. Add new sessions (demo, bench, docs) here.
CI_SESSIONS = [
    "lint",
    "types",
    *(f"tests-{package}" for package in PACKAGES),
    "tests-example",
    "tests",
    "reliability",
    "parity",
    "docs",
    # "demo", "bench": added with their sessions.
]


def find_links() -> list[str]:
    """``--find-links FOLDER`` for the pinned torch wheel, or nothing when there is no such folder."""
    folder = os.environ.get("DDKIT_TORCH_FIND_LINKS")
    if folder is None:
        folder = "/opt/wheels" if Path("/opt/wheels").is_dir() else ""
    return ["--find-links", folder] if folder else []


def install(
    session: nox.Session, *packages: str, editable: bool = False, extra: list[str] | None = None
) -> None:
    """Install pinned torch, core, the given local ``packages`` and ``extra`` requirements in one resolve."""
    local = ["core", *(p for p in packages if p != "core")]
    targets: list[str] = []
    for package in local:
        targets += ["-e", f"packages/{package}"] if editable else [f"packages/{package}"]
    # uv would keep an already-installed local package even when its sources changed.
    reinstall = [arg for p in local for arg in ("--reinstall-package", PACKAGES[p])]
    if session.venv_backend != "uv":
        reinstall = []
    session.install(*find_links(), TORCH, *targets, *reinstall, *(extra or []))


def pytest(session: nox.Session, *args: str) -> None:
    session.run("pytest", *args, *session.posargs)


def _package_session(package: str) -> None:
    def run(session: nox.Session) -> None:
        install(session, package, extra=DEV)
        pytest(session, f"packages/{package}/tests")

    others = "" if package == "core" else " and ddkit-core"
    run.__doc__ = f"packages/{package}/tests, with only {PACKAGES[package]}{others} installed."
    nox.session(name=f"tests-{package}")(run)


for _package in PACKAGES:
    if _package != "diffusers":  # tests-diffusers is defined below
        _package_session(_package)


@nox.session(name="tests-diffusers")
def tests_diffusers(session: nox.Session) -> None:
    """packages/diffusers/tests and tests/parity/test_diffusers_*.py, without ddkit-models.

    ``from_diffusers`` builds pipelines whose samplers and guidance are registered by
    ddkit-samplers and ddkit-guidance, so those two are installed beside ddkit-core and
    ddkit-diffusers (which pulls diffusers itself); ddkit-models is left out, so nothing
    here can lean on it.
    """
    install(session, "diffusers", "samplers", "guidance", extra=DEV)
    parity = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "parity").glob("test_diffusers_*.py"))
    pytest(session, "packages/diffusers/tests", *parity)


@nox.session
def tests(session: nox.Session) -> None:
    """The cross-package tests in tests/ (parity excluded), with every package installed."""
    # diffusers runs the third-party example's parity cases against UniPCMultistepScheduler.
    install(session, *PACKAGES, extra=[*DEV, "uv", *PARITY])
    session.install("--no-deps", *PARITY_NO_DEPS)  # tests/test_gpu_suite_dry.py runs guided-diffusion
    pytest(session, "tests", "--ignore=tests/parity", "--ignore=tests/reliability")


@nox.session
def reliability(session: nox.Session) -> None:
    """tests/reliability: SIGKILLs, a locked run directory, full disks and I/O errors, NaN (~4 min)."""
    install(session, *PACKAGES, extra=DEV)
    pytest(session, "tests/reliability")


@nox.session
def parity(session: nox.Session) -> None:
    """tests/parity: numbers compared against guided-diffusion-sdk and diffusers."""
    if not any((ROOT / "tests" / "parity").rglob("test_*.py")):
        session.skip("tests/parity has no test_*.py yet")
    install(session, *PACKAGES, extra=[*DEV, *PARITY])
    session.install("--no-deps", *PARITY_NO_DEPS)
    pytest(session, "tests/parity")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the import-linter contracts."""
    install(session, *PACKAGES, editable=True, extra=LINT)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict over every package's sources (settings in the root pyproject.toml)."""
    install(session, *PACKAGES, editable=True, extra=[*TYPES, *DEV])
    session.run("mypy")


@nox.session(name="tests-example")
def tests_example(session: nox.Session) -> None:
    """examples/ddkit-sampler-example/tests, with only ddkit-core and the example installed."""
    example = "examples/ddkit-sampler-example"
    install(session, extra=[*DEV, example, "--reinstall-package", "ddkit-sampler-example"])
    pytest(session, f"{example}/tests")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: train a class-conditional model on built-in shapes, sample with guidance.

    ``nox -s demo -- --fast`` runs the short CI-sized version; other arguments go to ``ddkit demo``.
    """
    install(session, *PACKAGES)
    session.run("ddkit", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark in bench/ beside the references; writes BENCHMARKS.md (not CI: ~40 min on 2 cores).

    References: guided-diffusion-sdk (``--no-deps``) and diffusers. k-diffusion is left out: it
    resolves beside torch 2.13.0, but the torchvision it pulls is a CUDA build that fails to
    import against the CPU torch ("operator torchvision::nms does not exist"), and so does
    ``import k_diffusion``. GPU tables come from bench/results/gpu/*.json (``bench/gpu_suite.py``).
    Arguments after ``--`` go to bench/report.py: ``-- --quick`` (smoke run), ``-- --no-run``.
    """
    install(session, *PACKAGES, extra=[*PARITY, "matplotlib"])
    session.install("--no-deps", *PARITY_NO_DEPS)
    command = " ".join(["nox -s bench", *(["--", *session.posargs] if session.posargs else [])])
    session.run("python", "bench/report.py", "--command", command, *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with ``mkdocs build --strict`` (any warning fails) into site/.

    The catalogue pages are generated from the registry at build time (docs/hooks.py), so every
    package is installed. ``nox -s docs -- serve`` runs ``mkdocs serve`` instead.
    """
    install(session, *PACKAGES, extra=["mkdocs-material>=9.5,<10", "mkdocstrings[python]>=0.26"])
    env = {"NO_MKDOCS_2_WARNING": "1"}
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:], env=env)
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs, env=env)


# -- add demo, bench and docs sessions above this line, and to CI_SESSIONS ---------------------


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """Every session in CI_SESSIONS, one after another, then a table of how long each took.

    All sessions run even when one fails, so one CI run reports every failure. Arguments
    after ``--`` go to each inner nox (e.g. ``nox -s ci -- -r`` to reuse environments).
    """
    results: list[tuple[str, int, float]] = []
    for name in CI_SESSIONS:
        start = time.monotonic()
        command = [sys.executable, "-m", "nox", "-f", str(ROOT / "noxfile.py"), "-s", name, *session.posargs]
        print(f"\n=== nox -s {name}", flush=True)
        code = subprocess.call(command, cwd=ROOT)
        results.append((name, code, time.monotonic() - start))
        print(
            f"=== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {results[-1][2]:.0f} s",
            flush=True,
        )
    width = max(len(name) for name in CI_SESSIONS)
    print("\nsession times:")
    for name, code, seconds in results:
        print(f"  {name.ljust(width)}  {'ok    ' if code == 0 else 'FAILED'}  {seconds:7.1f} s")
    print(f"  {'total'.ljust(width)}          {sum(r[2] for r in results):7.1f} s", flush=True)
    failed = [name for name, code, _ in results if code != 0]
    if failed:
        session.error(f"failed sessions: {', '.join(failed)}")
