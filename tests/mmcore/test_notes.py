"""Note strategies, the fidelity checker, the LLM backends (stub HTTP server, tiny local model) and `notes`."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmcore.cases import Case, CaseStore
from mmcore.commands import main
from mmcore.fidelity import DX_TERMS, check_note, diagnosis_mentions, read_note
from mmcore.llm import HTTPChatBackend, LLMError, LocalCausalLM, build_prompt, write_note_llm
from mmcore.notes import STRATEGIES, generate_notes, write_note
from mmcore.synthderm import generate

P3_WRONG_CLASS, P3_WRONG_FINDING = 0.3, 0.1


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return [sc.case for sc in generate(300, seed=21, size=64)]


def _rate(strategy: str, cases: list[Case], **knobs) -> float:
    return sum(not check_note(write_note(strategy, c, seed=0, **knobs), c).ok for c in cases) / len(cases)


def test_strategies_are_registered_by_name():
    assert STRATEGIES.names() == ["M", "P1", "P2", "P3", "clinical"]
    with pytest.raises(KeyError, match="choose one of"):
        write_note("P9", Case(case_id="x", source="t", dx="nv"))


def test_notes_are_deterministic_and_their_wording_varies(cases):
    for strategy in STRATEGIES.names():
        notes = [write_note(strategy, c, seed=0) for c in cases[:60]]
        assert notes == [write_note(strategy, c, seed=0) for c in cases[:60]]
        other = [write_note(strategy, c, seed=1) for c in cases[:60]]
        assert sum(a != b for a, b in zip(notes, other, strict=True)) > 20
        openings = {" ".join(n.split()[:2]) for n in notes}
        assert len(openings) >= 3, (strategy, openings)


def test_m_and_p1_never_contradict_their_case(cases):
    assert _rate("M", cases) == 0.0
    assert _rate("P1", cases) == 0.0


def test_p3_contradicts_at_about_its_configured_rate(cases):
    expected = 1 - (1 - P3_WRONG_CLASS) * (1 - P3_WRONG_FINDING)
    assert abs(_rate("P3", cases) - expected) < 0.07
    assert abs(_rate("P3", cases, wrong_class_rate=0.3, wrong_finding_rate=0.0) - 0.3) < 0.07
    assert _rate("P3", cases, wrong_class_rate=0.0, wrong_finding_rate=0.0) == 0.0
    assert _rate("P3", cases, wrong_class_rate=1.0, wrong_finding_rate=0.0) == 1.0


def test_p2_is_class_typical_so_it_often_misses_this_lesion(cases):
    assert _rate("P2", cases) > 0.3


def test_clinical_notes_never_name_a_diagnosis_or_malignancy(cases):
    terms = [t for ts in DX_TERMS.values() for t in ts]
    for seed in (0, 1, 2):
        for case in cases:
            note = write_note("clinical", case, seed=seed)
            assert diagnosis_mentions(note) == [], note
            assert not any(re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", note, re.I) for t in terms), note
            assert check_note(note, case).ok, note


def test_clinical_notes_carry_age_sex_site_and_history(cases):
    case = next(c for c in cases if c.extra["history"]["bleeding"])
    kinds = {c.kind for c in read_note(write_note("clinical", case))}
    assert {"age", "sex", "site", "colour", "diameter"} <= kinds
    assert "bled" in write_note("clinical", case).lower()


def test_p1_without_findings_states_only_what_is_known():
    case = Case(
        case_id="ham:1", source="ham10000", dx="mel", age=60.0, sex="male", site="posterior torso", site_detail="back"
    )
    note = write_note("P1", case)
    assert {c.kind for c in read_note(note)} <= {"dx", "malignancy", "age", "sex", "site"}
    assert "not recorded" in note or "No ABCD" in note
    assert check_note(note, case).ok


def test_every_phrase_the_writers_use_reads_back_to_its_own_value():
    from mmcore.notes import ASYMMETRY_WORDS, BORDER_WORDS, COLOUR_WORDS, FEATURE_WORDS, NETWORK_WORDS, STRUCTURE_WORDS

    tables = {
        "colour": COLOUR_WORDS,
        "structure": STRUCTURE_WORDS,
        "feature": FEATURE_WORDS,
        "network": NETWORK_WORDS,
        "border": BORDER_WORDS,
    }
    for kind, table in tables.items():
        for value, phrases in table.items():
            for phrase in phrases:
                values = {c.value for c in read_note(phrase) if c.kind == kind}
                assert values == {value} or (kind == "border" and value == "mixed" and "mixed" in values), phrase
    for value, phrases in ASYMMETRY_WORDS.items():
        for phrase in phrases:
            assert [c.value for c in read_note(phrase)] == [str(value)], phrase


def test_checker_lists_each_contradiction_with_both_sides(cases):
    case = next(c for c in cases if c.dx == "nv" and "black" not in c.findings["colours"] and c.age and c.sex)
    other_sex = "woman" if case.sex == "male" else "man"
    note = (
        f"A {case.age + 30:g}-year-old {other_sex}. Melanoma. Colours: black. "
        f"There is no {case.findings['colours'][0]}. Site: on the sole."
    )
    found = {c.field: c for c in check_note(note, case).contradictions}
    assert set(found) == {"age", "sex", "dx", "colour", "site"}
    assert found["dx"].note_says == "Melanoma" and found["dx"].case_has == "diagnosis nv"
    assert found["colour"].case_has.startswith("colours: ")
    assert check_note(note, case).score < 0.5


def test_checker_reads_negation_hedging_and_context():
    case = Case(
        case_id="c",
        source="t",
        dx="nv",
        findings={"colours": ["light brown"], "structures": ["dots"], "asymmetry": 0, "border": "sharp"},
    )
    assert check_note("Melanomas typically show streaks and black areas. No streaks, veil or black.", case).ok is False
    assert check_note("Nevi typically show a regular network. Dots; no streaks, veil or black.", case).ok
    assert check_note("Symmetric, well-defined border. On the other hand it came back.", case).ok
    says = [c.note_says for c in check_note("Asymmetric in both axes, ill-defined.", case).contradictions]
    assert says == ["Asymmetric in both axes", "ill-defined (indistinct)"]


# ---- LLM backends ----


class _StubChat(BaseHTTPRequestHandler):
    fail_first = 0
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        user = body["messages"][-1]["content"]
        text = "Symmetric lesion with a regular network. Diagnosis: melanocytic nevus."
        if "Never name" in user:
            text = "Brown spot on the back, noticed years ago."
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_url():
    _StubChat.fail_first, _StubChat.seen = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubChat)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_prompts_carry_the_same_structured_inputs(cases):
    case = next(c for c in cases if c.dx == "mel")
    text = {s: " ".join(m["content"] for m in build_prompt(s, case)) for s in STRATEGIES.names()}
    assert "melanoma" in text["M"] and "typically" in text["M"]
    assert all(col in text["P1"] for col in case.findings["colours"]) and "blue-grey" in text["P1"]
    assert "melanoma" in text["P2"] and "Asymmetry" not in text["P2"]
    assert "melanoma" not in text["P3"].lower() and f"{case.age:g}" not in text["P3"]
    assert "Never name" in text["clinical"] and "melanoma" not in text["clinical"].lower()


def test_http_backend_posts_chat_retries_and_checks_fidelity(stub_url, cases):
    _StubChat.fail_first = 2
    backend = HTTPChatBackend(stub_url, model="m", api_key="sekret", backoff=0.01)
    case = next(c for c in cases if c.dx == "nv" and c.findings["asymmetry"] == 0)
    text, result = write_note_llm("P1", case, backend)
    assert text.startswith("Symmetric") and result.checked > 0
    path, auth, body = _StubChat.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer sekret" and len(_StubChat.seen) == 3
    assert body["model"] == "m" and body["messages"] == build_prompt("P1", case)
    mel = next(c for c in cases if c.dx == "mel")
    assert any(c.field == "dx" for c in write_note_llm("P1", mel, backend)[1].contradictions)


def test_http_backend_gives_one_line_when_unreachable():
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = HTTPChatBackend(f"http://127.0.0.1:{port}/v1/chat/completions", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(LLMError) as err:
        backend.complete([{"role": "user", "content": "hi"}])
    assert "unreachable after 2 attempts" in str(err.value) and "\n" not in str(err.value)


def _tiny_causal_lm(path, cases) -> None:
    """A tiny random GPT-2 and a word-level tokenizer trained offline on our prompts and notes."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    corpus = [m["content"] for c in cases[:20] for s in STRATEGIES.names() for m in build_prompt(s, c)]
    corpus += [write_note(s, c) for c in cases[:20] for s in STRATEGIES.names()] + ["user: assistant:"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=fast.vocab_size,
        n_positions=512,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )
    GPT2LMHeadModel(config).save_pretrained(path)


