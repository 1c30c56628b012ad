"""Build-time audio views with audiomentations, seeded per (seed, sample key).

Each view is a chain of ``AugmentConfig.audio_chain_len`` distinct transforms drawn from
``AugmentConfig.audio_transforms``. CPU cost per 3 s clip at 16 kHz, one thread, measured here
(bench/augment.py has the end-to-end numbers):

=================  =====================================================================  ======
name               what                                                                    ms
=================  =====================================================================  ======
``gain``           audiomentations ``Gain``, -9..+6 dB                                     0.3
``noise``          another clip of the corpus (``noise_pool`` or ``cfg.noise_dirs``)        0.2
                   at 5..25 dB SNR; off without a pool (white noise is a shortcut real
                   data never shows)
``speed``          speed perturbation 0.9..1.1 (pitch and tempo, soxr resampling),         0.4
                   cropped/padded to the original length
``band_pass``      a band-pass of 2-4 pre-warped second-order sections, 300..3000 Hz       0.4
                   centre, drawn like audiomentations' ``BandPassFilter``
``room``           a room impulse response from a bank of 16 rooms simulated once per      0.6
                   process by audiomentations ``RoomSimulator`` (pyroomacoustics), then
                   convolved (:func:`reverberate`); simulating a room per clip costs 10-30 ms
``pitch_shift``    audiomentations ``PitchShift`` ±3 semitones (signalsmith)               9.3
``time_stretch``   audiomentations ``TimeStretch`` 0.85..1.15, length kept                 8.2
``mp3``            MP3 round trip through libsndfile (bundled with soundfile;              17
                   audiomentations' ``Mp3Compression`` needs lameenc/fast-mp3-augment)
=================  =====================================================================  ======

The default set is the cheap five; ``pitch_shift``, ``time_stretch`` and ``mp3`` are opt-in
because each costs more than decoding and featurizing the clip itself.

The chain and every drawn parameter are returned with the view, ready for the sample's
``json`` (``augment`` field); the builder stores each view as its own sample whose ``group`` is
the original's, so the loss never treats them as negatives of each other. Every view is scaled
back under 0.99 peak (recorded as a ``peak_limit`` step) to stay in the normalized range.

audiomentations draws from the global ``random``/``numpy.random``; :func:`text.seeded` seeds and
restores them, so views depend only on (seed, key, view index, wave).
"""

from __future__ import annotations

import functools
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dataprep.augment.text import _seed_int, seeded

log = logging.getLogger(__name__)

TRANSFORMS = ("gain", "noise", "speed", "band_pass", "room", "pitch_shift", "time_stretch", "mp3")
N_ROOMS = 16
_AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3"}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return round(float(v), 4)
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str) or v is None:
        return v
    if isinstance(v, (list, tuple, np.ndarray)):
        arr = list(v)
        return [_jsonable(x) for x in arr] if len(arr) <= 8 else f"<{len(arr)} values>"
    return str(v)


def load_noise_pool(
    dirs: tuple[str, ...], sample_rate_hz: int, max_files: int = 64
) -> list[np.ndarray]:
    """Mono float32 clips at ``sample_rate_hz`` from audio files (or folders of them), sorted."""
    import soundfile as sf

    pool: list[np.ndarray] = []
    files: list[Path] = []
    for d in map(Path, dirs):
        found = [d] if d.is_file() else d.rglob("*")
        files.extend(p for p in found if p.suffix.lower() in _AUDIO_EXT and p.is_file())
    files = sorted(set(files))
    for path in files[:max_files]:
        try:
            wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:  # a broken file: skip it
            log.warning("noise pool: skipping %s (%s)", path, e)
            continue
        mono = wave.mean(axis=1)
        if sr != sample_rate_hz:
            # The one resampler (soxr HQ, what librosa.resample's default soxr_hq also ran).
            from dataprep.core.waveform import resample

            mono = resample(mono, sr, sample_rate_hz)
        if np.isfinite(mono).all() and np.abs(mono).max() > 1e-4:
            pool.append(mono)
    log.info("noise pool: %d clips from %s", len(pool), list(dirs))
    return pool


