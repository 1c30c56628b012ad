"""Featurization throughput with and without augmentation, side by side in one run.

    python bench/augment.py [--rounds 3] [--per-corpus 24] [--chunk 8]
                             [--langs en,de,fr,es,zh,hi,ar,sw]

Both arms run the builder's per-input processor (``dataprep.process.SampleProcessor``: decode,
normalize, filters, dedup, log-mel) over the same real clips of the bundled corpora (ESC-50,
CREMA-D, Common Voice, LibriSpeech, keyword spotting), serially in this process so the cost of
augmentation is isolated from Ray scheduling:

(a) ``augment=False``
(b) templates in ``--langs`` + nlpaug (keyboard, synonym, random_word_swap; 2 per sample)
    + 1 audio view (2-transform chain, background noise from the corpus's rain clips), i.e.
    one extra log-mel per input;
(c) (b) without the audio view: the cost of the text augmenters alone.

``--llm N`` adds a report of LLM caption augmentation through the embedded llama.cpp server
(``[llm]`` extra, SmolLM2-135M-Instruct): N clips (AudioCaps captions, ESC-50 labels, CREMA-D),
paraphrase + caption + translate(de); what was accepted, what was rejected and why, and the
wall time of the first run vs the cached rerun.

The arms take turns every ``--chunk`` inputs within each of ``--rounds`` rounds (a fresh
processor per arm and round, fed by ``SampleProcessor.process`` as a shard task feeds it; one
warm-up round over every input not counted: WordNet, lingua's per-language models, nlpaug's
keyboard layouts, numba and librosa load once per process) so load on the shared machine hits
every arm alike. Throughput is inputs per CPU-second of this process (and per wall second); the
ratio (b)/(a) is the number to compare with the target (>= 0.6x, issue 20).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataprep.core.config import CorpusConfig, DataConfig
from dataprep.core.sample import META, SampleRef
from dataprep.corpora import read_corpus
from dataprep.process import SampleProcessor

CORPORA = REPO / "tests" / "fixtures" / "corpora"
SOURCES = [
    ("esc50_mini", "esc50"),
    ("cremad_mini", "cremad"),
    ("commonvoice_mini", "commonvoice"),
    ("librispeech_mini", "librispeech"),
    ("kws_mini", "speechcommands"),
]


def refs(per_corpus: int) -> list[SampleRef]:
    out: list[SampleRef] = []
    for name, reader in SOURCES:
        cfg = CorpusConfig(name=name, reader=reader, root=str(CORPORA / name))
        out += [r for r in read_corpus(cfg) if isinstance(r, SampleRef)][:per_corpus]
    return out


def run_round(
    arms: dict[str, tuple[DataConfig, bool]], items: list[SampleRef], chunk: int
) -> dict[str, dict[str, float]]:
    """One round: a fresh processor per arm (as a shard task makes one), fed the inputs
    ``chunk`` at a time, the arms taking turns after every chunk, so that the machine's
    load changes (this VM's CPU time for the same work moves by 20 % within seconds) hit
    every arm alike; each arm's CPU and wall time summed over its chunks."""
    procs = {label: SampleProcessor(c, augment=aug) for label, (c, aug) in arms.items()}
    out = {label: {"cpu_s": 0.0, "wall_s": 0.0, "samples": 0, "texts": 0} for label in arms}
    for i in range(0, len(items), chunk):
        for label, proc in procs.items():
            c0, w0 = time.process_time(), time.perf_counter()
            res = proc.process(items[i : i + chunk], "train")  # a shard task's call
            o = out[label]
            o["cpu_s"] += time.process_time() - c0
            o["wall_s"] += time.perf_counter() - w0
            o["samples"] += len(res.samples)
            o["texts"] += sum(len(s[META]["texts"]) for s in res.samples)
    for proc in procs.values():
        proc.close()
    return out


def llm_report(n: int) -> None:
    import collections
    import tempfile

    from dataprep.augment import TextAugmenter
    from dataprep.augment.llm import llm_available
    from dataprep.core.config import AugmentConfig, LLMConfig

    llm = LLMConfig(
        server="embedded", tasks=("paraphrase", "caption", "translate"), target_langs=("de",),
        per_sample=3, cache_dir=tempfile.mkdtemp(prefix="bench_llm_cache_"),
    )  # fmt: skip
    ok, why = llm_available(llm)
    if not ok:
        print(f"LLM report skipped: {why}")
        return
    items: list[SampleRef] = []
    picks = (
        ("audiocaps_mini", "audiocaps", n // 2),
        ("esc50_mini", "esc50", n // 4),
        ("cremad_mini", "cremad", n - n // 2 - n // 4),
    )
    for name, reader, k in picks:
        cfg = CorpusConfig(name=name, reader=reader, root=str(CORPORA / name))
        items += [r for r in read_corpus(cfg) if isinstance(r, SampleRef)][:k]
    metas = [_meta(r) for r in items]
    cfg = AugmentConfig(template_langs=("en",), llm=llm)
    outs, walls = [], []
    for _ in range(2):  # second run: every reply from the cache
        aug = TextAugmenter(cfg)
        t0 = time.perf_counter()
        got = [(aug(m), aug.drain_rejects()) for m in metas]
        walls.append(time.perf_counter() - t0)
        sent = aug.llm.client.requests_sent
        aug.close()
        outs.append((got, sent))
    (got, sent), (got2, sent2) = outs
    acc: collections.Counter = collections.Counter()
    rej: collections.Counter = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    for out, rejects in got:
        for e in out:
            if e["kind"].startswith("llm:"):
                task = e["provenance"]["task"]
                acc[task] += 1
                if len(examples[f"accepted {task}"]) < 2:
                    examples[f"accepted {task}"].append(
                        f"{e['provenance']['source']!r} -> {e['text']!r}"
                    )
        for r in rejects:
            rej[r.reason] += 1
            if len(examples[r.reason]) < 2:
                examples[r.reason].append(r.detail[:110])
    print(
        f"\nLLM report: {len(metas)} clips, {sent} requests, "
        "SmolLM2-135M-Instruct (llama.cpp, 2 threads)"
    )
    print(f"accepted by task: {dict(acc)}; rejected by reason: {dict(rej.most_common())}")
    for k, v in examples.items():
        for x in v:
            print(f"  {k}: {x}")
    same = [o for o, _ in got] == [o for o, _ in got2]
    print(f"first run {walls[0]:.1f} s ({sent} requests); cached rerun {walls[1]:.2f} s "
          f"({sent2} requests, identical texts: {same})")  # fmt: skip


def _meta(ref: SampleRef) -> dict:
    texts = []
    if ref.text:
        texts.append(
            {
                "text": ref.text,
                "lang": ref.lang,
                "kind": "original",
                "provenance": {"source": "corpus"},
            }
        )
    elif ref.labels:
        label = ", ".join(x.replace("_", " ") for x in ref.labels)
        texts.append(
            {"text": label, "lang": "en", "kind": "original", "provenance": {"source": "labels"}}
        )
    for cap in ref.captions:
        texts.append(
            {"text": cap, "lang": ref.lang, "kind": "original", "provenance": {"source": "corpus"}}
        )
    attrs = {k: v for k, v in ref.extra_dict().items() if isinstance(v, (str, int, float))}
    return {
        "id": f"{ref.corpus}:{ref.source_id}",
        "corpus": ref.corpus,
        "source_id": ref.source_id,
        "lang": ref.lang,
        "labels": list(ref.labels),
        "texts": texts,
        "attributes": attrs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-corpus", type=int, default=24)
    ap.add_argument("--chunk", type=int, default=8, help="inputs per turn of an arm")
    ap.add_argument("--langs", default="en,de,fr,es,zh,hi,ar,sw")
    ap.add_argument("--llm", type=int, default=0, metavar="N", help="LLM report over N clips")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    # One intra-op thread, as in a Ray task with num_cpus=1: spinning pool threads would
    # otherwise add load-dependent CPU time to whichever arm happens to run under contention.
    torch.set_num_threads(1)
    items = refs(args.per_corpus)
    rain = sorted(str(p) for p in (CORPORA / "esc50_mini" / "audio").glob("*-10.wav"))
    cfg = DataConfig.model_validate(
        {"build": {"augment": {
            "templates": True, "template_langs": args.langs.split(","),
            "nlpaug": ["keyboard", "synonym", "random_word_swap"], "nlpaug_per_sample": 2,
            "audio_views": 1, "audio_chain_len": 2, "noise_dirs": rain, "seed": 0,
        }}}
    )  # fmt: skip
    text_only = cfg.model_copy(
        update={"build": cfg.build.model_copy(
            update={"augment": cfg.build.augment.model_copy(update={"audio_views": 0})}
        )}
    )  # fmt: skip
    arms = {
        "(a) no augmentation": (cfg, False),
        "(b) templates+nlpaug+1 audio view": (cfg, True),
        "(c) templates+nlpaug only": (text_only, True),
    }
    t0 = time.perf_counter()
    run_round(arms, items, args.chunk)  # warm-up over every input: one-time loads, not counted
    setup_s = time.perf_counter() - t0
    res: dict[str, list[dict[str, float]]] = {k: [] for k in arms}
    for _ in range(args.rounds):
        for label, r in run_round(arms, items, args.chunk).items():
            res[label].append(r)
    n = len(items)
    print(
        f"inputs per round: {n} real clips from {[s for s, _ in SOURCES]}; rounds: "
        f"{args.rounds}; arms alternate every {args.chunk} inputs"
    )
    print(f"warm-up (one-time loads: WordNet, lingua's models, nlpaug layouts): {setup_s:.1f} s")
    print(
        f"{'arm':<36}{'inputs/cpu-s':>13}{'inputs/wall-s':>14}{'samples':>8}{'texts':>7}{'ratio':>7}"
    )
    base = res["(a) no augmentation"]
    for label, rs in res.items():
        # Ratio per round (the arms of one round took turns under the same load), median.
        ratio = statistics.median(a["cpu_s"] / r["cpu_s"] for a, r in zip(base, rs))
        print(
            f"{label:<36}{statistics.median(n / r['cpu_s'] for r in rs):>13.2f}"
            f"{statistics.median(n / r['wall_s'] for r in rs):>14.2f}"
            f"{int(rs[0]['samples']):>8}{int(rs[0]['texts']):>7}{ratio:>6.2f}x"
        )
    print("ratio: throughput vs (a) per CPU-second, median over rounds; target for (b): >= 0.6x")
    if args.llm:
        llm_report(args.llm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
