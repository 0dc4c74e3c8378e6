"""The import graph of the runtime code (README, "Layout"): every import, at the top of a module or inside
a function, points to the same layer or a lower one, and no module reaches itself through imports.

    util < text < dataloader, llama < video, textvid < engine < toyworld < entry points (app, ask, eval,
    train, extract_features)

toyworld/ is not runtime code: only app.py's `--toy` imports it (tests and bench/ use it freely, and are
not checked here). Read from the source with `ast`, so nothing is imported to check it."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"util": 0, "text": 1, "dataloader": 2, "llama": 2, "video": 3, "textvid": 3, "engine": 4, "toyworld": 5,
          "app": 6, "ask": 6, "eval": 6, "train": 6, "extract_features": 6}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_modules():
    """{module name: path} of every module of the layered packages and the entry points."""
    mods = {}
    for top in LAYERS:
        d = REPO / top
        paths = sorted(d.rglob("*.py")) if d.is_dir() else [REPO / f"{top}.py"]
        mods.update({module_name(p): p for p in paths if p.exists()})
    return mods


def imports_of(name: str, path: Path, known) -> set:
    """The modules of `known` that `name` imports (absolute and relative; `from pkg import mod` is mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[:len(up) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:   # a name inside a module: the module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph():
    mods = runtime_modules()
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_no_import_points_up():
    up = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
          for m, targets in sorted(graph().items()) for t in sorted(targets) if layer(t) > layer(m)]
    assert not up, "\n".join(up)


def test_no_cycles():
    g = graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))
    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_graph_is_read():
    """The checks above see the imports they judge (a parser that found nothing would pass them)."""
    g = graph()
    assert "engine.infer" in g["engine.api"] and "video.features" in g["engine.api"]
    assert "engine.infer" in g["engine.scoring"] and "engine.infer" in g["engine.generation"]
    assert "dataloader.benchmarks" in g["video.features"] and "video.features" in g["engine.edge"]
    assert sum(map(len, g.values())) > 100
