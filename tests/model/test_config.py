"""The config split: DataConfig (dataprep.core.config) + ExperimentConfig (model.config), one
loader and error formatter, removed keys named with their replacement, every loader field used."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dataprep.core.config import ConfigError, DataConfig, LoaderConfig
from dataprep.core.configfile import load_config as load_data_config
from model.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.yaml", "test_small.yaml"])
def test_shipped_configs_load_as_experiments(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, ExperimentConfig) and isinstance(cfg, DataConfig)
    # the data view drops exactly the model-side sections; a build task validates only it
    view = DataConfig.view(cfg)
    assert type(view) is DataConfig and set(view.model_dump()) == {
        "name",
        "features",
        "build",
        "loader",
    }
    assert DataConfig.model_validate_json(view.model_dump_json()) == view


def test_data_only_file_loads_without_model_sections(tmp_path: Path) -> None:
    p = tmp_path / "data.yaml"
    p.write_text(
        yaml.safe_dump({"build": {"out": str(tmp_path / "o")}, "loader": {"num_workers": 3}})
    )
    cfg = load_data_config(p)
    assert type(cfg) is DataConfig and cfg.loader.num_workers == 3
    with pytest.raises(ConfigError, match="unknown key 'train'"):
        load_data_config(p, ["train.lr=0.1"])  # the data view does not silently accept a model key


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("train.shards=/x", "moved to loader.shards"),
        ("train.num_workers=2", "moved to loader.num_workers"),
        ("train.shuffle_buffer=8", "moved to loader.shuffle_buffer"),
        ("train.bucket_by_length=true", "moved to loader.bucket_by_length"),
        ("train.tokenizer=/t.model", "moved to tokenizer.path"),
        ("train.max_text_len=16", "model.text.max_len"),
        ("eval.tasks=x", "jobs/evaluate.py --tasks"),
        ("features.multirate_hops=[320]", "never read"),
    ],
)
def test_removed_keys_name_their_replacement(override: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs" / "test_small.yaml", [override])
    key = override.split("=")[0].removesuffix(".tasks")  # `eval` is a whole removed section
    assert f"key {key!r} is no longer accepted" in str(e.value) and says in str(e.value)


def test_removed_corpus_role_is_named_with_its_index(tmp_path: Path) -> None:
    tree = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    tree["build"]["eval_corpora"][0]["role"] = "eval"
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"key 'build.eval_corpora.0.role' is no longer accepted"):
        load_config(p)


def test_a_typo_is_still_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'loader.num_worker'"):
        load_config(REPO / "configs" / "test_small.yaml", ["loader.num_worker=2"])


def test_tokenizer_path_is_refused_for_a_minilm_tower() -> None:
    with pytest.raises(
        ConfigError, match="tokenizer.path is set but model.text.kind=minilm uses its own tokenizer"
    ):
        load_config(
            REPO / "configs" / "test_small.yaml",
            ["model.text.kind=minilm", "tokenizer.path=/t.model"],
        )


def test_mask_same_label_needs_the_group_mask() -> None:
    with pytest.raises(ConfigError, match="mask_same_label needs mask_same_group"):
        load_config(
            REPO / "configs" / "test_small.yaml",
            ["model.loss.mask_same_label=true", "model.loss.mask_same_group=false"],
        )


def test_every_loader_field_reaches_the_loader(tmp_path: Path, corpora_root: Path) -> None:
    """loader.num_workers / shuffle_buffer / bucket_by_length land in the loader's spec (their
    behaviour is tested in tests/dataprep/test_loader.py); loader.shards is what pretrain opens
    (tests/jobs/test_pretrain.py passes it as --shards)."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "dataprep"))
    from test_loader import make_shards

    from dataprep.loader import ShardLoader

    make_shards(corpora_root, tmp_path, n_shards=1, limit=4)
    lc = LoaderConfig(
        num_workers=3, shuffle_buffer=7, bucket_by_length=True, cache_dir=str(tmp_path / "c")
    )
    ld = ShardLoader.from_config(
        lc,
        tmp_path / "train",
        features=ExperimentConfig().features,
        tokenize=None,
        max_frames=64,
        batch_size=2,
        pad_multiple=4,
        seed=5,
    )
    s = ld.spec
    assert (s.num_workers, s.shuffle_buffer, s.bucket, s.max_frames, s.pad_multiple, s.seed) == (
        3,
        7,
        True,
        64,
        4,
        5,
    )
    assert set(LoaderConfig.model_fields) == {
        "shards",
        "num_workers",
        "shuffle_buffer",
        "bucket_by_length",
        "sampling",
        "cache_dir",
    }
    assert s.cache_dir == str(tmp_path / "c")  # remote shard copies (tests/storage)
    # loader.sampling reaches the loader's draw plan (these hand-made shards have no
    # index.parquet, which a weighted epoch needs; behaviour: tests/dataprep/test_sampling.py)
    weighted = LoaderConfig(sampling={"by": "corpus"})
    with pytest.raises(ConfigError, match="index.parquet"):
        ShardLoader.from_config(
            weighted, tmp_path / "train", features=ExperimentConfig().features, tokenize=None,
            max_frames=64, batch_size=2,
        )  # fmt: skip
