"""jobs/evaluate.py and dataprep.evaluation on the bundled real-audio corpora.

The model is a tiny fp32 export written at run time (tests/jobs/eval_helpers.py): the same
``final/`` layout the trainer exports. Evaluation sets go through the real readers and the
training SampleProcessor. Oracle embedders (test doubles for a *perfect* model, not mocks of
anything unavailable) check that the task plumbing turns perfect embeddings into perfect scores.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from eval_helpers import make_export

from dataprep.core.config import CorpusConfig
from dataprep.core.features import feature_fingerprint
from dataprep.evaluation import probes, runner
from dataprep.evaluation.data import load_eval_set, select
from dataprep.evaluation.embed import Embedder, windows
from dataprep.evaluation.tasks import Defaults, TaskConfig, load_tasks
from model.config import load_config

REPO = Path(__file__).resolve().parents[2]
EVALUATE = REPO / "jobs" / "evaluate.py"
DEMO_TASKS = REPO / "configs" / "tasks" / "demo.yaml"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EVALUATE), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_help(subprocess_env: dict[str, str]) -> None:
    r = _run(["--help"], subprocess_env)
    assert r.returncode == 0
    for flag in ("--checkpoint", "--tasks", "--out", "--compare"):
        assert flag in r.stdout


def test_demo_tasks_every_type_three_columns_cached_rerun(
    tmp_path: Path, subprocess_env: dict[str, str], corpora_root: Path
) -> None:
    ckpt = make_export(tmp_path / "run0", seed=0)  # same seed as the random-init column
    prev = make_export(tmp_path / "run1", seed=1)
    cache = tmp_path / "cache"
    out = tmp_path / "eval" / "results.json"
    args = [
        "--checkpoint",
        str(ckpt),
        "--tasks",
        str(DEMO_TASKS),
        "--out",
        str(out),
        "--compare",
        str(prev),
        "--cache-dir",
        str(cache),
    ]
    r = _run(args, subprocess_env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    table = out.with_suffix(".md").read_text()
    assert "| checkpoint | random-init | previous |" in table
    assert table in r.stdout  # the table is printed too
    types = {rec["type"] for rec in res["tasks"].values()}
    assert types == {
        "zero_shot",
        "retrieval",
        "emotion",
        "keyword_spotting",
        "linear_probe",
        "few_shot",
    }
    differs = 0
    for name, rec in res["tasks"].items():
        assert rec["metrics"], (name, rec["errors"])
        for metric, per_col in rec["metrics"].items():
            assert set(per_col) == {"checkpoint", "random_init", "previous"}, (name, metric)
            for est in per_col.values():
                if est["ci_low"] is not None:
                    assert est["ci_low"] <= est["value"] <= est["ci_high"]
            # the export made with seed 0 IS the seed-0 random-init model: loading must be exact
            assert per_col["checkpoint"] == per_col["random_init"], (name, metric)
            differs += per_col["checkpoint"] != per_col["previous"]
    assert differs > 0  # another model gives other numbers

    # item counts recounted from the corpus metadata
    with open(corpora_root / "esc50_mini" / "meta" / "esc50.csv") as f:
        esc = list(csv.DictReader(f))
    with open(corpora_root / "audiocaps_mini" / "val.csv") as f:
        caps = list(csv.DictReader(f))
    zs = res["tasks"]["esc50_zero_shot"]
    assert zs["n_items"] == sum(row["fold"] == "5" for row in esc)
    assert {"accuracy_en", "accuracy_de", "accuracy_fr"} <= set(zs["metrics"])
    ret = res["tasks"]["audiocaps_val_retrieval"]["metrics"]
    assert ret["t2a_R@1"]["checkpoint"]["n"] == len(caps)
    assert ret["a2t_R@1"]["checkpoint"]["n"] == len({row["youtube_id"] for row in caps})
    probe = res["tasks"]["esc50_linear_probe"]["metrics"]
    assert probe["folds"]["checkpoint"]["value"] == 5 and probe["accuracy"]["checkpoint"][
        "n"
    ] == len(esc)
    kws = res["tasks"]["kws_multilingual"]["metrics"]
    assert {"accuracy_en", "accuracy_hi", "accuracy_zh"} <= set(kws)

    # featurized sets are cached under the feature fingerprint; a rerun reads them, same numbers
    cfg = load_config(ckpt / "config.json")
    assert list((cache / feature_fingerprint(cfg.features)).glob("*.npz"))
    out2 = tmp_path / "eval2.json"
    r2 = _run([*args[:5], str(out2), *args[6:]], subprocess_env)
    assert r2.returncode == 0, r2.stderr[-2000:]
    res2 = json.loads(out2.read_text())
    assert "from cache" in r2.stderr
    for name in res["tasks"]:
        assert res2["tasks"][name]["metrics"] == res["tasks"][name]["metrics"]


def test_bad_inputs_exit_with_one_line_reason(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tasks:\n  - {name: x, type: zero_shot, corpus: {name: e, reader: esc50, root: /nope},"
        " tempaltes: {}}\n"
    )
    ckpt = make_export(tmp_path / "run", seed=0)
    r = _run(["--checkpoint", str(ckpt), "--tasks", str(bad)], subprocess_env)
    assert r.returncode == 2 and "tempaltes" in r.stderr
    r = _run(
        ["--checkpoint", str(tmp_path / "missing"), "--tasks", str(DEMO_TASKS)], subprocess_env
    )
    assert r.returncode == 2 and "no model here" in r.stderr
    # a benchmark path that does not exist: that task reports its error, exit 1, no crash
    gone = tmp_path / "gone.yaml"
    gone.write_text(
        "tasks:\n  - {name: x, type: zero_shot,"
        " corpus: {name: e, reader: esc50, root: /nope/ESC-50}}\n"
    )
    out = tmp_path / "r.json"
    r = _run(
        ["--checkpoint", str(ckpt), "--tasks", str(gone), "--out", str(out), "--no-random-init"],
        subprocess_env,
    )
    assert r.returncode == 1
    assert json.loads(out.read_text())["tasks"]["x"]["errors"]["checkpoint"]


# ------------------------------------------------------------------------ oracle plumbing ---
class Oracle:
    """A perfect model: audio of class/clip i and the text describing it share a one-hot axis."""

    def __init__(self, audio_axis: dict[str, int], text_axis: dict[str, int], dim: int) -> None:
        self.audio_axis, self.text_axis, self.dim = audio_axis, text_axis, dim

    def _onehot(self, idx: list[int]) -> np.ndarray:
        out = np.zeros((len(idx), self.dim), np.float32)
        out[np.arange(len(idx)), idx] = 1
        return out

    def audio(self, items):  # type: ignore[no-untyped-def]
        return self._onehot([self.audio_axis[it.source_id] for it in items])

    def text(self, texts, langs=None):  # type: ignore[no-untyped-def]
        return self._onehot([self.text_axis[t] for t in texts])

    def class_embeddings(self, prompts_per_class, lang=None):  # type: ignore[no-untyped-def]
        return self._onehot(list(range(len(prompts_per_class))))  # classes arrive sorted


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory, corpora_root: Path):  # type: ignore[no-untyped-def]
    cfg = load_config(REPO / "configs" / "test_small.yaml")
    cache = tmp_path_factory.mktemp("cache")
    esc = CorpusConfig(
        name="esc50",
        reader="esc50",
        root=str(corpora_root / "esc50_mini"),
        options={"eval_folds": [5]},
    )
    caps = CorpusConfig(
        name="audiocaps",
        reader="audiocaps",
        root=str(corpora_root / "audiocaps_mini"),
        splits=("val",),
    )
    return cfg, cache, load_eval_set(cfg, esc, cache), load_eval_set(cfg, caps, cache)


def test_oracle_scores_perfectly_on_every_task(sets) -> None:  # type: ignore[no-untyped-def]
    _, _, esc, caps = sets
    d = Defaults(n_boot=50)
    items = esc.items
    classes = sorted({it.labels[0] for it in items})
    oracle = Oracle({it.source_id: classes.index(it.labels[0]) for it in items}, {}, len(classes))
    # k=1: the bundle has two clips a class (one support, one query)
    for ttype, extra in (("zero_shot", {}), ("linear_probe", {}), ("few_shot", {"k": 1})):
        task = TaskConfig(name=ttype, type=ttype, corpus=esc_cfg(esc), **extra)
        est = runner.TASKS[ttype](task, items, oracle, d)["accuracy"]  # type: ignore[arg-type]
        assert est.value == 1.0 and est.n > 0, ttype
    # retrieval: every caption maps to its own clip, in both directions
    citems = caps.items
    text_axis = {c: i for i, it in enumerate(citems) for c in it.texts}
    oracle = Oracle({it.source_id: i for i, it in enumerate(citems)}, text_axis, len(citems))
    task = TaskConfig(name="r", type="retrieval", corpus=esc_cfg(caps))
    m = runner.task_retrieval(task, citems, oracle, d)  # type: ignore[arg-type]
    assert all(m[k].value == 1.0 for k in ("t2a_R@1", "a2t_R@1", "t2a_mAP@10", "a2t_mAP@10"))
    assert m["t2a_R@1"].n == sum(len(it.texts) for it in citems) and m["a2t_R@1"].n == len(citems)
    # a reversed oracle (each clip paired with the next clip's captions) gets R@1 = 0
    shifted = {c: (i + 1) % len(citems) for i, it in enumerate(citems) for c in it.texts}
    m = runner.task_retrieval(task, citems, Oracle(oracle.audio_axis, shifted, len(citems)), d)  # type: ignore[arg-type]
    assert m["t2a_R@1"].value == 0.0 and m["a2t_R@1"].value == 0.0


def test_few_shot_keyword_spotting_per_language(sets, tmp_path: Path, corpora_root: Path) -> None:  # type: ignore[no-untyped-def]
    """issue 17: few-shot KWS within each language of an MSWC layout (opus, built at test
    time): an oracle that confuses the two Hindi words scores Hindi at chance, the rest at 1."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "builders", REPO / "tests" / "fixtures" / "layouts" / "builders.py"
    )
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)  # type: ignore[union-attr]
    builders.build_mswc(corpora_root, tmp_path / "mswc")
    cfg, cache, _, _ = sets
    corpus = CorpusConfig(name="mswc", reader="mswc", root=str(tmp_path / "mswc"))
    items = load_eval_set(cfg, corpus, cache).items
    classes = sorted({(it.lang, it.labels[0]) for it in items})
    axis = {it.source_id: classes.index((it.lang, it.labels[0])) for it in items}
    hi = [i for i, c in enumerate(classes) if c[0] == "hi"]
    axis = {k: (hi[0] if v in hi else v) for k, v in axis.items()}  # both Hindi words alike
    task = TaskConfig(name="fs", type="few_shot", corpus=corpus, k=1, per_lang=True, episodes=4)
    m = runner.task_few_shot(task, items, Oracle(axis, {}, len(classes)), Defaults(n_boot=20))  # type: ignore[arg-type]
    assert {f"accuracy_{g}" for g in ("en", "es", "hi", "zh")} <= set(m)
    assert all(m[f"accuracy_{g}"].value == 1.0 for g in ("en", "es", "zh"))
    assert m["accuracy_hi"].value < 1.0 and m["accuracy"].value < 1.0
    plain = runner.task_few_shot(
        task.model_copy(update={"per_lang": False}),
        items,
        Oracle(axis, {}, len(classes)),
        Defaults(n_boot=20),
    )  # type: ignore[arg-type]
    assert set(plain) == {"accuracy"}


