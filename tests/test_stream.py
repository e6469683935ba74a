"""Audio while it is made (`engine.stream`, `engine.generate.FrameTap`): the frames the sampler hands out, the sound
made of them, the pace and the level of the stream."""
import io
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from engine import loudness, stream
from engine.generate import FrameTap, GenerationCancelled
from engine.model import build_debug_model
from engine.score_codec import ScoreCodec
from engine.service import MusicService, Request
from engine.stream import LiveTake, Renderer, StreamLevel
from tests.conftest import perturbed_state


def nano_like_service(fuse: bool = False) -> MusicService:
    """The tiny random decoder playing through nano's synthesiser: a window of 60 frames (1.875 s at nano's 32 frames
    per second), takes up to 4 s (longer than the window: continued window by window)."""
    model = build_debug_model(seed=0, max_positions=64)
    model.codec = ScoreCodec()
    svc = MusicService(model, max_duration_s=4.0, fuse=fuse)
    svc.add_checkpoint("q", perturbed_state(model, 1))
    svc.add_checkpoint("d", perturbed_state(model, 2))
    return svc


def tapped(svc: MusicService, req: Request, every: int = 3) -> tuple[list[torch.Tensor], list[torch.Tensor], object]:
    sent, finished = [], []
    g = svc.generate_merged(req, 0.5, tap=FrameTap(sent.append, every, finish=finished.append))
    return sent, finished, g


@pytest.mark.parametrize("seconds", [0.5, 2.5])  # one window; continued window by window
def test_a_tap_hands_out_growing_starts_of_the_first_take_and_changes_nothing(seconds):
    svc = nano_like_service()
    req = Request("rock", num_clips=3, duration_s=seconds, seed=5)
    sent, finished, g = tapped(svc, req)
    alone = svc.generate_merged(req, 0.5)
    assert torch.equal(g.codes, alone.codes)  # the tap draws no random numbers and changes no token
    assert len(finished) == 1 and torch.equal(finished[0], g.codes[0])
    lengths = [s.shape[-1] for s in sent]
    assert svc.model.max_duration_s == pytest.approx(1.875)  # so a 2.5 s take is made in two windows
    assert len(sent) >= 3 and all(a < b for a, b in zip(lengths, lengths[1:])) and lengths[-1] == g.codes.shape[-1]
    for s in sent:  # every hand-out is the start of the finished take, as it is
        assert torch.equal(s, g.codes[0, :, :s.shape[-1]])


