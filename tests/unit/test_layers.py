"""The import order of ``common/``, declared here once (docs/ARCHITECTURE.md draws it): every import, those inside
functions included, runs from a tier to the same tier or a lower one, and no two modules or subpackages of one tier
import each other in a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

# Lowest first. A leaf is a module directly in common/; a subpackage's modules share its tier.
TIERS: tuple[tuple[str, ...], ...] = (
    ("errors", "paths", "stats", "paper", "registry", "seams", "atomic", "plots"),  # the leaves
    ("config", "runtime", "store"),
    ("lm",),
    ("data", "models"),
    ("training", "kl", "analysis", "behavior"),
    ("stages",),
    ("reporting",),
)
SCRIPTS = len(TIERS)  # the numbered scripts, reproduce.py, study.py, export_sae.py, benchmarks/
TIER_OF = {unit: tier for tier, units in enumerate(TIERS) for unit in units}


def unit_of(module: str) -> str:
    """``common.stages.kl`` → ``stages``; ``common.errors`` → ``errors``."""
    return module.split(".")[1]


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every ``common`` module a file imports, with the line, wherever the import statement sits."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "common":
                found += [(f"common.{alias.name}", node.lineno) for alias in node.names]
            elif node.module.startswith("common."):
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("common.")]
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def project_files() -> list[Path]:
    scripts = [*ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py")]
    return sorted(ROOT.glob("common/**/*.py")) + sorted(scripts)


def violations(files: list[Path]) -> list[str]:
    """Imports against the order, and cycles among modules or among one tier's units."""
    problems, modules, units = [], {}, {}
    for path in files:
        source = module_name(path)
        in_common = source.startswith("common.") and source != "common"
        tier = TIER_OF.get(unit_of(source), -1) if in_common else SCRIPTS
        if in_common and unit_of(source) not in TIER_OF:
            problems.append(f"{source}: in no tier (add it to TIERS)")
        for target, line in imports_of(path):
            if target == "common" or unit_of(target) not in TIER_OF:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {target}, which is in no tier")
                continue
            if TIER_OF[unit_of(target)] > tier:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {source} (tier {tier}) imports {target} "
                                f"(tier {TIER_OF[unit_of(target)]})")
            modules.setdefault(source, set()).add(target)
            if in_common and unit_of(target) != unit_of(source):
                units.setdefault(unit_of(source), set()).add(unit_of(target))
    return problems + [f"import cycle: {' → '.join(cycle)}" for cycle in (_cycle(modules), _cycle(units)) if cycle]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_import_follows_the_declared_order():
    assert violations(project_files()) == []


def test_a_planted_violation_is_caught(tmp_path: Path):
    """A leaf that imports a stage, and two tier-mates that import each other, are both refused."""
    common = ROOT / "common"
    errors_copy = tmp_path / "errors.py"
    errors_copy.write_text("from common.stages.opening import open_stage\n")
    found = violations_for({common / "errors.py": errors_copy})
    assert any("common.errors (tier 0) imports common.stages.opening (tier 5)" in line for line in found), found
    kl_copy = tmp_path / "kl_summary.py"
    kl_copy.write_text((common / "kl" / "summary.py").read_text() + "\nfrom common.analysis import geometry\n")
    geometry_copy = tmp_path / "geometry.py"
    geometry_copy.write_text((common / "analysis" / "geometry.py").read_text() + "\nfrom common.kl import summary\n")
    found = violations_for({common / "kl" / "summary.py": kl_copy, common / "analysis" / "geometry.py": geometry_copy})
    assert any(line.startswith("import cycle") for line in found), found


def violations_for(replaced: dict[Path, Path]) -> list[str]:
    """``violations`` with some files' text taken from elsewhere (under their own module names)."""
    original = imports_of

    def patched(path: Path) -> list[tuple[str, int]]:
        return original(replaced.get(path, path))

    globals()["imports_of"] = patched
    try:
        return violations(project_files())
    finally:
        globals()["imports_of"] = original


def test_only_the_leaves_sit_directly_in_common():
    direct = {path.stem for path in (ROOT / "common").glob("*.py")} - {"__init__"}
    assert direct == set(TIERS[0])
    packages = {path.name for path in (ROOT / "common").iterdir() if (path / "__init__.py").is_file()}
    assert packages == {unit for units in TIERS[1:] for unit in units}
