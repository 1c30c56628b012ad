"""Issue 19: bad inputs that used to pass or crash now end as a recorded, reasoned reject.

Real readers on copies of the bundled corpora, real audio written with soundfile, and the real
per-input processor (``SampleProcessor``) that the shard tasks run.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dataprep.core.config import CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import read_corpus


@pytest.fixture(scope="session")
def corpora(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("corpora_root")


def _read(root: Path, **kw) -> tuple[list[SampleRef], list[Reject]]:
    items = list(read_corpus(CorpusConfig(name="n", reader="nemo", root=str(root), **kw)))
    return [i for i in items if isinstance(i, SampleRef)], [
        i for i in items if isinstance(i, Reject)
    ]


def _nemo_copy(corpora: Path, dst: Path) -> tuple[Path, list[str]]:
    """The bundled NeMo corpus copied to ``dst``; returns it and the train manifest's lines."""
    shutil.copytree(corpora / "nemo_manifest_mini", dst)
    return dst, (dst / "train_manifest.jsonl").read_text(encoding="utf-8").splitlines()


# ------------------------------------------------------------ defect 3: manifests that crashed


def test_non_utf8_byte_in_manifest_is_one_reject_naming_the_line(
    corpora: Path, tmp_path: Path
) -> None:
    root, lines = _nemo_copy(corpora, tmp_path / "nm")
    raw = [line.encode("utf-8") for line in lines]
    # One Latin-1 byte inside the transcript of line 2 (a file re-saved by the wrong editor).
    raw[1] = raw[1].replace(b'"text": "', b'"text": "caf\xe9 ', 1)
    (root / "train_manifest.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    refs, rejects = _read(root)
    assert [(r.reason, r.source) for r in rejects] == [
        ("invalid_metadata", "n:train_manifest.jsonl:2")
    ]
    assert "not valid UTF-8" in rejects[0].detail and "0xe9" in rejects[0].detail
    dev = (root / "dev_manifest.jsonl").read_text().splitlines()
    assert len(refs) == len(lines) - 1 + len(dev)  # every other line of both manifests read
    assert json.loads(lines[0])["audio_filepath"] in {r.source_id for r in refs}


def test_manifest_symlinked_out_of_the_root_is_a_reject_not_a_crash(
    corpora: Path, tmp_path: Path
) -> None:
    root, lines = _nemo_copy(corpora, tmp_path / "nm")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "dev_manifest.jsonl").rename(outside / "dev_manifest.jsonl")
    (root / "dev_manifest.jsonl").symlink_to(outside / "dev_manifest.jsonl")
    refs, rejects = _read(root)
    assert [(r.reason, r.source) for r in rejects] == [("path_escape", "n:dev_manifest.jsonl")]
    assert len(refs) == len(lines)  # the train manifest is still read


def test_manifest_symlink_inside_the_root_is_read(corpora: Path, tmp_path: Path) -> None:
    root, lines = _nemo_copy(corpora, tmp_path / "nm")
    (root / "dev_manifest.jsonl").unlink()
    (root / "meta").mkdir()
    (root / "train_manifest.jsonl").rename(root / "meta" / "real.jsonl")
    (root / "train_manifest.jsonl").symlink_to(root / "meta" / "real.jsonl")
    refs, rejects = _read(root, splits=("train_manifest",))
    assert not rejects and len(refs) == len(lines)


def test_dangling_or_missing_manifest_is_a_reject(corpora: Path, tmp_path: Path) -> None:
    root, lines = _nemo_copy(corpora, tmp_path / "nm")
    (root / "dev_manifest.jsonl").unlink()
    (root / "dev_manifest.jsonl").symlink_to(root / "gone.jsonl")
    refs, rejects = _read(root, splits=("train_manifest", "dev_manifest", "test_manifest"))
    assert sorted((r.reason, r.source) for r in rejects) == [
        ("unreadable_metadata", "n:dev_manifest.jsonl"),
        ("unreadable_metadata", "n:test_manifest.jsonl"),
    ]
    assert len(refs) == len(lines)


# ------------------------------------------------- defect 7: evaluation scores every test item


def _small_cfg():  # type: ignore[no-untyped-def]
    from model.config import load_config

    return load_config(Path(__file__).resolve().parents[2] / "configs" / "test_small.yaml")


