"""Teacher reference trajectories: rejection sampling, cached in a resumable JSONL file.

    python teacher.py --suite math --teacher reference --out runs/traj_math.jsonl
    python teacher.py --suite math --teacher Qwen2.5-7B --attempts 4 --out runs/traj.jsonl
    python teacher.py --suite math --teacher-url http://127.0.0.1:8000/v1 \\
        --teacher-model qwen2.5-72b-instruct --out runs/traj.jsonl   # key: $TEACHER_API_KEY

For each training question the teacher gets up to `attempts` tries; the first
one whose final \\boxed{} answer is correct is kept (rejection sampling), and
its tool names become the question's `teacher_tools` for the MENTOR reward.
Three teachers:

* a local model (short name, HF id or folder), run through rollout.py;
* any OpenAI-compatible chat-completions server (vLLM, llama.cpp, Ollama,
  hosted APIs), standard-library HTTP with timeouts and retries; tool calls
  may come back as the API's `tool_calls` field or as <tool_call> text;
* `reference`: the REFERENCE SOLVER, an offline stand-in for a large teacher.
  Built-in suites know each problem's computation ("solution"), so it writes a
  correct tool-using trajectory by running those calls. It is not an LLM.

The cache holds one JSON line per question, appended (and fsynced) as soon
as the question is done, solved or not; a rerun skips what is there, so a
killed run resumes. A torn last line (a kill mid-write) is dropped.
"""
import argparse
import collections
import json
import os
import sys
import time
import urllib.error
import urllib.request

from tqdm import tqdm

from model import load_model
from rollout import encode_prompt, generate_rollouts, prompt_messages, trajectory_ids
from tools import execute_tool_call, tool_call_bodies, tool_names_in
from tasks import answers_match, extract_boxed, load_suite

REFERENCE = "reference"
HTTP_TIMEOUT_S = 60
HTTP_RETRIES = 4          # attempts per request on 429 / 5xx / connection errors / bad JSON
BACKOFF_S = 1.0           # doubled after each failed attempt


# ----------------------------------------------------------------------------
# Teachers: each maps a list of problems to one finished conversation per problem

def reference_messages(problem, tools):
    """REFERENCE SOLVER (not an LLM): replay the generator's solution with the real tools."""
    messages, result = [], None
    for i, call in enumerate(problem["solution"]):
        messages.append({"role": "assistant", "content":
                         f"<think>Step {i + 1}: {call['name']}.</think>\n"
                         f"<tool_call>{json.dumps(call)}</tool_call>"})
        _, response = execute_tool_call(json.dumps(call), tools)
        messages.append({"role": "tool", "content": response})
        result = json.loads(response).get("result")
    messages.append({"role": "assistant", "content":
                     f"<think>The last result answers the question.</think>\n"
                     f"The answer is \\boxed{{{result}}}."})
    return messages


def local_teacher(tok, model, suite, **gen):
    """A local causal LM as teacher, through the same rollout code as the student."""

    def attempt(problems):
        rollouts = generate_rollouts(model, tok, problems, suite.tools, suite.schemas, **gen)
        return [r.messages() for r in rollouts]
    return attempt


def server_teacher(url, model_name, suite, max_turns=5, api_key=None):
    """OpenAI-compatible chat completions; tools passed as `tools` and described in the prompt."""
    endpoint = url.rstrip("/") + "/chat/completions"

    def solve(problem):
        # the tools this problem shows, in the API's {"type": "function", ...} wrapping
        schemas = [s if "function" in s else {"type": "function", "function": s}
                   for s in problem.get("schemas", suite.schemas)]
        chat = prompt_messages(problem["question"], schemas)
        out = []
        for _ in range(max_turns):
            reply = http_json(endpoint, {"model": model_name, "messages": chat,
                                         "tools": schemas, "temperature": 0.7}, api_key)
            msg = reply["choices"][0]["message"]
            text = msg.get("content") or ""
            calls = [json.dumps({"name": c["function"]["name"],
                                 "arguments": _maybe_json(c["function"].get("arguments"))})
                     for c in msg.get("tool_calls") or []]
            text += "".join(f"\n<tool_call>{c}</tool_call>" for c in calls)
            bodies = tool_call_bodies(text)
            out.append({"role": "assistant", "content": text})
            chat.append({"role": "assistant", "content": text})
            if not bodies:
                break
            for body in bodies:
                response = execute_tool_call(body, suite.tools)[1]
                out.append({"role": "tool", "content": response})
                chat.append({"role": "user", "content": f"<tool_response>\n{response}\n</tool_response>"})
        return out

    return lambda problems: [solve(p) for p in problems]


def final_answer(messages):
    turns = [m["content"] for m in messages if m["role"] == "assistant"]
    return extract_boxed("".join(turns))


def called_tools(messages):
    text = "".join(m["content"] for m in messages if m["role"] == "assistant")
    return sorted({n for n in tool_names_in(text) if n is not None})


