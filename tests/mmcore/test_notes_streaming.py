"""Note generation streamed (issue 14): batches committed then logged, and a run stopped by a crash or cancel resumed
by the next one without writing its finished batches again; a run with other arguments starts afresh."""

from __future__ import annotations

import json

import pytest

import mmcore.notes as notes
from mmcore.cases import CaseStore


@pytest.fixture
def counted_writes(monkeypatch):
    """Every note written, by case id; raises KeyboardInterrupt at the call number put in `stop_at`."""
    calls: list[str] = []
    stop_at: list[int] = []
    real = notes.write_note

    def write(strategy, case, seed=0, **knobs):
        if stop_at and len(calls) + 1 == stop_at[0]:
            raise KeyboardInterrupt  # Ctrl-C; a job's cancel (SIGTERM) ends the process outright, like a crash
        calls.append(case.case_id)
        return real(strategy, case, seed, **knobs)

    monkeypatch.setattr(notes, "write_note", write)
    monkeypatch.setattr(notes, "NOTES_BATCH", 10)
    return calls, stop_at


def test_a_stopped_run_is_resumed_without_writing_its_finished_batches(synth_home, counted_writes):
    calls, stop_at = counted_writes
    log = synth_home / "notes" / "fidelity_M_template.jsonl"
    partial = log.with_name(log.name + ".partial")
    with CaseStore(synth_home) as store:
        store.delete_notes([c.case_id for c in store.cases()], "M")
        stop_at.append(25)
        with pytest.raises(KeyboardInterrupt):
            notes.generate_notes(store, "M", log_path=log)
        assert len(store.notes("M")) == 20 and not log.exists()  # two whole batches, committed and logged
        with partial.open("a") as f:
            f.write('{"case_id": "torn')  # a crash in the middle of a line
        calls.clear()
        stop_at.clear()
        report = notes.generate_notes(store, "M", log_path=log)
        assert len(calls) == 64 and report["resumed"] == 20 and report["written"] == len(store.notes("M")) == 84
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [x["case_id"] for x in lines] == sorted(c.case_id for c in store.cases()) and not partial.exists()
        assert report["with_contradictions"] == sum(1 for x in lines if x["contradictions"])

        calls.clear()  # a finished run leaves nothing to resume: the next one writes every note again
        assert notes.generate_notes(store, "M", log_path=log)["resumed"] == 0 and len(calls) == 84


def test_a_partial_log_of_other_arguments_is_not_resumed(synth_home, counted_writes):
    calls, stop_at = counted_writes
    log = synth_home / "notes" / "fidelity_M_template.jsonl"
    with CaseStore(synth_home) as store:
        stop_at.append(15)
        with pytest.raises(KeyboardInterrupt):
            notes.generate_notes(store, "M", seed=1, log_path=log)
        calls.clear()
        stop_at.clear()
        report = notes.generate_notes(store, "M", seed=2, log_path=log)  # another seed: other notes
        assert report["resumed"] == 0 and len(calls) == 84
