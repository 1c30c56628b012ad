"""pipelines/quality_report.py and dataprep.report on shard sets of real bundled audio.

Two shard sets: a hand-made one (the training SampleProcessor on real clips, written with the
shard writer, with planted conditions a small build cannot produce: LLM captions and their
rejects, a language-ID mismatch, a duplicate that slipped through, a builder-excluded key,
eval-overlap and decode rejects), and in the slow test a real `build_shards.py` build.
Every figure of the report JSON is recounted here from the tar members with plain tarfile/json/
numpy code, following the definitions in dataprep/report/stats.py.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataprep.core.atomic import atomic_write_json
from dataprep.core.config import CorpusConfig
from dataprep.core.features import feature_fingerprint
from dataprep.core.sample import Reject, SampleRef
from dataprep.core.tario import write_tar_atomic
from dataprep.corpora import read_corpus
from dataprep.process import SampleProcessor
from dataprep.report.collect import assemble, shard_jobs, summarize_shard
from dataprep.report.render import PLOTS, SECTIONS, render_html
from dataprep.report.stats import EDGES, Partial
from model.config import load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "pipelines" / "quality_report.py"
REJECT_SCHEMA = pa.schema(
    [(c, pa.string()) for c in ("source", "corpus", "stage", "reason", "detail")]
)


def _write_split(
    root: Path,
    split: str,
    shards: list[list[dict[str, Any]]],
    rejects: list[dict[str, str]],
    exclude: list[str] = (),
) -> None:  # type: ignore[assignment]
    entries = [
        write_tar_atomic(root / split / f"shard-{i:06d}.tar", s) for i, s in enumerate(shards)
    ]
    pq.write_table(
        pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), root / split / "rejects.parquet"
    )
    atomic_write_json(
        root / split / "shards.json", {"split": split, "shards": entries, "exclude": list(exclude)}
    )


@pytest.fixture(scope="module")
def handmade(tmp_path_factory: pytest.TempPathFactory, corpora_root: Path) -> Path:
    cfg = load_config(REPO / "configs" / "test_small.yaml")
    proc = SampleProcessor(cfg, augment=True)
    samples: list[dict[str, Any]] = []
    rejects: list[dict[str, str]] = []
    corpora = [
        CorpusConfig(
            name="esc50", reader="esc50", root=str(corpora_root / "esc50_mini"), max_items=6
        ),
        CorpusConfig(
            name="commonvoice",
            reader="commonvoice",
            root=str(corpora_root / "commonvoice_mini"),
            max_items=8,
        ),
        CorpusConfig(
            name="audiocaps",
            reader="audiocaps",
            root=str(corpora_root / "audiocaps_mini"),
            splits=("val",),
            max_items=3,
        ),
    ]
    for c in corpora:
        for ref in read_corpus(c):
            assert isinstance(ref, SampleRef)
            res = proc(ref, "train")
            samples.extend(res.samples)
            rejects.extend(r.as_row() for r in res.rejects)
    bad = corpora_root / "bad_inputs"
    for name in ("empty.wav", "not_audio.wav", "clipped.wav", "too_short_0.05s.wav"):
        res = proc(
            SampleRef(
                corpus="bad", source_id=name, audio=str(bad / name), text="a clip", lang="en"
            ),
            "train",
        )
        samples.extend(res.samples)
        rejects.extend(r.as_row() for r in res.rejects)
    proc.close()
    assert any(
        s["json"]["stats"]["clip_ratio"] > 0 for s in samples
    )  # clipped.wav kept with a flag
    # planted: LLM captions on two samples, a language-ID disagreement on one
    for s in samples[:2]:
        s["json"]["texts"].append(
            {
                "text": f"an llm paraphrase of {s['txt']}",
                "lang": "en",
                "kind": "llm:smollm2-135m-instruct",
                "provenance": {"template": "p1"},
            }
        )
    cv = next(s for s in samples if s["json"]["corpus"] == "commonvoice")
    cv["json"]["flags"] = sorted(set(cv["json"]["flags"]) | {"lang_mismatch:xx->en"})
    # planted: the same audio under another key (a duplicate the builder missed), in another shard
    dup = {
        **samples[3],
        "__key__": samples[3]["__key__"] + "x",
        "json": {**samples[3]["json"], "id": samples[3]["__key__"] + "x"},
    }
    # planted: a key the builder excluded (listed in shards.json "exclude"): not part of the set
    excluded = {
        **samples[4],
        "__key__": "esc50-excludedexcluded",
        "json": {**samples[4]["json"], "corpus": "ghost"},
    }
    rejects += [
        Reject("esc50:a.wav", "augment", "llm_refusal", "model refused", "esc50").as_row(),
        Reject("esc50:b.wav", "augment", "llm_copy", "output copies the input", "esc50").as_row(),
        Reject(
            "audiocaps:c.ogg",
            "dedup",
            "eval_overlap",
            "matches eval clip audiocaps_val:x",
            "audiocaps",
        ).as_row(),
    ]
    root = tmp_path_factory.mktemp("handmade")
    train, test = samples[:-4], samples[-4:]
    _write_split(
        root,
        "train",
        [train[: len(train) // 2], train[len(train) // 2 :] + [dup, excluded]],
        rejects,
        exclude=[excluded["__key__"]],
    )
    _write_split(root, "test", [test], [])
    atomic_write_json(
        root / "build.json",
        {
            "config": {"name": "handmade", "build": {"corpora": []}},
            "feature_fingerprint": feature_fingerprint(cfg.features),
            "inputs": 21,
            "counts": {},
        },
    )
    return root


# ---------------------------------------------------------------------------------- recount ---
TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|\w+")


def _bin(edges: list[float], v: float) -> int:
    return sum(1 for e in edges if e <= v)  # 0: below the first edge; len(edges): at/above the last


def _hist(edges: list[float], values: list[float]) -> list[int]:
    out = [0] * (len(edges) + 1)
    for v in values:
        out[_bin(edges, v)] += 1
    return out


def _snr(mel: np.ndarray) -> float:
    e = 10 * np.log10(np.maximum(np.exp(mel.astype(np.float64)).sum(axis=0), 1e-30))
    return max(float(np.percentile(e, 90) - np.percentile(e, 10)), 0.0)


def recount(root: Path) -> dict[str, Any]:
    """Read every tar member and recount the report's figures independently."""
    rows = []
    for split in ("train", "val", "test"):
        if not (root / split / "shards.json").is_file():
            continue
        meta = json.loads((root / split / "shards.json").read_text())
        excluded = set(meta.get("exclude", []))
        for entry in meta["shards"]:
            members: dict[str, dict[str, bytes]] = defaultdict(dict)
            with tarfile.open(root / split / entry["name"]) as tar:
                for ti in tar.getmembers():
                    key, _, ext = ti.name.partition(".")
                    members[key][ext] = tar.extractfile(ti).read()  # type: ignore[union-attr]
            for key, m in members.items():
                if key in excluded:
                    continue
                rows.append(
                    {
                        "key": key,
                        "split": split,
                        "meta": json.loads(m["json"]),
                        "txt": m.get("txt", b"").decode(),
                        "mel": np.load(io.BytesIO(m["mel.npy"])),
                    }
                )
    return {"rows": rows}


