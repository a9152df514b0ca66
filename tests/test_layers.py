"""The package layering of `reasoner/`: imports only point down, so there is no cycle."""

import ast
import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "reasoner"

# Lowest first. A package may import packages of its own layer or below, never above. `model`
# and `sharding` are one layer: the decoder pins its activations by the sharding rules and the
# rules place the decoder's parameters.
LAYERS = (
    ("io", "tokenizer", "verify"),
    ("model", "sharding"),
    ("checkpoint",),
    ("data",),
    ("rewards",),
    ("losses", "sampling", "train"),
    ("tts",),
    ("stages",),
    ("agentic", "pipeline"),
)


def _imports() -> dict:
  """{package: {(imported package, file)}} over every module of reasoner/ (lazy imports too)."""
  edges = collections.defaultdict(set)
  for path in ROOT.rglob("*.py"):
    rel = path.relative_to(ROOT)
    if len(rel.parts) == 1:
      continue  # reasoner/__init__.py
    package = rel.parts[0]
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reasoner"):
        names = ([f"reasoner.{a.name}" for a in node.names] if node.module == "reasoner"
                 else [node.module])
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      else:
        continue
      for name in names:
        parts = name.split(".")
        if parts[0] == "reasoner" and len(parts) > 1 and parts[1] != package:
          edges[package].add((parts[1], str(rel)))
  return edges


def test_every_package_has_a_layer():
  packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
  layered = {p for layer in LAYERS for p in layer}
  assert packages == layered, (sorted(packages - layered), sorted(layered - packages))


def test_imports_point_down():
  level = {p: i for i, layer in enumerate(LAYERS) for p in layer}
  upward = sorted(f"{src} ({where}) -> {dst}" for src, deps in _imports().items()
                  for dst, where in deps if level[dst] > level[src])
  assert not upward, upward


def test_no_package_cycles_across_layers():
  edges = {src: {dst for dst, _ in deps} for src, deps in _imports().items()}
  level = {p: i for i, layer in enumerate(LAYERS) for p in layer}

  def reaches(a, b, seen=()):
    return any(d == b or (d not in seen and reaches(d, b, (*seen, d))) for d in edges.get(a, ()))

  cycles = sorted((a, b) for a in edges for b in edges[a]
                  if level[a] != level[b] and reaches(b, a))
  assert not cycles, cycles
