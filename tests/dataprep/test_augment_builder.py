"""The augmenters as the shard builder calls them: SampleProcessor on real bundled clips."""

from __future__ import annotations

from pathlib import Path

from dataprep.core.config import CorpusConfig, DataConfig
from dataprep.core.sample import META, SampleRef
from dataprep.corpora import read_corpus
from dataprep.process import SampleProcessor


def test_sample_json_carries_augmented_texts_and_views(corpora_root: Path) -> None:
    refs = []
    for name, reader in (
        ("esc50_mini", "esc50"),
        ("cremad_mini", "cremad"),
        ("commonvoice_mini", "commonvoice"),
    ):
        cfg = CorpusConfig(name=name, reader=reader, root=str(corpora_root / name))
        refs += [r for r in read_corpus(cfg) if isinstance(r, SampleRef)][:2]
    rain = sorted(str(p) for p in (corpora_root / "esc50_mini" / "audio").glob("*-10.wav"))
    cfg = DataConfig.model_validate(
        {"build": {"augment": {
            "template_langs": ["en", "de", "zh", "hi"],
            "nlpaug": ["keyboard", "synonym", "random_word_swap"],
            "nlpaug_per_sample": 2, "audio_views": 1, "noise_dirs": rain, "seed": 4,
        }}}
    )  # fmt: skip
    # A fresh processor each time (its dedup index would reject a rerun): one input per call
    # (the evaluation harness), then all of them in one call (a shard task: the audio of every
    # input first, then the text augmentation of every sample).
    proc = SampleProcessor(cfg)
    one_by_one = [proc(r, "train") for r in refs]
    proc.close()
    proc = SampleProcessor(cfg)
    shard = proc.process(refs, "train")
    proc.close()
    assert not shard.rejects, shard.rejects
    flat = [s for res in one_by_one for s in res.samples]
    assert [s["__key__"] for s in shard.samples] == [s["__key__"] for s in flat]
    for a, b in zip(shard.samples, flat, strict=True):
        assert a[META] == b[META] and a["txt"] == b["txt"] and (a["mel.npy"] == b["mel.npy"]).all()
    by_ref = iter(shard.samples)
    runs = [one_by_one, [[next(by_ref) for _ in res.samples] for res in one_by_one]]
    for res, samples2 in zip(*runs):
        assert not res.rejects, res.rejects
        originals = [s for s in res.samples if not s[META].get("augment")]
        views = [s for s in res.samples if s[META].get("augment")]
        assert len(originals) == len(views) >= 1
        for s in originals:
            kinds = [t["kind"] for t in s[META]["texts"]]
            assert "template" in kinds and all(t["provenance"] for t in s[META]["texts"])
            assert any(k.startswith("nlpaug:") for k in kinds)
        for v in views:
            assert (
                v[META]["group"] == originals[0][META]["group"]
                and v["__key__"] != originals[0]["__key__"]
            )
            assert all("transform" in step for step in v[META]["augment"])
        # Same config, same inputs: the same texts and transform chains.
        assert [s[META]["texts"] for s in res.samples] == [s[META]["texts"] for s in samples2]
        assert [s[META].get("augment") for s in res.samples] == [
            s[META].get("augment") for s in samples2
        ]
