"""Exact and near-duplicate detection, and decontamination against evaluation corpora.

* Exact: :func:`pcm_sha1`, the sha1 of the normalized float32 PCM (a sample's ``audio_sha1``).
  Byte-identical copies and lossless re-encodes (WAV -> FLAC) of the same audio collide.
* Near: :func:`audio_fingerprint`, a Haitsma-Kalker style binary fingerprint: one 32-bit word
  per 80 ms hop whose bits are the signs of the time-difference of the energy-difference of 33
  mel bands between 300 and 3000 Hz, taken from the power mel of the default log-mel features
  (:func:`mel_fingerprint`: a build on those features reuses its own mel, no second FFT).
  Signs of energy differences do not change with gain; the analysis runs at 16 kHz whatever
  the input rate; lossy codecs flip a few bits only. 10 s of audio is 122 words.
  :func:`fingerprint_similarity` is the best bit agreement over small time shifts (1.0 =
  identical, ~0.5 for unrelated audio).
* :class:`DedupIndex` answers "which earlier item is this a copy of" in feeding order, so a
  build fed in key order makes the same decisions every time. Near-duplicate candidates come
  from shared 32-bit words or 16-bit half-words (most survive re-encoding), verified by
  full similarity. For decontamination, add the evaluation clips first, then :meth:`query`.
* :class:`TextDedupIndex`: near-duplicate texts by MinHash-LSH over character 5-grams.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from dataprep.core.config import AudioConfig, CorpusConfig, FeatureConfig
from dataprep.core.features import LogMel
from dataprep.core.sample import Reject, SampleRef, ref_source, sample_key
from dataprep.core.waveform import resample

FP_HOP_FRAMES = 8  # one word per 80 ms (8 mel frames of 10 ms)
FP_WINDOW_FRAMES = 25  # each word's band energies summed over 250 ms of mel frames
FP_BANDS = 33  # 33 band energies -> 32 difference bits per frame
FP_F_MIN_HZ = 300.0
FP_F_MAX_HZ = 3000.0
FP_GATE_DB = -40.0  # frames this far below the loudest one carry no bits
FP_MAX_SHIFT = 4  # frames (320 ms) of misalignment tolerated by the similarity
# The fingerprint's analysis is the power mel of the default log-mel features: 16 kHz, 25-ms
# windows every 10 ms, 64 HTK bands to 8 kHz, of which exactly 33 are centred in 300-3000 Hz.
# A build on these features fingerprints the mel it computes anyway (no second FFT); any other
# feature config gets the same fingerprint from audio_fingerprint(), so fingerprints never
# depend on the features a build chose.
FP_MEL = FeatureConfig(
    preset="logmel", sample_rate_hz=16000, n_fft=400, win_length=400, hop_length=160,
    n_mels=64, f_min_hz=0.0, f_max_hz=8000.0, mel_scale="htk",
)  # fmt: skip
_MEL_FIELDS = ("preset", "sample_rate_hz", "n_fft", "win_length", "hop_length", "n_mels")
_MEL_FIELDS += ("f_min_hz", "f_max_hz", "mel_scale")


def pcm_sha1(wave: np.ndarray) -> str:
    """sha1 of the float32 little-endian PCM bytes."""
    return hashlib.sha1(np.ascontiguousarray(wave, dtype="<f4").data).hexdigest()


def shares_fingerprint_mel(cfg: FeatureConfig) -> bool:
    """Whether the featurizer of ``cfg`` computes :data:`FP_MEL`'s power mel (``LogMel.power``),
    so :func:`mel_fingerprint` of it is :func:`audio_fingerprint` of the same audio."""
    return all(getattr(cfg, k) == getattr(FP_MEL, k) for k in _MEL_FIELDS)


@functools.lru_cache(maxsize=1)
def _fp_bands() -> slice:
    """The FP_MEL bands centred in [FP_F_MIN_HZ, FP_F_MAX_HZ] (HTK mel scale)."""
    top = 2595.0 * np.log10(1.0 + FP_MEL.f_max_hz / 700.0)
    centres = 700.0 * (10.0 ** (np.linspace(0.0, top, FP_MEL.n_mels + 2)[1:-1] / 2595.0) - 1.0)
    inside = np.flatnonzero((centres >= FP_F_MIN_HZ) & (centres <= FP_F_MAX_HZ))
    assert inside.size == FP_BANDS, inside.size
    return slice(int(inside[0]), int(inside[-1]) + 1)


@functools.lru_cache(maxsize=1)
def _fp_featurizer() -> LogMel:
    return LogMel(FP_MEL)


def audio_fingerprint(wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """uint32 array, one word per 80 ms hop (empty for audio shorter than ~0.33 s): the
    :func:`mel_fingerprint` of ``wave``'s FP_MEL power mel (resampled to 16 kHz first)."""
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    if sample_rate_hz != FP_MEL.sample_rate_hz:
        x = resample(x, sample_rate_hz, FP_MEL.sample_rate_hz)
    return mel_fingerprint(_fp_featurizer().power(x))