def test_eval_set_keeps_clips_the_training_filters_would_drop(corpora: Path) -> None:
    """Speech Commands clips that trim below min_duration_s are still benchmark items."""
    from dataprep.audio import load_segments
    from dataprep.evaluation.data import load_eval_set

    cfg = _small_cfg()
    corpus = CorpusConfig(name="kws", reader="speechcommands", root=str(corpora / "kws_mini"))
    listed = [r for r in read_corpus(corpus) if isinstance(r, SampleRef)]
    short = [
        r.source_id
        for r in listed
        if load_segments(r, cfg.build.audio, cfg.features.sample_rate_hz)[0].duration_s
        < cfg.build.filters.min_duration_s
    ]
    assert short, "the fixture must hold clips a training build rejects as too_short"
    es = load_eval_set(cfg, corpus)
    assert [it.source_id for it in es.items] == [r.source_id for r in listed]
    assert not es.rejects and all(it.scorable for it in es.items)


class _Oracle:
    """A perfect embedder (test double for an ideal model): class i <-> one-hot axis i."""

    def __init__(self, axis: dict[str, int], dim: int) -> None:
        self.axis, self.dim = axis, dim

    def audio(self, items):  # type: ignore[no-untyped-def]
        assert all(it.mels for it in items), "items without features must never be embedded"
        out = np.zeros((len(items), self.dim), np.float32)
        out[np.arange(len(items)), [self.axis[it.source_id] for it in items]] = 1
        return out

    def class_embeddings(self, prompts_per_class, lang=None):  # type: ignore[no-untyped-def]
        return np.eye(len(prompts_per_class), self.dim, dtype=np.float32)


def test_undecodable_eval_item_is_scored_wrong_and_listed(corpora: Path, tmp_path: Path) -> None:
    from dataprep.evaluation import probes, runner
    from dataprep.evaluation.data import load_eval_set
    from dataprep.evaluation.tasks import Defaults, TaskConfig, TaskFile
    from model.weights import load_for_eval

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
    from eval_helpers import make_export

    root = tmp_path / "esc"
    shutil.copytree(corpora / "esc50_mini", root)
    corpus = CorpusConfig(name="esc50", reader="esc50", root=str(root), options={"eval_folds": [5]})
    listed = [r for r in read_corpus(corpus) if isinstance(r, SampleRef)]
    victim = listed[3]
    Path(victim.audio).write_bytes(b"this is not audio at all\n" * 200)
    cfg = _small_cfg()
    es = load_eval_set(cfg, corpus, tmp_path / "cache")
    assert [it.source_id for it in es.items] == [r.source_id for r in listed]
    bad = [it for it in es.items if not it.scorable]
    assert [it.source_id for it in bad] == [victim.source_id] and "not_audio" in bad[0].error
    again = load_eval_set(cfg, corpus, tmp_path / "cache")  # the failed item survives the cache
    assert again.from_cache and [it.error for it in again.items] == [it.error for it in es.items]

    # a perfect model scores every decodable item right and the undecodable one wrong; the probe
    # can only be right on an item whose class has a decodable item in another fold (the bundle
    # has two clips a class, so the victim's partner has nothing left to be learned from)
    classes = sorted({it.labels[0] for it in es.items})
    oracle = _Oracle({it.source_id: classes.index(it.labels[0]) for it in es.items}, len(classes))
    d = Defaults(n_boot=20)
    for ttype, extra in (("zero_shot", {}), ("linear_probe", {}), ("few_shot", {"k": 1})):
        task = TaskConfig(name=ttype, type=ttype, corpus=corpus, **extra)
        est = runner.TASKS[ttype](task, es.items, oracle, d)["accuracy"]  # type: ignore[arg-type]
        # every item is scored, except (few-shot) one that is its class's only decodable item:
        # it is the k=1 support in every episode, never a query (the victim's partner here)
        decodable = Counter(it.labels[0] for it in es.items if it.scorable)
        always_support = [it for it in es.items if it.scorable and decodable[it.labels[0]] == 1]
        assert est.n == len(es.items) - (len(always_support) if ttype == "few_shot" else 0), ttype
        right = [it.scorable for it in es.items]
        if ttype == "linear_probe":
            fold = dict(zip((it.source_id for it in es.items), probes.fold_ids(task, es.items)))
            right = [
                it.scorable
                and any(
                    o.scorable and o.labels == it.labels and fold[o.source_id] != fold[it.source_id]
                    for o in es.items
                )
                for it in es.items
            ]
        if ttype != "few_shot":
            assert est.value == pytest.approx(sum(right) / len(es.items)), ttype
        else:
            assert est.value < 1.0

    # the real harness with a tiny random model (seeded, written to tmp): the table names it
    model, mcfg, tok = load_for_eval(make_export(tmp_path / "m", seed=0))
    tf = TaskFile(defaults=d, tasks=[TaskConfig(name="esc_zs", type="zero_shot", corpus=corpus)])
    col = runner.Column("checkpoint", model, mcfg, tok, "tiny random model")
    result = runner.evaluate(tf, [col], str(tmp_path / "cache2"))
    rec = result["tasks"]["esc_zs"]
    assert rec["n_items"] == len(listed) and rec["metrics"]["accuracy"]["checkpoint"]["n"] == len(
        listed
    )
    assert [u["source_id"] for u in rec["undecodable"]] == [victim.source_id]
    table = runner.markdown_table(result)
    assert f"1 of {len(listed)} items could not be decoded" in table and victim.source_id in table