def _close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=2e-6)


def check_against_recount(report: dict[str, Any], root: Path) -> None:
    rows = recount(root)["rows"]
    assert report["totals"]["samples"] == len(rows)
    assert _close(report["totals"]["seconds"], sum(r["meta"]["duration"] for r in rows))
    speakers = {r["meta"]["speaker"] for r in rows if r["meta"].get("speaker")}
    assert report["totals"]["speakers"] == len(speakers)
    for table, field in (("by_corpus", "corpus"), ("by_lang", "lang"), ("by_split", "split")):
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            name = r["split"] if field == "split" else (r["meta"].get(field) or "und")
            groups[name].append(r)
        assert sorted(report[table]) == sorted(groups), table
        for name, g in groups.items():
            got = report[table][name]
            assert got["samples"] == len(g)
            secs = sum(r["meta"]["duration"] for r in g)
            assert _close(got["seconds"], secs) and _close(got["hours"], secs / 3600)
            assert got["speakers"] == len(
                {r["meta"]["speaker"] for r in g if r["meta"].get("speaker")}
            )
            assert got["duration_hist"] == _hist(
                EDGES["duration_s"], [r["meta"]["duration"] for r in g]
            )
    values: dict[str, list[float]] = {
        "duration_s": [r["meta"]["duration"] for r in rows],
        "lufs": [r["meta"]["stats"]["lufs"] for r in rows],
        "dbfs": [r["meta"]["stats"]["dbfs"] for r in rows],
        "clip_ratio": [r["meta"]["stats"]["clip_ratio"] for r in rows],
        "silence_ratio": [r["meta"]["stats"]["silence_ratio"] for r in rows],
        "snr_db": [_snr(r["mel"]) for r in rows],
        "text_chars": [len(r["txt"]) for r in rows if r["txt"]],
        "chars_per_s": [
            len(r["txt"]) / r["meta"]["duration"]
            for r in rows
            if r["txt"] and (r["meta"].get("attributes") or {}).get("task") == "asr"
        ],
    }
    assert values["chars_per_s"] and values["snr_db"]
    for metric, vals in values.items():
        got = report["audio"].get(metric) or report["text"][metric]
        assert got["count"] == len(vals), metric
        assert _close(got["mean"], float(np.mean(vals))), metric
        assert _close(got["min"], min(vals)) and _close(got["max"], max(vals)), metric
        assert got["hist"] == _hist(EDGES[metric], vals), metric
        for q, name in ((0.05, "p05"), (0.5, "p50"), (0.95, "p95")):
            true = float(np.quantile(vals, q, method="inverted_cdf"))
            b = _bin(EDGES[metric], true)
            lo = EDGES[metric][b - 1] if b > 0 else -math.inf
            assert lo - 1e-9 <= got[name] and true <= got[name] + 1e-6, (
                metric,
                name,
                true,
                got[name],
            )
    flags = Counter(f.split(":", 1)[0] for r in rows for f in r["meta"].get("flags") or [])
    assert report["flags"] == dict(flags)
    checked = [
        r
        for r in rows
        if r["meta"].get("lang") and any(t["kind"] == "original" for t in r["meta"]["texts"])
    ]
    mism = [
        r
        for r in checked
        if any(f.startswith("lang_mismatch") for f in r["meta"].get("flags") or [])
    ]
    lid = report["text"]["lid"]
    assert (lid["checked"], lid["mismatch"]) == (len(checked), len(mism))
    assert _close(lid["agreement"], 1 - len(mism) / len(checked))
    assert {x["key"] for x in lid["mismatch_examples"]} == {r["key"] for r in mism}
    vocab: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        if r["txt"]:
            vocab[r["meta"].get("lang") or "und"].update(TOKEN.findall(r["txt"].lower()))
    assert report["text"]["vocab"] == {
        "all": len(set().union(*vocab.values())),
        **{k: len(v) for k, v in vocab.items()},
    }
    kinds = Counter(t["kind"] for r in rows for t in r["meta"]["texts"])
    assert report["augmentation"]["kinds"] == dict(kinds)
    fam_of = lambda k: "llm" if k.startswith("llm:") else "nlpaug" if k.startswith("nlpaug:") else k
    fams = Counter()
    grams: dict[str, list[list[Any]]] = defaultdict(lambda: [[], []])
    for r in rows:
        for t in r["meta"]["texts"]:
            fams[fam_of(t["kind"])] += 1
            toks = TOKEN.findall(t["text"].lower())
            grams[fam_of(t["kind"])][0] += toks
            grams[fam_of(t["kind"])][1] += list(itertools.pairwise(toks))
    total = sum(fams.values())
    assert report["augmentation"]["families"] == dict(fams)
    for f, n in fams.items():
        assert _close(report["augmentation"]["shares"][f], n / total)
        d = report["text"]["distinct"][f]
        assert (d["ngrams_1"], d["ngrams_2"]) == (len(grams[f][0]), len(grams[f][1]))
        assert (d["distinct_ngrams_1"], d["distinct_ngrams_2"]) == (
            len(set(grams[f][0])),
            len(set(grams[f][1])),
        )
    rej = [
        r for s in report["splits"] for r in pq.read_table(root / s / "rejects.parquet").to_pylist()
    ]
    llm_ok = sum(n for k, n in kinds.items() if k.startswith("llm:"))
    llm_bad = sum(r["stage"] == "augment" for r in rej)
    llm = report["augmentation"]["llm"]
    assert (llm["accepted"], llm["rejected"]) == (llm_ok, llm_bad)
    if llm_ok + llm_bad:
        assert _close(llm["acceptance_rate"], llm_ok / (llm_ok + llm_bad))
    by_sha: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_sha[r["meta"]["audio_sha1"]].append(r["key"])
    groups_ = sorted(sorted(v) for v in by_sha.values() if len(v) > 1)
    assert report["duplicates"]["audio_groups"] == groups_
    assert report["duplicates"]["duplicate_samples"] == sum(len(g) - 1 for g in groups_)
    assert report["duplicates"]["rejected_eval_overlap"] == sum(
        r["reason"] == "eval_overlap" for r in rej
    )
    assert report["duplicates"]["rejected_duplicate"] == sum(
        r["reason"] == "duplicate" for r in rej
    )
    # generated texts (stage augment) are rejected apart from inputs: their samples were kept
    inputs = [r for r in rej if r["stage"] != "augment"]
    texts = [r for r in rej if r["stage"] == "augment"]
    assert report["rejects"]["total"] == len(rej)
    assert (report["rejects"]["inputs"], report["rejects"]["generated_texts"]) == (
        len(inputs),
        len(texts),
    )
    assert report["rejects"]["by_reason"] == dict(
        Counter(f"{r['stage']}/{r['reason']}" for r in inputs)
    )
    assert report["rejects"]["text_by_reason"] == dict(Counter(r["reason"] for r in texts))
    assert report["rejects"]["by_corpus"] == dict(Counter(r["corpus"] or "?" for r in inputs))
    for k, ex in report["rejects"]["examples"].items():
        assert 1 <= len(ex) <= 3 and all(
            f"{r['stage']}/{r['reason']}" == k
            for r in rej
            for x in ex
            if r["source"] == x["source"]
        )
    for split, s in report["shards"].items():
        tars = sorted((root / split).glob("shard-*.tar"))
        sizes = [t.stat().st_size for t in tars]
        counts = []
        for t in tars:
            with tarfile.open(t) as tf:
                counts.append(len({m.name.partition(".")[0] for m in tf.getmembers()}))
        assert s["count"] == len(tars) and s["total_bytes"] == sum(sizes)
        assert (s["bytes"]["min"], s["bytes"]["max"]) == (min(sizes), max(sizes))
        assert (s["samples"]["min"], s["samples"]["max"]) == (min(counts), max(counts))
        assert _close(s["bytes"]["cv"], float(np.std(sizes) / np.mean(sizes)))
    longest = sorted(rows, key=lambda r: (-r["meta"]["duration"], r["key"]))[:10]
    assert [x["key"] for x in report["outliers"]["longest"]] == [r["key"] for r in longest]
    snrs = sorted(
        ((v, r["key"]) for v, r in zip(values["snr_db"], rows)),
        key=lambda t: (round(t[0], 6), t[1]),
    )[:10]
    assert [x["key"] for x in report["outliers"]["lowest_snr"]] == [k for _, k in snrs]
    clipped = sorted(
        (r for r in rows if r["meta"]["stats"]["clip_ratio"] > 0),
        key=lambda r: (-r["meta"]["stats"]["clip_ratio"], r["key"]),
    )
    assert [x["key"] for x in report["outliers"]["most_clipped"]] == [
        r["key"] for r in clipped[:10]
    ]
    by_key = {r["key"]: r for r in rows}
    for xs in report["outliers"].values():
        for x in xs:
            m = by_key[x["key"]]["meta"]
            assert (
                x["corpus"] == m["corpus"] and x["source"] == f"{m['source_uri']} @ {m['segment']}"
            )


