"""Renders the Helm chart offline with helm-python-sdk (Helm's own Go SDK as a shared library; no
helm binary, no cluster, no network) and generates the plain manifests in k8s/.

    python scripts/deploy/render.py cases OUT_DIR   # every CI case into OUT_DIR/<case>/<template>.yaml
    python scripts/deploy/render.py k8s             # rewrite k8s/base from the chart
    python scripts/deploy/render.py k8s --check     # fail when k8s/base differs from a fresh render
"""

from __future__ import annotations

import sys
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "bankmesh"
K8S_BASE = ROOT / "k8s" / "base"

# The values files CI renders: the chart's defaults and a production-like release.
CASES = {
    "default": None,
    "production": CHART / "ci" / "production-values.yaml",
}

# k8s/base: the chart's defaults as release "bankmesh" in namespace "bankmesh".
K8S_RELEASE = "bankmesh"
K8S_NAMESPACE = "bankmesh"

HEADER = (
    "# Generated from helm/bankmesh (default values, release {release}, namespace {namespace}) by\n"
    "# `python scripts/deploy/render.py k8s`; do not edit: change the chart and re-run.\n"
    "# scripts/check-deploy.sh fails when this file differs from a fresh render.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the TOML settings) as literal blocks, so k8s/ stays readable."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def load_values(path: Path | None) -> dict | None:
    return None if path is None else yaml.safe_load(path.read_text())


def render(values: dict | None, release: str = "bankmesh", namespace: str = "bankmesh") -> dict[str, str]:
    """Template path -> rendered text, after validating the values against values.schema.json."""
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        return chart.render(values=values, name=release, namespace=namespace, is_install=True)


def documents(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object of a render (NOTES.txt left out)."""
    docs = []
    for name, text in sorted(rendered.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def write_case(case: str, out: Path) -> list[Path]:
    rendered = render(load_values(CASES[case]))
    target = out / case
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for name, text in sorted(rendered.items()):
        if name.endswith("NOTES.txt") or not text.strip():
            continue
        path = target / Path(name).name
        path.write_text(text)
        files.append(path)
    return files


def _plain(doc: dict) -> dict:
    """Drop Helm's own label from an object (and its pod template)."""
    for meta in (doc.get("metadata", {}), doc.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = meta.get("labels") or {}
        labels.pop("helm.sh/chart", None)
        if labels.get("app.kubernetes.io/managed-by") == "Helm":
            labels["app.kubernetes.io/managed-by"] = "kustomize"
    return doc


def k8s_files() -> dict[str, str]:
    """k8s/base/<file> -> content, from a fresh render."""
    rendered = render(None, K8S_RELEASE, K8S_NAMESPACE)
    files: dict[str, str] = {}
    for name, text in sorted(rendered.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs = [_plain(d) for d in yaml.safe_load_all(text) if d]
        if not docs:
            continue
        body = "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=120) for d in docs)
        files[Path(name).name] = HEADER.format(release=K8S_RELEASE, namespace=K8S_NAMESPACE) + "---\n" + body
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": K8S_NAMESPACE,
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = HEADER.format(release=K8S_RELEASE, namespace=K8S_NAMESPACE) + yaml.safe_dump(
        kustomization, sort_keys=False
    )
    return files


def k8s(check: bool) -> int:
    fresh = k8s_files()
    existing = {p.name: p.read_text() for p in K8S_BASE.glob("*.yaml")} if K8S_BASE.is_dir() else {}
    if check:
        stale = sorted(n for n in fresh.keys() | existing.keys() if fresh.get(n) != existing.get(n))
        if stale:
            print("k8s/base differs from a fresh render of helm/bankmesh: " + ", ".join(stale))
            print("run: python scripts/deploy/render.py k8s   (inside the venv of scripts/check-deploy.sh)")
            return 1
        print(f"k8s/base equals a fresh render ({len(fresh)} files)")
        return 0
    K8S_BASE.mkdir(parents=True, exist_ok=True)
    for name in existing.keys() - fresh.keys():
        (K8S_BASE / name).unlink()
    for name, text in fresh.items():
        (K8S_BASE / name).write_text(text)
    print(f"wrote {len(fresh)} files to {K8S_BASE.relative_to(ROOT)}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["cases"] and len(argv) == 2:
        for case in CASES:
            files = write_case(case, Path(argv[1]))
            print(f"rendered {case}: {len(files)} templates")
        return 0
    if argv[:1] == ["k8s"]:
        return k8s(check="--check" in argv)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
