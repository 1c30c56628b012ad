"""An export of a model with transformers towers does not need the tower directories.

Model: a TINY RANDOM ClapModel saved to a tmp dir (hf_helpers.tiny_clap), imported as polyclap
(HTSAT audio + RoBERTa text, both from that dir), then exported with model.weights.write_export.
The source directory is removed before the export is loaded back.
"""

from __future__ import annotations

import shutil

import torch
from hf_helpers import tiny_clap

from dataprep.core.config import FeatureConfig
from model.config import ExperimentConfig
from model.hf_common import TOWER_MARKER, WEIGHT_SUFFIXES
from model.hf_import import import_clap
from model.hf_text import HFTokenizer
from model.weights import load_for_eval, write_export

TEXTS = ["a dog barks", "rain on a roof"]


def test_export_carries_its_towers_and_reloads_without_the_source(tmp_path):
    src = tiny_clap(tmp_path / "clap")
    model, _ = import_clap(src)
    model.eval()
    cfg = ExperimentConfig(features=FeatureConfig(preset="htsat"), model=model.cfg)
    mel = torch.randn(2, 64, 1001) * 10 - 40
    ids, mask = HFTokenizer(src).encode_batch(TEXTS, 16)
    with torch.no_grad():
        want_a, want_t = model.encode_audio(mel), model.encode_text(ids, mask)
    export = write_export(tmp_path / "export", model.state_dict(), cfg)
    for name in ("audio", "text"):
        tower = export / "towers" / name
        assert (tower / "config.json").is_file() and (tower / TOWER_MARKER).is_file()
        assert not [f for f in tower.iterdir() if f.name.endswith(WEIGHT_SUFFIXES)]
    shutil.rmtree(src)  # the export must not need it
    loaded, lcfg, tok = load_for_eval(export)
    assert lcfg.model.audio.path == str(export / "towers" / "audio")
    ids2, mask2 = tok.encode_batch(TEXTS, 16)
    assert torch.equal(ids2, ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_audio(mel), want_a)
        torch.testing.assert_close(loaded.encode_text(ids2, mask2), want_t)