def test_local_model_writes_deterministic_checked_notes(tmp_path, cases, monkeypatch, capsys):
    _tiny_causal_lm(tmp_path / "lm", cases)
    llm = LocalCausalLM(tmp_path / "lm", max_new_tokens=12)
    text, result = write_note_llm("P1", cases[0], llm, seed=0)
    assert text and text == write_note_llm("P1", cases[0], llm, seed=0)[0]
    assert result.score == check_note(text, cases[0]).score

    home = tmp_path / "home"
    with CaseStore(home) as store:
        _store_cases(store, cases[:4])
        report = generate_notes(store, "M", backend=llm, log_path=home / "log.jsonl")
        assert report["backend"] == "llm-local" and report["cases"] == 4
        assert len(store.notes("M")) == report["written"] == 4 - report["dropped"]
    assert [json.loads(line)["case_id"] for line in (home / "log.jsonl").read_text().splitlines()] == [
        c.case_id for c in cases[:4]
    ]

    monkeypatch.setenv("MMDERM_HOME", str(tmp_path / "home2"))
    assert main(["notes", "generate", "--strategy", "M", "--backend", "llm", "--llm-path", str(tmp_path)]) == 2
    assert "not a transformers model directory" in capsys.readouterr().err


def _store_cases(store: CaseStore, cases: list[Case]) -> None:
    from mmcore.images import DecodedImage, pixel_sha256
    from mmcore.synthderm import generate_one

    for case in cases:
        sc = generate_one(case.extra["synth_index"], seed=case.extra["synth_seed"], size=64)
        sha, rel = store.put_image(DecodedImage(sc.image, "png", pixel_sha256(sc.image)))
        case.image_sha256, case.image_path = sha, rel
    store.upsert(cases)


