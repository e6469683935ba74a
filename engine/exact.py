"""Exact quality and diversity of nano clips, read from their score-codec tokens (no learned scorer involved).

nano's codec makes every clip readable: which instruments and drum kit play, on which 16th-note grid the onsets
sit, which notes the melody plays, whether noise or distortion events occur. So, for a clip and its caption:

- the caption's *checkable requests* (`requests`): each named instrument; drums / no drums / a named drum kit;
  a tempo in BPM, or fast / mid-tempo / slow (the corpus's thresholds); a key ("C major", "A dorian": the melody's
  notes lie in that scale); a genre (a genre fixes the instruments each stream may use, its drum kits and its
  tempi: `engine.nano_world.GENRES`). Moods are not checkable from tokens (they only bias tempo, mode and
  density), nor is a mode named without a key: such words are counted as unchecked, never guessed;
- *adherence* = the fraction of the decidable checkable requests the clip satisfies (None when there is none); a
  key is decided only on MIN_ONSETS melody notes or more, else it is counted as unchecked, neither met nor failed;
- *clean* = 1 if every part the caption calls for plays (`parts_needed`: lead, bass and harmony always, the corpus's
  pieces all have them, the melody with at least `melody_floor` notes; drums where the caption's genre always has
  them or the caption asks for drums), the clip
  has no noise/distortion events, its onsets sit on a 16th-note grid and its melody fits one diatonic scale (the
  corpus's degradations: noise bursts, distortion, erratic timing, wrong notes), else 0. A clip missing a part is
  not clean however tidy the rest: a silent lead once passed every other check;
- *tempo* is read from the beat (`beat_sixteenth`): of the 16th grids the onsets fit, the one whose bass, chord and
  drum onsets best match a genre's patterns at one of that genre's tempi, so that a 160 BPM groove with no
  odd-16th onsets is not read at half speed;
- *exact quality* = ω · adherence + clean, ω = 5 as in the paper's quality score (range 0 … 6);
- *exact diversity* = mean pairwise event distance of the clips (`event_distance`).
`training.nano_metrics` reports how often each check holds on true held-out corpus pieces (and on other pieces'
captions, for chance level).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.nano_world import GENRES, KEYS, MODES, MOODS
from engine.score_codec import DISTORT, FIRST_EVENT, HOLD, NOISE, STREAMS, TEMPOS, parse_token

OMEGA = 5.0  # quality = ω · adherence + clean: the paper's weight (s_quality = ω·s_MuLan + s_UserPreference, ω = 5)
GRID_SHARE = 0.95  # onsets on one 16th grid for a clip to count as in time (erratic timing moves ~half of them)
SCALE_SHARE = 0.95  # melody notes in one scale for a clip to count as in key (wrong notes move a third of them)
MIN_ONSETS = 3  # fewer onsets (or melody notes) say nothing about timing (or key): not held against a clip
MIN_PART_NOTES = 1  # a part plays if it has at least one note-on (chord, drum hit) in the clip …
MELODY_SHARE = 0.25  # … and the melody only with a quarter of the onsets its genre's density gives the clip's 16ths
# (a distilled model once kept "a melody" of one note in 4 s: playing at all is too weak a test for the lead)
FAST_BPM, SLOW_BPM = 120.0, 80.0  # the corpus's words: fast ≥ 120 BPM, slow ≤ 80, mid-tempo between
KIT_WORDS = {"drum machine": "electronic", "dusty drums": "lofi"}
INSTRUMENT_WORDS = ("piano", "guitar", "organ", "saw lead", "square lead", "bells", "flute", "strings", "pad",
                    "electric bass", "synth bass", "upright bass", "sub bass")
MOOD_OR_MODE = re.compile(r"\b(" + "|".join(sorted({w for m in MOODS.values() for w in m["words"]} | set(MODES)))
                          + r")\b")
KEY_NAME = re.compile(r"\b(" + "|".join(re.escape(k) for k in KEYS) + r") (major|minor|dorian)\b")


@dataclass(frozen=True)
class Reading:
    """What one clip's tokens (4, T) say."""

    lead: frozenset[str]  # instruments per stream
    bass: frozenset[str]
    harmony: frozenset[str]
    kits: frozenset[str]
    sixteenth: int | None  # frames per 16th of the coarsest grid that ≥ GRID_SHARE of the onsets sit on
    grid_share: float  # share of onsets on the best grid
    onsets: int
    melody: tuple[int, ...]  # pitch classes of the lead's notes, in order
    noise_events: int  # NOISE and DISTORT tokens
    notes: tuple[int, int, int, int] = (0, 0, 0, 0)  # note-ons (chords, drum hits) of lead, bass, harmony, drums
    frames: int = 0  # the clip's length

    @property
    def playing(self) -> dict[str, bool]:
        """Which parts play at all (MIN_PART_NOTES note-ons or more), by stream name."""
        return {name: n >= MIN_PART_NOTES for name, n in zip(STREAMS, self.notes)}

    @property
    def instruments(self) -> frozenset[str]:
        return self.lead | self.bass | self.harmony

    @property
    def drums(self) -> bool:
        return bool(self.kits)

    @property
    def tempo_bpm(self) -> float | None:
        return TEMPOS[self.sixteenth] if self.sixteenth is not None else None