def _in_process(root: Path) -> dict[str, Any]:
    merged, problems = Partial(), []
    for split, tar, exclude in shard_jobs(root):
        p, probs = summarize_shard(split, tar, exclude)
        merged.merge(p)
        problems += probs
    return json.loads(json.dumps(assemble(root, merged, problems)))


def test_every_figure_matches_a_recount(handmade: Path) -> None:
    report = _in_process(handmade)
    check_against_recount(report, handmade)
    # the planted conditions are visible
    assert report["augmentation"]["llm"] == {"accepted": 2, "rejected": 2, "acceptance_rate": 0.5}
    assert report["text"]["lid"]["mismatch"] == 1
    assert (
        report["duplicates"]["duplicate_samples"] == 1
        and report["duplicates"]["rejected_eval_overlap"] == 1
    )
    assert "ghost" not in report["by_corpus"]  # the excluded key is not counted
    assert report["rejects"]["by_reason"] == {
        "decode/empty_file": 1,
        "decode/not_audio": 1,
        "dedup/eval_overlap": 1,
        "filter/too_short": 1,
    }
    assert report["rejects"]["text_by_reason"] == {"llm_copy": 1, "llm_refusal": 1}
    assert (report["rejects"]["inputs"], report["rejects"]["generated_texts"]) == (4, 2)
    assert report["flags"] == {"clipping": 1, "lang_mismatch": 1}
    assert report["outliers"]["most_clipped"][0]["key"].startswith("bad-")
    assert report["problems"] == []