# ------------------------------------------------------------------- processor helpers


def _processor(*overrides: str):  # type: ignore[no-untyped-def]
    from dataprep.process import SampleProcessor
    from model.config import load_config

    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "test_small.yaml", list(overrides)
    )
    return SampleProcessor(cfg, augment=False)


def _wav(path: Path, wave: np.ndarray, sr: int = 16000) -> str:
    import soundfile as sf

    sf.write(path, wave.astype(np.float32), sr, subtype="FLOAT")
    return str(path)


# --------------------------------------------------- found by the property test: odd rates


@pytest.mark.timeout(120, method="thread")  # today's code spends minutes building one kernel
def test_a_rate_coprime_with_the_target_resamples_in_bounded_time(tmp_path: Path) -> None:
    import time

    sr = 13101  # gcd(13101, 16000) == 1: a 13101 x 16000 polyphase kernel
    t = np.arange(2 * sr) / sr
    path = _wav(tmp_path / "odd.wav", 0.3 * np.sin(2 * np.pi * 440 * t), sr)
    t0 = time.perf_counter()
    res = _processor()(SampleRef("c", "odd.wav", path, text="a steady tone"), "train")
    assert time.perf_counter() - t0 < 20
    assert len(res.samples) == 1 and res.samples[0]["json"]["duration"] == pytest.approx(
        2.0, abs=0.05
    )
    for bad_sr in (999, 1_000_001):  # outside what we call audio: one reasoned reject
        path = _wav(tmp_path / f"r{bad_sr}.wav", np.zeros(bad_sr // 10) + 0.1, bad_sr)
        res = _processor()(SampleRef("c", f"r{bad_sr}", path, text="x"), "train")
        assert [r.reason for r in res.rejects] == ["bad_sample_rate"] and not res.samples


# ------------------------------------------------------------ defect 3: a file that is only DC


def test_a_file_that_is_only_a_dc_offset_is_silent(corpora: Path, tmp_path: Path) -> None:
    import soundfile as sf

    proc = _processor()
    dc_only = _wav(tmp_path / "dc.wav", np.full(32000, 0.3))
    res = proc(SampleRef("c", "dc.wav", dc_only, text="a constant hum"), "train")
    assert not res.samples and [(r.stage, r.reason) for r in res.rejects] == [("filter", "silent")]
    # real sound riding on the same offset is kept: only the offset is discounted
    speech, sr = sf.read(corpora / "nemo_manifest_mini" / "audio" / "utt_000_en.wav")
    on_dc = _wav(tmp_path / "speech_dc.wav", speech + 0.3, sr)
    res = proc(SampleRef("c", "speech_dc.wav", on_dc, text="a voice over a hum"), "train")
    assert len(res.samples) == 1 and not res.rejects
    level = res.samples[0]["json"]["stats"]["dbfs"]
    clean = _processor()(
        SampleRef("c", "s.wav", _wav(tmp_path / "s.wav", speech, sr), text="a voice"), "t"
    )
    assert level == pytest.approx(clean.samples[0]["json"]["stats"]["dbfs"], abs=0.5)


# ---------------------------------------- defect 3: text-rate bounds for every transcript


def _nemo_rows(root: Path, rows: list[dict]) -> list[SampleRef]:
    (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    refs, rejects = _read(root, splits=("m",))
    assert not rejects
    return refs


def test_a_5000_character_transcript_for_2_s_is_rejected_without_a_task(
    corpora: Path, tmp_path: Path
) -> None:
    import soundfile as sf

    speech, sr = sf.read(corpora / "nemo_manifest_mini" / "audio" / "utt_000_en.wav")
    two_s = speech[: 2 * sr]
    _wav(tmp_path / "a.wav", two_s, sr)
    _wav(tmp_path / "b.wav", two_s[::-1].copy(), sr)  # other audio: no duplicate reject
    long_text = "the quick brown fox jumps over the lazy dog " * 114  # ~5,000 characters
    refs = _nemo_rows(
        tmp_path,
        [
            {"audio_filepath": "a.wav", "text": long_text, "duration": 2.0},  # no task at all
            {
                "audio_filepath": "b.wav",
                "text": long_text[:190],
                "duration": 2.0,
                "task": "caption",
            },
        ],
    )
    proc = _processor()
    transcript, caption = (proc(r, "train") for r in refs)
    assert not transcript.samples
    assert [(r.reason, r.source) for r in transcript.rejects] == [("chars_per_s_high", "n:a.wav")]
    # a caption describes the sound: 95 characters per second of a 2-s clip are fine
    assert len(caption.samples) == 1 and not caption.rejects


# -------------------------------- defect 6: a transcript is never paired with part of its audio


def test_a_long_transcribed_utterance_stays_whole_or_is_rejected(
    corpora: Path, tmp_path: Path
) -> None:
    import soundfile as sf

    speech, sr = sf.read(corpora / "nemo_manifest_mini" / "audio" / "utt_000_en.wav")
    long_utt = np.concatenate([speech] * 5)  # ~15 s: longer than max_segment_s (10 s)
    _wav(tmp_path / "long.wav", long_utt, sr)
    text = "my brother takes the bus to work every morning " * 5
    (ref,) = _nemo_rows(tmp_path, [{"audio_filepath": "long.wav", "text": text}])
    res = _processor()(ref, "train")
    assert len(res.samples) == 1 and not res.rejects  # one sample: all the audio, all the text
    m = res.samples[0]["json"]
    assert m["duration"] > 12 and "window" not in m["flags"]
    assert res.samples[0]["txt"] == text.strip()
    # above the maximum it is one reasoned reject, never windows carrying the whole text
    res = _processor("build.audio.max_transcript_s=12")(ref, "train")
    assert not res.samples and [r.reason for r in res.rejects] == ["transcript_too_long"]
    assert "12.0 s" in res.rejects[0].detail


def test_a_long_captioned_clip_is_cut_into_flagged_windows(corpora: Path, tmp_path: Path) -> None:
    """The documented rule for sound-event clips: the caption describes the whole clip and
    holds for its windows, each flagged ``window``."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    clip = np.concatenate(
        [rng.normal(0, 0.1, 16000) * np.sin(np.arange(16000) / 90) for _ in range(25)]
    )
    _wav(tmp_path / "rain.wav", clip)
    assert sf.info(tmp_path / "rain.wav").duration == pytest.approx(25.0)
    (ref,) = _nemo_rows(
        tmp_path, [{"audio_filepath": "rain.wav", "text": "steady rain", "task": "caption"}]
    )
    res = _processor()(ref, "train")
    assert len(res.samples) == 3 and not res.rejects
    for s in res.samples:
        assert "window" in s["json"]["flags"] and s["txt"] == "steady rain"
        assert s["json"]["duration"] <= 10.0


def test_any_reader_failing_on_its_metadata_is_one_reject_not_a_traceback(
    corpora: Path, tmp_path: Path
) -> None:
    """The boundary for every reader (CSV/TSV layouts read whole files): a Latin-1 byte in
    ESC-50's metadata ends that corpus with one recorded reject instead of killing the build."""
    root = tmp_path / "esc"
    shutil.copytree(corpora / "esc50_mini", root)
    meta = root / "meta" / "esc50.csv"
    meta.write_bytes(meta.read_bytes().replace(b"dog", b"d\xf6g", 1))
    items = list(read_corpus(CorpusConfig(name="esc", reader="esc50", root=str(root))))
    assert [(r.reason, r.stage) for r in items if isinstance(r, Reject)] == [
        ("unreadable_metadata", "reader")
    ]
    assert "UnicodeDecodeError" in items[-1].detail


def test_table_reader_jsonl_with_a_non_utf8_line_reads_the_other_lines(
    corpora: Path, tmp_path: Path
) -> None:
    src = corpora / "nemo_manifest_mini" / "audio"
    for name in ("utt_000_en.wav", "utt_001_en.flac"):
        shutil.copy(src / name, tmp_path / name)
    lines = [
        json.dumps({"file": "utt_000_en.wav", "caption": "a man speaks"}).encode(),
        b'{"file": "utt_001_en.flac", "caption": "caf\xe9"}',
        json.dumps({"file": "utt_001_en.flac", "caption": "a woman speaks"}).encode(),
    ]
    (tmp_path / "meta.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    opts = {"file": "meta.jsonl", "columns": {"audio": "file", "text": "caption"}}
    items = list(
        read_corpus(CorpusConfig(name="t", reader="table", root=str(tmp_path), options=opts))
    )
    assert [i.source_id for i in items if isinstance(i, SampleRef)] == [
        "utt_000_en.wav",
        "utt_001_en.flac",
    ]
    assert [(r.reason, r.source) for r in items if isinstance(r, Reject)] == [
        ("invalid_metadata", "t:meta.jsonl:2")
    ]
