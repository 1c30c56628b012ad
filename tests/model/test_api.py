"""The public inference API (model.api, ``from model import CLAP``).

Models: a TINY RANDOM transformers ClapModel (1-layer RoBERTa text, 4x1-block HTSAT, projection
32) saved to a tmp dir by ``hf_helpers.tiny_clap``, standing in for a LAION-CLAP directory; and a
TINY RANDOM polyclap model (2-layer patch transformer + sentencepiece text tower) exported with
``save_pretrained``. Audio: real bundled clips (ESC-50, AudioCaps, Common Voice mp3).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from hf_helpers import tiny_clap

from dataprep.core.config import AudioConfig
from dataprep.core.sample import SampleRef
from model import CLAP
from model.api import ModelDirError
from model.prompts import check_labels

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["A dog barks several times and then a man speaks", "rain", "a bell rings twice"]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return tiny_clap(tmp_path_factory.mktemp("clap") / "tiny")


@pytest.fixture(scope="module")
def m(clap_dir):
    return CLAP.from_pretrained(clap_dir, device="cpu")


def _clips(corpora_root: Path) -> list[Path]:
    esc = sorted((corpora_root / "esc50_mini" / "audio").glob("*.wav"))[:2]
    caps = sorted(
        p
        for p in (corpora_root / "audiocaps_mini" / "audio").rglob("*")
        if p.suffix in {".wav", ".flac", ".ogg", ".mp3"}
    )[:1]
    cv = sorted((corpora_root / "commonvoice_mini").rglob("*.mp3"))[:1]
    return esc + caps + cv


def test_imported_clap_equals_transformers(m, clap_dir, corpora_root):
    """embed_audio / embed_text on files == ClapModel.get_audio/text_features on the same
    files decoded and resampled independently (soundfile + soxr) and the same texts."""
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    paths = _clips(corpora_root)
    ours_a = m.embed_audio(paths)
    ours_t = m.embed_text(TEXTS)
    waves = []
    for p in paths:
        x, sr = sf.read(str(p), dtype="float32", always_2d=True)
        waves.append(soxr.resample(x.mean(axis=1, dtype=np.float32), sr, 48000, quality="HQ"))
    assert all(len(w) <= 480_000 for w in waves)  # under 10 s: rand_trunc is repeat-padding
    ref = ClapModel.from_pretrained(str(clap_dir)).eval()
    fe = ClapFeatureExtractor(frequency_min=50, frequency_max=14000)
    x = fe(waves, sampling_rate=48000, truncation="rand_trunc", return_tensors="pt")
    tok = AutoTokenizer.from_pretrained(str(clap_dir))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref_a = ref.get_audio_features(input_features=x["input_features"]).pooler_output
        ref_t = ref.get_text_features(**enc).pooler_output
    ref_a = torch.nn.functional.normalize(ref_a, dim=-1).numpy()
    ref_t = torch.nn.functional.normalize(ref_t, dim=-1).numpy()
    a_err, t_err = float(np.abs(ours_a - ref_a).max()), float(np.abs(ours_t - ref_t).max())
    print(f"CLAP API vs ClapModel: audio max abs diff {a_err:.2e}, text {t_err:.2e}")
    assert a_err <= 1e-4 and t_err <= 1e-4
    assert ours_a.shape == (len(paths), 32)


def test_zero_shot_similarity_and_bad_items(m, corpora_root, tmp_path):
    paths = _clips(corpora_root)[:2]
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    probs, errors = m.zero_shot(
        [paths[0], empty, paths[1], junk], ["dog barking", "rain"], return_errors=True
    )
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs[[0, 2]].sum(axis=1), 1.0, rtol=1e-5)
    assert np.isnan(probs[1]).all() and np.isnan(probs[3]).all()
    assert [(e.index, e.reason) for e in errors] == [(1, "empty_file"), (3, "not_audio")]
    sim = m.similarity(paths, TEXTS)
    assert sim.shape == (2, 3) and np.all(np.abs(sim) <= 1.0 + 1e-5)
    # the zero-shot probabilities are the softmax of the scaled cosine to the prompt ensembles
    ce = m.class_embeddings(["dog barking", "rain"])
    logits = m.embed_audio(paths[:1]) @ ce.T * float(m.net.logit_scale().detach())
    np.testing.assert_allclose(probs[0], torch.softmax(torch.from_numpy(logits), -1)[0], rtol=1e-5)
    multi = m.zero_shot(
        paths[:1], ["dog", "rain"], templates={"en": ["a {}"], "de": ["ein {}"]}, langs=["de"]
    )
    assert multi.shape == (1, 2)


def test_labels_and_templates_are_checked(m, corpora_root):
    with pytest.raises(ValueError, match="duplicate labels"):
        check_labels(["dog", "rain", "Dog"])
    with pytest.raises(ValueError, match="empty label at position"):
        check_labels(["dog", " "])
    with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
        m.zero_shot(_clips(corpora_root)[:1], ["dog", "rain"], templates=["no slot"])
    with pytest.raises(TypeError, match="not one string"):
        check_labels("dog,rain")
    with pytest.raises(ValueError, match="langs selects languages of a"):
        m.zero_shot(_clips(corpora_root)[:1], ["dog", "rain"], templates=["a {}"], langs=["en"])
    with pytest.raises(ValueError, match="no templates for languages"):
        m.zero_shot(_clips(corpora_root)[:1], ["dog", "rain"], langs=["xx"])


def test_no_trim_and_long_audio_windows(m, corpora_root):
    """Inference embeds the whole clip (the build trims it) and a long one in 10-s windows."""
    from dataprep import audio

    clip = _clips(corpora_root)[0]
    x, sr = sf.read(str(clip), dtype="float32")
    spans = [(s, e) for s, e, _ in m.inputs(str(clip), name=str(clip))]
    assert spans == [(0.0, pytest.approx(len(x) / sr, abs=1e-3))]
    built = audio.load_segments(
        SampleRef(corpus="esc50", source_id="x", audio=str(clip)), AudioConfig(), 48000
    )
    assert sum(s.duration_s for s in built) <= len(x) / sr  # the build may trim; inference not
    long = np.concatenate([x] * 9)  # 27 s at the clip's own rate, passed as an array
    wins = m.embed_audio([long], sample_rate=sr, per_window=True)[0]
    assert wins.embeddings.shape == (3, 32)
    np.testing.assert_allclose(wins.starts_s, [0.0, 10.0, 17.0], atol=1e-6)
    np.testing.assert_allclose(wins.ends_s, [10.0, 20.0, 27.0], atol=1e-6)
    mean = wins.embeddings.mean(axis=0)
    np.testing.assert_allclose(
        m.embed_audio(long, sample_rate=sr)[0], mean / np.linalg.norm(mean), atol=1e-6
    )
    stereo = np.stack([x, x], axis=1)  # frames x channels: same as mono
    np.testing.assert_allclose(
        m.embed_audio([stereo], sample_rate=sr), m.embed_audio([x], sample_rate=sr), atol=1e-6
    )


def test_not_a_model_dir_is_one_clear_error(tmp_path, clap_dir):
    import json

    with pytest.raises(ModelDirError, match="not a local directory"):
        CLAP.from_pretrained(tmp_path / "nope")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelDirError, match="a transformers 'bert' directory, not a ClapModel"):
        CLAP.from_pretrained(other)
    bad = tmp_path / "clap_wrong_rate"
    bad.mkdir()
    for f in clap_dir.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000}))
    with pytest.raises(ModelDirError, match="differ from the htsat preset"):
        CLAP.from_pretrained(bad)


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- api-snippet -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert found, "README.md has no <!-- api-snippet --> python block"
    return found.group(1)


def test_readme_snippet_runs_verbatim(clap_dir, corpora_root, tmp_path, monkeypatch):
    """The README's 3 lines, run as written from a directory where its paths exist: the
    model path is the TINY RANDOM ClapModel, the clip a bundled ESC-50 file."""
    code = _readme_snippet()
    assert len([line for line in code.splitlines() if line.strip()]) == 3
    model_dir = re.search(r'from_pretrained\("([^"]+)"\)', code).group(1)
    clip = re.search(r'\["([^"]+\.wav)"\]', code).group(1)
    (tmp_path / model_dir).parent.mkdir(parents=True)
    (tmp_path / model_dir).symlink_to(clap_dir)
    (tmp_path / clip).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / clip).symlink_to(min((corpora_root / "esc50_mini" / "audio").glob("*.wav")))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented snippet
    probs = scope["probs"]
    assert probs.shape == (1, 2) and abs(float(probs.sum()) - 1.0) < 1e-5


@pytest.fixture(scope="module")
def tiny_polyclap():
    """A TINY RANDOM polyclap model (1-layer patch transformer on the default log-mel, the real
    packaged MiniLM text tower), wrapped as the API wraps an export."""
    from dataprep.core.config import FeatureConfig
    from model.clap import build_model
    from model.config import AudioEncoderConfig, ModelConfig, TextEncoderConfig
    from model.inference import Preprocessing
    from model.tokenizer import MiniLMTokenizer, make_tokenize

    torch.manual_seed(0)
    cfg = ModelConfig(
        audio=AudioEncoderConfig(dim=32, depth=1, heads=2, max_frames=256),
        text=TextEncoderConfig(kind="minilm", max_len=32, freeze=True),
        embed_dim=32,
    )
    net = build_model(cfg, 64)
    pre = Preprocessing(FeatureConfig(), AudioConfig(), 10.0, 0.0, 256)
    return CLAP(net, pre, make_tokenize(MiniLMTokenizer(), cfg.text), device="cpu")


def test_polyclap_inference_does_not_trim(tiny_polyclap, corpora_root):
    """The measured defect: the build's trim keeps 0.72 s of this 3-s ESC-50 clip; inference
    embeds all 3 s (301 log-mel frames, two 256-frame windows), and a file equals its
    decoded array."""
    from dataprep import audio

    clip = corpora_root / "esc50_mini" / "audio" / "1-248616-A-0.wav"
    built = audio.load_segments(
        SampleRef(corpus="esc50", source_id="x", audio=str(clip)), AudioConfig(), 16000
    )
    assert sum(s.duration_s for s in built) < 0.8
    spans = [(a, b, m.shape) for a, b, m in tiny_polyclap.inputs(str(clip), name="clip")]
    assert spans == [(0.0, 2.56, (64, 256)), (0.45, 3.0, (64, 256))]
    x, sr = sf.read(str(clip), dtype="float32")
    np.testing.assert_allclose(
        tiny_polyclap.embed_audio([clip]), tiny_polyclap.embed_audio([x], sample_rate=sr), atol=1e-6
    )
    long = np.concatenate([x] * 9)  # 27 s: segments at 0, 10, 17 s, each in 256-frame windows
    wins = tiny_polyclap.embed_audio(long, sample_rate=sr, per_window=True)[0]
    assert wins.embeddings.shape == (12, 32)
    # per segment: windows at frames 0, 256, 512 and the last one aligned to the segment's end
    seg = [0.0, 2.56, 5.12, 7.45]
    want = [s + o for o in (0.0, 10.0, 17.0) for s in seg]
    np.testing.assert_allclose(wins.starts_s, want, atol=1e-6)
    assert wins.ends_s[-1] == 27.0
    probs = tiny_polyclap.zero_shot([clip], ["dog barking", "rain", "siren"])
    assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1.0) < 1e-5


def test_save_pretrained_round_trip_without_pickles(tiny_polyclap, corpora_root, tmp_path):
    """save_pretrained (huggingface_hub's mixin on a local dir) writes a polyclap export with
    a model card; from_pretrained reads it back to the same embeddings; no pickle anywhere."""
    from model.config import ExperimentConfig, ModelConfig

    m = tiny_polyclap
    cfg = ExperimentConfig.model_validate({"name": "tiny", "loader": {"shards": str(tmp_path)}})
    m.cfg = cfg.model_copy(update={"model": ModelConfig.model_validate(m.net.cfg.model_dump())})
    out = tmp_path / "export"
    m.save_pretrained(out)
    names = sorted(p.name for p in out.iterdir())
    assert {"model.safetensors", "config.json", "README.md"} <= set(names)
    assert not [n for n in names if n.endswith((".pt", ".bin", ".pkl"))]
    card = (out / "README.md").read_text()
    assert "library_name: polyclap" in card and "preset `logmel`" in card
    back = CLAP.from_pretrained(out, device="cpu")
    assert back.kind == "polyclap" and back.pre == m.pre
    clips = _clips(corpora_root)[:2]
    np.testing.assert_array_equal(back.embed_audio(clips), m.embed_audio(clips))
    np.testing.assert_array_equal(back.embed_text(TEXTS), m.embed_text(TEXTS))
    assert back.fingerprint() == m.fingerprint()
    m.save_pretrained(out)  # over an export: fine
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ModelDirError, match="choose a new or empty one"):
        m.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_language_tags_survive_save_and_from_pretrained(corpora_root, tmp_path):
    """A TINY RANDOM polyclap model with a sentencepiece text tower and ``lang_tags`` (the
    tokenizer trained on the bundled Common Voice sentences with one tag per language): the API
    puts the language's tag after bos, as the loader does in training; an export keeps it."""
    import csv

    from dataprep.core.config import FeatureConfig
    from model.clap import build_model
    from model.config import ExperimentConfig
    from model.inference import Preprocessing
    from model.prompts import DEFAULT_TEMPLATES, ensemble, normalize
    from model.tokenizer import Tokenizer, make_tokenize, train_tokenizer

    texts, langs = [], []
    for tsv in sorted((corpora_root / "commonvoice_mini").glob("*/validated.tsv")):
        with open(tsv, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                texts.append(row["sentence"])
                langs.append(tsv.parent.name)
    train_tokenizer(texts, tmp_path / "tok.model", vocab_size=600, langs=langs, lang_tags=True)
    tok = Tokenizer(tmp_path / "tok.model")
    cfg = ExperimentConfig.model_validate(
        {
            "name": "tagged",
            "loader": {"shards": str(tmp_path)},
            "model": {
                "embed_dim": 32,
                "audio": {"dim": 32, "depth": 1, "heads": 2, "max_frames": 256},
                "text": {"vocab_size": 600, "dim": 32, "depth": 1, "heads": 2, "max_len": 24,
                         "lang_tags": True},
            },
        }
    )  # fmt: skip
    torch.manual_seed(0)
    net = build_model(cfg.model, 64)
    pre = Preprocessing(FeatureConfig(), AudioConfig(), 10.0, 0.0, 256)
    m = CLAP(net, pre, make_tokenize(tok, cfg.model.text), cfg=cfg, tokenizer=tok, device="cpu")
    m.save_pretrained(tmp_path / "export")
    back = CLAP.from_pretrained(tmp_path / "export", device="cpu")
    assert back.tokenizer.lang_tags == tok.lang_tags and "zh" in tok.lang_tags  # zh-CN -> zh
    ids, _ = back.tokenize(["ein Hund bellt", "狗叫"], langs=["de", "zh-CN"])
    assert ids[:, 1].tolist() == [tok.lang_tags["de"], tok.lang_tags["zh"]]
    de = back.embed_text(["ein Hund bellt"], lang="de")
    np.testing.assert_allclose(de, m.embed_text(["ein Hund bellt"], lang="de"), atol=1e-6)
    assert not np.allclose(de, back.embed_text(["ein Hund bellt"], lang="ru"))  # the tag counts
    with pytest.raises(ValueError, match="no language tag for 'xx'"):
        back.embed_text(["?"], lang="xx")
    # zero-shot defaults: each asked language's own templates, embedded with its tag
    labels = ["Hund", "Regen"]
    want = []
    for lang in ("de", "ru"):
        temps = DEFAULT_TEMPLATES[lang]
        emb = back.embed_text([t.format(x) for x in labels for t in temps], lang=lang)
        want.append(ensemble(emb, [len(temps)] * len(labels)))
    got = back.class_embeddings(labels, langs=["de", "ru"])
    np.testing.assert_allclose(got, normalize(np.mean(np.stack(want), axis=0)), atol=1e-6)
    en = back.class_embeddings(["dog", "rain"])  # no langs: English templates
    np.testing.assert_allclose(en, back.class_embeddings(["dog", "rain"], langs=["en"]), atol=1e-6)
