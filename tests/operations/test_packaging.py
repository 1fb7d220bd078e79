"""The production wheel carries the portal only: the development stand-ins (``portal demo``, the Stripe stand-in that
extends the GPL localstripe, the OIDC, JupyterHub and Slurm launchers) are the separate distribution in standin/,
and the tests stay out of both.

Each wheel is built offline from a copy of the checkout (setuptools reuses a build/ folder it finds, stale files
and all), the way ``pip install .`` builds it.
"""

from __future__ import annotations

import ast
import email
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Local state of a checkout that no build reads.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "instance", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".cache",
    "test-artifacts", ".hypothesis",
)  # fmt: skip

#: What only the stand-in distribution may hold, as parts of a path in a wheel.
STAND_IN_MODULES = ("devstripe", "devstack.py", "devstack_slurm.py", "devhub.py", "demo.py", "portal_standin")


class Wheel:
    def __init__(self, path: Path) -> None:
        self.path = path
        with zipfile.ZipFile(path) as archive:
            self.names = archive.namelist()
            self.texts = {
                name: archive.read(name).decode()
                for name in self.names
                if name.endswith((".py", ".txt", "METADATA", "LICENSE", ".html", ".ini", ".mako"))
            }

    def dist_info(self, file: str) -> str:
        [name] = [n for n in self.names if n.endswith(f".dist-info/{file}")]
        return self.texts[name]

    def metadata(self) -> email.message.Message:
        return email.message_from_string(self.dist_info("METADATA"))


def build_wheel(source: Path, out: Path) -> Wheel:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [path] = out.glob("*.whl")
    return Wheel(path)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Wheel]:
    checkout = tmp_path_factory.mktemp("checkout") / "portal"
    shutil.copytree(REPO, checkout, ignore=NOT_COPIED, symlinks=True)
    out = tmp_path_factory.mktemp("wheels")
    return {
        "portal": build_wheel(checkout, out / "portal"),
        "standin": build_wheel(checkout / "standin", out / "standin"),
    }


def test_the_portal_wheel_carries_the_portal_and_none_of_the_stand_ins_localstripe_or_the_tests(
    wheels: dict[str, Wheel],
) -> None:
    wheel = wheels["portal"]
    assert wheel.path.name.startswith("baltic_ai_factory_portal-0.1.0-")
    # The application, its templates, migrations and translations are there.
    assert "portal/cli.py" in wheel.names and "portal/migrations/env.py" in wheel.names
    assert any(n.startswith("portal/templates/") for n in wheel.names)
    top_levels = {name.split("/")[0] for name in wheel.names if not name.split("/")[0].endswith(".dist-info")}
    assert top_levels == {"portal"}, "only the portal package (no tests/, standin/, benchmarks/, hub_config/)"
    stand_ins = [n for n in wheel.names if any(part in STAND_IN_MODULES for part in n.split("/"))]
    assert stand_ins == []
    assert not [n for n in wheel.names if n.rsplit("/", 1)[-1].startswith(("conftest", "test_"))]
    using_localstripe = [n for n, text in wheel.texts.items() if n.endswith(".py") and "localstripe" in text]
    assert using_localstripe == []
    # Installing the wheel brings neither localstripe nor the stand-ins unless the `standin` extra asks for them.
    requirements = wheel.metadata().get_all("Requires-Dist")
    assert not [r for r in requirements if r.startswith(("localstripe", "aiohttp"))]
    assert 'baltic-ai-factory-portal-standin==0.1.0; extra == "standin"' in requirements
    assert "portal.cli_plugins" not in wheel.dist_info("entry_points.txt")


def test_the_stand_in_wheel_carries_them_under_the_gpl_and_registers_portal_demo(wheels: dict[str, Wheel]) -> None:
    wheel = wheels["standin"]
    for module in ("demo", "cli", "devstack", "devstack_slurm", "devhub", "devstripe/server", "devstripe/checkout"):
        assert f"portal_standin/{module}.py" in wheel.names, module
    assert {name.split("/")[0] for name in wheel.names if ".dist-info/" not in name} == {"portal_standin"}
    metadata = wheel.metadata()
    assert metadata["Name"] == "baltic-ai-factory-portal-standin"
    assert metadata["License-Expression"] == "GPL-3.0-or-later"
    assert "GNU GENERAL PUBLIC LICENSE" in wheel.dist_info("licenses/LICENSE")
    assert any(r.startswith("localstripe") for r in metadata.get_all("Requires-Dist"))
    assert "[portal.cli_plugins]\ndemo = portal_standin.cli:demo" in wheel.dist_info("entry_points.txt")


def test_no_portal_module_imports_the_stand_ins_or_localstripe() -> None:
    offending = []
    for path in sorted((REPO / "portal").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            offending += [
                f"{path.relative_to(REPO)}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] in ("portal_standin", "localstripe")
            ]
    assert offending == []


def test_portal_demo_without_the_stand_ins_says_how_to_install_them(wheels: dict[str, Wheel], tmp_path: Path) -> None:
    """The production wheel installed into a fresh environment beside the portal's dependencies, not the stand-ins."""
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True, timeout=120)
    # The dependencies: this environment's site-packages (linked, not copied), less both portal distributions and
    # localstripe, which only the stand-ins need.
    dependencies = tmp_path / "dependencies"
    dependencies.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("baltic_ai_factory_portal", "__editable__", "portal", "localstripe")):
            (dependencies / entry.name).symlink_to(entry)
    [site_packages] = environment.glob("lib/python*/site-packages")
    (site_packages / "dependencies.pth").write_text(f"{dependencies}\n")
    python = environment / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
         str(wheels["portal"].path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "PYTHON"))}
    portal = [str(environment / "bin" / "portal")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*portal, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    find = "import importlib.util as u; print(u.find_spec('portal_standin'), u.find_spec('localstripe'))"
    stand_ins = subprocess.run(
        [str(python), "-c", find], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=True
    )
    assert stand_ins.stdout.split() == ["None", "None"]
    listing = run("--help")
    assert listing.returncode == 0, listing.stderr
    assert "  demo " in listing.stdout and "  serve " in listing.stdout
    for args in (["demo"], ["demo", "--port", "5001"]):
        result = run(*args)
        assert result.returncode == 1, result
        assert result.stdout == ""
        assert "`portal demo` comes with the development stand-ins, which are not installed" in result.stderr
        assert "scripts/bootstrap" in result.stderr and "pip install -e ./standin" in result.stderr


def test_portal_demo_with_the_stand_ins_is_their_command() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "portal"), "demo", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--provider-port" in result.stdout
