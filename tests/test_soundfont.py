"""nano through a General MIDI SoundFont: stereo, 32 kHz, every instrument mapped, degradations audible, and every
take a listener gets at one loudness."""
import numpy as np
import pytest
import soundfile as sf
import torch

from engine import loudness
from engine import score_codec as sc
from engine import soundfont as sfm
from engine.model import load_model
from engine.score_codec import ScoreCodec
from engine.service import MusicService, Request
from engine.shipped import NANO
from engine.studio import Studio
from engine.studio.startup import sound_mismatch, trained_renderer
from training.corpus import generate_piece


@pytest.fixture(scope="module")
def codec():
    return ScoreCodec(renderer="soundfont")


def _codes(n: int = 3, frames: int = 128) -> torch.Tensor:
    return torch.as_tensor(np.stack([generate_piece(0, i, frames).codes for i in range(n)]).astype(np.int64))


def test_every_nano_instrument_kit_and_drum_voice_has_a_general_midi_sound():
    instruments = {*sc.LEAD_INSTRUMENTS, *sc.BASS_INSTRUMENTS, *sc.CHORD_INSTRUMENTS}
    assert instruments <= set(sfm.GM_PROGRAMS) and all(0 <= p < 128 for p in sfm.GM_PROGRAMS.values())
    assert set(sc.DRUM_KITS) == set(sfm.KIT_PROGRAMS) and set(sc.DRUM_VOICES) == set(sfm.DRUM_NOTES)
    assert set(sfm.PAN) == set(sc.STREAMS) and all(-1 <= p <= 1 for p in sfm.PAN.values())


def test_soundfont_takes_are_stereo_32_khz_deterministic_and_placed_apart(codec):
    codes = _codes()
    a = codec.decode(codes, keep_channels=True)
    assert codec.sample_rate == 32000 and codec.channels == 2
    assert a.shape == (3, 2, 128 * sfm.HOP) and torch.isfinite(a).all() and a.abs().max() > 0.01
    assert torch.equal(a, codec.decode(codes, keep_channels=True))  # the same codes, the same samples
    assert not torch.allclose(a[:, 0], a[:, 1], atol=1e-3)  # a stereo image, not two copies
    assert torch.allclose(codec.decode(codes), a.mean(dim=1))  # plain decode: the channels' mean


def test_silence_is_silent_and_a_noise_frame_is_heard(codec):
    rest = torch.full((1, 4, 64), sc.REST)
    assert codec.decode(rest, keep_channels=True).abs().max() == 0
    noisy = rest.clone()
    noisy[0, 0, 10:12] = sc.NOISE
    audio = codec.decode(noisy, keep_channels=True)[0]
    burst = audio[:, 10 * sfm.HOP:12 * sfm.HOP]
    assert burst.abs().max() > 0.1 and audio[:, :9 * sfm.HOP].abs().max() < 1e-6  # (the FFT reverb: 1e-9)


def test_a_missing_or_wrong_soundfont_is_named():
    with pytest.raises(FileNotFoundError, match="nope.sf2: no SoundFont"):
        sfm.find_soundfont("nope.sf2")
    with pytest.raises(ValueError, match="not a SoundFont"):
        sfm.find_soundfont(__file__)
    with pytest.raises(ValueError, match="renderer must be one of"):
        ScoreCodec(renderer="fm")
    assert sfm.find_soundfont().path.is_file()  # pip brings one (TimGM6mb, inside pretty_midi)


def test_loudness_normalisation_brings_every_clip_to_the_target_under_the_ceiling():
    rng = np.random.default_rng(0)
    t = np.arange(32000 * 3) / 32000
    clips = np.stack([np.stack([g * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(t))] * 2) for g in (0.01, 0.3, 0.9)])
    clips[1, :, ::4000] = 0.99  # peaks the limiter has to hold down
    clips = (clips + 0.001 * rng.standard_normal(clips.shape)).astype(np.float32)
    out = loudness.normalise(clips, 32000)
    levels = [loudness.loudness(c, 32000) for c in out]
    assert all(abs(v - loudness.TARGET_LUFS) <= 1.0 for v in levels), levels
    assert np.abs(out).max() <= loudness.PEAK_CEILING + 1e-6
    silent = loudness.normalise(np.zeros((1, 2, 32000), np.float32), 32000)
    assert not silent.any()
    short = loudness.normalise(clips[:, :, :3000], 32000)  # shorter than one 400 ms block
    assert all(abs(loudness.loudness(c, 32000) - loudness.TARGET_LUFS) <= 1.0 for c in short)
    with pytest.raises(ValueError, match="clips, channels, samples"):
        loudness.normalise(clips[0], 32000)


def test_every_written_take_is_stereo_32_khz_at_the_target_loudness(tmp_path):
    service, _ = MusicService.from_sources(NANO, renderer="soundfont")
    studio = Studio(service, out_dir=tmp_path)
    r = studio.generate("upbeat funk with slap bass", 4, 2.0, "3", 1.0, "q-d", 0.5, True, 3.0, "", 0.0, 0.0)
    wavs = [f for f in r.files if f.endswith(".wav")]
    assert len(wavs) == 8
    for wav in wavs:
        audio, rate = sf.read(wav, always_2d=True)
        assert rate == 32000 and audio.shape[1] == 2
        assert abs(loudness.loudness(audio.T, rate) - loudness.TARGET_LUFS) <= 1.0, wav


def test_the_synthesiser_stays_available_and_unchanged_for_the_shipped_figures():
    model = load_model(NANO)
    assert model.codec.renderer == "synth" and model.sample_rate == 16000
    service, _ = MusicService.from_sources(NANO, renderer="synth")
    gen = service.generate_base(Request("calm piano", num_clips=1, duration_s=1.0, seed=0))
    assert gen.audio.shape == (1, 1, 16000)


def test_the_page_warns_when_a_scorer_heard_other_takes_than_these(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.json").write_text('{"config": {}}')  # a run from before the SoundFont: the synthesiser's takes
    new = tmp_path / "new"
    new.mkdir()
    (new / "model.json").write_text('{"config": {}, "renderer": "soundfont"}')
    assert trained_renderer(str(old)) == "synth" and trained_renderer(str(new)) == "soundfont"
    assert trained_renderer(str(tmp_path / "none")) is None and trained_renderer(None) is None
    warnings = sound_mismatch(ScoreCodec(renderer="soundfont"), {"E": str(old), "the quality scorer": str(new)})
    assert len(warnings) == 1 and warnings[0].startswith("E was trained on takes played by the synth renderer")
    assert sound_mismatch(ScoreCodec(), {"E": str(old)}) == []
    assert sound_mismatch(object(), {"E": str(new)}) == []  # a real MusicGen's EnCodec: nothing to compare
