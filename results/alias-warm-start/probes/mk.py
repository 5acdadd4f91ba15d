import sys, os
sys.path.insert(0, "/work/main")
src, mode = sys.argv[1], sys.argv[2]
name = os.path.basename(src)[:-3].replace("suite_", "")
code = f'''import sys, importlib.util
sys.path.insert(0, "/work/main")
from transformers.utils import get_json_schema
spec = importlib.util.spec_from_file_location("base_{name}", "{src}")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
TOOLS = m.TOOLS
BY = {{t.__name__: t for t in TOOLS}}
MODE = "{mode}"
def f(p):
    p = dict(p)
    tools = p["teacher_tools"]
    if MODE == "hint":
        p["question"] = p["question"] + " Use the tool " + " and ".join(tools) + "."
    if MODE == "prehint":
        p["question"] = "Use " + " and ".join(tools) + ". " + p["question"]
    if MODE == "one":
        p["schemas"] = [get_json_schema(BY[t])["function"] for t in tools]
    return p
PROBLEMS = [f(p) for p in m.PROBLEMS]
'''
open(f"/tmp/p/{name}_{mode}.py", "w").write(code)
