"""Corpus readers on real audio: bundled corpora and real layouts built at test time.

Expectations come from the metadata files of the fixtures (or from the layout the test built),
never from hard-coded counts. Remote roots are exercised with ``memory://`` and a real HTTP
server on 127.0.0.1.
"""

from __future__ import annotations

import csv
import functools
import http.server
import importlib.util
import json
import os
import shutil
import threading
from pathlib import Path

import fsspec
import pytest

from dataprep.audio import load_segments
from dataprep.core.config import AudioConfig, ConfigError, CorpusConfig, DataConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import READER_OPTIONS, READERS, get_reader, read_corpus, validate_corpora

_spec = importlib.util.spec_from_file_location(
    "layout_builders", Path(__file__).resolve().parents[1] / "fixtures" / "layouts" / "builders.py"
)
layouts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layouts)


@pytest.fixture(scope="session")
def corpora(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("corpora_root")


def _read(name: str, reader: str, root: str | Path, **kw) -> tuple[list[SampleRef], list[Reject]]:
    items = list(read_corpus(CorpusConfig(name=name, reader=reader, root=str(root), **kw)))
    refs = [i for i in items if isinstance(i, SampleRef)]
    rejects = [i for i in items if isinstance(i, Reject)]
    assert len(refs) + len(rejects) == len(items)
    return refs, rejects


# --------------------------------------------------------------- every reader, one contract

BUNDLED = [
    ("esc50", "esc50_mini", {}),
    ("audiocaps", "audiocaps_mini", {}),
    ("commonvoice", "commonvoice_mini", {}),
    ("librispeech", "librispeech_mini", {}),
    ("nemo", "nemo_manifest_mini", {}),
    ("cremad", "cremad_mini", {}),
    ("speechcommands", "kws_mini", {}),
]
BUILT = {
    "urbansound8k": (layouts.build_urbansound8k, "", {}),
    "clotho": (layouts.build_clotho, "", {}),
    "ravdess": (layouts.build_ravdess, "", {}),
    "mls": (layouts.build_mls, "mls_german_opus", {}),
    "mswc": (layouts.build_mswc, "", {}),
    "folder": (layouts.build_folder, "", {"label_from_parent": True}),
    "table": (
        layouts.build_table,
        "",
        {
            "file": "meta.csv",
            "columns": {"audio": "file", "text": "caption", "labels": "tags", "speaker": "who"},
        },
    ),
}


def test_every_registered_reader_is_covered() -> None:
    get_reader("esc50")  # fills the registry
    assert set(READERS) == {r for r, _, _ in BUNDLED} | set(BUILT)


def _corpus_root(reader: str, corpora: Path, tmp_path: Path) -> tuple[Path, dict]:
    for name, sub, opts in BUNDLED:
        if name == reader:
            return corpora / sub, opts
    build, sub, opts = BUILT[reader]
    build(corpora, tmp_path)
    return tmp_path / sub if sub else tmp_path, opts


@pytest.mark.parametrize("reader", [r for r, _, _ in BUNDLED] + sorted(BUILT))
def test_reader_contract(reader: str, corpora: Path, tmp_path: Path) -> None:
    """Stable unique ids relative to the root, decodable audio, splits from the vocabulary."""
    root, opts = _corpus_root(reader, corpora, tmp_path)
    refs, _ = _read(reader, reader, root, options=opts)
    assert refs, f"{reader} found nothing in {root}"
    ids = [r.source_id for r in refs]
    assert len(set(ids)) == len(ids)
    again, _ = _read(reader, reader, root, options=opts)
    assert [r.source_id for r in again] == ids  # deterministic order and ids
    for r in refs:
        hash(r)  # frozen and hashable: extra holds no lists/dicts
        assert not r.source_id.startswith(("/", "..")) and r.corpus == reader
        assert r.split in (None, "train", "val", "test")
        assert os.path.isfile(r.audio) and Path(r.audio).resolve().is_relative_to(root.resolve())
    segs = load_segments(refs[0], AudioConfig(), 16000)
    assert segs and segs[0].wave.dtype.name == "float32" and segs[0].wave.size > 1600


def test_max_items(corpora: Path) -> None:
    refs, _ = _read("cv", "commonvoice", corpora / "commonvoice_mini", max_items=3)
    assert len(refs) == 3


def test_unknown_option_is_a_config_error(corpora: Path) -> None:
    with pytest.raises(ConfigError, match="eval_fold"):
        _read("esc", "esc50", corpora / "esc50_mini", options={"eval_fold": [5]})


@pytest.mark.parametrize("reader", [r for r, _, _ in BUNDLED] + sorted(BUILT))
def test_every_reader_has_typed_options(reader: str) -> None:
    """An options model per reader: defaults load, a typo is refused, naming the key."""
    get_reader(reader)
    model = READER_OPTIONS[reader]
    if reader != "table":  # the table reader has required options (file, columns)
        assert model.model_validate({}).license is model.model_fields["license"].default
    cfg = CorpusConfig(name="c", reader=reader, root="/nowhere", options={"licence": "x"})
    with pytest.raises(ConfigError, match=r"unknown option 'licence'.*known: \[.*'license'"):
        validate_corpora([cfg])


def test_validate_corpora_checks_types_readers_and_eval_corpora() -> None:
    """One error listing every bad corpus of a config, build and eval corpora alike."""
    cfg = DataConfig.model_validate(
        {"build": {
            "corpora": [
                {"name": "ok", "reader": "esc50", "root": "r", "options": {"eval_folds": [5]}},
                {"name": "typed", "reader": "esc50", "root": "r", "options": {"eval_folds": ["x"]}},
                {"name": "who", "reader": "no_such_reader", "root": "r"},
            ],
            "eval_corpora": [
                {"name": "tbl", "reader": "table", "root": "r",
                 "options": {"file": "m.csv", "columns": {"text": "caption"}}},
            ],
        }}
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        validate_corpora(cfg)
    msg = str(err.value)
    assert "corpus 'typed'" in msg and "options.eval_folds.0" in msg
    assert "unknown reader 'no_such_reader'" in msg
    assert "corpus 'tbl'" in msg and "columns.audio" in msg
    assert "corpus 'ok'" not in msg
    validate_corpora(cfg.build.corpora[:1])  # a good corpus passes


# ------------------------------------------------------------------- per-corpus semantics


def test_esc50_folds_labels_groups(corpora: Path) -> None:
    with open(corpora / "esc50_mini" / "meta" / "esc50.csv", newline="") as fh:
        rows = {f"audio/{r['filename']}": r for r in csv.DictReader(fh)}
    refs, rejects = _read(
        "esc50", "esc50", corpora / "esc50_mini", options={"eval_folds": [5], "val_folds": [4]}
    )
    assert not rejects and {r.source_id for r in refs} == set(rows)
    for r in refs:
        row = rows[r.source_id]
        assert r.labels == (row["category"],)
        assert r.split == {"5": "test", "4": "val"}.get(row["fold"], "train")
        assert r.extra_dict()["group"] == f"esc50:{row['src_file']}"
    plain, _ = _read("esc50", "esc50", corpora / "esc50_mini")
    assert {r.split for r in plain} == {None}  # folds are not splits unless configured


def test_audiocaps_multi_caption_and_extensions(corpora: Path) -> None:
    root = corpora / "audiocaps_mini"
    want: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for split in ("train", "val"):
        with open(root / f"{split}.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                want.setdefault((split, row["youtube_id"]), []).append(
                    (int(row["audiocap_id"]), row["caption"])
                )
    refs, rejects = _read("ac", "audiocaps", root)
    assert not rejects and len(refs) == len(want)
    for r in refs:
        split = "val" if r.split == "val" else "train"
        caps = [c for _, c in sorted(want[(split, r.extra_dict()["youtube_id"])])]
        assert (r.text, *r.captions) == tuple(caps)
        assert r.source_id.startswith(f"audio/{split}/")
    assert {Path(r.audio).suffix for r in refs} >= {".ogg", ".flac"}


def test_commonvoice_splits_speakers_and_invalidated(corpora: Path) -> None:
    root = corpora / "commonvoice_mini"
    refs, rejects = _read("cv", "commonvoice", root)
    assert not rejects
    invalid = set()
    for loc in root.iterdir():
        with open(loc / "invalidated.tsv", newline="") as fh:
            invalid |= {f"{loc.name}/clips/{r['path']}" for r in csv.DictReader(fh, delimiter="\t")}
    assert invalid and not invalid & {r.source_id for r in refs}  # only validated splits read
    assert {r.split for r in refs} == {"train", "val", "test"}
    zh = [r for r in refs if r.source_id.startswith("zh-CN/")]
    assert zh and all(r.lang == "zh" and r.extra_dict()["locale"] == "zh-CN" for r in zh)
    assert all(r.speaker and len(r.speaker) == 128 and r.duration_s for r in refs)
    # One locale folder as root works the same, with ids relative to it.
    en, _ = _read("cv", "commonvoice", root / "en", splits=("validated",))
    assert en and all(r.source_id.startswith("clips/") and r.split is None for r in en)


def test_librispeech_transcripts_and_subsets(corpora: Path) -> None:
    root = corpora / "librispeech_mini"
    refs, rejects = _read("ls", "librispeech", root)
    assert not rejects
    n_lines = sum(
        len(p.read_text().split("\n")) - 1 for p in (root / "LibriSpeech").rglob("*.trans.txt")
    )
    assert len(refs) == n_lines
    for r in refs:
        spk = r.source_id.split("/")[2]
        assert r.speaker == spk and r.text == r.text.upper() and r.lang == "en"
        assert r.split == ("val" if "/dev-" in r.source_id else "train")
    dev, _ = _read("ls", "librispeech", root / "LibriSpeech", splits=("dev-clean",))
    assert dev and {r.split for r in dev} == {"val"}


def test_nemo_manifest_rows(corpora: Path) -> None:
    root = corpora / "nemo_manifest_mini"
    rows = [
        json.loads(line)
        for m in sorted(root.glob("*.jsonl"))
        for line in m.read_text().splitlines()
    ]
    refs, rejects = _read("nemo", "nemo", root)
    assert not rejects and len(refs) == len(rows)
    by_id = {r.source_id: r for r in refs}
    for row in rows:
        r = by_id[row["audio_filepath"]]
        assert r.text == row["text"] and r.lang == row["lang"] and r.duration_s == row["duration"]
        assert r.extra_dict()["task"] == row["task"]


def test_nemo_offset_rows_select_regions(
    tmp_path: Path, corpora: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (tmp_path / "b").mkdir()
    long_clip = layouts.long_clip(corpora, tmp_path_factory.getbasetemp())
    shutil.copy(long_clip, tmp_path / "b" / "very_long_5min.ogg")
    rows = [
        {"audio_filepath": "very_long_5min.ogg", "offset": 10.0, "duration": 4.0, "text": "a"},
        {"audio_filepath": "very_long_5min.ogg", "offset": 100.0, "duration": 3.0, "text": "b"},
        {
            "audio_filepath": "very_long_5min.ogg",
            "offset": 10.0,
            "duration": 4.0,
            "text": "a again",
        },
    ]
    (tmp_path / "b" / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    refs, rejects = _read("n", "nemo", tmp_path / "b")
    assert [(r.start_s, r.end_s) for r in refs] == [(10.0, 14.0), (100.0, 103.0)]
    assert sorted(x.reason for x in rejects) == ["duplicate_row", "invalid_metadata"]
    seg = load_segments(refs[1], AudioConfig(trim_silence_db=None), 16000)
    assert (
        len(seg) == 1 and seg[0].start_s == pytest.approx(100.0) and seg[0].wave.size == 3 * 16000
    )


def test_cremad_from_file_names(corpora: Path) -> None:
    refs, rejects = _read("cremad", "cremad", corpora / "cremad_mini")
    assert not rejects and refs
    names = {
        "ANG": "anger",
        "DIS": "disgust",
        "FEA": "fear",
        "HAP": "happy",
        "NEU": "neutral",
        "SAD": "sad",
    }
    for r in refs:
        actor, code, emo, _level = Path(r.source_id).stem.split("_")
        assert r.speaker == actor and r.labels == (names[emo],) and r.text is None
        assert r.extra_dict()["sentence_code"] == code and r.extra_dict()["transcript"]
    assert {r.split for r in refs} == {None}


def test_cremad_eval_actors_are_a_held_out_test_split(corpora: Path) -> None:
    refs, _ = _read("cremad", "cremad", corpora / "cremad_mini", options={"eval_actors": ["1002"]})
    splits = {(r.speaker, r.split) for r in refs}
    assert splits == {("1001", "train"), ("1002", "test")}


def test_speechcommands_lists_and_words(corpora: Path, tmp_path: Path) -> None:
    root = corpora / "kws_mini"
    refs, _ = _read("kws", "speechcommands", root)
    with open(root / "keywords.csv", newline="", encoding="utf-8") as fh:
        words = {(r["lang"], r["label"]): r["word"] for r in csv.DictReader(fh)}
    for r in refs:
        lang, label, _ = r.source_id.split("/")
        assert r.lang == lang and r.labels == (label,) and r.text == words[(lang, label)]
        listed = set((root / lang / "validation_list.txt").read_text().split())
        if f"{label}/{Path(r.source_id).name}" in listed:
            assert r.split == "val"
    assert {r.split for r in refs} <= {"train", "val", "test"} and "train" in {
        r.split for r in refs
    }
    # Noise recordings live in a top-level _background_noise_ folder (the bundle has none).
    copy = Path(tmp_path) / "kws"
    shutil.copytree(root, copy)
    (copy / "_background_noise_").mkdir(exist_ok=True)
    shutil.copy(
        next((corpora / "esc50_mini" / "audio").glob("*.wav")),
        copy / "_background_noise_" / "x.wav",
    )
    refs, _ = _read("kws", "speechcommands", copy)
    assert not [r for r in refs if "_background_noise_" in r.source_id]
    with_noise, _ = _read("kws", "speechcommands", copy, options={"include_background": True})
    noise = [r for r in with_noise if r.labels == ("_background_noise_",)]
    assert noise and all(r.text is None and r.extra_dict()["task"] == "noise" for r in noise)
    assert len(with_noise) == len(refs) + len(noise)


def test_mswc_words_languages_splits(corpora: Path, tmp_path: Path) -> None:
    """Opus clips per language and word; both split-CSV forms; an unlisted clip has no split
    (or is skipped with listed_only); a language subset."""
    expected = layouts.build_mswc(corpora, tmp_path)
    refs, rejects = _read("mswc", "mswc", tmp_path)
    assert not rejects
    got = {r.source_id: (r.text, r.split, r.speaker) for r in refs}
    assert got == expected
    assert {r.lang for r in refs} == {"en", "es", "hi", "zh"}
    assert all(r.labels == (r.text,) and r.license == "CC-BY-4.0" for r in refs)
    listed, _ = _read("mswc", "mswc", tmp_path, options={"listed_only": True})
    assert {r.source_id for r in listed} == {k for k, v in expected.items() if v[1]}
    some, _ = _read("mswc", "mswc", tmp_path, options={"languages": ["hi"]})
    assert some and {r.lang for r in some} == {"hi"}
    segs = load_segments(refs[0], AudioConfig(), 16000)  # the opus decodes
    assert segs and segs[0].wave.size > 1600


def test_urbansound8k_layout(corpora: Path, tmp_path: Path) -> None:
    expected = layouts.build_urbansound8k(corpora, tmp_path)
    refs, rejects = _read("us", "urbansound8k", tmp_path, options={"eval_folds": [3]})
    assert {r.source_id: (r.labels[0], r.extra_dict()["fold"]) for r in refs} == expected
    assert all(r.split == ("test" if r.extra_dict()["fold"] == 3 else "train") for r in refs)
    assert [x.reason for x in rejects] == ["missing_file"]


def test_clotho_layout(corpora: Path, tmp_path: Path) -> None:
    expected = layouts.build_clotho(corpora, tmp_path)
    refs, rejects = _read("clotho", "clotho", tmp_path)
    assert not rejects
    assert {r.source_id: [r.text, *r.captions] for r in refs} == expected
    assert {r.split for r in refs} == {"train", "val"}
    assert all(r.license and r.extra_dict()["keywords"] == ("rain", "dog") for r in refs)


def test_ravdess_layout(corpora: Path, tmp_path: Path) -> None:
    expected = layouts.build_ravdess(corpora, tmp_path)
    refs, rejects = _read("rav", "ravdess", tmp_path)
    assert {r.source_id: r.labels[0] for r in refs} == expected
    assert len(rejects) == 2 and {x.reason for x in rejects} == {"invalid_metadata"}
    speech, _ = _read("rav", "ravdess", tmp_path, options={"channels": ["speech"]})
    assert len(speech) == len(refs) - 1
    r = next(r for r in refs if r.source_id.startswith("Actor_02"))
    assert r.extra_dict()["gender"] == "female" and r.speaker == "Actor_02"


def test_mls_layout_with_opus(corpora: Path, tmp_path: Path) -> None:
    expected = layouts.build_mls(corpora, tmp_path)
    refs, rejects = _read("mls", "mls", tmp_path / "mls_german_opus")
    assert {r.source_id: r.text for r in refs} == expected
    assert all(r.lang == "de" for r in refs) and [x.reason for x in rejects] == ["invalid_metadata"]
    assert {r.split for r in refs} == {"train", "val"}
    seg = load_segments(refs[0], AudioConfig(), 16000)[0]  # Ogg Opus decodes
    assert seg.wave.size > 16000


def test_generic_folder_sidecars(corpora: Path, tmp_path: Path) -> None:
    expected = layouts.build_folder(corpora, tmp_path)
    refs, _ = _read("f", "folder", tmp_path, options={"label_from_parent": True})
    got = {r.source_id: r for r in refs}
    assert set(got) == set(expected)
    for sid, want in expected.items():
        for key, value in want.items():
            assert getattr(got[sid], key) == value, (sid, key)
    assert dict(got[next(s for s in expected if expected[s].get("lang"))].extra)["rating"] == 4
    strict, rejects = _read("f", "folder", tmp_path, options={"require_sidecar": True})
    assert len(strict) == 2 and [x.reason for x in rejects] == ["missing_metadata"]


def test_generic_table_mapping_and_escape(corpora: Path, tmp_path: Path) -> None:
    expected = layouts.build_table(corpora, tmp_path)
    opts = {
        "file": "meta.csv",
        "columns": {
            "audio": "file",
            "text": "caption",
            "labels": "tags",
            "start_s": "t0",
            "end_s": "t1",
        },
    }
    refs, rejects = _read("t", "table", tmp_path, options=opts)
    assert {r.source_id.split("@")[0]: r.text for r in refs} == expected
    assert all(r.labels[1] == "sfx" and (r.start_s, r.end_s) == (0.5, 2.5) for r in refs)
    assert sorted(x.reason for x in rejects) == ["missing_file", "path_escape"]
    with pytest.raises(ConfigError):
        _read("t", "table", tmp_path, options={"file": "meta.csv", "columns": {"text": "caption"}})


# ------------------------------------------------------------------ escapes and remote roots


def test_path_escape_rejected(tmp_path: Path, corpora: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    wav = next((corpora / "esc50_mini" / "audio").glob("*.wav"))
    shutil.copy(wav, tmp_path / "secret.wav")
    shutil.copy(wav, root / "ok.wav")
    (root / "link.wav").symlink_to(tmp_path / "secret.wav")
    rows = [
        "../secret.wav",
        "/etc/passwd",
        "http://127.0.0.1:1/x.wav",
        "sub/../../secret.wav",
        "link.wav",
        "ok.wav",
    ]
    (root / "m.jsonl").write_text(
        "\n".join(json.dumps({"audio_filepath": p, "text": "t"}) for p in rows)
    )
    refs, rejects = _read("n", "nemo", root)
    assert [r.source_id for r in refs] == ["ok.wav"]
    assert [x.reason for x in rejects] == ["path_escape"] * 5
    folder, frejects = _read("f", "folder", root)
    assert [r.source_id for r in folder] == ["ok.wav"] and [x.reason for x in frejects] == [
        "path_escape"
    ]


def _copy_tree_to(fs: fsspec.AbstractFileSystem, src: Path, dst: str) -> None:
    for p in sorted(src.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{dst}/{p.relative_to(src).as_posix()}", p.read_bytes())


def test_memory_filesystem_root(corpora: Path) -> None:
    fs = fsspec.filesystem("memory")
    _copy_tree_to(fs, corpora / "esc50_mini", "/esc50")
    try:
        refs, rejects = _read("esc", "esc50", "memory://esc50")
        local, _ = _read("esc", "esc50", corpora / "esc50_mini")
        assert not rejects and [r.source_id for r in refs] == [r.source_id for r in local]
        assert refs[0].audio.startswith("memory://")
        seg_mem = load_segments(refs[0], AudioConfig(), 16000)
        seg_loc = load_segments(local[0], AudioConfig(), 16000)
        assert (seg_mem[0].wave == seg_loc[0].wave).all()
        fs.rm("/esc50/" + refs[1].source_id)
        refs2, rejects2 = _read("esc", "esc50", "memory://esc50")
        assert [x.reason for x in rejects2] == ["missing_file"] and len(refs2) == len(refs) - 1
    finally:
        fs.rm("/esc50", recursive=True)


@pytest.fixture()
def http_root(corpora: Path, port: int):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(corpora))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_root_on_loopback(http_root: str, corpora: Path) -> None:
    refs, rejects = _read("cv", "commonvoice", f"{http_root}/commonvoice_mini/en")
    local, _ = _read("cv", "commonvoice", corpora / "commonvoice_mini" / "en")
    assert not rejects and [r.source_id for r in refs] == [r.source_id for r in local]
    assert refs[0].audio.startswith("http://127.0.0.1")
    seg_http = load_segments(refs[0], AudioConfig(), 16000)
    seg_loc = load_segments(local[0], AudioConfig(), 16000)
    assert (seg_http[0].wave == seg_loc[0].wave).all()
    ac, ac_rej = _read("ac", "audiocaps", f"{http_root}/audiocaps_mini", splits=("val",))
    assert not ac_rej and ac and all(r.audio.startswith("http://") for r in ac)


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_generic_table_tsv_and_jsonl(corpora: Path, tmp_path: Path, fmt: str) -> None:
    clips = sorted((corpora / "commonvoice_mini" / "en" / "clips").iterdir())[:3]
    rows = [
        {"f": f"clips/{p.name}", "t": f"sentence {i}", "who": f"spk{i % 2}", "l": "en"}
        for i, p in enumerate(clips)
    ]
    (tmp_path / "clips").mkdir()
    for p in clips:
        shutil.copy(p, tmp_path / "clips" / p.name)
    if fmt == "tsv":
        lines = ["f\tt\twho\tl"] + ["\t".join(r.values()) for r in rows]
        (tmp_path / "meta.tsv").write_text("\n".join(lines) + "\n")
    else:
        (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n[1, 2]\n")
    opts = {
        "file": f"meta.{fmt}",
        "columns": {"audio": "f", "text": "t", "speaker": "who", "lang": "l"},
        "task": "asr",
    }
    refs, rejects = _read("tab", "table", tmp_path, options=opts)
    assert [(r.source_id, r.text, r.speaker, r.lang) for r in refs] == [
        (r["f"], r["t"], r["who"], "en") for r in rows
    ]
    assert all(r.extra_dict()["task"] == "asr" for r in refs)
    assert [x.reason for x in rejects] == ([] if fmt == "tsv" else ["invalid_metadata"])
    assert all(x.stage == "reader" and x.corpus == "tab" for x in rejects)


def test_task_file_reader_option_typo_is_refused_at_load(tmp_path: Path, repo_root: Path) -> None:
    """The evaluation harness checks reader options when it loads the task file."""
    from dataprep.evaluation.tasks import load_tasks

    demo = (repo_root / "configs" / "tasks" / "demo.yaml").read_text()
    assert load_tasks(repo_root / "configs" / "tasks" / "demo.yaml").tasks
    bad = tmp_path / "tasks.yaml"
    bad.write_text(demo.replace("options: {eval_folds: [5]}", "options: {eval_fold: [5]}", 1))
    with pytest.raises(ConfigError, match="corpus 'esc50'.*\n.*unknown option 'eval_fold'"):
        load_tasks(bad)