def test_merge_order_does_not_change_the_numbers(handmade: Path) -> None:
    jobs = shard_jobs(handmade)
    parts = [summarize_shard(*j)[0] for j in jobs]
    a, b = Partial(), Partial()
    for p in parts:
        a.merge(p)
    for p in reversed(parts):
        b.merge(p)
    ra, rb = assemble(handmade, a, []), assemble(handmade, b, [])
    ra["duplicates"].pop("audio_groups"), rb["duplicates"].pop("audio_groups")  # sorted anyway
    assert json.dumps(ra, sort_keys=True) == json.dumps(rb, sort_keys=True)


def test_html_has_every_section_and_its_images_and_no_network(handmade: Path) -> None:
    from PIL import Image

    page = render_html(_in_process(handmade))
    for sid, title in SECTIONS:
        m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.DOTALL)
        assert m, sid
        for name in PLOTS.get(sid, ()):
            img = re.search(
                rf'<img data-plot="{name}" alt="{name}" '
                r'src="data:image/png;base64,([A-Za-z0-9+/=]+)">',
                m.group(1),
            )
            assert img, (sid, name)
            im = Image.open(io.BytesIO(base64.b64decode(img.group(1))))
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 50
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from anywhere
    assert "http://" not in page and "https://" not in page
    assert render_html(_in_process(handmade)) == page
    # the overview counts rejected inputs and rejected generated texts apart
    assert '<td class="l">inputs rejected</td><td>4</td>' in page
    assert '<td class="l">generated texts rejected (their samples kept)</td><td>2</td>' in page


