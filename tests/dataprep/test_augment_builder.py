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
    runs = []
    for _ in range(2):  # a fresh processor each time: its dedup index would reject a rerun
        proc = SampleProcessor(cfg)
        runs.append([proc(r, "train") for r in refs])
        proc.close()
    for res, res2 in zip(*runs):
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
        assert [s[META]["texts"] for s in res.samples] == [s[META]["texts"] for s in res2.samples]
        assert [s[META].get("augment") for s in res.samples] == [
            s[META].get("augment") for s in res2.samples
        ]