def mel_fingerprint(power_mel: np.ndarray) -> np.ndarray:
    """The fingerprint words of an FP_MEL power mel ``[64, frames]``.

    Each word: the band energies of 33 mel bands (300-3000 Hz) summed over a 250-ms window,
    the sign of the time difference of their band-to-band differences (32 bits). Signs of
    energy differences do not change with gain; lossy codecs flip a few bits only.
    """
    bands = np.asarray(power_mel, dtype=np.float32)[_fp_bands()]
    t = bands.shape[1]
    if t < FP_WINDOW_FRAMES + FP_HOP_FRAMES:
        return np.zeros(0, dtype=np.uint32)
    # Window sums from one cumulative sum: [33, n] energies every FP_HOP_FRAMES frames.
    csum = np.concatenate([np.zeros((FP_BANDS, 1)), np.cumsum(bands, axis=1, dtype=np.float64)], 1)
    starts = np.arange(0, t - FP_WINDOW_FRAMES + 1, FP_HOP_FRAMES)
    energy = (csum[:, starts + FP_WINDOW_FRAMES] - csum[:, starts]).T  # [n, 33]
    band_diff = energy[:, :-1] - energy[:, 1:]  # [n, 32]
    bits = (band_diff[1:] - band_diff[:-1]) > 0  # [n-1, 32]
    packed = np.ascontiguousarray(np.packbits(bits, axis=1, bitorder="little"))
    words = packed.view("<u4")[:, 0].astype(np.uint32)
    # Bits of near-silent frames are codec noise (or all zero in digital silence, which made
    # unrelated sparse clips look alike): mask them as word 0 = "unknown".
    total = energy.sum(axis=1)
    peak = float(total.max())
    loud = total >= peak * 10.0 ** (FP_GATE_DB / 10.0) if peak > 0 else np.zeros(len(total), bool)
    words[~(loud[1:] & loud[:-1])] = 0
    return words


FP_HEX_DTYPE = "<u4"


def fingerprint_to_hex(fp: np.ndarray) -> str:
    """The stored form of a fingerprint (a sample's ``audio_fp``, the part records): the
    little-endian uint32 words as hex, then ``:<u4``."""
    return np.asarray(fp, dtype=FP_HEX_DTYPE).tobytes().hex() + f":{FP_HEX_DTYPE}"


def fingerprint_from_hex(text: str) -> np.ndarray | None:
    """The fingerprint of :func:`fingerprint_to_hex`'s text (the ``:<dtype>`` suffix is
    optional); None for ``""``, the ``audio_fp`` of a sample without one (an augmented view)."""
    if not text:
        return None
    hexpart, _, dtype = text.partition(":")
    return np.frombuffer(bytes.fromhex(hexpart), dtype=np.dtype(dtype or FP_HEX_DTYPE)).astype(
        np.uint32
    )


def _as_fp(fp: np.ndarray | list[int] | str) -> np.ndarray:
    if isinstance(fp, str):
        arr = fingerprint_from_hex(fp)
        return np.zeros(0, dtype=np.uint32) if arr is None else arr
    return np.asarray(fp, dtype=np.uint32)


