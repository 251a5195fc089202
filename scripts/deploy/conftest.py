"""Shared fixtures: the chart rendered for every CI case, and the plain manifests of k8s/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import render  # noqa: E402

ROOT = render.ROOT


def _cases() -> dict[str, list[dict]]:
    cases = {name: render.documents(render.render(render.load_values(path))) for name, path in render.CASES.items()}
    cases["k8s-base"] = [
        d for p in sorted((ROOT / "k8s" / "base").glob("*.yaml")) if p.name != "kustomization.yaml"
        for d in yaml.safe_load_all(p.read_text()) if d
    ]
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / "dev")], check=True, capture_output=True, text=True
        ).stdout
        cases["k8s-dev"] = [d for d in yaml.safe_load_all(out) if d]
    return cases


CASES = _cases()


def pytest_generate_tests(metafunc):
    if "docs" in metafunc.fixturenames:
        metafunc.parametrize("docs", list(CASES.values()), ids=list(CASES))


@pytest.fixture(scope="session")
def chart_values() -> dict:
    return yaml.safe_load((ROOT / "helm" / "bankmesh" / "values.yaml").read_text())