def run_teacher(problems, attempt, teacher_id, out, attempts=1, batch_size=8, progress=True):
    """Rejection-sample each problem not yet in `out`; append one line per problem."""
    done = {r["question"] for r in read_cache(out)}
    todo = [p for p in problems if p["question"] not in done]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc=teacher_id):
        batch = todo[start:start + batch_size]
        kept = [None] * len(batch)
        tries = [0] * len(batch)
        for _ in range(attempts):
            open_ = [i for i, k in enumerate(kept) if k is None]
            if not open_:
                break
            for i, messages in zip(open_, attempt([batch[i] for i in open_])):
                tries[i] += 1
                if answers_match(final_answer(messages), batch[i]["answer"]):
                    kept[i] = messages
        for p, messages, n in zip(batch, kept, tries):
            append_record(out, {"question": p["question"], "answer": p["answer"],
                                "teacher": teacher_id, "attempts": n, "solved": messages is not None,
                                "teacher_tools": called_tools(messages) if messages else [],
                                "messages": messages})
    return read_cache(out)


def trajectories(source, suite, tok):
    """[(prompt_ids, ids, mask)] of the teacher's correct trajectories on the suite's training
    split, tokenised as the student's rollouts are (train.py's SFT data). source: a trajectory
    JSONL written by this script, or "reference" (the offline solver, run here)."""
    train = suite.split("train")
    if source == REFERENCE:
        if not all("solution" in p for p in train):
            sys.exit(f"suite {suite.name} has no reference solutions: run teacher.py and pass "
                     f"--teacher TRAJ.jsonl")
        pairs = [(p, reference_messages(p, suite.tools)) for p in train]
    else:
        shown = {p["question"]: p for p in train}
        pairs = [(shown.get(r["question"], {"question": r["question"]}), r["messages"])
                 for r in read_cache(source) if r["solved"]]
    if not pairs:
        sys.exit(f"no solved teacher trajectories in {source}")
    # the prompt shows the tools the problem shows (its own `schemas`, else the suite's), as
    # the rollouts do
    return [(encode_prompt(tok, p["question"], p.get("schemas", suite.schemas)),
             *trajectory_ids(tok, m)) for p, m in pairs]


def summary(rows):
    solved = [r for r in rows if r["solved"]]
    dist = collections.Counter(t for r in solved for t in r["teacher_tools"])
    return (f"questions {len(rows)} | solved {len(solved)} | attempts used "
            f"{sum(r['attempts'] for r in rows)} | tool use {dict(dist.most_common())}")


# ----------------------------------------------------------------------------
# The cache

def read_cache(path):
    """Lines of a trajectory JSONL file; a torn last line is dropped (and cut from the file)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):  # killed mid-write: cut back to the last full line
        data = data[:data.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(data))
    rows = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["question"], row["solved"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}, line {n}: not a trajectory record: {line[:80]!r}") from None
        rows.append(row)
    return rows


def append_record(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def teacher_tools_from(path):
    """{question: teacher_tools} of the solved questions in a trajectory file."""
    return {r["question"]: r["teacher_tools"] for r in read_cache(path) if r["solved"]}


def apply_teacher_tools(problems, path):
    """Problems with teacher_tools taken from the file where it solved them (it wins)."""
    found = teacher_tools_from(path)
    return [dict(p, teacher_tools=found[p["question"]]) if p["question"] in found else p
            for p in problems]


# ----------------------------------------------------------------------------
# The HTTP client of server_teacher: standard library, timeouts, retries with backoff

def http_json(url, payload, api_key=None):
    """POST JSON, retrying 429/5xx/connection errors/unparsable bodies with backoff."""
    retries, timeout = HTTP_RETRIES, HTTP_TIMEOUT_S
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = None
    for attempt in range(retries):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
            if e.code != 429 and e.code < 500:
                raise RuntimeError(f"teacher server {url} refused the request: {last}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            last = f"connection error ({getattr(e, 'reason', e)})"
        except ValueError:
            last = "malformed JSON in the reply"
    raise RuntimeError(f"teacher server {url} failed after {retries} attempts: {last}")


def _maybe_json(args):
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args or {}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Teacher trajectories with rejection sampling.")
    ap.add_argument("--suite", default="math")
    ap.add_argument("--teacher", default=REFERENCE,
                    help="'reference' (offline solver), or a model short name / HF id / folder")
    ap.add_argument("--teacher-url", help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    ap.add_argument("--teacher-model", help="model name on the server")
    ap.add_argument("--api-key-env", default="TEACHER_API_KEY")
    ap.add_argument("--attempts", type=int, default=4)
    ap.add_argument("--limit", type=int, help="first N training questions only")
    ap.add_argument("--max-turns", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    suite = load_suite(args.suite)
    problems = suite.split("train")[:args.limit]
    if args.teacher_url:
        teacher_id = f"{args.teacher_model}@{args.teacher_url}"
        attempt = server_teacher(args.teacher_url, args.teacher_model, suite, args.max_turns,
                                 os.environ.get(args.api_key_env))
    elif args.teacher == REFERENCE:
        if not all("solution" in p for p in problems):
            sys.exit(f"the reference solver needs a 'solution' in every problem of suite "
                     f"{args.suite}; use an LLM teacher (--teacher or --teacher-url)")
        teacher_id = "reference-solver (offline stand-in, not an LLM)"
        attempt = lambda ps: [reference_messages(p, suite.tools) for p in ps]  # noqa: E731
        args.attempts = 1
    else:
        teacher_id = args.teacher
        attempt = local_teacher(*load_model(args.teacher), suite, max_turns=args.max_turns, temperature=0.7)
    try:
        rows = run_teacher(problems, attempt, teacher_id, args.out, attempts=args.attempts)
    except RuntimeError as e:
        sys.exit(f"teacher failed: {e} (finished lines are kept in {args.out}; rerun to resume)")
    print(summary(rows))


if __name__ == "__main__":
    main()
