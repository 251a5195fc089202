"""The settings each binary really reads, parsed from the Rust config structs (no compilation).

Every process loads one config struct (`type Config = ...` in its crate's `impl Service`); serde
field names are the setting names (`deny_unknown_fields` everywhere), nested structs are sections.
Environment variables map onto them as BANK_<SECTION>__<KEY>, secret files as ..._FILE.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Settings that select which configuration to load, not values in it (libs/platform/src/config.rs).
META_VARS = {"BANK_ENV", "BANK_CONFIG_DIR", "BANK_CONFIG_FILE"}

STRUCT_RE = re.compile(r"pub struct (\w+)\s*\{\n(.*?)\n\}", re.S)
FIELD_RE = re.compile(r"^\s*pub (\w+): (.+),\s*$", re.M)
CONFIG_TYPE_RE = re.compile(r"type Config = (\w+);")


def _structs(files: list[Path]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for path in files:
        text = path.read_text()
        for name, body in STRUCT_RE.findall(text):
            found.setdefault(name, dict(FIELD_RE.findall(body)))
    return found


def _inner(ty: str) -> tuple[str, bool]:
    """The struct a field's type names (Option<T>, Vec<T> unwrapped) and whether it is a map."""
    ty = ty.strip()
    if re.match(r"^(std::collections::)?(BTreeMap|HashMap)<", ty):
        return ty, True
    for wrapper in ("Option", "Vec", "Box"):
        m = re.match(rf"^{wrapper}<(.+)>$", ty)
        if m:
            return _inner(m.group(1))
    return ty.split("::")[-1], False


def binaries() -> dict[str, Path]:
    """bin target name -> crate directory, from `cargo metadata --no-deps` (no compilation)."""
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    bins = {}
    for pkg in json.loads(out)["packages"]:
        for target in pkg["targets"]:
            if "bin" in target["kind"]:
                bins[target["name"]] = Path(pkg["manifest_path"]).parent
    return bins


@cache
def tree(binary: str) -> dict:
    """The nested settings of `binary`: {key: subtree}, {} for a leaf, "map" for free-form maps."""
    crate = binaries()[binary]
    lib = (crate / "src" / "lib.rs").read_text()
    root_type = CONFIG_TYPE_RE.search(lib).group(1)
    own = sorted((crate / "src").rglob("*.rs"))
    shared = sorted((ROOT / "libs" / "platform" / "src").rglob("*.rs")) + sorted(
        (ROOT / "libs" / "auth" / "src").rglob("*.rs")
    )
    structs = _structs(own)
    for name, fields in _structs(shared).items():
        structs.setdefault(name, fields)
    if root_type not in structs:
        raise LookupError(f"{binary}: config struct {root_type} not found")

    def build(name: str, depth: int = 0) -> dict:
        node: dict = {}
        for field, ty in structs[name].items():
            inner, is_map = _inner(ty)
            if is_map:
                node[field] = "map"
            elif inner in structs and depth < 6:
                node[field] = build(inner, depth + 1)
            else:
                node[field] = {}
        return node

    return build(root_type)


def path_ok(binary: str, dotted: str) -> bool:
    """Whether `a.b.c` is a setting (or a section) of `binary`."""
    node = tree(binary)
    for part in dotted.split("."):
        if node == "map":
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def env_to_path(var: str) -> str | None:
    """BANK_SERVER__LISTEN_ADDR(_FILE) -> server.listen_addr; None for non-settings."""
    if not var.startswith("BANK_") or var in META_VARS:
        return None
    rest = var[len("BANK_"):]
    if rest.endswith("_FILE"):
        rest = rest[: -len("_FILE")]
    return ".".join(part.lower() for part in rest.split("__"))


def flatten(data: dict, prefix: str = "") -> list[str]:
    """Dotted leaf paths of a nested dict (a TOML document)."""
    paths = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths.extend(flatten(value, dotted + "."))
        else:
            paths.append(dotted)
    return paths