def read(codes: np.ndarray) -> Reading:
    """Read a clip's tokens (4, T): instruments per stream, kit, grid, melody, degradation events."""
    codes = np.asarray(codes)
    events = {name: [(f, parse_token(name, t)) for f, t in enumerate(codes[k]) if t >= FIRST_EVENT]
              for k, name in enumerate(STREAMS)}
    events = {k: [(f, e) for f, e in v if e is not None] for k, v in events.items()}
    onsets = sorted({f for v in events.values() for f, _ in v})
    shares = {d: float(np.mean([f % d == 0 for f in onsets])) if onsets else 1.0 for d in TEMPOS}
    on_grid = [d for d, a in shares.items() if a >= GRID_SHARE]
    by_stream = {k: [f for f, _ in v] for k, v in events.items()}
    sixteenth = beat_sixteenth(on_grid, by_stream) if on_grid and len(onsets) >= MIN_ONSETS else None
    return Reading(lead=frozenset(e.instrument for _, e in events["lead"]),
                   bass=frozenset(e.instrument for _, e in events["bass"]),
                   harmony=frozenset(e.instrument for _, e in events["harmony"]),
                   kits=frozenset(e.instrument for _, e in events["drums"]), sixteenth=sixteenth,
                   grid_share=max(shares.values()), onsets=len(onsets),
                   melody=tuple(e.pitches[0] % 12 for _, e in events["lead"]),
                   noise_events=int(((codes == NOISE) | (codes == DISTORT)).sum()),
                   notes=tuple(len(events[name]) for name in STREAMS), frames=codes.shape[1])


# ---------------------------------------------------------------- tempo from the beat
BASS_STEPS = {"root": (0, 6, 8, 14), "octave": tuple(range(0, 16, 2)), "walking": (0, 4, 8, 12), "fifths": (0, 8),
              "offbeat": (2, 6, 10, 14), "sustained": (0,)}  # where the corpus's bass styles play, in 16ths of a bar
CHORD_STEPS = {"bar": (0,), "half": (0, 8), "offbeat": (4, 12), "stabs": (0, 6, 10)}
FILL_STEPS = (0, 12, 13, 14, 15)  # crashes on the downbeat, snare fills in the bar's last beat


def _patterns(genre) -> dict[str, frozenset[int]]:
    drums = {i for pat in genre.groove.values() for i, c in enumerate(pat) if c == "x"} | set(FILL_STEPS)
    return dict(bass=frozenset(BASS_STEPS[genre.bass_style]), harmony=frozenset(CHORD_STEPS[genre.chord_rhythm]),
                drums=frozenset(drums))


PATTERNS = {name: _patterns(g) for name, g in GENRES.items()}


