"""Issue 19 defect 6, at training time: the loader never pairs a transcript with a crop of its
audio. Runs the loader's real prepare stage (``dataprep.loader.sample.prepare``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from dataprep.core.config import FeatureConfig
from dataprep.loader.sample import Decoded, prepare


@dataclass
class Spec:
    features: FeatureConfig = FeatureConfig()
    fingerprint: str | None = None
    max_frames: int = 100
    seed: int = 0
    train: bool = True
    transcripts: bool = False


def _decoded(frames: int, task: str, with_template: bool) -> Decoded:
    texts = [{"text": "the whole spoken sentence", "kind": "original", "lang": "en"}]
    texts.append({"text": "the whole spoken sentence!", "kind": "nlpaug:char", "lang": "en"})
    if with_template:
        texts.append({"text": "a person speaking English", "kind": "template", "lang": "en"})
    meta = {"texts": texts, "attributes": {"task": task}, "corpus": "c", "lang": "en"}
    return Decoded("c-0", meta, np.zeros((64, frames), np.float16), "the whole spoken sentence")


@pytest.mark.parametrize("epoch", range(8))
def test_a_cropped_transcribed_sample_gets_a_template_caption_never_its_transcript(epoch: int):
    out = prepare(Spec(), epoch, _decoded(300, "asr", with_template=True))
    assert out["mel"].shape[1] == 100
    assert out["text"] == "a person speaking English"


def test_a_cropped_transcribed_sample_without_a_caption_is_a_bad_sample():
    with pytest.raises(ValueError, match="longer than the crop"):
        prepare(Spec(), 0, _decoded(300, "asr", with_template=False))


def test_uncropped_transcripts_and_cropped_captions_keep_every_text():
    seen_whole = {prepare(Spec(), e, _decoded(80, "asr", False))["text"] for e in range(16)}
    assert "the whole spoken sentence" in seen_whole  # fits the crop: the transcript is fine
    seen_crop = {prepare(Spec(), e, _decoded(300, "caption", False))["text"] for e in range(16)}
    assert "the whole spoken sentence" in seen_crop  # a caption describes any part of its clip
