"""The training code stays readable: no function in training/ longer than one screen (issue 15's bound)."""
import ast
from pathlib import Path

MAX_FUNCTION_LINES = 80


def test_training_functions_fit_on_a_screen():
    long = []
    for path in sorted(Path("training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions: " + ", ".join(long)
