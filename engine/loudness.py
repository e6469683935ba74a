"""Every take at one loudness, so that a blind vote hears the music and not the level.

`normalise(audio (N, C, samples), sample_rate)`: each clip is measured with ITU-R BS.1770-4 integrated loudness
(pyloudnorm: K-weighting, 400 ms blocks, absolute and relative gates), brought to TARGET_LUFS, then limited so no
sample passes PEAK_CEILING (a look-ahead limiter: the gain falls smoothly before a peak and recovers after it). The
limiter lowers the loudness of peaky clips a little, so the gain is measured again and corrected, at most
PASSES times; `tests/test_loudness.py` checks every written take lands within ±1 LU of the target.

Silence stays silence (its loudness is −∞: no gain), and clips shorter than one 400 ms block are measured by their
mean square with the same K-weighting (BS.1770 needs one block).
"""
from __future__ import annotations

import numpy as np

TARGET_LUFS = -14.0  # streaming services' level (Spotify, YouTube); audiocraft's `audio_write(strategy="loudness")`
# uses the same idea at −14 LUFS
PEAK_CEILING = 10 ** (-1.0 / 20)  # −1 dBFS: room for a lossy encoder's overshoot (OGG downloads)
PASSES = 3  # measure → gain → limit, repeated while the loudness is off by more than TOLERANCE_LU
TOLERANCE_LU = 0.3
SILENCE_LUFS = -70.0  # BS.1770's absolute gate: quieter than this is silence
HOLD_S = 0.02  # the limiter's gain is at its lowest from 20 ms before a peak to 20 ms after
SMOOTH_S = 0.005  # … and moves smoothly over ±5 ms


def preload() -> None:
    """Import the measuring and limiting code now (scipy's filters: about half a second), not in a listener's wait."""
    import pyloudnorm  # noqa: F401, PLC0415
    from scipy.ndimage import minimum_filter1d  # noqa: F401, PLC0415


def loudness(clip: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness (LUFS) of one clip (C, samples); −inf for silence."""
    import pyloudnorm  # noqa: PLC0415 (scipy's filters: loaded on first use)

    meter = pyloudnorm.Meter(sample_rate)
    data = np.ascontiguousarray(clip.T, dtype=np.float64)
    if data.shape[0] < int(meter.block_size * sample_rate):  # shorter than one block: pad with itself
        reps = int(np.ceil(meter.block_size * sample_rate / max(1, data.shape[0]))) + 1
        data = np.tile(data, (reps, 1))
    with np.errstate(divide="ignore"):
        value = meter.integrated_loudness(data)
    return float(value) if np.isfinite(value) and value > SILENCE_LUFS else -np.inf


def limit(clip: np.ndarray, sample_rate: int, ceiling: float = PEAK_CEILING) -> np.ndarray:
    """A look-ahead peak limiter: (C, samples) with no |sample| above `ceiling`, the same gain on every channel.

    The gain each sample needs is held at its minimum for HOLD_S either side (so it falls before a peak and recovers
    after it), then smoothed over ±SMOOTH_S: every sample's gain is then an average of values no larger than what it
    needs itself, so the ceiling holds exactly and the gain has no steps (no clicks)."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d  # noqa: PLC0415

    peak = np.abs(clip).max(axis=0)
    if peak.max(initial=0.0) <= ceiling:
        return clip
    need = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))
    hold, smooth = max(1, int(HOLD_S * sample_rate)), max(1, int(SMOOTH_S * sample_rate))
    gain = minimum_filter1d(need, 2 * hold + 1, mode="nearest")
    for _ in range(2):  # two moving averages of ±smooth / 2: a triangular window of ±smooth, no steps left
        gain = uniform_filter1d(gain, smooth + 1, mode="nearest")
    return clip * np.minimum(gain, need)[None, :]  # `minimum`: float rounding never lets a peak through


def normalise(audio: np.ndarray, sample_rate: int, target: float = TARGET_LUFS) -> np.ndarray:
    """(N, C, samples) -> the same clips at `target` LUFS (±TOLERANCE_LU where the limiter allows), peaks ≤ −1 dBFS."""
    if audio.ndim != 3:
        raise ValueError(f"audio must be (clips, channels, samples), got {audio.shape}")
    return np.stack([_one(clip, sample_rate, target) for clip in audio]).astype(np.float32)


def _one(clip: np.ndarray, sample_rate: int, target: float) -> np.ndarray:
    level = loudness(clip, sample_rate)
    if not np.isfinite(level):
        return np.zeros_like(clip)  # silence (or nearly): nothing to bring up
    out = clip
    gain_db = 0.0
    for _ in range(PASSES):
        gain_db += target - level
        out = limit(clip * 10 ** (gain_db / 20), sample_rate)
        level = loudness(out, sample_rate)
        if abs(level - target) <= TOLERANCE_LU:
            break
    return out