def test_default_prompts_are_each_languages_own(sets, corpora_root: Path) -> None:  # type: ignore[no-untyped-def]
    """issue 17: without task templates, keyword spotting prompts each language's words with
    that language's templates (model/prompts.py), zero-shot adds the languages of class_names;
    each prompt set is embedded with its language (the source of a language tag)."""
    import yaml

    from model.prompts import DEFAULT_TEMPLATES, KEYWORD_TEMPLATES

    bundled = {
        yaml.safe_load(p.read_text(encoding="utf-8"))["lang"]
        for p in (REPO / "dataprep" / "augment" / "templates").glob("[a-z][a-z].yaml")
    }
    assert len(bundled) >= 15 and bundled <= set(DEFAULT_TEMPLATES) & set(KEYWORD_TEMPLATES)
    calls: list = []

    class Recorder(Oracle):
        def class_embeddings(self, prompts_per_class, lang=None):  # type: ignore[no-untyped-def]
            calls.append((lang, prompts_per_class))
            return super().class_embeddings(prompts_per_class, lang)

    cfg, cache, esc, _ = sets
    kws = CorpusConfig(
        name="kws", reader="speechcommands", root=str(corpora_root / "kws_mini"),
        options={"languages": ["en", "hi", "zh"]},
    )  # fmt: skip
    items = load_eval_set(cfg, kws, cache).items
    rec = Recorder({it.source_id: 0 for it in items}, {}, 16)
    task = TaskConfig(name="k", type="keyword_spotting", corpus=kws)
    runner.task_keyword_spotting(task, items, rec, Defaults(n_boot=10))  # type: ignore[arg-type]
    assert [lang for lang, _ in calls] == ["en", "hi", "zh"]
    for lang, prompts in calls:
        temps = KEYWORD_TEMPLATES[lang]
        word = prompts[0][-1]  # the bare "{}" template: the word as spoken
        assert prompts[0] == [t.format(word) for t in temps], lang
    calls.clear()
    names = {"de": {"dog": "Hund"}, "ja": {"dog": "犬"}}
    task = TaskConfig(name="z", type="zero_shot", corpus=esc_cfg(esc), class_names=names)
    rec = Recorder({it.source_id: 0 for it in esc.items}, {}, 32)
    runner.task_zero_shot(task, esc.items, rec, Defaults(n_boot=10))  # type: ignore[arg-type]
    by_lang = dict(calls)
    assert sorted(by_lang) == ["de", "en", "ja"]
    dog = sorted({it.labels[0] for it in esc.items}).index("dog")
    assert by_lang["de"][dog] == [t.format("Hund") for t in DEFAULT_TEMPLATES["de"]]
    assert by_lang["ja"][dog] == [t.format("犬") for t in DEFAULT_TEMPLATES["ja"]]