@functools.lru_cache(maxsize=4)
def room_bank(seed: int, sample_rate_hz: int) -> list[tuple[np.ndarray, dict]]:
    """Impulse responses of N_ROOMS rooms drawn from ``seed``, simulated once per process."""
    import audiomentations as am

    sim = am.RoomSimulator(max_order=3, use_ray_tracing=False, leave_length_unchanged=False, p=1.0)
    impulse = np.zeros(sample_rate_hz // 50, dtype=np.float32)
    impulse[0] = 1.0
    rooms = []
    for i in range(N_ROOMS):
        with seeded(_seed_int(seed, "room", i)):
            rir = np.asarray(sim(samples=impulse, sample_rate=sample_rate_hz), dtype=np.float32)
        kept = ("size_x", "size_y", "size_z", "absorption_coefficient", "target_rt60")
        keep = {k: _jsonable(v) for k, v in sorted(sim.parameters.items()) if k in kept}
        rir.setflags(write=False)  # shared between augmenters of this process
        rooms.append((rir / (np.abs(rir).max() + 1e-9), keep))
    return rooms


_OLA_NFFT = 4096  # FFT size of the room convolution's blocks; > 2x the longest bank RIR


@functools.lru_cache(maxsize=4 * N_ROOMS)
def _rir_spectrum(seed: int, sample_rate_hz: int, idx: int) -> np.ndarray:
    """The rfft of bank room ``idx``'s impulse response at :data:`_OLA_NFFT` points."""
    from scipy import fft

    spec = fft.rfft(room_bank(seed, sample_rate_hz)[idx][0], _OLA_NFFT)
    spec.setflags(write=False)
    return spec


def reverberate(wave: np.ndarray, rir: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """``wave`` convolved with ``rir`` (``spectrum``: its rfft at :data:`_OLA_NFFT`), cut to
    ``len(wave)``: overlap-add of blocks of ``_OLA_NFFT - len(rir) + 1`` samples, all blocks in
    one batched FFT. scipy's ``oaconvolve`` does the same block by block and transforms the
    RIR on every call: ~2x slower for a 2-3 s clip (0.6 vs 1.5 ms here), equal to float32
    rounding (tests/dataprep/test_augment_audio.py)."""
    from scipy import fft

    tail = len(rir) - 1
    step = _OLA_NFFT - tail
    if tail >= step:
        raise ValueError(f"impulse response of {len(rir)} samples too long for {_OLA_NFFT}")
    n_blocks = -(-len(wave) // step)
    blocks = np.zeros((n_blocks, step), dtype=np.float32)
    blocks.reshape(-1)[: len(wave)] = wave
    wet = fft.irfft(fft.rfft(blocks, _OLA_NFFT, axis=1) * spectrum, _OLA_NFFT, axis=1)
    out = np.zeros((n_blocks + 1, step), dtype=np.float32)
    out[:n_blocks] = wet[:, :step]
    out[1:, :tail] += wet[:, step:]  # each block's reverberant tail rings into the next
    return out.reshape(-1)[: len(wave)]


class AudioAugmenter:
    """``views(wave, key)`` -> ``[(wave, chain), ...]``; see the module docstring."""

    def __init__(
        self,
        cfg: Any,
        sample_rate_hz: int,
        noise_pool: list[np.ndarray] | None = None,
    ) -> None:
        unknown = [t for t in cfg.audio_transforms if t not in TRANSFORMS]
        if unknown:
            raise ValueError(f"unknown audio transforms {unknown}; known: {list(TRANSFORMS)}")
        self.cfg = cfg
        self.sr = sample_rate_hz
        if noise_pool is None and cfg.noise_dirs:
            noise_pool = load_noise_pool(tuple(cfg.noise_dirs), sample_rate_hz)
        self.noise_pool = [np.asarray(n, dtype=np.float32) for n in (noise_pool or []) if len(n)]
        names = list(cfg.audio_transforms)
        if "noise" in names and not self.noise_pool:
            log.info("audio views: no noise pool (noise_dirs empty), 'noise' transform disabled")
            names.remove("noise")
        self.names = tuple(names)
        self._built: dict[str, Any] = {}

    # -- transforms -------------------------------------------------------------------------
    def _am(self, name: str) -> Any:
        if name not in self._built:
            import audiomentations as am

            self._built[name] = {
                "gain": lambda: am.Gain(min_gain_db=-9.0, max_gain_db=6.0, p=1.0),
                "pitch_shift": lambda: am.PitchShift(min_semitones=-3.0, max_semitones=3.0, p=1.0),
                "time_stretch": lambda: am.TimeStretch(
                    min_rate=0.85, max_rate=1.15, leave_length_unchanged=True, p=1.0
                ),
            }[name]()
        return self._built[name]

    def _noise(self, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        idx = int(rng.integers(len(self.noise_pool)))
        noise = self.noise_pool[idx]
        reps = int(np.ceil(len(wave) / len(noise)))
        noise = np.tile(noise, reps) if reps > 1 else noise
        start = int(rng.integers(0, len(noise) - len(wave) + 1))
        noise = noise[start : start + len(wave)]
        snr_db = float(rng.uniform(5.0, 25.0))
        sig = float(np.sqrt(np.mean(wave**2)) + 1e-9)
        nz = float(np.sqrt(np.mean(noise**2)) + 1e-9)
        out = wave + noise * (sig / nz) / (10 ** (snr_db / 20))
        return out.astype(np.float32), {"pool_index": idx, "snr_db": round(snr_db, 2)}

    def _speed(self, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        from fractions import Fraction

        import soxr

        rate = Fraction(float(rng.uniform(0.9, 1.1))).limit_denominator(40)
        # Played `rate` times faster: fewer samples, pitch and tempo up together. soxr (the
        # build's resampler) at the rational ratio: ~0.55x scipy's resample_poly, which
        # designed a new polyphase filter on every call.
        out = soxr.resample(wave, rate.numerator, rate.denominator, quality="HQ")
        if len(out) >= len(wave):
            start = int(rng.integers(0, len(out) - len(wave) + 1))
            out = out[start : start + len(wave)]
        else:
            out = np.pad(out, (0, len(wave) - len(out)))
        return out.astype(np.float32, copy=False), {"rate": round(float(rate), 4)}

    def _band_pass(self, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """A random band-pass, drawn as audiomentations' ``BandPassFilter`` draws it (centre
        mel-uniform in 300-3000 Hz, bandwidth 0.5-1.99 x centre, band edges centre -/+ half
        of it, 12/18/24 dB per octave), made of N identical second-order band-pass sections:
        the bilinear transform of ``B s / (s^2 + B s + W^2)`` with the edges pre-warped, ``W``
        their geometric centre and ``B`` set so the cascade is -3 dB at both edges. Its
        closed-form design costs microseconds; scipy's ``butter`` under audiomentations took
        ~0.6 ms and ``sosfilt_zi`` ~0.15 ms per call, more than the filtering itself."""
        from scipy.signal import sosfilt

        lo_mel, hi_mel = (2595.0 * np.log10(1.0 + f / 700.0) for f in (300.0, 3000.0))
        centre = 700.0 * (10.0 ** (float(rng.uniform(lo_mel, hi_mel)) / 2595.0) - 1.0)
        bandwidth = centre * float(rng.uniform(0.5, 1.99))
        order = int(rng.integers(2, 5))  # sections: 6 dB per octave each side per section
        nyquist = self.sr / 2
        lo, hi = max(centre - bandwidth / 2, 1.0), min(centre + bandwidth / 2, 0.95 * nyquist)
        w_lo, w_hi = np.tan(np.pi * lo / self.sr), np.tan(np.pi * hi / self.sr)
        w2 = w_lo * w_hi
        b = (w_hi - w_lo) / np.sqrt(2.0 ** (1.0 / order) - 1.0)
        a0 = 1.0 + b + w2
        section = [b / a0, 0.0, -b / a0, 1.0, 2.0 * (w2 - 1.0) / a0, (1.0 - b + w2) / a0]
        sos = np.tile(np.array(section, dtype=np.float32), (order, 1))
        # The state of a filter that has seen wave[0] forever (a band-pass passes no DC, so
        # every section after the first rests at zero): no click at the start.
        zi = np.zeros((order, 2), dtype=np.float32)
        zi[0] = (-sos[0, 0] * wave[0], sos[0, 2] * wave[0])
        out, _ = sosfilt(sos, wave, zi=zi)
        params = {"center_freq": round(centre, 1), "bandwidth": round(bandwidth, 1),
                  "rolloff": 6 * order}  # fmt: skip
        return out.astype(np.float32, copy=False), params

    def _room_bank(self) -> list[tuple[np.ndarray, dict]]:
        return room_bank(self.cfg.seed, self.sr)

    def _room(self, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        idx = int(rng.integers(N_ROOMS))
        rir, params = self._room_bank()[idx]
        out = reverberate(wave, rir, _rir_spectrum(self.cfg.seed, self.sr, idx))
        # Keep the loudness of the dry clip: the builder normalized it already.
        rms_in = float(np.sqrt(np.mean(wave**2)) + 1e-9)
        rms_out = float(np.sqrt(np.mean(out**2)) + 1e-9)
        return (out * (rms_in / rms_out)).astype(np.float32), {"room": idx, **params}

    def _mp3(self, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        import soundfile as sf

        # libsndfile's compression_level: 0 = best quality/highest bitrate, 1 = lowest.
        level = float(rng.uniform(0.3, 0.95))
        buf = io.BytesIO()
        sf.write(buf, np.clip(wave, -1, 1), self.sr, format="MP3", subtype="MPEG_LAYER_III",
                 compression_level=level)  # fmt: skip
        buf.seek(0)
        out, _ = sf.read(buf, dtype="float32")
        out = out[: len(wave)]
        if len(out) < len(wave):  # the decoder may return a few samples fewer
            out = np.pad(out, (0, len(wave) - len(out)))
        return out.astype(np.float32), {"compression_level": round(level, 3)}

    def _apply(self, name: str, wave: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
        rng = np.random.default_rng(seed)
        if name == "noise":
            return self._noise(wave, rng)
        if name == "mp3":
            return self._mp3(wave, rng)
        if name == "speed":
            return self._speed(wave, rng)
        if name == "room":
            return self._room(wave, rng)
        if name == "band_pass":
            return self._band_pass(wave, rng)
        t = self._am(name)
        with seeded(seed):
            out = t(samples=wave, sample_rate=self.sr)
        params = {k: _jsonable(v) for k, v in sorted(t.parameters.items()) if k != "should_apply"}
        return np.asarray(out, dtype=np.float32), params

    # -- public -----------------------------------------------------------------------------
    def views(self, wave: np.ndarray, key: str) -> list[tuple[np.ndarray, list[dict]]]:
        """``cfg.audio_views`` augmented copies of ``wave`` with their transform chains."""
        if self.cfg.audio_views <= 0 or not self.names or len(wave) == 0:
            return []
        wave = np.asarray(wave, dtype=np.float32)
        with seeded(None):  # the caller's global RNG streams saved and restored once
            return self._views(wave, key)

    def _views(self, wave: np.ndarray, key: str) -> list[tuple[np.ndarray, list[dict]]]:
        out = []
        for v in range(self.cfg.audio_views):
            rng = np.random.default_rng(_seed_int(self.cfg.seed, key, "view", v))
            k = min(max(1, self.cfg.audio_chain_len), len(self.names))
            chain_names = [
                self.names[i] for i in rng.choice(len(self.names), size=k, replace=False)
            ]
            cur = wave
            chain: list[dict] = []
            for step, name in enumerate(chain_names):
                seed = _seed_int(self.cfg.seed, key, "view", v, step, name)
                try:
                    cur, params = self._apply(name, cur, seed)
                except Exception:  # one bad transform drops the step, not the sample
                    log.warning("audio view %s/%d: %s failed", key, v, name, exc_info=True)
                    continue
                chain.append({"transform": name, **params})
            if not chain:
                continue
            cur = np.asarray(cur, dtype=np.float32)
            if not np.isfinite(cur).all():
                cur = np.nan_to_num(cur, nan=0.0, posinf=0.0, neginf=0.0)
            peak = float(max(cur.max(), -cur.min())) if len(cur) else 0.0
            if peak > 0.99:  # keep the view inside the normalized range the builder promises
                cur = cur * np.float32(0.99 / peak)
                chain.append({"transform": "peak_limit", "scale": round(0.99 / peak, 4)})
            out.append((cur, chain))
        return out
