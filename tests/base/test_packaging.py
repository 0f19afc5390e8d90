"""pyproject.toml (pip route) and environment.yml (conda route) must install the same runtime
packages, so the two ways in cannot drift apart."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# conda-forge names of packages whose pip name differs
CONDA_TO_PIP = {"pytorch": "torch"}
# what conda adds that pip does not install: the interpreter, pip, and the system libraries
# ffcv compiles against (the `make install` route gets them from apt)
CONDA_ONLY = {"python", "pip", "pkg-config", "libjpeg-turbo", "opencv"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pins(specs) -> dict[str, str]:
    return {_name(s): s.strip()[len(_name(s)):].strip() for s in specs}


def _environment():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return env, conda, pip


def test_conda_and_pip_routes_name_the_same_runtime_packages():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # the runtime dependencies plus the extras `make install` installs (watch, hf, demo)
    extras = project["optional-dependencies"]
    pip_route = {_name(d) for d in project["dependencies"] + extras["watch"] + extras["hf"]
                 + extras["demo"]}
    env, conda, pip = _environment()
    conda_names = {CONDA_TO_PIP.get(_name(c), _name(c)) for c in conda} - CONDA_ONLY
    pip_names = {_name(p) for p in pip if not p.startswith("-e")}
    assert conda_names | pip_names == pip_route, (
        f"only in environment.yml: {sorted((conda_names | pip_names) - pip_route)}; "
        f"only in pyproject.toml: {sorted(pip_route - (conda_names | pip_names))}")
    assert not conda_names & pip_names  # each package comes from one installer
    assert "-e ." in pip  # the project itself, editable, like `make install`
    assert {"pkg-config", "libjpeg-turbo", "opencv"} <= {_name(c) for c in conda}
    assert "conda-forge" in env["channels"]


def test_versions_pinned_alike():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pyproject = _pins(project["dependencies"])
    _, conda, pip = _environment()
    env = {CONDA_TO_PIP.get(_name(c), _name(c)): s for c, s in _pins(conda).items()}
    env.update(_pins(p for p in pip if not p.startswith("-e")))
    for name, pin in pyproject.items():
        if pin:
            assert env[name].replace(" ", "") == pin.replace(" ", ""), name
    assert pyproject["ffcv"] == env["ffcv"] == "==1.0.2"


def test_console_scripts_are_the_top_level_commands():
    """Each ``ffcv-*`` console script pip installs calls the ``main`` its top-level script calls,
    and no top-level script imports another (the code lives in the package)."""
    import importlib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    top = {"ffcv-write": "write_ffcv.py", "ffcv-train": "train_imagenet.py",
           "ffcv-find-lr": "find_lr.py", "ffcv-predict": "predict.py", "ffcv-export": "export.py",
           "ffcv-inspect": None, "ffcv-convert-checkpoint": None, "ffcv-demo": None,
           "ffcv-eval": None}
    assert set(scripts) == set(top)
    from ffcv_utils.commands import COMMANDS

    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
        prog, used = COMMANDS[func]
        assert prog == name
        assert callable(importlib.import_module(used, "ffcv_utils").main), name
        if top[name]:
            script = (REPO / top[name]).read_text()
            assert f"from ffcv_utils{used} import main" in script, (name, used)
    names = {p.stem for p in REPO.glob("*.py")}
    for script in REPO.glob("*.py"):
        imported = re.findall(r"^\s*(?:from|import) (\w+)", script.read_text(), re.M)
        assert not names & set(imported) - {"setup"}, script.name
