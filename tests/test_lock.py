"""requirements.lock: the exact versions every install gets, kept in step with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# Released together, one version number for all three.
OPENVINO_FAMILY = ("openvino", "openvino-tokenizers", "openvino-genai")


def locked(lock: Path = ROOT / "requirements.lock") -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert match, f"{lock.name}: not an exact pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{lock.name} pins {name} twice"
        pins[name] = match[2]
    return pins


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """What the extras ask for, with leanify[...] self-references expanded."""
    project = pyproject()["project"]
    optional = project["optional-dependencies"]
    wanted, seen, out = list(extras), set(), [Requirement(r) for r in project["dependencies"]]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                wanted.extend(req.extras)
            else:
                out.append(req)
    return out


def test_torch_is_the_tested_cpu_release():
    assert locked()["torch"] == "2.13.0"


def test_no_cuda_packages():
    cuda = [n for n in locked() if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert not cuda, f"the CPU build of torch needs none of {cuda}: rerun `make lock`"


def test_openvino_family_shares_one_version():
    pins = locked()
    versions = {n: Version(pins[n]) for n in OPENVINO_FAMILY if n in pins}  # 2026.4.1.0 == 2026.4.1
    assert "openvino" in versions and "nncf" in pins
    assert len(set(versions.values())) == 1, versions


def test_the_llm_exporter_environment_writes_irs_the_main_one_runs():
    """.venv-optimum exports with the openvino, tokenizers and nncf that run the result."""
    main, exporter = locked(), locked(ROOT / "envs" / "optimum.lock")
    for name in ("openvino", "openvino-tokenizers", "nncf", "torch"):
        assert Version(exporter[name]) == Version(main[name]), name
    assert "torchvision" not in exporter  # declared by optimum-intel, broken beside CPU torch
    assert not [n for n in exporter if n.startswith(("nvidia-", "cuda-")) or n == "triton"]


def test_openvino_and_nncf_are_pinned_in_pyproject():
    reqs = {canonicalize_name(r.name): r for r in requirements(("openvino",))}
    for name in ("openvino", "nncf"):
        specs = list(reqs[name].specifier)
        assert specs and all(s.operator == "==" for s in specs), f"{name}: {reqs[name]}"


def test_every_requirement_of_all_and_test_is_locked_at_an_allowed_version():
    pins = locked()
    for req in requirements(("all", "test")):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"requirements.lock has {name}=={pins[name]}, pyproject.toml asks {req}: "
            "run `make lock`")