def test_cli_notes_generate_and_fidelity(tmp_path, monkeypatch, capsys, cases, stub_url):
    monkeypatch.setenv("MMDERM_HOME", str(tmp_path))
    with CaseStore(tmp_path) as store:
        _store_cases(store, cases[:30])
    assert main(["notes", "generate", "--strategy", "P3", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["written"] == 30 and made["backend"] == "template"
    assert main(["notes", "fidelity", "--strategy", "P3", "--json"]) == 0
    fid = json.loads(capsys.readouterr().out)
    assert set(fid) == {"strategy", "notes", "with_contradictions", "rate"}
    assert fid["notes"] == 30 and 0 < fid["with_contradictions"] == made["with_contradictions"]
    assert fid["rate"] == pytest.approx(fid["with_contradictions"] / 30)

    assert main(["notes", "fidelity", "--strategy", "P3", "--drop-contradictions", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dropped"] == fid["with_contradictions"]
    assert main(["notes", "fidelity", "--strategy", "P3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["with_contradictions"] == 0

    monkeypatch.setenv("MMDERM_LLM_API_KEY", "k1")
    assert main(["notes", "generate", "--strategy", "clinical", "--backend", "llm", "--llm-url", stub_url]) == 0
    assert _StubChat.seen[-1][1] == "Bearer k1"
    with CaseStore(tmp_path) as store:
        assert set(store.notes("clinical").values()) == {"Brown spot on the back, noticed years ago."}
    log = (tmp_path / "notes" / "fidelity_clinical_llm.jsonl").read_text().splitlines()
    assert len(log) == 30 and all("score" in json.loads(line) for line in log)

    assert main(["notes", "generate", "--strategy", "P1", "--backend", "llm"]) == 2
    assert "exactly one of --llm-path" in capsys.readouterr().err
    assert main(["notes", "generate", "--strategy", "Q"]) == 2
