"""Teacher reference trajectories: rejection sampling, cached in a resumable JSONL file.

    python teacher.py --suite math --teacher reference --out runs/traj_math.jsonl
    python teacher.py --suite math --teacher Qwen2.5-7B --attempts 4 --out runs/traj.jsonl
    vllm serve Qwen/Qwen2.5-72B-Instruct --enable-auto-tool-choice --tool-call-parser hermes
    python teacher.py --suite math --teacher-url http://127.0.0.1:8000/v1 \\
        --teacher-model Qwen/Qwen2.5-72B-Instruct --out runs/traj.jsonl   # key: $TEACHER_API_KEY

For each training question the teacher gets up to `attempts` tries; the first
one the suite calls correct (tasks.Suite.is_correct) is kept (rejection sampling), and
its tool names become the question's `teacher_tools` for the MENTOR reward.
Three teachers:

* a local model (short name, HF id or folder), run through rollout.py;
* any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp, Ollama,
  hosted APIs), spoken as the protocol says: `tools`, `tool_calls` with ids, `tool`
  messages; standard-library HTTP with timeouts, retries and parallel requests;
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
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from tqdm import tqdm

from model import ModelNotAvailable, load_model
from rollout import encode_prompt, generate_rollouts, trajectory_ids
from tools import ToolError, execute_tool_call, parse_tool_call, tool_call_bodies, tool_names_in
from tasks import SuiteError, extract_boxed, load_suite

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


# A server shows the tools its own way (its chat template renders `tools`), so its system prompt
# only asks for the answer format; rollout.SYSTEM_PROMPT, which lists them, is the student's.
SERVER_SYSTEM_PROMPT = ("Solve the problem step by step, calling the tools you are given when "
                        "they help. When you know the answer, write it as \\boxed{answer}.")


def server_teacher(url, model_name, suite, max_turns=5, api_key=None, max_tokens=1024,
                   timeout=HTTP_TIMEOUT_S, concurrency=1, temperature=0.7):
    """A teacher behind OpenAI's chat-completions protocol (vLLM, SGLang, llama.cpp, Ollama,
    hosted APIs). The tools go in `tools` only; the teacher's calls come back as `tool_calls`
    (an id each, `arguments` a JSON string; <tool_call> text from a server without a tool
    parser is read as calls too) and each result goes back as a `role: "tool"` message with
    the matching `tool_call_id`. The conversation is recorded in the student's format
    (rollout.py) for SFT and the cache. `concurrency` problems are in flight at once."""
    endpoint = url.rstrip("/") + "/chat/completions"

    def solve(problem):
        tools = [s if "function" in s else {"type": "function", "function": s}
                 for s in problem.get("schemas", suite.schemas)]
        chat = [{"role": "system", "content": SERVER_SYSTEM_PROMPT},
                {"role": "user", "content": problem["question"]}]
        out = []
        for turn in range(max_turns):
            msg = http_json(endpoint, {"model": model_name, "messages": chat, "tools": tools,
                                       "temperature": temperature, "max_tokens": max_tokens},
                            api_key, timeout)["choices"][0]["message"]
            text, calls = msg.get("content") or "", msg.get("tool_calls") or []
            if not calls:                            # calls written as <tool_call> text
                text, calls = calls_in_text(text)
            calls = [{"id": c.get("id") or f"call_{turn}_{i}", "type": "function",
                      "function": {"name": c["function"]["name"],
                                   "arguments": _as_json_text(c["function"].get("arguments"))}}
                     for i, c in enumerate(calls)]
            chat.append({"role": "assistant", "content": text or None, "tool_calls": calls}
                        if calls else {"role": "assistant", "content": text})
            bodies = [json.dumps({"name": c["function"]["name"],
                                  "arguments": _maybe_json(c["function"]["arguments"])})
                      for c in calls]
            out.append({"role": "assistant",
                        "content": text + "".join(f"\n<tool_call>{b}</tool_call>" for b in bodies)})
            if not calls:
                break
            for c, body in zip(calls, bodies):
                response = execute_tool_call(body, suite.tools)[1]
                chat.append({"role": "tool", "tool_call_id": c["id"], "content": response})
                out.append({"role": "tool", "content": response})
        return out

    def attempt(problems):
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(solve, problems))
    return attempt


def calls_in_text(text):
    """(text without its parsable <tool_call> blocks, those calls in the API's format): for a
    server that returns the calls as text. An unparsable block stays in the text."""
    calls = []
    for body in tool_call_bodies(text):
        try:
            name, args = parse_tool_call(body)
        except ToolError:
            continue
        calls.append({"function": {"name": name, "arguments": json.dumps(args)}})
        text = text.replace(f"<tool_call>{body}</tool_call>", "", 1)
    return text.strip(), calls


def called_tools(messages):
    text = "".join(m["content"] for m in messages if m["role"] == "assistant")
    return sorted({n for n in tool_names_in(text) if n is not None})


def solved(suite, problem, messages):
    """The suite's one definition of correct (tasks.Suite.is_correct: the boxed answer, or for
    BFCL the calls), applied to a finished conversation."""
    turns = [m["content"] for m in messages if m["role"] == "assistant"]
    return suite.is_correct(SimpleNamespace(turns=turns, answer=extract_boxed("".join(turns)),
                                            problem=problem))


def run_teacher(problems, attempt, teacher_id, out, suite, attempts=1, batch_size=8,
                progress=True):
    """Rejection-sample each problem not yet in `out`; append one line per problem, a batch at
    a time in question order (a rerun skips the questions there: keyed by question)."""
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
                if solved(suite, batch[i], messages):
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
            sys.exit(no_solution_message(suite.name))
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


def no_solution_message(suite_name):
    """The two ways to get teacher trajectories for a suite without reference solutions."""
    return (f"suite {suite_name}: the offline reference teacher needs a 'solution' in every "
            f"problem (the tool calls that solve it, e.g. [{{\"name\": \"add\", \"arguments\": "
            f"{{\"a\": 3, \"b\": 4}}}}]); or run an LLM teacher (python teacher.py --suite "
            f"{suite_name} --teacher-url URL --teacher-model NAME --out traj.jsonl) and train "
            f"with --teacher traj.jsonl")


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

def http_json(url, payload, api_key=None, timeout=HTTP_TIMEOUT_S):
    """POST JSON, retrying 429/5xx/connection errors/unparsable bodies with backoff; a refused
    request (another 4xx) raises at once with the server's own error text."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = None
    for attempt in range(HTTP_RETRIES):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as e:
            said = " ".join(e.read().decode(errors="replace").split())[:300]
            last = f"HTTP {e.code}" + (f": {said}" if said else "")
            if e.code != 429 and e.code < 500:
                raise RuntimeError(f"teacher server {url} refused the request: {last}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            last = f"connection error ({getattr(e, 'reason', e)})"
        except ValueError:
            last = "malformed JSON in the reply"
    raise RuntimeError(f"teacher server {url} failed after {HTTP_RETRIES} attempts: {last}")


def _as_json_text(args):
    """A call's arguments as the API sends them: a JSON string."""
    return args if isinstance(args, str) else json.dumps(args or {})


def _maybe_json(args):
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args or {}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Teacher trajectories with rejection sampling.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--suite", default="math", help="a built-in suite or a suite file")
    ap.add_argument("--teacher", default=REFERENCE,
                    help="'reference' (offline solver), or a model short name / HF id / folder")
    ap.add_argument("--teacher-url", help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    ap.add_argument("--teacher-model", help="the model's name on the server (with --teacher-url)")
    ap.add_argument("--api-key-env", default="TEACHER_API_KEY",
                    help="environment variable holding the server's API key")
    ap.add_argument("--attempts", type=int, default=4, help="tries per question (rejection "
                    "sampling: the first correct one is kept)")
    ap.add_argument("--limit", type=int, help="first N training questions only")
    ap.add_argument("--max-turns", type=int, default=5, help="assistant turns per try")
    ap.add_argument("--max-tokens", type=int, default=1024,
                    help="tokens per server reply (max_tokens of each request)")
    ap.add_argument("--timeout", type=float, default=HTTP_TIMEOUT_S,
                    help="seconds per server request before it is retried")
    ap.add_argument("--concurrency", type=int, default=4, help="server requests in flight")
    ap.add_argument("--out", required=True, help="trajectory JSONL (appended; a rerun resumes)")
    args = ap.parse_args(argv)
    if args.teacher_url and not args.teacher_model:
        ap.error("--teacher-url needs --teacher-model (the model's name on the server)")
    for flag in ("attempts", "max_turns", "max_tokens", "concurrency"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: at least 1")
    try:
        suite = load_suite(args.suite)
        done = read_cache(args.out)
    except (SuiteError, ValueError) as e:
        ap.exit(2, f"teacher.py: error: {e}\n")
    problems = suite.split("train")[:args.limit]
    batch_size = 8
    if args.teacher_url:
        teacher_id = f"{args.teacher_model}@{args.teacher_url}"
        attempt = server_teacher(args.teacher_url, args.teacher_model, suite, args.max_turns,
                                 os.environ.get(args.api_key_env), args.max_tokens, args.timeout,
                                 args.concurrency)
        batch_size = args.concurrency
    elif args.teacher == REFERENCE:
        if not all("solution" in p for p in problems):
            ap.exit(2, f"teacher.py: error: {no_solution_message(args.suite)}\n")
        teacher_id = "reference-solver (offline stand-in, not an LLM)"
        attempt = lambda ps: [reference_messages(p, suite.tools) for p in ps]  # noqa: E731
        args.attempts = 1
    else:
        teacher_id = args.teacher
        try:
            tok, model = load_model(args.teacher)
        except ModelNotAvailable as e:
            sys.exit(str(e))
        attempt = local_teacher(tok, model, suite, max_turns=args.max_turns, temperature=0.7)
    print(f"{len(done)} questions already in {args.out}")
    try:
        rows = run_teacher(problems, attempt, teacher_id, args.out, suite, attempts=args.attempts,
                           batch_size=batch_size)
    except RuntimeError as e:
        sys.exit(f"teacher failed: {e} (finished lines are kept in {args.out}; rerun to resume)")
    print(summary(rows))


if __name__ == "__main__":
    main()