def esc_cfg(es):  # type: ignore[no-untyped-def]
    return CorpusConfig(name=es.corpus, reader="esc50", root="/unused")


def test_linear_probe_uses_the_corpus_folds(sets, corpora_root: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, esc, _ = sets
    task = TaskConfig(name="p", type="linear_probe", corpus=esc_cfg(esc))
    folds = probes.fold_ids(task, esc.items)
    with open(corpora_root / "esc50_mini" / "meta" / "esc50.csv") as f:
        fold_of = {row["filename"]: int(row["fold"]) for row in csv.DictReader(f)}
    assert [fold_of[Path(it.source_id).name] for it in esc.items] == folds.tolist()
    # without corpus folds: groups are dealt round-robin, never split across folds
    task2 = TaskConfig(name="p", type="linear_probe", corpus=esc_cfg(esc), fold_key="nope", folds=3)
    f2 = probes.fold_ids(task2, esc.items)
    assert sorted(set(f2.tolist())) == [0, 1, 2]
    by_group: dict[str, set[int]] = {}
    for it, f in zip(esc.items, f2):
        by_group.setdefault(it.group, set()).add(int(f))
    assert all(len(v) == 1 for v in by_group.values())


def test_eval_set_cache_is_per_fingerprint_and_identical(
    sets, corpora_root: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cfg, cache, esc, _ = sets
    corpus = CorpusConfig(
        name="esc50",
        reader="esc50",
        root=str(corpora_root / "esc50_mini"),
        options={"eval_folds": [5]},
    )
    again = load_eval_set(cfg, corpus, cache)
    assert again.from_cache and not esc.from_cache
    assert [it.source_id for it in again.items] == [it.source_id for it in esc.items]
    for a, b in zip(again.items, esc.items):
        assert len(a.mels) == len(b.mels)
        for x, y in zip(a.mels, b.mels):
            np.testing.assert_array_equal(x, y)
    with open(corpora_root / "esc50_mini" / "meta" / "esc50.csv") as f:
        folds = [row["fold"] for row in csv.DictReader(f)]  # counts from the bundle's metadata
    assert len(select(again, "test")) == folds.count("5") and len(select(again, None)) == len(folds)
    # the corpus changes under the same root: featurized again, never served stale
    edited = tmp_path / "esc50_edited"
    shutil.copytree(corpora_root / "esc50_mini", edited)
    ecorpus = corpus.model_copy(update={"root": str(edited)})
    first = load_eval_set(cfg, ecorpus, cache)
    assert load_eval_set(cfg, ecorpus, cache).from_cache
    csv_path = edited / "meta" / "esc50.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[:-1]) + "\n")  # one clip less in the metadata
    changed = load_eval_set(cfg, ecorpus, cache)
    assert not changed.from_cache and len(changed.items) == len(first.items) - 1
    victim = edited / "audio" / Path(changed.items[0].source_id).name
    victim.write_bytes(
        (edited / "audio" / Path(changed.items[1].source_id).name).read_bytes()
    )  # replaced audio
    replaced = load_eval_set(cfg, ecorpus, cache)
    assert not replaced.from_cache
    np.testing.assert_array_equal(replaced.items[0].mels[0], replaced.items[1].mels[0])
    cfg32 = load_config(REPO / "configs" / "test_small.yaml", ["features.n_mels=32"])
    other = load_eval_set(cfg32, corpus, cache)
    assert not other.from_cache and other.fingerprint != esc.fingerprint
    assert other.items[0].mels[0].shape[0] == 32
    assert {p.name for p in cache.iterdir()} >= {esc.fingerprint, other.fingerprint}


def test_long_audio_is_windowed_and_averaged(sets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from model.weights import load_for_eval

    _, _, esc, _ = sets
    model, cfg, tok = load_for_eval(make_export(tmp_path / "m", seed=0))
    mf = cfg.model.audio.max_frames
    mel = np.concatenate([it.mels[0] for it in esc.items[:3]], axis=1)  # ~900 real frames
    assert mel.shape[1] > 2 * mf
    wins = windows(mel, mf)
    assert all(w.shape[1] == mf for w in wins)
    assert wins[-1][:, -1].tolist() == mel[:, -1].tolist()  # the end of the clip is covered
    item = type(esc.items[0])(**{**esc.items[0].__dict__, "mels": [mel]})
    emb = Embedder(model, cfg, tok, batch_size=2)
    got = emb.audio([item])[0]
    with torch.no_grad():
        each = [
            model.encode_audio(torch.from_numpy(w[None].astype(np.float32))).numpy()[0]
            for w in wins
        ]
    want = np.mean(each, axis=0)
    np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=1e-5)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)


def test_shipped_task_files_validate() -> None:
    for path in sorted((REPO / "configs" / "tasks").glob("*.yaml")):
        tf = load_tasks(path)
        assert tf.tasks, path


def test_public_benchmark_templates_run_on_the_bundled_layouts(
    tmp_path: Path, corpora_root: Path
) -> None:
    """The shipped templates point at /data/...; with the root swapped for the bundled corpus in
    the same layout, each runs end to end (what a user does with the real benchmark)."""
    import yaml

    from model.weights import load_for_eval

    model, cfg, tok = load_for_eval(make_export(tmp_path / "m", seed=0))
    bundled = {"esc50": "esc50_mini", "cremad": "cremad_mini", "speechcommands": "kws_mini"}
    for name in ("esc50.yaml", "cremad.yaml", "kws.yaml"):
        tree = yaml.safe_load((REPO / "configs" / "tasks" / name).read_text())
        for t in tree["tasks"]:
            t["corpus"]["root"] = str(corpora_root / bundled[t["corpus"]["reader"]])
            if t["type"] == "few_shot":
                t["k"] = 1  # the bundle has 2 clips per class (k must leave a query), ESC-50 40
        tree["defaults"]["n_boot"] = 50
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tree))
        tf = load_tasks(path)
        res = runner.evaluate(
            tf, [runner.Column("checkpoint", model, cfg, tok, "m")], str(tmp_path / "cache")
        )
        for tname, rec in res["tasks"].items():
            assert rec["metrics"] and not rec["errors"], (name, tname, rec["errors"])
            assert 0.0 <= rec["metrics"]["accuracy"]["checkpoint"]["value"] <= 1.0
