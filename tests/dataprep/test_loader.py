"""dataprep.loader over real shards: split/shuffle/resume, fingerprint check, corrupt input,
integrity checking against shards.json and the error counters (issue 19 defect 1).

Shards here are made from real bundled audio (ESC-50-style and AudioCaps-style clips decoded
with soundfile, featurized by dataprep.core.features.log_mel, written with write_tar_atomic), so the
loader sees exactly the member layout of the shard contract. ``make_shards`` is also used by
tests/jobs/test_pretrain*.py.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from dataprep.core.atomic import atomic_write_json
from dataprep.core.config import FeatureConfig
from dataprep.core.features import feature_fingerprint, fingerprint_fields, log_mel
from dataprep.core.sample import KIND_ORIGINAL, KIND_TEMPLATE, sample_key
from dataprep.core.shards import shard_name
from dataprep.core.tario import decode_members, iter_tar_members, write_tar_atomic
from dataprep.loader import (
    ErrorPolicy,
    FingerprintMismatch,
    ShardCorrupt,
    ShardLoader,
    epoch_segments,
    iter_shard_texts,
)
from model.config import TextEncoderConfig
from model.tokenizer import Tokenizer, make_tokenize, train_tokenizer

FEATURES = FeatureConfig()


def _load_mono(path: Path, sr: int) -> np.ndarray:
    wave, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if file_sr != sr:
        g = np.gcd(int(file_sr), sr)
        wave = resample_poly(wave, sr // g, int(file_sr) // g).astype(np.float32)
    return wave


def _clips(corpora_root: Path) -> list[tuple[str, str, Path, list[str], str]]:
    """(corpus, source_id, audio path, texts, group) from the ESC-50 and AudioCaps fixtures."""
    out = []
    esc = corpora_root / "esc50_mini"
    with open(esc / "meta" / "esc50.csv", newline="") as f:
        for row in csv.DictReader(f):
            cat = row["category"].replace("_", " ")
            texts = [f"the sound of {cat}", f"a recording of {cat}", f"{cat} can be heard"]
            out.append(("esc50", row["filename"], esc / "audio" / row["filename"], texts, cat))
    ac = corpora_root / "audiocaps_mini"
    caps: dict[tuple[str, str], list[str]] = {}
    for split, ext in (("train", "ogg"), ("val", "flac")):
        with open(ac / f"{split}.csv", newline="") as f:
            for row in csv.DictReader(f):
                caps.setdefault(
                    (row["youtube_id"], f"audio/{split}/{row['youtube_id']}.{ext}"), []
                ).append(row["caption"])
    for (yid, rel), texts in sorted(caps.items()):
        out.append(("audiocaps", yid, ac / rel, texts, yid))
    return out


def make_shards(
    corpora_root: Path,
    root: Path,
    *,
    n_shards: int = 4,
    limit: int | None = None,
    features: FeatureConfig = FEATURES,
    split: str = "train",
) -> list[str]:
    """Write ``root/<split>/shard-*.tar + shards.json`` and ``root/build.json``; returns keys."""
    fp = feature_fingerprint(features)
    samples = []
    for corpus, sid, path, texts, group in _clips(corpora_root)[:limit]:
        wave = _load_mono(path, features.sample_rate_hz)
        mel = log_mel(wave, features)
        key = sample_key(corpus, sid)
        meta = {
            "id": key,
            "corpus": corpus,
            "source_id": sid,
            "source_uri": str(path),
            "duration": len(wave) / features.sample_rate_hz,
            "sample_rate": features.sample_rate_hz,
            "group": f"{corpus}:{group}",
            "feature_fingerprint": fp,
            "split": split,
            "texts": [
                {
                    "text": t,
                    "lang": "en",
                    "kind": KIND_ORIGINAL if i == 0 else KIND_TEMPLATE,
                    "provenance": {},
                }
                for i, t in enumerate(texts)
            ],
        }
        samples.append({"__key__": key, "mel.npy": mel, "json": meta, "txt": texts[0]})
    samples.sort(key=lambda s: s["__key__"])
    entries = []
    for i in range(n_shards):
        part = samples[i::n_shards]
        entries.append(write_tar_atomic(root / split / shard_name(i), part))
    atomic_write_json(root / split / "shards.json", {"shards": entries})
    atomic_write_json(
        root / "build.json",
        {"feature_fingerprint": fp, "feature_fields": fingerprint_fields(features)},
    )
    return [s["__key__"] for s in samples]


@pytest.fixture(scope="module")
def shard_root(
    tmp_path_factory: pytest.TempPathFactory, corpora_root: Path
) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("shards")
    keys = make_shards(corpora_root, root, n_shards=5, limit=60)
    return root, keys


@pytest.fixture(scope="module")
def tokenizer(
    shard_root: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok") / "tok.model"
    train_tokenizer(iter_shard_texts(shard_root[0] / "train"), out, vocab_size=400)
    return Tokenizer(out)


def _loader(root: Path, tok: Tokenizer | None = None, **kw) -> ShardLoader:
    # as the trainer builds it (make_tokenize: the loader passes each text's language)
    tokenize = make_tokenize(tok, TextEncoderConfig(max_len=64)) if tok is not None else None
    args = {"features": FEATURES, "max_frames": 128, "batch_size": 4, "tokenize": tokenize}
    return ShardLoader(root / "train", **{**args, "seed": 3, **kw})


def test_segments_partition_every_position() -> None:
    shards = (("a", 7), ("b", 3), ("c", 11), ("d", 5))
    seen = Counter()
    for rank in range(3):
        for w in range(2):
            for name, lo, hi in epoch_segments(
                shards,
                epoch=1,
                seed=0,
                shuffle=True,
                rank=rank,
                world_size=3,
                worker=w,
                num_workers=2,
            ):
                seen.update((name, p) for p in range(lo, hi))
    assert sorted(seen) == sorted((n, p) for n, c in shards for p in range(c))
    assert set(seen.values()) == {1}


@pytest.mark.slow
def test_every_sample_once_per_epoch_2_ranks_2_workers(shard_root, tokenizer) -> None:
    root, keys = shard_root
    got: list[str] = []
    per_rank = []
    for rank in range(2):
        ld = _loader(root, tokenizer, rank=rank, world_size=2, num_workers=2, drop_last=False)
        batches = list(ld.iter_epoch())
        per_rank.append([k for b in batches for k in b["keys"]])
        got += per_rank[-1]
        b = batches[0]
        assert b["mel"].shape[1:] == (FEATURES.n_mels, 128) and b["mel"].dtype == torch.float16
        assert b["ids"].shape == b["mask"].shape and b["ids"][:, 0].eq(2).all()  # bos first
        assert ld.epoch == 1
    assert Counter(got) == Counter(keys), "each sample exactly once across ranks x workers"
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1
    # the next epoch is a different order but again every sample once
    ld = _loader(root, tokenizer, num_workers=2, drop_last=False)
    e0 = [k for b in ld.iter_epoch() for k in b["keys"]]
    e1 = [k for b in ld.iter_epoch() for k in b["keys"]]
    assert sorted(e0) == sorted(e1) == sorted(keys) and e0 != e1


def test_deterministic_and_texts_vary_by_epoch(shard_root, tokenizer) -> None:
    root, _ = shard_root
    a = [(b["keys"], b["texts"], b["mel"]) for b in _loader(root, tokenizer).iter_epoch()]
    b_ = [(b["keys"], b["texts"], b["mel"]) for b in _loader(root, tokenizer).iter_epoch()]
    assert [x[0] for x in a] == [x[0] for x in b_] and [x[1] for x in a] == [x[1] for x in b_]
    assert all(torch.equal(x[2], y[2]) for x, y in zip(a, b_))
    ld = _loader(root, tokenizer, shuffle_buffer=1)
    texts = [{}, {}]
    for e in range(2):
        for batch in ld.iter_epoch():
            texts[e].update(zip(batch["keys"], batch["texts"]))
    common = set(texts[0]) & set(texts[1])
    assert any(texts[0][k] != texts[1][k] for k in common), (
        "caption choice should change with epoch"
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_gives_same_batches(shard_root, tokenizer, num_workers: int) -> None:
    root, _ = shard_root
    ref = _loader(root, tokenizer, num_workers=num_workers)
    it = iter(ref)
    full = [next(it)["keys"] for _ in range(20)]  # crosses into epoch 2 (60 samples / 4)
    for k in (3, 16):
        ld = _loader(root, tokenizer, num_workers=num_workers)
        it = iter(ld)
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(ld.state_dict()))  # must survive serialization
        del it
        resumed = _loader(root, tokenizer, num_workers=num_workers)
        resumed.load_state_dict(state)
        it2 = iter(resumed)
        assert [next(it2)["keys"] for _ in range(20 - k)] == full[k:]


def test_bucketing_pads_to_batch_max(shard_root, tokenizer) -> None:
    root, keys = shard_root
    ld = _loader(root, tokenizer, bucket=True, max_frames=1024, pad_multiple=16, drop_last=False)
    seen = []
    for b in ld.iter_epoch():
        assert b["mel"].shape[2] % 16 == 0 and b["mel"].shape[2] >= int(b["mel_lengths"].max())
        assert b["mel"].shape[2] - int(b["mel_lengths"].max()) < 16
        seen += b["keys"]
    assert sorted(seen) == sorted(keys)


def test_fingerprint_mismatch_names_fields(shard_root) -> None:
    root, _ = shard_root
    other = FeatureConfig(n_mels=80, hop_length=320)
    with pytest.raises(FingerprintMismatch) as err:
        _loader(root, features=other)
    msg = str(err.value)
    assert "n_mels: 80 != 64" in msg and "hop_length: 320 != 160" in msg


def test_not_a_shard_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="shards.json is missing"):
        ShardLoader(tmp_path, features=FEATURES, max_frames=64, batch_size=2)


@pytest.mark.parametrize("verify", [False, True])
def test_corrupt_and_missing_shards_are_skipped(
    shard_root, tmp_path: Path, caplog, verify: bool
) -> None:
    src, keys = shard_root
    root = tmp_path / "bad"
    shutil.copytree(src, root)
    meta = json.loads((root / "train" / "shards.json").read_text())
    names = [s["name"] for s in meta["shards"]]
    (root / "train" / names[1]).unlink()  # missing shard
    data = (root / "train" / names[2]).read_bytes()
    (root / "train" / names[2]).write_bytes(data[: len(data) // 2])  # truncated shard
    # a corrupt member: garbage in the first sample's mel of shard 3, same size so the tar parses
    raw = bytearray((root / "train" / names[3]).read_bytes())
    at = raw.find(b"\x93NUMPY")
    raw[at : at + 64] = b"\x00" * 64
    (root / "train" / names[3]).write_bytes(bytes(raw))
    # and one key excluded as a cross-shard duplicate
    meta["exclude"] = [keys[0]]
    (root / "train" / "shards.json").write_text(json.dumps(meta))
    caplog.set_level(logging.ERROR, logger="dataprep.loader")
    ld = _loader(root, drop_last=False, shuffle_buffer=1, verify=verify)
    got = [k for b in ld.iter_epoch() for k in b["keys"]]
    assert len(got) == len(set(got)) and keys[0] not in got
    per_shard = [s["samples"] for s in meta["shards"]]
    text = caplog.text
    assert "shard missing" in text and names[1] in text
    assert "corrupt shard" in text and names[2] in text
    if verify:  # both damaged shards are refused whole, before any of their samples is used
        assert len(got) == per_shard[0] - 1 + per_shard[4]
        assert "corrupt shard" in text and names[3] in text and "sha256" in text
        assert ld.stats == {
            "missing_shards": 1,
            "corrupt_shards": 2,
            "bad_samples": 0,
            "skipped_samples": sum(per_shard[1:4]),
        }
    else:  # unchecked: the truncated shard is read up to the damage, the bad member is skipped
        whole = per_shard[0] - 1 + per_shard[3] - 1 + per_shard[4]  # shard 2 is read partially
        assert whole <= len(got) < whole + per_shard[2]
        assert "bad sample" in text and names[3] in text
        assert ld.stats["bad_samples"] == 1 and ld.stats["missing_shards"] == 1
        assert ld.stats["corrupt_shards"] == 1


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_fast_tar_reader_matches_tarfile(tmp_path: Path, fmt: int) -> None:
    from dataprep.core.tario import iter_tar_files as _tar_files

    path = tmp_path / "x.tar"
    names = ["a.json", "p" * 70 + "/" + "k" * 85 + ".mel.npy", "b.txt", "ünï.txt"]  # ustar prefix
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = bytes([i]) * (37 * i + 1)
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        d = tarfile.TarInfo("subdir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    with tarfile.open(path) as tar:
        want = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    got = []
    with open(path, "rb") as f:
        for name, size in _tar_files(f):
            got.append((name, f.read(size)))
    assert got == want
    raw = bytearray(path.read_bytes())
    raw[1024 + 10] ^= 0xFF  # the second header (the first member is 1 byte + padding)
    path.write_bytes(bytes(raw))
    try:
        with open(path, "rb") as f:
            bad = [(n, f.read(s)) for n, s in _tar_files(f)]
    except tarfile.ReadError:
        bad = None
    assert bad != want


def test_non_finite_mel_is_a_bad_sample(shard_root) -> None:
    from dataprep.core.tario import encode_npy
    from dataprep.loader import prepare_sample

    ld = _loader(shard_root[0])
    meta = json.dumps({"texts": [{"text": "x", "kind": "original"}]}).encode()
    mel = np.zeros((FEATURES.n_mels, 50), np.float16)
    assert (
        prepare_sample(ld.spec, 0, "k", {"mel.npy": encode_npy(mel), "json": meta})["text"] == "x"
    )
    for bad in (np.inf, np.nan):
        mel[3, 7] = bad
        with pytest.raises(ValueError, match="non-finite"):
            prepare_sample(ld.spec, 0, "k", {"mel.npy": encode_npy(mel), "json": meta})
    with pytest.raises(ValueError, match="mel shape"):
        prepare_sample(
            ld.spec, 0, "k", {"mel.npy": encode_npy(np.zeros((80, 5), np.float16)), "json": meta}
        )


def _corrupt_copy(src: Path, tmp_path: Path) -> tuple[Path, list[str], list[int]]:
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    meta = json.loads((root / "train" / "shards.json").read_text())
    return root, [s["name"] for s in meta["shards"]], [s["samples"] for s in meta["shards"]]


def _flip_mel_bytes(tar: Path, n: int = 64) -> None:
    """Flip the lowest bit of ``n`` bytes inside the first sample's mel data (past the .npy
    header): the tar still parses and the values stay finite, so only a checksum can tell."""
    raw = bytearray(tar.read_bytes())
    at = raw.find(b"\x93NUMPY")
    data_at = at + 10 + int.from_bytes(raw[at + 8 : at + 10], "little")
    for i in range(data_at + 200, data_at + 200 + n):
        raw[i] ^= 0x01
    tar.write_bytes(bytes(raw))


def _keys_of(tar: Path) -> set[str]:
    return {key for key, _ in iter_tar_members(tar)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_flipped_mel_bytes_never_reach_training_and_are_counted(
    shard_root, tmp_path: Path, caplog, num_workers: int
) -> None:
    """Issue 19 defect 1: 64 bytes flipped in one shard's mel data were fed silently."""
    src, keys = shard_root
    root, names, per_shard = _corrupt_copy(src, tmp_path)
    victim = root / "train" / names[1]
    bad_keys = _keys_of(victim)
    _flip_mel_bytes(victim)
    # unchecked (the old behaviour, still available): every sample arrives, one with other values
    plain = _loader(root, drop_last=False, shuffle_buffer=1, verify=False)
    assert sorted(k for b in plain.iter_epoch() for k in b["keys"]) == sorted(keys)
    caplog.set_level(logging.ERROR, logger="dataprep.loader")
    ld = _loader(root, drop_last=False, shuffle_buffer=1, num_workers=num_workers)
    got = [k for b in ld.iter_epoch() for k in b["keys"]]
    assert sorted(got) == sorted(set(keys) - bad_keys) and not bad_keys & set(got)
    assert ld.stats == {
        "missing_shards": 0,
        "corrupt_shards": 1,
        "skipped_samples": per_shard[1],
        "bad_samples": 0,
    }
    if num_workers == 0:  # worker processes log to their own stderr, out of caplog's reach
        assert (
            "corrupt shard" in caplog.text and names[1] in caplog.text and "sha256" in caplog.text
        )
    # tokenizer texts come through the same checked reader
    assert len(list(iter_shard_texts(root / "train"))) < len(list(iter_shard_texts(src / "train")))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_error_counters_are_exact_across_resume(
    shard_root, tmp_path: Path, num_workers: int
) -> None:
    src, _ = shard_root
    root, names, _ = _corrupt_copy(src, tmp_path)
    _flip_mel_bytes(root / "train" / names[2])
    (root / "train" / names[4]).unlink()
    ref = _loader(root, num_workers=num_workers)
    it = iter(ref)
    full = [next(it)["keys"] for _ in range(14)]  # 36 readable samples / 4: crosses epochs
    for k in (2, 11):
        ld = _loader(root, num_workers=num_workers)
        it = iter(ld)
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(ld.state_dict()))
        del it
        resumed = _loader(root, num_workers=num_workers)
        resumed.load_state_dict(state)
        it2 = iter(resumed)
        assert [next(it2)["keys"] for _ in range(14 - k)] == full[k:]
        assert resumed.stats == ref.stats, k
    assert ref.stats["corrupt_shards"] >= 2 and ref.stats["missing_shards"] >= 2


def test_bad_member_in_a_sound_shard_is_a_counted_bad_sample(shard_root, tmp_path: Path) -> None:
    src, keys = shard_root
    root = tmp_path / "bad_member"
    shutil.copytree(src, root)
    meta = json.loads((root / "train" / "shards.json").read_text())
    name = meta["shards"][0]["name"]
    samples = [decode_members(k, m) for k, m in iter_tar_members(root / "train" / name)]
    samples[0]["mel.npy"] = np.zeros((FEATURES.n_mels + 1, 9), np.float16)  # wrong n_mels
    meta["shards"][0] = write_tar_atomic(root / "train" / name, samples)  # sha256 matches
    (root / "train" / "shards.json").write_text(json.dumps(meta))
    ld = _loader(root, drop_last=False)
    got = [k for b in ld.iter_epoch() for k in b["keys"]]
    assert samples[0]["__key__"] not in got and len(got) == len(keys) - 1
    assert ld.stats["bad_samples"] == 1 and ld.stats["corrupt_shards"] == 0
    with pytest.raises(ShardCorrupt):
        _flip_mel_bytes(root / "train" / name)
        list(_loader(root, error_policy=ErrorPolicy(strict=True)).iter_epoch())