def fingerprint_similarity(
    a: np.ndarray | list[int] | str, b: np.ndarray | list[int] | str, max_shift: int = FP_MAX_SHIFT
) -> float:
    """Best share of equal bits over shifts of up to ``max_shift`` frames (1.0 = identical).

    The overlap must cover at least half of the shorter fingerprint; too-short inputs give 0.
    """
    fa, fb = _as_fp(a), _as_fp(b)
    if fa.size == 0 or fb.size == 0:
        return 0.0
    shorter = min(fa.size, fb.size)
    best = 0.0
    for shift in range(-max_shift, max_shift + 1):
        xa = fa[max(0, shift) :]
        xb = fb[max(0, -shift) :]
        m = min(xa.size, xb.size)
        if m == 0 or m * 2 < shorter:
            continue
        xa, xb = xa[:m], xb[:m]
        va, vb = xa != 0, xb != 0
        both = va & vb
        one = int(np.count_nonzero(va ^ vb))
        if not both.any():
            continue
        # Masked words are unknown bits: a word known on one side only counts as a coin flip.
        diff = int(np.bitwise_count(np.bitwise_xor(xa[both], xb[both])).sum())
        agree = 32.0 * int(both.sum()) - diff + 16.0 * one
        best = max(best, agree / (32.0 * (int(both.sum()) + one)))
    return best


def _lookup_keys(fp: np.ndarray) -> list[int]:
    """Index keys of a fingerprint: each known word whole, and each of its 16-bit halves.

    A lossy re-encode flips a few bits per word; a half-word survives far more often than the
    whole word, so halves find copies whose every word took a flip somewhere.
    """
    words = np.unique(fp[fp != 0]).astype(np.uint64)
    if words.size == 0:
        return []
    whole = words
    lo = (np.uint64(1) << np.uint64(32)) | (words & np.uint64(0xFFFF))
    hi = (np.uint64(2) << np.uint64(32)) | (words >> np.uint64(16))
    return np.unique(np.concatenate([whole, lo, hi])).tolist()


@dataclass(frozen=True)
class Match:
    key: str  # the earlier (or eval) item this one duplicates
    kind: str  # "exact" | "near"
    similarity: float


class DedupIndex:
    """Exact (PCM sha1) + near (fingerprint) duplicate index; deterministic in feeding order.

    A duplicate is not added, so every copy points at the first item of its group.
    """

    def __init__(
        self,
        near_threshold: float = 0.85,
        exact: bool = True,
        near: bool = True,
        max_bucket: int = 64,
        max_candidates: int = 16,
    ) -> None:
        self.near_threshold = near_threshold
        self.exact = exact
        self.near = near
        self.max_bucket = max_bucket  # a key shared by many items says nothing; stop indexing it
        self.max_candidates = max_candidates
        self._by_sha: dict[str, str] = {}
        self._keys: list[str] = []
        self._fps: list[np.ndarray] = []
        self._buckets: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def match(
        self, pcm_sha1_hex: str | None, fingerprint: np.ndarray | list[int] | str | None
    ) -> Match | None:
        if self.exact and pcm_sha1_hex and pcm_sha1_hex in self._by_sha:
            return Match(self._by_sha[pcm_sha1_hex], "exact", 1.0)
        if not self.near or fingerprint is None:
            return None
        fp = _as_fp(fingerprint)
        if fp.size == 0:
            return None
        votes: dict[int, int] = {}
        for k in _lookup_keys(fp):
            for idx in self._buckets.get(k, ()):
                votes[idx] = votes.get(idx, 0) + 1
        # Verify the best-voted candidates only: bounded work per query however large the index.
        ranked = sorted(votes, key=lambda i: (-votes[i], i))[: self.max_candidates]
        best: Match | None = None
        for idx in ranked:
            sim = fingerprint_similarity(fp, self._fps[idx])
            if sim >= self.near_threshold and (best is None or sim > best.similarity):
                best = Match(self._keys[idx], "near", sim)
        return best

    def query(
        self, pcm_sha1_hex: str | None, fingerprint: np.ndarray | list[int] | str | None
    ) -> str | None:
        """Key of the indexed item this duplicates, without adding anything."""
        m = self.match(pcm_sha1_hex, fingerprint)
        return m.key if m else None

    def add(
        self, key: str, pcm_sha1_hex: str | None, fingerprint: np.ndarray | list[int] | str | None
    ) -> str | None:
        """Index ``key`` unless it duplicates an earlier item; return that item's key if so."""
        m = self.match(pcm_sha1_hex, fingerprint)
        if m is not None:
            # Later byte-identical copies of this duplicate then resolve exactly, to the same key.
            if self.exact and pcm_sha1_hex and pcm_sha1_hex not in self._by_sha:
                self._by_sha[pcm_sha1_hex] = m.key
            return m.key
        if pcm_sha1_hex:
            self._by_sha[pcm_sha1_hex] = key
        if fingerprint is not None and self.near:
            fp = _as_fp(fingerprint)
            idx = len(self._keys)
            self._keys.append(key)
            self._fps.append(fp)
            for k in _lookup_keys(fp):
                bucket = self._buckets.setdefault(k, [])
                if len(bucket) < self.max_bucket:
                    bucket.append(idx)
        return None


