"""The layers of docs/ARCHITECTURE.md, read from the code's imports. hjprune_manifests (the data tools) is the lowest:
it imports neither hjprune_fairseq nor fairseq nor torch, and the plugin takes wav2vec2-base's conv stack from it
(one definition). hjprune_fairseq's folders are its layers, core < plugin < convert < tools < cli: each imports only
itself and the layers before it, and no module imports itself through others."""

import os
import pkgutil
import subprocess
import sys


def test_the_data_tools_import_nothing_of_the_plugin():
    import hjprune_manifests

    names = sorted(m.name for m in pkgutil.iter_modules(hjprune_manifests.__path__, "hjprune_manifests."))
    assert {"hjprune_manifests.data_checks", "hjprune_manifests.output_dir", "hjprune_manifests.audio"} <= set(names)
    code = ("import importlib, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'hjprune_fairseq', 'fairseq', 'torch'}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_wav2vec2_conv_has_one_definition():
    from hjprune_fairseq.core import presets
    from hjprune_manifests import audio, data_checks

    assert presets.WAV2VEC2_CONV is audio.WAV2VEC2_CONV is data_checks.WAV2VEC2_CONV
    assert presets.PRESETS["wav2vec2_base"].conv_layers == audio.WAV2VEC2_CONV


# ---- the plugin's folders are its layers (docs/ARCHITECTURE.md) ------------------------------------------------
LAYERS = ("core", "plugin", "convert", "tools", "cli")  # each imports only itself and those before it
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hjprune_fairseq")


def _modules():
    """dotted name -> file of every module of the package (the shipped hf_remote/ files are data, not modules)."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py") and "hf_remote" not in folder:
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE))[:-3].split(os.sep)
                found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, name)
    return found


def _imports(module, path, modules):
    """The package's modules that ``module`` imports anywhere in its file (in functions too)."""
    import ast

    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in modules and t != module)
    return out


def _layer(module):
    parts = module.split(".")
    return "plugin" if len(parts) == 1 else parts[1]  # the package itself registers the plugin with fairseq


def test_the_folders_are_the_layers_and_import_downwards_only():
    modules = _modules()
    top = {m.split(".")[1] for m in modules if m.count(".") >= 1}
    assert top == set(LAYERS)  # nothing loose beside the layers
    upward = []
    for module, path in modules.items():
        if module == "hjprune_fairseq":
            continue
        for target in _imports(module, path, modules):
            if LAYERS.index(_layer(target)) > LAYERS.index(_layer(module)):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_module_imports_itself_through_others():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    circles = []
    for start in graph:  # a path back to start
        seen, stack = set(), [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join(path + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert circles == []