def test_a_tap_in_a_fused_call_sees_what_it_sees_alone():
    svc = nano_like_service(fuse=True)
    req = Request("rock", num_clips=2, duration_s=0.5, seed=9)
    sent_fused, fin_fused, g_fused = [], [], []
    other = Request("calm piano", num_clips=3, duration_s=0.5, seed=1)
    threads = [threading.Thread(target=lambda: g_fused.append(tapped(svc, req))),
               threading.Thread(target=lambda: svc.generate_merged(other, 0.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent_fused, fin_fused, g = g_fused[0]
    sent, finished, g_alone = tapped(nano_like_service(), req)
    assert torch.equal(g.codes, g_alone.codes) and torch.equal(fin_fused[0], finished[0])
    assert [s.shape[-1] for s in sent_fused] == [s.shape[-1] for s in sent]


def test_nano_streamed_sound_is_the_finished_takes_sample_for_sample():
    codec = ScoreCodec()
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(rng.choice([0, 1, 1, 1, 4, 40, 90, 200], size=(4, 96)))  # 3 s: notes, holds, rests
    renderer, parts = Renderer(codec, 32.0), []
    for f in range(4, 96, 5):  # frames as a tap hands them out
        parts.append(renderer.sure(codes[:, :f], final=False))
    parts.append(renderer.sure(codes, final=True))
    streamed = np.concatenate([p for p in parts if p.size], axis=-1)
    whole = codec.decode(codes[None], keep_channels=True)[0].numpy()
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=2e-6)  # to float rounding: nothing later frames change


def test_a_neural_codec_is_streamed_in_windows_close_to_its_whole_decoding():
    codec = build_debug_model(seed=0).codec  # a random EnCodec: convolutions and an LSTM
    codes = torch.randint(0, codec.cardinality if hasattr(codec, "cardinality") else 16, (4, 200))
    renderer = Renderer(codec, 50.0)
    assert renderer.context == round(stream.CODEC_CONTEXT_S * 50) and renderer.hold > 0
    parts = [renderer.sure(codes[:, :f], final=False) for f in range(20, 200, 25)] + [renderer.sure(codes, True)]
    streamed = np.concatenate([p for p in parts if p.size], axis=-1)
    whole = codec.decode(codes[None], keep_channels=True)[0].numpy()
    assert streamed.shape == whole.shape
    err = np.abs(streamed - whole).max() / max(np.abs(whole).max(), 1e-9)
    assert err < 0.05, err


def test_the_stream_is_at_the_takes_level_without_steps_and_under_the_ceiling():
    sr = 16000
    t = np.arange(sr * 4) / sr
    music = (0.05 * np.sin(2 * np.pi * 220 * t) * (1 + (t > 2))).astype(np.float32)[None]  # louder after 2 s
    level = StreamLevel(sr)
    out = np.concatenate([level.apply(music[:, i:i + sr // 2]) for i in range(0, music.shape[-1], sr // 2)], -1)
    assert np.abs(out).max() <= loudness.PEAK_CEILING + 1e-6
    assert abs(loudness.loudness(out[:, sr:2 * sr], sr) - loudness.TARGET_LUFS) < 1.0  # steady music: at the target
    assert loudness.loudness(out[:, -sr:], sr) > loudness.loudness(out[:, sr:2 * sr], sr) + 1  # follows it, slowly
    ratio = np.abs(out[0, 1:]) / np.maximum(np.abs(music[0, 1:]), 1e-3)
    assert np.abs(np.diff(ratio[np.abs(music[0, 1:]) > 0.02])).max() < 0.05  # the gain glides, no jumps


def wavs(chunks):
    return [sf.read(io.BytesIO(c), dtype="float32", always_2d=True) for c in chunks]


def test_live_take_plays_a_request_and_returns_its_result():
    svc = nano_like_service()
    live = LiveTake(svc.model.codec, svc.model.frame_rate)
    req = Request("rock", num_clips=2, duration_s=1.0, seed=3)
    player = live.play(lambda tap: svc.generate_merged(req, 0.5, tap=tap))
    chunks = []
    with pytest.raises(StopIteration) as done:
        while True:
            chunks.append(next(player))
    g = done.value.value
    audio = wavs(chunks)
    assert all(sr == svc.model.sample_rate for _, sr in audio)
    lead, music, ticks = audio[0][0], audio[1:], [a for a, _ in audio if len(a) <= 8]
    assert not lead.any() and len(lead) == round(stream.LEAD_IN_S * svc.model.sample_rate)  # silence first
    heard = sum(len(a) for a, _ in music) - sum(len(a) for a in ticks)
    assert heard == g.audio.shape[-1]  # then the whole first take
    first = len(music[0][0])
    assert first <= round(stream.FIRST_CHUNK_S * svc.model.sample_rate) + svc.model.sample_rate // 32 * 3


def test_live_take_of_a_failed_or_stopped_request_ends_and_raises():
    svc = nano_like_service()
    live = LiveTake(svc.model.codec, svc.model.frame_rate)
    stop = threading.Event()
    stop.set()
    player = live.play(lambda tap: svc.generate_merged(Request("rock", 1, 1.0, seed=3), 0.5, tap=tap, cancel=stop))
    with pytest.raises(GenerationCancelled):  # stopped before it sampled: not even the lead-in
        next(player)
    refused = LiveTake(svc.model.codec, svc.model.frame_rate).play(
        lambda tap: svc.generate_merged(Request("rock", 1, 6.0, seed=3), 0.5, tap=tap))
    with pytest.raises(ValueError, match="at most"):  # refused: nothing streamed
        next(refused)
    stopping = threading.Event()
    player = LiveTake(svc.model.codec, svc.model.frame_rate).play(
        lambda tap: svc.generate_merged(Request("rock", 2, 2.0, seed=3), 0.5, tap=tap, cancel=stopping))
    next(player)  # the lead-in: it was checked and began
    stopping.set()  # stopped while it samples: the stream ends, the stop is raised
    with pytest.raises(GenerationCancelled):
        list(player)


def test_a_stream_keeps_pace_with_its_listener(monkeypatch):
    """A fast model's frames arrive far ahead of playback: chunks go out only while the listener has less than
    AHEAD_S left to hear (the rendering does not take cores from the sampling), and all at once when it is done."""
    monkeypatch.setattr(stream, "AHEAD_S", 0.5)
    loudness.preload()  # as the app does at its start
    live = LiveTake(ScoreCodec(), 32.0, first_s=0.25, chunk_s=0.25)
    codes = torch.ones(4, 32 * 3, dtype=torch.long)

    def sampler():  # 3 s of frames in a quarter of a second, the take then still running
        for f in range(8, 97, 8):
            live._receive(codes[:, :f])
            time.sleep(0.02)

    threading.Thread(target=sampler).start()
    t0, heard = time.monotonic(), []
    for chunk in live.chunks():
        heard.append((time.monotonic() - t0, chunk.shape[-1] / 16000))
        if sum(s for _, s in heard) >= 2.0 and live._state == "running":
            finished_at = time.monotonic() - t0
            live._finish(codes)
    assert heard[0][0] < 0.2  # the first chunk at once
    for i, (t, _) in enumerate(heard[1:], 1):  # each next one only once the listener has less than AHEAD_S to hear
        if t < finished_at:
            assert sum(s for _, s in heard[:i]) - (t - heard[0][0]) < 0.5 + 0.15
    assert len(heard) <= 4  # so a 12x real-time take is rendered a few times, not once per quarter second (12)
    assert heard[-1][0] - finished_at < 0.2 and sum(s for _, s in heard) == pytest.approx(3.0)  # then the rest
