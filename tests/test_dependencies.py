"""Dependencies: the wheel declares ranges (a floor on every requirement), CI's exact versions live in constraints.txt,
those versions lie inside the ranges, and the README and .ci/run install with the same constraints."""
import re
import shlex
from configparser import ConfigParser
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
INSTALL = 'pip install -e ".[dev]" -c constraints.txt'


def requirements() -> list[Requirement]:
    p = ConfigParser(delimiters=["="]); p.read(REPO / "settings.ini", encoding="utf-8")
    keys = ("requirements", "kernels_requirements", "viz_requirements", "sweep_requirements", "dev_requirements")
    return [Requirement(r) for k in keys for r in shlex.split(p["DEFAULT"].get(k, ""))]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_every_requirement_has_a_floor():
    for r in requirements():
        assert any(s.operator in (">=", "==", "~=") for s in r.specifier), f"{r}: no lower bound"


def test_torch_stack_is_a_range():
    wide = {r.name: r for r in requirements()}
    for name in ("torch", "torchvision", "timm", "rioxarray", "triton"):
        assert not any(s.operator == "==" for s in wide[name].specifier), f"{wide[name]}: pinned; the wheel must fit an existing environment"


def test_constraints_pin_ci_inside_the_ranges():
    pins = constraints()
    assert not any(n.startswith("deo") for n in pins), "constraints.txt must not pin deo_kit itself"
    for r in requirements():
        name = re.sub(r"[-_.]+", "-", r.name).lower()
        assert name in pins, f"{r.name} is a requirement but constraints.txt does not pin it"
        assert r.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {name}=={pins[name]}, outside {r}"


def test_readme_and_ci_install_the_same_way():
    assert INSTALL in (REPO / "README.md").read_text()
    assert INSTALL in (REPO / ".ci" / "run").read_text()
