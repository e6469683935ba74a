"""The code stays readable: no function in the repository longer than one screen (issue 15's bound, issue 24 widened
it from training/ to every Python file: the engine, the app, the benchmarks and the tests)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
SKIPPED = {".venv", "runs", ".git", "artifacts"}  # environments and generated outputs, not our code


def python_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not SKIPPED & set(p.relative_to(ROOT).parts))


def test_every_function_fits_on_a_screen():
    files = python_files()
    assert {"app.py", "engine/service.py", "training/distill.py", "bench/engine.py"} <= {
        str(p.relative_to(ROOT)) for p in files}
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions: " + ", ".join(long)


def test_the_app_is_the_gradio_layer_only():
    """app.py stays small and the engine never imports Gradio (DESIGN.md: app.py → engine, one way)."""
    assert len((ROOT / "app.py").read_text().splitlines()) <= 500
    for path in (ROOT / "engine").rglob("*.py"):
        imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert not {"gradio", "app"} & imported, path
