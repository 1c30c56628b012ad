"""Training/eval reader over a shard set, as composable iterator stages with exact resume.

Stages of one worker's epoch (each an iterator over the previous one's output)::

    read shard range (read.py) -> decode -> prepare (sample.py) -> shuffle -> batch -> collate
                                                                      (batch.py)

composed by :class:`ShardLoader` (loader.py) with one injected :class:`ErrorPolicy`
(errors.py): what happens to a missing or corrupt shard and to a bad sample, and the counters
the trainer logs. The epoch plan and the shard-set bookkeeping are ``shardset.py``.

Per epoch the plan is a pure function of ``(seed, epoch, rank, world_size, worker)``:

1. the shards of ``shards.json`` are permuted with ``rng(seed, epoch)`` (train) and their samples
   laid end to end; rank ``r`` takes the ``r``-th contiguous slice of that sequence and worker
   ``w`` the ``w``-th slice of the rank's, so no sample is read twice in an epoch and each
   worker streams whole runs of one tar (a boundary shard is read by two workers, each keeping
   its own members);
2. every shard is checked against its ``shards.json`` size and sha256 before any of its samples
   is used (a corrupt shard is skipped whole, logged and counted, never fed);
3. each worker shuffles through a buffer seeded by ``(seed, epoch, rank, worker)``, crops with a
   draw from a hash of ``(seed, epoch, key)`` and picks the epoch's text among ``texts`` the same
   way, so a sample's crop and caption do not depend on where it lands;
4. the worker forms whole batches (optionally bucketed by length), tokenizes and collates.

With ``loader.sampling.by`` set (``lang``, ``corpus``, ``corpus_lang``), a training epoch is
instead ``epoch_samples`` draws with ``p ∝ weight * n^alpha`` per group (``sampling.py``): the
draws are laid out in the epoch's shard order and split over ranks and workers the same way,
each drawn once; a repeated sample gets its own crop and caption. The achieved share per
corpus and language of consumed batches is :meth:`ShardLoader.draw_shares` (in the trainer's
metrics as ``draws_corpus_*``/``draws_lang_*``) and is kept in the resume state.

The DataLoader hands batches out round-robin over workers. The state is the number of batches
taken from each worker; on resume a worker regenerates its stream and drops that many, and the
physical workers are rotated so the round-robin continues with the worker that was next. That
gives the same batch sequence as an uninterrupted run (and the same error counters).

Each rank is an endless stream over epochs (ranks never wait for each other at an epoch end, so
a skipped corrupt sample cannot desynchronize the collectives of a training step).

Batch: ``mel`` ``[B, n_mels, T]`` in the features' dtype (float16 by default; zero beyond
``mel_lengths``), ``mel_lengths`` long, ``ids``/``mask`` from the injected ``tokenize`` callable
(``(texts, langs=text_langs) -> (ids, mask)``; the loader never picks or loads a tokenizer nor
decides on language tags: the model side owns that, see ``model/tokenizer.py``), ``groups``
long (stable hash of the sample's ``group``: equal ids are never each other's negatives, also
across ranks), ``labels`` (each sample's class-label tuple, possibly empty), ``keys``, ``texts``,
``text_langs`` (each text's own language, the source of a language tag), ``duration_s``; with
``transcripts`` (CALM's multimodal path, ``model.calm.with_transcript``) also
``tr_ids``/``tr_mask``, each sample's transcript where
:func:`dataprep.loader.sample.calm_transcript` feeds one (else an all-False mask row).
"""

from dataprep.core.features import FingerprintMismatch
from dataprep.loader.errors import ErrorPolicy, ShardCorrupt
from dataprep.loader.loader import LoaderSpec, ShardLoader, Tokenize
from dataprep.loader.read import iter_shard_texts
from dataprep.loader.sample import prepare_sample
from dataprep.loader.shardset import ShardSet, check_shard_features, epoch_segments

__all__ = [
    "ErrorPolicy",
    "FingerprintMismatch",
    "LoaderSpec",
    "ShardCorrupt",
    "ShardLoader",
    "ShardSet",
    "Tokenize",
    "check_shard_features",
    "epoch_segments",
    "iter_shard_texts",
    "prepare_sample",
]
