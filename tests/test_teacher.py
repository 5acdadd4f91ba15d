"""teacher.py end to end: a loopback chat-completions server that checks OpenAI's tool protocol,
retries, a killed and resumed run, a torn cache, the reference solver and a local model."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import teacher
from teacher import local_teacher, read_cache, run_teacher, server_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def protocol_error(req):
    """What an OpenAI-compatible server would refuse in a request (None: nothing)."""
    if not isinstance(req.get("model"), str) or not req["model"]:
        return "'model' must be a non-empty string"
    if not isinstance(req.get("max_tokens"), int):
        return "expected an integer max_tokens"
    for t in req.get("tools", []):
        if t.get("type") != "function" or "name" not in t.get("function", {}):
            return "each tool is {'type': 'function', 'function': {'name': ...}}"
    if "<tools>" in req["messages"][0]["content"]:
        return "the tools are described in the system prompt as well as in `tools`"
    open_ids = set()                 # tool_call ids of the last assistant message not answered yet
    for i, m in enumerate(req["messages"]):
        if m["role"] == "tool":
            if m.get("tool_call_id") not in open_ids:
                return (f"messages[{i}]: a 'tool' message must respond to a preceding "
                        f"'tool_calls' id, got {m.get('tool_call_id')!r}")
            open_ids.discard(m["tool_call_id"])
            continue
        if open_ids:
            return f"messages[{i}]: tool_call ids {sorted(open_ids)} have no 'tool' response"
        if m["role"] == "assistant":
            for c in m.get("tool_calls") or []:
                if not isinstance(c["function"]["arguments"], str) or not c.get("id"):
                    return f"messages[{i}]: a tool call has an id and string arguments"
                open_ids.add(c["id"])
    return None


class OpenAIServer:
    """A perfect teacher behind the protocol: it replays each math problem's solution, one call a
    turn, then boxes the last result. Questions at even positions get `tool_calls`, the others
    <tool_call> text (a server without a tool parser). `fail[question]`: status codes to answer
    first (429, 500); `delay`: seconds per reply."""

    def __init__(self, problems):
        self.solutions = {p["question"]: (i, p["solution"]) for i, p in enumerate(problems)}
        self.fail, self.delay, self.requests, self.bodies = {}, 0.0, 0, []
        lock, owner = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    owner.requests += 1
                    owner.bodies.append(req)
                    question = req["messages"][1]["content"]
                    codes = owner.fail.get(question) or []
                    code = codes.pop(0) if codes else None
                error = protocol_error(req)
                if error or req["model"] == "no-such-model":
                    self.send(400, {"error": {"message": error or "The model `no-such-model` "
                                              "does not exist.", "type": "BadRequestError"}})
                elif code:
                    self.send(code, {"error": {"message": f"status {code}"}})
                else:
                    time.sleep(owner.delay)
                    self.send(200, {"choices": [{"message": owner.reply(req)}]})

            def send(self, code, obj):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(obj).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, req):
        index, solution = self.solutions[req["messages"][1]["content"]]
        results = [json.loads(m["content"])["result"] for m in req["messages"] if m["role"] == "tool"]
        if len(results) == len(solution):
            return {"role": "assistant", "content": f"It is \\boxed{{{results[-1]}}}."}
        call = solution[len(results)]
        if index % 2 == 0:
            return {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call-{len(results)}", "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]}
        return {"role": "assistant", "content": f"<tool_call>{json.dumps(call)}</tool_call>"}


@pytest.fixture
def server(math_suite, monkeypatch):
    monkeypatch.setattr(teacher, "BACKOFF_S", 0.01)
    srv = OpenAIServer(math_suite.split("train"))
    yield srv
    srv.server.shutdown()


def test_the_protocol_check_refuses_what_a_server_refuses():
    ok = {"model": "m", "max_tokens": 8, "messages": [
        {"role": "system", "content": "solve"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "7"}]}
    assert protocol_error(ok) is None
    as_user = dict(ok, messages=ok["messages"][:3] + [{"role": "user", "content": "7"}])
    unanswered = protocol_error(as_user)
    wrong_id = protocol_error(dict(ok, messages=ok["messages"][:3] + [
        {"role": "tool", "tool_call_id": "b", "content": "7"}]))
    as_text = protocol_error(dict(ok, messages=ok["messages"][:2] + [
        {"role": "assistant", "content": "<tool_call>{}</tool_call>"},
        {"role": "tool", "tool_call_id": "a", "content": "7"}]))
    assert "no 'tool' response" in unanswered and "'b'" in wrong_id and "'a'" in as_text
    assert "non-empty" in protocol_error(dict(ok, model=None))


def test_server_teacher_speaks_the_protocol(server, math_suite, tmp_path):
    """Multi-call problems solved through `tool_calls` and `tool` messages (and through
    <tool_call> text), the tools in `tools` only, max_tokens sent, concurrency 3; the cache
    holds each trajectory in the student's format, with the teacher's tools."""
    problems = [p for p in math_suite.split("train") if len(p["solution"]) >= 2][:6]
    out = str(tmp_path / "traj.jsonl")
    attempt = server_teacher(server.url, "teacher", math_suite, max_tokens=256, concurrency=3)
    rows = run_teacher(problems, attempt, "teacher", out, math_suite, attempts=1, batch_size=3,
                       progress=False)
    assert [r["question"] for r in rows] == [p["question"] for p in problems]
    assert all(r["solved"] for r in rows), [r["messages"] for r in rows if not r["solved"]]
    assert [r["teacher_tools"] for r in rows] == [sorted(set(p["teacher_tools"])) for p in problems]
    assert all(b["max_tokens"] == 256 and b["tools"] == math_suite.schemas for b in server.bodies)
    turns = [m for m in rows[0]["messages"] if m["role"] == "assistant"]
    assert len(turns) == len(problems[0]["solution"]) + 1
    assert turns[0]["content"].startswith("\n<tool_call>{\"name\": ")     # the student's format
    assert max(len(b["messages"]) for b in server.bodies) >= 6          # several calls answered


def test_retries_on_429_and_500_then_a_refusal_shows_the_servers_words(server, math_suite,
                                                                       tmp_path):
    problems = math_suite.split("train")[:2]
    server.fail = {problems[0]["question"]: [429, 500], problems[1]["question"]: [500]}
    out = str(tmp_path / "traj.jsonl")
    rows = run_teacher(problems, server_teacher(server.url, "teacher", math_suite), "teacher",
                       out, math_suite, progress=False)
    assert all(r["solved"] for r in rows)
    first_calls = [b for b in server.bodies if len(b["messages"]) == 2]
    assert len(first_calls) == 5                         # 2 + 1 refused, then each went through
    with pytest.raises(RuntimeError, match="refused the request: HTTP 400: .*no-such-model"):
        run_teacher(math_suite.split("train")[2:3],
                    server_teacher(server.url, "no-such-model", math_suite), "t", out, math_suite,
                    progress=False)
    server.fail = {math_suite.split("train")[3]["question"]: [500] * teacher.HTTP_RETRIES}
    with pytest.raises(RuntimeError, match="failed after 4 attempts: HTTP 500"):
        run_teacher(math_suite.split("train")[3:4],
                    server_teacher(server.url, "teacher", math_suite), "t", out, math_suite,
                    progress=False)
    assert len(read_cache(out)) == 2                     # every finished line intact


def teacher_cli(*args, **kw):
    return subprocess.Popen([sys.executable, "teacher.py", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_missing_teacher_model_is_an_argument_error_before_any_request(server, tmp_path):
    p = teacher_cli("--teacher-url", server.url, "--out", str(tmp_path / "t.jsonl"))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "--teacher-model" in err and server.requests == 0


def test_killed_then_resumed_with_concurrency_4(server, math_suite, tmp_path):
    """teacher.py --concurrency 4 killed with SIGKILL mid-run, then run again: every question
    once, all solved (the cache is keyed by question)."""
    server.delay = 0.05
    out = tmp_path / "traj.jsonl"
    args = ("--teacher-url", server.url, "--teacher-model", "teacher", "--concurrency", "4",
            "--limit", "24", "--out", str(out))
    p = teacher_cli(*args)
    deadline = time.time() + 120
    while not (out.exists() and out.read_text().count("\n") >= 4):
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    partial = len(read_cache(str(out)))
    assert 4 <= partial < 24
    p = teacher_cli(*args)
    said, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    rows = read_cache(str(out))
    questions = [r["question"] for r in rows]
    assert sorted(questions) == sorted(q["question"] for q in math_suite.split("train")[:24])
    assert len(set(questions)) == 24 and all(r["solved"] for r in rows)
    assert f"{partial} questions already in" in said


def test_torn_last_line_is_dropped_and_the_run_resumes_without_duplicates(server, math_suite,
                                                                          tmp_path):
    problems = math_suite.split("train")[:4]
    out = tmp_path / "traj.jsonl"
    attempt = server_teacher(server.url, "teacher", math_suite)
    run_teacher(problems[:2], attempt, "teacher", str(out), math_suite, batch_size=1,
                progress=False)
    with open(out, "a") as f:
        f.write(json.dumps({"question": problems[2]["question"]})[:30])  # killed mid-write
    rows = run_teacher(problems, attempt, "teacher", str(out), math_suite, batch_size=1,
                       progress=False)
    questions = [r["question"] for r in rows]
    assert questions == [p["question"] for p in problems] and all(r["solved"] for r in rows)


def test_a_bad_line_in_the_middle_names_the_line(tmp_path):
    out = tmp_path / "traj.jsonl"
    out.write_text('{"question": "q", "solved": false}\nnot json\n{"question": "r", "solved": false}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_cache(str(out))


def test_reference_solver_solves_the_training_split(math_suite, tmp_path):
    from teacher import reference_messages
    train = math_suite.split("train")[:40]
    rows = run_teacher(train, lambda ps: [reference_messages(p, math_suite.tools) for p in ps],
                       "reference-solver", str(tmp_path / "t.jsonl"), math_suite, progress=False)
    assert all(r["solved"] for r in rows)
    assert [r["teacher_tools"] for r in rows] == [p["teacher_tools"] for p in train]


def test_rejection_sampling_judges_with_the_suites_check(tmp_path):
    """BFCL's answer is the calls (its check), not a boxed answer: a right call with no box is
    kept, a boxed text with no call is not."""
    from tasks import load_suite
    bfcl = load_suite("bfcl")
    p = next(q for q in bfcl.problems if q["category"] == "simple_python")
    from suites.bfcl import answer_as_calls
    call = answer_as_calls(p["ground_truth"], p["schemas"])[0]
    right = [{"role": "assistant", "content": f"<tool_call>{json.dumps(call)}</tool_call>"}]
    boxed = [{"role": "assistant", "content": f"\\boxed{{{p['answer']}}}"}]
    rows = run_teacher([p], lambda ps: [right], "t", str(tmp_path / "a.jsonl"), bfcl,
                       progress=False)
    assert rows[0]["solved"]
    rows = run_teacher([p], lambda ps: [boxed], "t", str(tmp_path / "b.jsonl"), bfcl,
                       progress=False)
    assert not rows[0]["solved"]


def test_local_model_teacher_on_the_embedded_student(student, math_suite, tmp_path):
    tok, model = student
    attempt = local_teacher(tok, model, math_suite, max_new_tokens=24, max_total_tokens=24,
                            temperature=0.7)
    rows = run_teacher(math_suite.split("train")[:2], attempt, "SmolLM2-135M",
                       str(tmp_path / "t.jsonl"), math_suite, attempts=2, progress=False)
    assert len(rows) == 2
    for r in rows:  # a 135M student rarely solves these; whatever it did is recorded honestly
        assert r["teacher"] == "SmolLM2-135M" and 1 <= r["attempts"] <= 2
        assert r["solved"] == (r["messages"] is not None)