def test_html_escapes_what_the_data_says(handmade: Path) -> None:
    report = _in_process(handmade)
    report["rejects"]["examples"]["augment/llm_copy"][0]["detail"] = '<script>alert("x")</script>'
    report["problems"] = ["shard <b>7</b> & more"]
    page = render_html(report)
    assert "<script>" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "problem: shard &lt;b&gt;7&lt;/b&gt; &amp; more" in page


def test_corrupt_shard_is_listed_not_fatal(handmade: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(handmade, root)
    tar = root / "train" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    report = _in_process(root)
    assert len(report["problems"]) == 1 and "shard-000001.tar" in report["problems"][0]
    assert report["totals"]["samples"] > 0


# ------------------------------------------------------------------- the real command (Ray) ---
def _report(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_help_and_bad_input(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    r = _report(["--help"], subprocess_env)
    assert r.returncode == 0 and "--shards" in r.stdout and "--out" in r.stdout
    r = _report(["--shards", str(tmp_path), "--out", str(tmp_path / "o")], subprocess_env)
    assert r.returncode == 2 and "no finished split" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_real_build_report_is_deterministic_and_renders_in_chromium(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    shards = tmp_path / "shards"
    b = subprocess.run(
        [
            sys.executable,
            "pipelines/build_shards.py",
            "--config",
            "configs/test_small.yaml",
            "--out",
            str(shards),
            "--num-cpus",
            "2",
        ],
        cwd=REPO,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert b.returncode == 0, b.stderr[-3000:]
    out1, out2 = tmp_path / "r1", tmp_path / "r2"
    r1 = _report(["--shards", str(shards), "--out", str(out1), "--num-cpus", "2"], subprocess_env)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _report(["--shards", str(shards), "--out", str(out2), "--num-cpus", "1"], subprocess_env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    for name in ("report.json", "report.html"):
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes(), name
    report = json.loads((out1 / "report.json").read_text())
    check_against_recount(report, shards)
    assert report == _in_process(shards)  # Ray tasks and the in-process merge agree
    build = json.loads((shards / "build.json").read_text())
    assert report["build"]["feature_fingerprint"] == build["feature_fingerprint"]
    assert report["totals"]["samples"] == sum(c["samples"] for c in build["counts"].values())

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian package chromium is not installed (apt-get install chromium)")
    png = tmp_path / "page.png"
    profile = tmp_path / "profile"
    c = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1200,4000",
            f"--screenshot={png}",
            (out1 / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert c.returncode == 0 and png.is_file(), c.stderr[-2000:]
    from PIL import Image

    px = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert px.shape == (4000, 1200)
    # the page really drew: text and plots give dark pixels in many rows, not a blank canvas
    dark_rows = (px < 128).any(axis=1).mean()
    assert dark_rows > 0.3, dark_rows


@pytest.mark.slow
def test_ray_job_submit_on_a_loopback_head(
    handmade: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """`ray job submit` as the module docstring shows, on a loopback head (tests/rayhead.py)."""
    from rayhead import BIN, ray_head

    env = dict(subprocess_env, RAY_AUTH_MODE="disabled")
    with ray_head(env) as address:
        out = tmp_path / "report"
        proc = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--", "python",
             "pipelines/quality_report.py", "--shards", str(handmade), "--out", str(out)],
            cwd=REPO, env=dict(env, RAY_API_SERVER_ADDRESS=address), capture_output=True,
            text=True, timeout=600, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        assert "succeeded" in proc.stdout.lower() and "report:" in proc.stdout
        report = json.loads((out / "report.json").read_text())
        assert report == _in_process(handmade)
