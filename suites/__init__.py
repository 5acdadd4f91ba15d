"""Task suites, one module each (the format: tasks.py). --suite NAME loads suites/NAME.py;
--suite my_suite.py a file of yours, --suite my_suite.jsonl problems beside my_suite.py's TOOLS.
Here: loading a suite file, with errors that name the file and line (second reading)."""
import importlib.util
import json
import os


class SuiteError(ValueError):
    """A suite that does not load or does not follow the format; the message says where."""


def suite_file(path):
    """A suite .py file as a module; or a problems .jsonl with the .py of the same name beside
    it (its TOOLS, and check or MAX_TURNS if any), the module's PROBLEMS read from the JSONL."""
    tools_py = path[:-len(".jsonl")] + ".py" if path.endswith(".jsonl") else path
    for f in (path, tools_py):
        if not os.path.isfile(f):
            raise SuiteError(f"suite file not found: {f}" + (
                " (a problems .jsonl takes its TOOLS from the .py of the same name beside it)"
                if f != path else ""))
    module = run_file(tools_py)
    if tools_py != path:
        module.PROBLEMS = read_problems(path)
    return module


def run_file(path):
    """Run a .py file as a module; what it raises becomes one SuiteError naming the file and
    the line (a syntax error, or the suite's own code failing as it loads)."""
    spec = importlib.util.spec_from_file_location("suite_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise SuiteError(f"suite file {path}, line {e.lineno}: {e.msg}") from None
    except Exception as e:
        tb, line = e.__traceback__, "?"
        while tb:                                  # the deepest frame inside the file
            if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
                line = tb.tb_lineno
            tb = tb.tb_next
        raise SuiteError(f"suite file {path}, line {line}: {type(e).__name__}: {e}") from None
    return module


def read_problems(path):
    """Problems of a .jsonl file, one JSON object a line (question, answer, teacher_tools;
    optional split, schemas, solution); a bad line raises SuiteError naming it."""
    problems = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                p = json.loads(line)
            except ValueError as e:
                raise SuiteError(f"{path}, line {n}: not valid JSON ({e})") from None
            if not isinstance(p, dict):
                raise SuiteError(f"{path}, line {n}: not a JSON object")
            problems.append(p)
    return problems