_WORD_RE = re.compile(r"\W+", re.UNICODE)


def text_shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the case-folded text with punctuation squeezed (script-agnostic)."""
    t = " ".join(_WORD_RE.sub(" ", text.casefold()).split())
    if len(t) <= n:
        return {t} if t else set()
    return {t[i : i + n] for i in range(len(t) - n + 1)}


class TextDedupIndex:
    """Near-duplicate texts (Jaccard of character 5-grams >= threshold), MinHash-LSH."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._shingles: dict[str, set[str]] = {}

    def _minhash(self, shingles: set[str]):
        from datasketch import MinHash

        mh = MinHash(num_perm=self.num_perm, seed=self.seed)
        for s in sorted(shingles):
            mh.update(s.encode("utf-8"))
        return mh

    def add(self, key: str, text: str) -> str | None:
        """Index ``key`` unless its text near-duplicates an earlier one; return that key if so."""
        sh = text_shingles(text)
        if not sh:
            return None
        mh = self._minhash(sh)
        best, best_j = None, 0.0
        for other in sorted(self._lsh.query(mh)):
            osh = self._shingles[other]
            j = len(sh & osh) / len(sh | osh)
            if j >= self.threshold and j > best_j:
                best, best_j = other, j
        if best is not None:
            return best
        self._lsh.insert(key, mh)
        self._shingles[key] = sh
        return None


EvalClip = tuple[str, str, np.ndarray]  # (segment key, pcm sha1, fingerprint)


def fingerprint_eval_corpus(
    corpus: CorpusConfig, audio_cfg: AudioConfig, sample_rate_hz: int
) -> tuple[list[EvalClip], list[Reject]]:
    """Decode one evaluation corpus: a clip per segment, in ``source_id`` order, and a reject for
    every item that could not be read (a reader reject, a decode error).

    An unreadable evaluation item cannot contaminate anything, but it is not silently skipped:
    the rejects say which clips the decontamination did not cover.
    """
    from dataprep.audio import load_segments
    from dataprep.corpora import read_corpus
    from dataprep.filters import decode_reject

    clips: list[EvalClip] = []
    rejects: list[Reject] = []
    refs = []
    for item in read_corpus(corpus):
        if isinstance(item, Reject):
            rejects.append(item)
        else:
            refs.append(item)
    for ref in sorted(refs, key=lambda r: r.source_id):
        try:
            segments = load_segments(ref, audio_cfg, sample_rate_hz)
        except Exception as err:  # noqa: BLE001 - one bad eval file must not stop the build
            rejects.append(decode_reject(ref, err))
            continue
        for seg in segments:
            key = sample_key(ref.corpus, ref.source_id, (seg.start_s, seg.end_s))
            clips.append((key, pcm_sha1(seg.wave), audio_fingerprint(seg.wave, sample_rate_hz)))
    return clips, rejects


def build_eval_index(clips: Iterable[EvalClip], near_threshold: float = 0.85) -> DedupIndex:
    """The decontamination index: every clip added in the given order (corpora in config order,
    each in ``source_id`` order), so the index is the same on every run."""
    index = DedupIndex(near_threshold=near_threshold)
    for key, pcm, fp in clips:
        index.add(key, pcm, fp)
    return index


def eval_overlap_reject(ref: SampleRef, match: Match) -> Reject:
    """The reject row for a training input that matches an evaluation clip."""
    return Reject(
        ref_source(ref),
        "dedup",
        "eval_overlap",
        f"{match.kind} match (similarity {match.similarity:.3f}) with eval item {match.key}",
        ref.corpus,
    )


def duplicate_reject(ref: SampleRef, original_key: str) -> Reject:
    """The reject row for an input whose audio an earlier sample of the same shard already has."""
    return Reject(
        ref_source(ref), "dedup", "duplicate", f"same audio as {original_key}", ref.corpus
    )
