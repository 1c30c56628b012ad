"""CALM with the transcript (model.calm.with_transcript), the loader's side: which samples get
their transcript fed beside the audio, so that the paired text is never readable from it.
Runs the loader's real prepare and collate stages on hand-made sample metadata."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dataprep.core.config import FeatureConfig
from dataprep.loader.batch import collate
from dataprep.loader.sample import Decoded, calm_transcript, prepare

WORDS = "the cat sat on the mat"
ORIGINAL = {"text": WORDS, "kind": "original", "lang": "en", "provenance": {"source": "corpus"}}
PLAIN = {  # a template caption that does not quote the words
    "text": "a woman speaking English in an angry voice",
    "kind": "template",
    "lang": "en",
    "provenance": {"template": "a woman speaking {language} in {emotion} voice"},
}
QUOTING = {
    "text": f'a woman says "{WORDS}"',
    "kind": "template",
    "lang": "en",
    "provenance": {"template": 'a woman says "{transcript}"'},
}
PARAPHRASE = {"text": "the cat was sitting on the mat", "kind": "nlpaug:synonym", "lang": "en"}


@dataclass
class Spec:
    features: FeatureConfig = FeatureConfig()
    fingerprint: str | None = None
    max_frames: int = 100
    seed: int = 0
    train: bool = True
    transcripts: bool = True
    batch_size: int = 4
    tokenize: object = None
    bucket: bool = False
    bucket_batches: int = 1
    pad_multiple: int = 1
    drop_last: bool = False


def _meta(task: str, *texts: dict) -> dict:
    return {"texts": list(texts), "attributes": {"task": task}, "corpus": "c", "lang": "en"}


def test_a_transcript_is_fed_only_beside_a_caption_that_does_not_quote_it():
    meta = _meta("emotion", ORIGINAL, PLAIN, QUOTING, PARAPHRASE)
    assert calm_transcript(meta, PLAIN["text"]) == WORDS
    assert calm_transcript(meta, QUOTING["text"]) == ""  # quotes the words
    assert calm_transcript(meta, WORDS) == ""  # the transcript itself
    assert calm_transcript(meta, PARAPHRASE["text"]) == ""  # its paraphrase
    # a caption corpus has no transcript; class names standing in for one are not a transcript
    assert calm_transcript(_meta("caption", ORIGINAL, PLAIN), PLAIN["text"]) == ""
    labels = {"text": "anger", "kind": "original", "provenance": {"source": "labels"}}
    assert calm_transcript(_meta("emotion", labels, PLAIN), PLAIN["text"]) == ""
    # CREMA-D: the sentence is an attribute, the original text the label; the label and a
    # non-quoting template may go with the words, a quoting template may not
    cremad = dict(_meta("emotion", labels, PLAIN, QUOTING), attributes={
        "task": "emotion", "transcript": WORDS})  # fmt: skip
    assert calm_transcript(cremad, "anger") == WORDS
    assert calm_transcript(cremad, PLAIN["text"]) == WORDS
    assert calm_transcript(cremad, QUOTING["text"]) == ""
    # a template that happens to contain the words is refused too
    odd = dict(PLAIN, text=f"speech: {WORDS}")
    assert calm_transcript(_meta("asr", ORIGINAL, odd), odd["text"]) == ""


def _decoded(frames: int) -> Decoded:
    meta = _meta("asr", ORIGINAL, PLAIN, QUOTING, PARAPHRASE)
    return Decoded("c-0", meta, np.zeros((64, frames), np.float16), WORDS)


def test_prepare_pairs_each_draw_with_its_transcript_or_none():
    seen = {}
    for epoch in range(32):
        out = prepare(Spec(), epoch, _decoded(80))
        seen[out["text"]] = out["transcript"]
    assert seen == {  # every text was drawn; only the plain caption brings the words
        WORDS: "",
        PLAIN["text"]: WORDS,
        QUOTING["text"]: "",
        PARAPHRASE["text"]: "",
    }
    # a crop (the transcript stands for the whole utterance) and validation: audio alone
    assert {prepare(Spec(), e, _decoded(300))["transcript"] for e in range(16)} == {""}
    assert prepare(Spec(train=False), 0, _decoded(80))["transcript"] == ""
    assert "transcript" not in prepare(Spec(transcripts=False), 0, _decoded(80))


def _tokenize(texts, langs=None):
    ids = torch.tensor([[len(t), len(t.split())] for t in texts])
    return ids, torch.ones(len(texts), 2, dtype=torch.bool)  # "" is not empty for every tokenizer


@pytest.mark.parametrize("on", [True, False])
def test_collate_gives_transcript_tokens_and_masks_rows_without_one(on: bool):
    samples = [
        {"key": str(i), "mel": np.zeros((64, 50), np.float16), "text": "t", "group": i,
         "corpus": "c", "lang": "en", "text_lang": "en", "labels": (), "duration_s": 0.5,
         "transcript": w}
        for i, w in enumerate([WORDS, "", "hello"])
    ]  # fmt: skip
    batch = collate(Spec(tokenize=_tokenize, transcripts=on), samples)
    if not on:
        assert "tr_ids" not in batch
        return
    assert batch["tr_ids"][:, 0].tolist() == [len(WORDS), 0, 5]
    assert batch["tr_mask"].tolist() == [[True, True], [False, False], [True, True]]