def beat_fit(by_stream: dict[str, list[int]], genre: str, d: int) -> float:
    """How well the bass, chord and drum onsets (frames) sit where `genre` plays them at d frames per 16th: the mean
    over those streams that play of the share of their onsets on the genre's steps of the bar (0 … 1)."""
    fits = [np.mean([(f // d) % 16 in steps for f in by_stream[name]])
            for name, steps in PATTERNS[genre].items() if by_stream.get(name)]
    return float(np.mean(fits)) if fits else 0.0


def beat_sixteenth(on_grid: list[int], by_stream: dict[str, list[int]]) -> int:
    """The 16th length (frames) of the clip among the grids its onsets fit. The coarsest fitting grid alone reads a
    groove without odd-16th onsets at half speed (160 BPM as 80); so each grid is scored by the best `beat_fit` of a
    genre that has that tempo, and the best-scored grid wins (ties: the coarsest, as before)."""
    if len(on_grid) == 1:
        return on_grid[0]
    score = {d: max((beat_fit(by_stream, name, d) for name, g in GENRES.items() if d in g.tempos), default=0.0)
             for d in on_grid}
    return max(on_grid, key=lambda d: (round(score[d], 6), d))


# ---------------------------------------------------------------- clean
def scale_share(melody: tuple[int, ...], scale: tuple[int, ...] | None = None, tonic: int | None = None) -> float:
    """Share of melody notes in `scale` on `tonic`, or (both None) in the best-fitting diatonic scale."""
    if not melody:
        return 1.0
    counts = Counter(melody)
    if scale is None:  # every diatonic collection is a rotation of the major scale
        return max(sum(counts[(t + i) % 12] for i in MODES["major"]) for t in range(12)) / len(melody)
    return sum(counts[(tonic + i) % 12] for i in scale) / len(melody)


def parts_needed(caption: str | None) -> tuple[str, ...]:
    """The streams a clip for `caption` must play: lead, bass and harmony always (every corpus piece has all three,
    whatever its genre), and drums where the caption's genre always has a kit or the caption asks for drums (and
    does not say "no drums")."""
    needed = ["lead", "bass", "harmony"]
    c = (caption or "").lower()
    if "no drums" not in c:
        genre_drums = any(all(g.kits) and g.kits and any(_words(c, w) for w in g.words) for g in GENRES.values())
        if genre_drums or _drum_checks(c):
            needed.append("drums")
    return tuple(needed)


def caption_genre(caption: str | None):
    """The genre the caption names (the first, in nano_world's order), or None."""
    c = (caption or "").lower()
    return next((g for g in GENRES.values() if any(_words(c, w) for w in g.words)), None)


def melody_floor(r: Reading, caption: str | None) -> int:
    """The fewest melody notes that count as playing the lead: MELODY_SHARE of the onsets the caption's genre's melody
    density gives the clip's 16th steps (the slowest genre's density and tempo when the caption names no genre or the
    clip shows no tempo), at least MIN_PART_NOTES."""
    genre = caption_genre(caption)
    density = genre.melody_density if genre else min(g.melody_density for g in GENRES.values())
    sixteenth = r.sixteenth or (max(genre.tempos) if genre else max(TEMPOS))
    return max(MIN_PART_NOTES, int(MELODY_SHARE * density * r.frames / sixteenth))


def parts_playing(r: Reading, caption: str | None = None) -> dict[str, bool]:
    """Which parts play their part: bass, chords and drums with any note, the melody with `melody_floor` notes."""
    return dict(r.playing, lead=r.notes[0] >= melody_floor(r, caption))


def clean_parts(r: Reading, caption: str | None = None) -> dict[str, bool]:
    """Each condition of `clean`: the parts the caption needs play (the melody with at least `melody_floor` notes),
    no noise, on the grid, in one key."""
    playing = parts_playing(r, caption)
    return dict(parts=all(playing[p] for p in parts_needed(caption)), no_noise=r.noise_events == 0,
                on_grid=r.onsets < MIN_ONSETS or r.grid_share >= GRID_SHARE,
                in_key=len(r.melody) < MIN_ONSETS or scale_share(r.melody) >= SCALE_SHARE)


def clean(r: Reading, caption: str | None = None) -> float:
    return float(all(clean_parts(r, caption).values()))


# ---------------------------------------------------------------- requests
Check = Callable[[Reading], "bool | None"]  # None: the clip cannot tell (a key with too few melody notes)


def _words(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def genre_fits(r: Reading, name: str) -> bool:
    """The clip could be of this genre: every stream's instruments, the kit and the tempo (when the clip shows one) are
    among the genre's."""
    g = GENRES[name]
    kits = {k for k in g.kits if k}
    tempo_fits = r.sixteenth in g.tempos or r.onsets < MIN_ONSETS  # too few onsets show no tempo to hold against it
    return (r.lead <= set(g.lead) and r.bass <= set(g.bass) and r.harmony <= set(g.harmony) and r.kits <= kits
            and tempo_fits)


def _tempo_check(c: str) -> tuple[str, Check] | None:
    m = re.search(r"(\d+(?:\.\d)?) bpm", c)
    if m:
        bpm = float(m.group(1))
        name, fits = f"tempo {bpm:g} BPM", lambda t: abs(t - bpm) < 1
    elif _words(c, "fast"):
        name, fits = "fast", lambda t: t >= FAST_BPM
    elif _words(c, "slow"):
        name, fits = "slow", lambda t: t <= SLOW_BPM
    elif _words(c, "mid-tempo"):
        name, fits = "mid-tempo", lambda t: SLOW_BPM < t < FAST_BPM
    else:
        return None
    # fewer than MIN_ONSETS onsets show no tempo: undecided; an off-grid clip has none: failed
    return name, lambda r: None if r.onsets < MIN_ONSETS else (r.tempo_bpm is not None and fits(r.tempo_bpm))


def _drum_checks(c: str) -> dict[str, Check]:
    out = {f"kit {kit}": (lambda r, kit=kit: kit in r.kits) for word, kit in KIT_WORDS.items() if word in c}
    if "no drums" in c:
        out["no drums"] = lambda r: not r.drums
    elif _words(c, "drums") and not out:
        out["drums"] = lambda r: r.drums
    return out


def requests(caption: str) -> dict[str, Check]:
    """The caption's checkable requests, by name (see the module docstring)."""
    c = caption.lower()
    out = {f"instrument {w}": (lambda r, w=w: w in r.instruments) for w in INSTRUMENT_WORDS if _words(c, w)}
    out |= _drum_checks(c)
    tempo = _tempo_check(c)
    if tempo is not None:
        out[tempo[0]] = tempo[1]
    key = KEY_NAME.search(caption)
    if key is not None:
        tonic, scale = KEYS.index(key.group(1)), MODES[key.group(2)]
        out[f"key {key.group(0)}"] = lambda r: (None if len(r.melody) < MIN_ONSETS
                                               else scale_share(r.melody, scale, tonic) >= SCALE_SHARE)
    for name, g in GENRES.items():
        if any(_words(c, w) for w in g.words):
            out[f"genre {name}"] = lambda r, name=name: genre_fits(r, name)
    return out


def unchecked(caption: str) -> list[str]:
    """Words of the caption that ask for something the tokens cannot check (moods; a mode without a key)."""
    c = KEY_NAME.sub("", caption).lower()
    return MOOD_OR_MODE.findall(c)


def kind(request: str) -> str:
    """The request's type, for reports: instrument, drums, kit, tempo, key, genre."""
    head = request.split()[0]
    return {"no": "drums", "fast": "tempo", "slow": "tempo", "mid-tempo": "tempo"}.get(head, head)


# ---------------------------------------------------------------- per clip and per set
@dataclass(frozen=True)
class ClipScore:
    adherence: float | None  # share of the decided requests met; None if the caption has none the clip can decide
    clean: float  # 0 or 1
    met: dict[str, bool]  # per decided request
    reading: Reading  # what the tokens say (read once, reused by callers)
    undecided: tuple[str, ...] = ()  # requests this clip cannot decide (a key with too few melody notes)

    @property
    def quality(self) -> float | None:
        return None if self.adherence is None else OMEGA * self.adherence + self.clean


def score_clip(codes: np.ndarray, caption: str) -> ClipScore:
    r = read(codes)
    verdicts = {name: check(r) for name, check in requests(caption).items()}
    met = {name: bool(v) for name, v in verdicts.items() if v is not None}
    undecided = tuple(name for name, v in verdicts.items() if v is None)
    return ClipScore(float(np.mean(list(met.values()))) if met else None, clean(r, caption), met, r, undecided)


def event_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Hamming distance over the positions where either grid has something other than HOLD (note-ons, rests, drum
    hits): sustain tokens shared by any two clips do not dilute it."""
    active = (a != HOLD) | (b != HOLD)
    return float((a != b)[active].mean()) if active.any() else 0.0


def event_diversity(codes: np.ndarray) -> float:
    """Mean pairwise event distance of a set of clips (N, 4, T); 0 for one clip."""
    n = len(codes)
    pairs = [event_distance(codes[a], codes[b]) for a in range(n) for b in range(a + 1, n)]
    return float(np.mean(pairs)) if pairs else 0.0


def event_distances(codes: np.ndarray) -> np.ndarray:
    """`event_distance` between every pair of a set of clips (N, 4, T) at once: (N, N), zero diagonal, symmetric.
    The diversity reward of `training.distill --reward events` (one group of samples per prompt)."""
    codes = np.asarray(codes).reshape(len(codes), -1)
    a, b = codes[:, None, :], codes[None, :, :]
    active = (a != HOLD) | (b != HOLD)
    differ = ((a != b) & active).sum(-1)
    return np.where(active.any(-1), differ / np.maximum(active.sum(-1), 1), 0.0)
