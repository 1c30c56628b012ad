"""TINY RANDOM transformers models saved to a tmp dir, for the pretrained-tower tests.

Nothing here is pretrained: every model is built from a 1-2 layer config with random weights and
``save_pretrained`` into a temporary directory, so the real loading code (``from_pretrained`` on a
local directory, offline) runs on it. Tokenizers are byte-level BPE trained offline on the
bundled AudioCaps-style captions. The one real pretrained model in the tests is the packaged
all-MiniLM-L6-v2 (``model.text_encoder.minilm_path()``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

CAPTIONS = Path(__file__).resolve().parents[1] / "fixtures/corpora/audiocaps_mini/train.csv"


def captions() -> list[str]:
    with CAPTIONS.open(newline="") as fh:
        return [row["caption"] for row in csv.DictReader(fh)]


def train_bpe(out: Path, kind: str, vocab_size: int = 300, padding_side: str = "right") -> None:
    """Byte-level BPE on the bundled captions, saved as a fast RoBERTa or GPT-2 tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast, RobertaTokenizerFast

    specials = (
        ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if kind == "roberta" else ["<|endoftext|>"]
    )
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        captions(), vocab_size=vocab_size, min_frequency=1, special_tokens=specials
    )
    raw = out / "bpe"
    raw.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(raw))
    cls = RobertaTokenizerFast if kind == "roberta" else GPT2TokenizerFast
    vocab = json.loads((raw / "vocab.json").read_text())
    merges = [
        tuple(line.split())
        for line in (raw / "merges.txt").read_text().splitlines()
        if line and not line.startswith("#version")
    ]
    tok = cls(vocab=vocab, merges=merges, model_max_length=64, padding_side=padding_side)
    tok.save_pretrained(str(out))


def tiny_gpt2(out: Path, padding_side: str = "right") -> Path:
    """TINY RANDOM GPT-2 (2 layers, 32 wide) + its BPE tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    train_bpe(out, "gpt2", padding_side=padding_side)
    tok = AutoTokenizer.from_pretrained(str(out))
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2Model(cfg).save_pretrained(str(out))
    return out


def tiny_xlmr(out: Path) -> Path:
    """TINY RANDOM XLM-RoBERTa encoder (2 layers, 32 wide) + a byte-level BPE tokenizer."""
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    train_bpe(out, "roberta")
    tok = AutoTokenizer.from_pretrained(str(out))
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=tok.pad_token_id,
    )
    XLMRobertaModel(cfg).save_pretrained(str(out))
    return out


def tiny_clap_config():
    """TINY RANDOM ClapConfig (ENVIRONMENT.md): 1-layer RoBERTa text, 4x1-block HTSAT."""
    from transformers import ClapConfig

    return ClapConfig(
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 300,
            "max_position_embeddings": 66,
        },
        audio_config={
            "depths": [1, 1, 1, 1],
            "num_attention_heads": [2, 2, 2, 2],
            "patch_embeds_hidden_size": 16,
            "hidden_size": 128,
        },
        projection_dim=32,
    )


def tiny_clap(out: Path) -> Path:
    """TINY RANDOM ClapModel + a byte-level BPE RoBERTa tokenizer, saved to ``out``."""
    from transformers import ClapModel

    train_bpe(out, "roberta")
    torch.manual_seed(0)
    model = ClapModel(tiny_clap_config())
    # BatchNorm running stats start at 0/1; give them values so the test sees them used.
    bn = model.audio_model.audio_encoder.batch_norm
    bn.running_mean.normal_(-40.0, 5.0)
    bn.running_var.uniform_(100.0, 400.0)
    model.save_pretrained(str(out))
    return out


def tiny_clap_audio(out: Path) -> Path:
    """TINY RANDOM ClapAudioModel (HTSAT) alone."""
    from transformers import ClapAudioModel

    torch.manual_seed(0)
    ClapAudioModel(tiny_clap_config().audio_config).save_pretrained(str(out))
    return out


def tiny_whisper(out: Path) -> Path:
    """TINY RANDOM WhisperModel (1 encoder + 1 decoder layer, 32 wide, 80 mel bins)."""
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    cfg = WhisperConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=32,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    WhisperModel(cfg).save_pretrained(str(out))
    return out


def tiny_ast(
    out: Path, num_mel_bins: int = 128, max_length: int = 1024, num_hidden_layers: int = 1
) -> Path:
    """TINY RANDOM ASTModel (32 wide; default 1 layer, 128 mel bins x 1024 frames)."""
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(0)
    cfg = ASTConfig(
        hidden_size=32,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=64,
        num_mel_bins=num_mel_bins,
        max_length=max_length,
    )
    ASTModel(cfg).save_pretrained(str(out))
    return out
