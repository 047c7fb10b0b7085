"""LLM prompts (built from the findings vocabulary) and the backends' handling of what an endpoint answers, offline:
a scripted OpenAI-compatible stub on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmcore.cases import Case
from mmcore.findings import ASYMMETRY, BORDERS, COLOURS, STRUCTURES
from mmcore.llm import HTTPChatBackend, LLMError, LocalCausalLM, build_backend, build_prompt, write_note_llm


@pytest.fixture
def melanoma() -> Case:
    return Case(
        case_id="m1",
        source="test",
        dx="mel",
        age=70.0,
        sex="female",
        site="lower extremity",
        site_detail="leg",
        findings={
            "asymmetry": 2,
            "border": "mixed",
            "colours": ["dark brown", "blue-grey", "black"],
            "structures": ["pigment network", "streaks", "blue-white veil"],
            "network": "irregular",
            "features": ["ulceration"],
            "diameter_mm": 11.5,
        },
        extra={"history": {"duration_months": 6, "changed": True}},
    )


def _user(strategy: str, case: Case) -> str:
    messages = build_prompt(strategy, case)
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[1]["content"]


# ---- prompts ----


def test_p1_prompt_states_the_findings_in_the_vocabulary_and_the_absent_structures(melanoma):
    text = _user("P1", melanoma)
    assert f"Asymmetry: {ASYMMETRY[2]}." in text and "Border: mixed." in text
    assert "Colours: dark brown, blue-grey, black." in text
    assert "Structures: pigment network, streaks, blue-white veil (irregular network)." in text
    absent = [s for s in STRUCTURES if s not in melanoma.findings["structures"]]
    assert f"Absent structures: {', '.join(absent)}." in text
    assert "Specific findings: ulceration." in text and "Diameter: 11.5 mm." in text
    # the vocabulary the model must keep to: all of mmcore.findings, in its order
    assert f"colours {', '.join(COLOURS)}; border {', '.join(BORDERS)}; structures {', '.join(STRUCTURES)}" in text
    assert "Diagnosis: melanoma (malignant)." in text and "Patient age: 70 years. Sex: female. Site: leg." in text


def test_prompts_without_findings_forbid_describing_any(melanoma):
    melanoma.findings = {}
    text = _user("P1", melanoma)
    assert "were not recorded: do not describe any" in text and "Asymmetry" not in text


def test_m_prompt_states_the_hierarchy_and_the_typical_phrasing(melanoma):
    assert "Hierarchy: melanocytic, malignant." in _user("M", melanoma)
    akiec = Case(case_id="a", source="test", dx="akiec")
    assert "Hierarchy: keratinocytic, premalignant." in _user("M", akiec)
    scc = Case(case_id="s", source="test", dx="scc")  # outside the HAM10000 hierarchy: its malignancy
    assert "Hierarchy: malignant." in _user("M", scc)


def test_prompts_give_each_strategy_only_its_own_inputs(melanoma):
    assert "Diagnosis: melanoma." in _user("P2", melanoma) and "Asymmetry" not in _user("P2", melanoma)
    p3 = _user("P3", melanoma)
    assert "melanoma" not in p3.lower() and "70" not in p3 and "leg" not in p3
    clinical = _user("clinical", melanoma)
    assert "melanoma" not in clinical.lower() and "Never name" in clinical
    assert "diameter 11.5 mm; irregular outline; colours dark brown, blue-grey, black" in clinical
    assert "duration months: 6, changed: True" in clinical
    with pytest.raises(KeyError, match="no LLM prompt for note strategy 'P9'"):
        build_prompt("P9", melanoma)


# ---- backends ----


def test_build_backend_needs_exactly_one_of_a_path_or_a_url(tmp_path):
    for path, url in [(None, None), (str(tmp_path), "http://127.0.0.1:9/v1")]:
        with pytest.raises(LLMError, match="exactly one of --llm-path"):
            build_backend(path, url)
    assert isinstance(build_backend(llm_url="http://127.0.0.1:9/v1", model="m"), HTTPChatBackend)
    with pytest.raises(LLMError, match="not a transformers model directory"):
        build_backend(llm_path=str(tmp_path))
    with pytest.raises(LLMError, match="not a transformers model directory"):
        LocalCausalLM(tmp_path / "missing")


def test_the_endpoint_is_the_chat_completions_path_of_the_url():
    assert HTTPChatBackend("http://h:1/v1/").endpoint == "http://h:1/v1/chat/completions"
    assert HTTPChatBackend("http://h:1/v1/chat/completions").endpoint == "http://h:1/v1/chat/completions"


class _Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next scripted (status, body); records (path, headers, body) of every request."""

    script: list[tuple[int, bytes]] = []
    seen: list[tuple[str, dict, dict]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, dict(self.headers), body))
        status, payload = type(self).script.pop(0)
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def _answer(text: str) -> tuple[int, bytes]:
    return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


@pytest.fixture
def endpoint():
    _Scripted.script, _Scripted.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_chat_request_carries_the_prompt_and_returns_the_stripped_answer(endpoint, melanoma):
    _Scripted.script = [_answer("  Blue-grey and black areas, an irregular network.\n")]
    backend = HTTPChatBackend(endpoint, model="tiny", max_tokens=50)
    text, result = write_note_llm("P1", melanoma, backend, seed=7)
    assert text == "Blue-grey and black areas, an irregular network." and result.ok and result.checked == 3
    path, headers, body = _Scripted.seen[0]
    assert path == "/v1/chat/completions" and "Authorization" not in headers  # no key, no header
    assert body == {
        "model": "tiny",
        "messages": build_prompt("P1", melanoma),
        "temperature": 0,
        "seed": 7,
        "max_tokens": 50,
    }


def test_a_note_the_llm_invents_is_checked_against_the_case(endpoint, melanoma):
    _Scripted.script = [_answer("A symmetric benign nevus with red lacunae.")]
    _, result = write_note_llm("P1", melanoma, HTTPChatBackend(endpoint))
    assert {c.field for c in result.contradictions} == {"asymmetry", "dx", "malignancy", "feature"}


def test_a_client_error_is_not_retried_and_says_why_in_one_line(endpoint):
    _Scripted.script = [(400, b'{"error": "bad\nrequest"}')]
    backend = HTTPChatBackend(endpoint, retries=3, backoff=0.01)
    with pytest.raises(LLMError) as err:
        backend.complete([{"role": "user", "content": "hi"}])
    assert "answered HTTP 400" in str(err.value) and "bad request" in str(err.value) and "\n" not in str(err.value)
    assert len(_Scripted.seen) == 1


def test_server_errors_are_retried_then_reported(endpoint):
    _Scripted.script = [(503, b""), (429, b""), _answer("ok")]
    assert HTTPChatBackend(endpoint, retries=2, backoff=0.01).complete([]) == "ok"
    assert len(_Scripted.seen) == 3
    _Scripted.script, _Scripted.seen = [(503, b"")] * 2, []
    with pytest.raises(LLMError, match="unreachable after 2 attempts: HTTP 503"):
        HTTPChatBackend(endpoint, retries=1, backoff=0.01).complete([])


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"<html>busy</html>", "did not answer JSON"), (b'{"choices": []}', "without choices")],
)
def test_an_answer_in_the_wrong_shape_is_an_llm_error(endpoint, payload, message):
    _Scripted.script = [(200, payload)]
    with pytest.raises(LLMError, match=message):
        HTTPChatBackend(endpoint, retries=0).complete([])
