"""teacher.py end to end: a real HTTP chat-completions server on loopback, a torn cache, a local model."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import teacher
from teacher import local_teacher, read_cache, run_teacher, server_teacher

PROBLEMS = [{"question": f"What is {a} times 7?", "answer": str(7 * a), "teacher_tools": ["multiply"]}
            for a in (3, 4, 5, 6)]


class FakeServer:
    """Chat completions with canned replies; `mode` switches to failures."""

    def __init__(self):
        self.mode, self.requests = "ok", 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                owner.requests += 1
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if owner.mode == "500":
                    self.send_response(500); self.end_headers(); return
                if owner.mode == "stall":
                    time.sleep(1.0)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if owner.mode == "garbage":
                    self.wfile.write(b"{not json"); return
                self.wfile.write(json.dumps(owner.reply(req)).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def reply(req):
        question = req["messages"][1]["content"]
        a = int(question.split()[2])
        last = req["messages"][-1]["content"]
        if "<tool_response>" not in last:
            if a % 2:   # odd: the API's tool_calls field
                msg = {"role": "assistant", "content": None, "tool_calls": [{
                    "type": "function", "function": {
                        "name": "multiply", "arguments": json.dumps({"a": a, "b": 7})}}]}
            else:       # even: <tool_call> text
                msg = {"role": "assistant", "content": '<tool_call>{"name": "multiply", '
                       f'"arguments": {{"a": {a}, "b": 7}}}}</tool_call>'}
        else:
            result = json.loads(last.split("\n")[1])["result"]
            msg = {"role": "assistant", "content": f"It is \\boxed{{{result}}}."}
        return {"choices": [{"message": msg}]}


@pytest.fixture
def fast_http(monkeypatch):
    monkeypatch.setattr(teacher, "BACKOFF_S", 0.01)
    monkeypatch.setattr(teacher, "HTTP_TIMEOUT_S", 0.3)
    srv = FakeServer()
    yield srv
    srv.server.shutdown()


def test_server_teacher_end_to_end_then_failures_keep_the_cache(fast_http, math_suite, tmp_path):
    out = str(tmp_path / "traj.jsonl")
    attempt = server_teacher(fast_http.url, "canned", math_suite)
    rows = run_teacher(PROBLEMS[:2], attempt, "canned", out, attempts=2, batch_size=1,
                       progress=False)
    assert [r["solved"] for r in rows] == [True, True]
    assert all(r["teacher_tools"] == ["multiply"] and r["attempts"] == 1 for r in rows)
    assert json.loads(rows[0]["messages"][1]["content"]) == {"name": "multiply", "result": 21}
    before = open(out).read()

    for mode in ("500", "garbage", "stall"):
        fast_http.mode, fast_http.requests = mode, 0
        with pytest.raises(RuntimeError, match="failed after 4 attempts"):
            run_teacher(PROBLEMS, attempt, "canned", out, attempts=1, batch_size=1,
                        progress=False)
        assert fast_http.requests == teacher.HTTP_RETRIES  # retried, then gave up
        assert open(out).read() == before                  # every finished line intact


def test_torn_last_line_is_dropped_and_the_run_resumes_without_duplicates(fast_http, math_suite,
                                                                          tmp_path):
    out = tmp_path / "traj.jsonl"
    attempt = server_teacher(fast_http.url, "canned", math_suite)
    run_teacher(PROBLEMS[:2], attempt, "canned", str(out), batch_size=1, progress=False)
    with open(out, "a") as f:
        f.write('{"question": "What is 5 times 7?", "answ')   # killed mid-write
    rows = run_teacher(PROBLEMS, attempt, "canned", str(out), batch_size=1, progress=False)
    questions = [r["question"] for r in rows]
    assert questions == [p["question"] for p in PROBLEMS] and len(set(questions)) == 4
    assert all(r["solved"] for r in rows)


def test_a_bad_line_in_the_middle_names_the_line(tmp_path):
    out = tmp_path / "traj.jsonl"
    out.write_text('{"question": "q", "solved": false}\nnot json\n{"question": "r", "solved": false}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_cache(str(out))


def test_reference_solver_solves_the_training_split(math_suite, tmp_path):
    from teacher import reference_messages
    train = math_suite.split("train")[:40]
    rows = run_teacher(train, lambda ps: [reference_messages(p, math_suite.tools) for p in ps],
                       "reference-solver", str(tmp_path / "t.jsonl"), progress=False)
    assert all(r["solved"] for r in rows)
    assert [r["teacher_tools"] for r in rows] == [p["teacher_tools"] for p in train]


def test_local_model_teacher_on_the_embedded_student(student, math_suite, tmp_path):
    tok, model = student
    attempt = local_teacher(tok, model, math_suite, max_new_tokens=24, max_total_tokens=24,
                            temperature=0.7)
    rows = run_teacher(math_suite.split("train")[:2], attempt, "SmolLM2-135M",
                       str(tmp_path / "t.jsonl"), attempts=2, progress=False)
    assert len(rows) == 2
    for r in rows:  # a 135M student rarely solves these; whatever it did is recorded honestly
        assert r["teacher"] == "SmolLM2-135M" and 1 <= r["attempts"] <= 2
        assert r["solved"] == (r["messages"] is not None)
