"""LLM backend for the note strategies: prompts built from the same structured inputs as the templates, sent to a
local transformers causal LM directory or to an OpenAI-compatible chat endpoint (timeouts, retries with backoff).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

from mmcore.cases import DX_NAMES, Case
from mmcore.fidelity import FidelityResult, check_note
from mmcore.findings import ASYMMETRY, BORDERS, COLOURS, DX_HIERARCHY, STRUCTURES

Message = dict[str, str]
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 1_000_000  # a chat answer of max_tokens is a few kB; more is a misconfigured or hostile server

_SYSTEM = (
    "You write short notes about skin lesions for a research dataset; they are never used for diagnosis. "
    "Write 2 to 4 plain sentences, no lists, no headings. Use only the information given: do not invent "
    "findings, ages, sites or history."
)


class LLMError(RuntimeError):
    """The LLM could not be used; str(e) is one line that says why."""


class ChatBackend(Protocol):
    name: str

    def complete(self, messages: list[Message], seed: int = 0) -> str: ...


def _metadata(case: Case) -> str:
    age = f"{case.age:g} years" if case.age is not None else "unknown"
    site = case.site_detail or case.site or "unknown"
    return f"Patient age: {age}. Sex: {case.sex or 'unknown'}. Site: {site}."


def _findings(case: Case) -> str:
    f = case.findings or {}
    if not f:
        return "Dermoscopic findings were not recorded: do not describe any."
    lines = []
    if "asymmetry" in f:
        lines.append(f"Asymmetry: {ASYMMETRY.get(int(f['asymmetry']), f['asymmetry'])}.")
    if "border" in f:
        lines.append(f"Border: {f['border']}.")
    if "colours" in f:
        lines.append(f"Colours: {', '.join(f['colours']) or 'none'}.")
    if "structures" in f:
        network = f" ({f['network']} network)" if f.get("network") else ""
        lines.append(f"Structures: {', '.join(f['structures']) or 'none'}{network}.")
        absent = [s for s in STRUCTURES if s not in f["structures"]]
        lines.append(f"Absent structures: {', '.join(absent) or 'none'}.")
    if f.get("features"):
        lines.append(f"Specific findings: {', '.join(f['features'])}.")
    if f.get("diameter_mm"):
        lines.append(f"Diameter: {f['diameter_mm']:g} mm.")
    return " ".join(lines)


def build_prompt(strategy: str, case: Case) -> list[Message]:
    """Chat messages for one strategy from the case's structured inputs (what the template writer also uses)."""
    name = DX_NAMES.get(case.dx, case.dx)
    if strategy == "M":
        hierarchy = ", ".join(DX_HIERARCHY[case.dx]) if case.dx in DX_HIERARCHY else case.malignancy
        task = (
            f"Diagnosis: {name}. Hierarchy: {hierarchy}. {_metadata(case)}\n"
            "State the category, the diagnosis, and the dermoscopic morphology this diagnosis typically shows, "
            "phrased as typical of the diagnosis (for example 'typically shows'), not as seen in this lesion."
        )
    elif strategy == "P1":
        task = (
            f"{_findings(case)}\nDiagnosis: {name} ({case.malignancy}). {_metadata(case)}\n"
            f"Write a structured ABCD dermoscopy report from these findings only, using this vocabulary: "
            f"colours {', '.join(COLOURS)}; border {', '.join(BORDERS)}; structures {', '.join(STRUCTURES)}. "
            "Mention nothing that is not listed; you may say which structures are absent."
        )
    elif strategy == "P2":
        task = f"Diagnosis: {name}.\nDescribe the dermoscopic findings typical of this diagnosis, as a note on a case."
    elif strategy == "P3":
        task = "No metadata is given.\nDescribe a dermoscopic image of a skin lesion and name the likeliest diagnosis."
    elif strategy == "clinical":
        history = (case.extra or {}).get("history") or {}
        hist = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in history.items()) or "not recorded"
        f = case.findings or {}
        seen = [f"diameter {f['diameter_mm']:g} mm"] if f.get("diameter_mm") else []
        if "asymmetry" in f:
            seen.append("irregular outline" if f["asymmetry"] else "regular outline")
        if f.get("colours"):
            seen.append("colours " + ", ".join(f["colours"]))
        task = (
            f"{_metadata(case)} History: {hist}. Observed: {'; '.join(seen) or 'not recorded'}.\n"
            "Write the note a clinician types at the point of care: age, sex, site, history, what the lesion "
            "looks like. Never name or suggest a diagnosis, a diagnostic category, or whether the lesion is "
            "benign or malignant."
        )
    else:
        raise KeyError(f"no LLM prompt for note strategy {strategy!r}")
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": task}]


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the endpoint's scheme, host and port: urllib would send the Authorization
    header, the API key, on to wherever the endpoint points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        target = urllib.parse.urljoin(req.full_url, newurl)
        if _origin(target) != _origin(req.full_url):
            fp.close()
            raise LLMError(
                f"LLM endpoint {req.full_url} redirected to {_origin(target)[1] or target}, another host: not "
                "followed (it would carry the API key there)"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HTTPChatBackend:
    """An OpenAI-compatible endpoint: POST {url}/chat/completions (or the url as given when it ends so)."""

    name = "llm-http"

    def __init__(
        self,
        url: str,
        model: str = "",
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_tokens: int = 220,
    ) -> None:
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.retries, self.backoff, self.max_tokens = retries, backoff, max_tokens
        self._opener = urllib.request.build_opener(_SameOriginRedirects())

    def complete(self, messages: list[Message], seed: int = 0) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "seed": seed,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, json.dumps(body).encode(), headers, method="POST")
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    raw = response.read(MAX_RESPONSE_BYTES + 1)
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise LLMError(f"LLM endpoint {self.endpoint} answered more than {MAX_RESPONSE_BYTES:,} bytes")
                payload = json.loads(raw)
                break
            except urllib.error.HTTPError as e:
                detail = e.read(200).decode(errors="replace").replace("\n", " ")
                if e.code not in _RETRY_STATUS:
                    raise LLMError(f"LLM endpoint {self.endpoint} answered HTTP {e.code}: {detail}") from None
                reason = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = str(getattr(e, "reason", e)) or type(e).__name__
            except json.JSONDecodeError:
                raise LLMError(f"LLM endpoint {self.endpoint} did not answer JSON") from None
        else:
            raise LLMError(f"LLM endpoint {self.endpoint} unreachable after {self.retries + 1} attempts: {reason}")
        try:
            return str(payload["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"LLM endpoint {self.endpoint} answered without choices[0].message.content") from None


class LocalCausalLM:
    """A local transformers causal-LM directory (AutoModelForCausalLM + AutoTokenizer, local files only); greedy."""

    name = "llm-local"

    def __init__(self, path: str | Path, max_new_tokens: int = 120, device: str = "cpu") -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise LLMError(f"{path} is not a transformers model directory (no config.json)")
        from mmcore.text_encoders import TRANSFORMERS_IMPORT_LOCK

        with TRANSFORMERS_IMPORT_LOCK:
            from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device).eval()
        except (OSError, ValueError) as e:
            raise LLMError(f"cannot load the model in {path}: {str(e).splitlines()[0]}") from None
        self.max_new_tokens, self.device = max_new_tokens, device

    def complete(self, messages: list[Message], seed: int = 0) -> str:
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            input_ids = enc["input_ids"]
        else:  # a base model: a plain transcript
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
            input_ids = tok(text, return_tensors="pt")["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", 2048
        )
        input_ids = input_ids[:, -max(1, limit - self.max_new_tokens) :].to(self.device)  # (1, T): keep the task
        torch.manual_seed(seed)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad,
            )
        return tok.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


def build_backend(
    llm_path: str | None = None, llm_url: str | None = None, model: str = "", api_key: str | None = None, **options
) -> ChatBackend:
    """The backend named by exactly one of a local model directory or an endpoint URL."""
    if bool(llm_path) == bool(llm_url):
        raise LLMError("the llm backend needs exactly one of --llm-path (local model) or --llm-url (endpoint)")
    if llm_path:
        return LocalCausalLM(llm_path, **options)
    return HTTPChatBackend(llm_url, model=model, api_key=api_key, **options)


def write_note_llm(strategy: str, case: Case, backend: ChatBackend, seed: int = 0) -> tuple[str, FidelityResult]:
    """The LLM's note for one case, with its fidelity check (every generated note is checked)."""
    text = backend.complete(build_prompt(strategy, case), seed=seed).strip()
    return text, check_note(text, case)
