"""What nano hears in a prompt, and what it played in a clip, in a musician's words (the app's "heard / played" panel).

nano knows a small world (`engine.nano_world`): ten genres, six moods, thirteen instruments, three drum kits, six
tempi (60, 68.6, 80, 96, 120, 160 BPM) and the twelve keys in major, minor and dorian. A prompt is read in three
passes:

1. nano's own words (the corpus's genre, mood, instrument, kit and tempo words, a BPM, a key), as `engine.exact`
   reads captions;
2. everyday words mapped to the nearest thing nano can do (`NEAREST`: "slap bass" → electric bass, "lullaby" → calm,
   slow, no drums, bells, "130 bpm" → 120 BPM), each change listed so that the musician sees it;
3. words that ask for something nano has nothing for (voices, sound effects: `NOTHING_FOR`), listed as such.

A genre fills in what it fixes (ambient has no drums; techno is 120 BPM). `Heard.rewritten` is the prompt in nano's
vocabulary, offered to the user (their own words stay one click away). `played` describes one clip from its tokens:
instruments, drums, tempo, key and any degradation, with ✓/✗ for each of the prompt's checkable requests.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from engine import exact
from engine.nano_world import GENRES, KEYS, MODES, MOODS
from engine.score_codec import TEMPOS

NANO_BPMS = tuple(sorted(TEMPOS.values()))  # 60, 68.6, 80, 96, 120, 160
KIT_NAMES = {"acoustic": "drums", "electronic": "drum machine", "lofi": "dusty drums"}

# everyday phrase -> what nano does instead (fields: genre, mood, tempo, drums, kit, instrument)
_NEAREST_GROUPS: list[tuple[dict, tuple[str, ...]]] = [  # (what nano does, the everyday phrases)
    # genres
    (dict(genre='classical'), (
        'orchestral', 'orchestra', 'symphonic', 'cinematic', 'film score', 'trailer', 'string quartet', 'baroque',
        'chamber')),
    (dict(genre='techno', drums=True), (
        'house', 'edm', 'trance', 'club', 'rave', 'dubstep', 'dance music', 'electro', 'workout', 'gym')),
    (dict(genre='techno', drums=True, tempo='fast'), ('drum and bass', 'dnb', 'jungle')),
    (dict(genre='hip hop', drums=True), ('trap', 'boom bap', 'beats', 'r&b', 'rap')),
    (dict(genre='hip hop', drums=True, kit='lofi'), ('lo-fi', 'lofi', 'vinyl')),
    (dict(genre='ambient', drums=False), (
        'meditation', 'soundscape', 'drone', 'new age', 'spa', 'yoga', 'sci-fi', 'space', 'sunrise', 'timelapse')),
    (dict(genre='jazz'), (
        'coffee shop', 'cafe', 'café', 'lounge', 'swing', 'bebop', 'dinner', 'piano bar', 'saxophone', 'sax')),
    (dict(genre='bossa nova'), ('bossa', 'samba', 'latin', 'brazilian')),
    (dict(genre='reggae', drums=True), ('ska', 'dub', 'dancehall', 'caribbean', 'island', 'beach')),
    (dict(genre='funk', drums=True), ('disco', 'slap', 'funky')),
    (dict(genre='folk'), (
        'campfire', 'country', 'bluegrass', 'singalong', 'sing-along', 'ukulele', 'banjo', 'singer-songwriter')),
    (dict(genre='rock', drums=True), ('metal', 'punk', 'grunge', 'distorted', 'hard rock')),
    # moods
    (dict(mood='calm'), (
        'chill', 'relax', 'relaxed', 'soothing', 'soft', 'tender', 'warm', 'romantic', 'mellow', 'quiet', 'study',
        'sleep', 'hotel', 'lobby', 'lullaby', 'wedding')),
    (dict(mood='energetic'), (
        'high energy', 'intense', 'epic', 'angry', 'party', 'hype', 'aggressive', 'action', 'heroic', 'workout', 'gym',
        'club')),
    (dict(mood='dark'), ('spooky', 'haunted', 'horror', 'creepy', 'scary', 'sinister', 'tense', 'suspense', 'villain')),
    (dict(mood='sad'), ('melancholy', 'heartbreak', 'lonely', 'grief', 'tearful')),
    (dict(mood='happy'), (
        'summer', 'sunny', 'fun', 'playful', 'commercial', 'feel-good', 'birthday', 'cooking', 'beach', 'campfire',
        'video game', '8-bit')),
    (dict(mood='dreamy'), ('sunrise', 'timelapse', 'nostalgic', 'magical', 'fairy', 'sci-fi', 'space')),
    # instruments
    (dict(instrument='strings'), ('violin', 'cello', 'viola', 'fiddle', 'string quartet', 'orchestra', 'orchestral')),
    (dict(instrument='electric bass'), ('slap bass', 'bass guitar', 'bassline')),
    (dict(instrument='sub bass'), ('808', '808s')),
    (dict(instrument='guitar'), ('acoustic guitar', 'electric guitar', 'guitars', 'ukulele', 'banjo', 'mandolin')),
    (dict(instrument='bells'), (
        'music box', 'glockenspiel', 'celesta', 'chimes', 'xylophone', 'marimba', 'vibraphone', 'lullaby')),
    (dict(instrument='flute'), ('saxophone', 'sax', 'clarinet', 'trumpet', 'horn', 'oboe')),
    (dict(instrument='piano'), ('keys', 'rhodes', 'electric piano', 'keyboard')),
    (dict(instrument='square lead'), ('8-bit', 'chiptune', 'video game')),
    (dict(instrument='saw lead'), ('synth lead', 'synthesizer', 'synth')),
    (dict(instrument='pad'), ('synth pad', 'sci-fi')),
    (dict(instrument='organ'), ('hammond', 'church organ')),
    # drums and tempo
    (dict(drums=False), ('no beat', 'without drums', 'no percussion', 'beatless', 'lullaby', 'music box')),
    (dict(drums=True), ('beat', 'percussion', 'drum kit')),
    (dict(tempo='slow'), ('lullaby', 'ballad', 'sleep', 'meditation', 'first dance')),
    (dict(tempo='fast'), ('uptempo', 'up-tempo', 'quick', 'frantic', 'racing', 'high energy', 'workout', '8-bit')),
]


def _merge(groups) -> dict[str, dict[str, str | bool]]:
    """phrase -> every field the groups give it (e.g. "lullaby": calm, slow, no drums, bells)."""
    out: dict[str, dict[str, str | bool]] = {}
    for fields, phrases in groups:
        for phrase in phrases:
            out.setdefault(phrase, {}).update(fields)
    return out


# everyday phrase -> what nano does instead (fields: genre, mood, tempo, drums, kit, instrument)
NEAREST = _merge(_NEAREST_GROUPS + [(dict(mood="dark"), ("haunted house",))])
NOTHING_FOR = ("vocals", "vocal", "voice", "voices", "singing", "singer", "choir", "lyrics", "spoken", "sound effects",
               "crackle", "rain sounds", "nature sounds", "applause")


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


def tempo_class(bpm: float) -> str:
    return "fast" if bpm >= exact.FAST_BPM else "slow" if bpm <= exact.SLOW_BPM else "mid"


@dataclass
class Heard:
    """What nano can make of a prompt (None: the prompt does not say, and nothing implies it)."""

    genre: str | None = None
    mood: str | None = None
    tempo: str | None = None  # slow / mid / fast
    bpm: float | None = None  # one of nano's tempi, when the prompt named a BPM
    drums: bool | None = None
    kit: str | None = None
    instruments: list[str] = field(default_factory=list)
    key: str | None = None
    changed: list[tuple[str, str]] = field(default_factory=list)  # (the prompt's words, what nano does instead)
    nothing_for: list[str] = field(default_factory=list)  # asked for, and nano has nothing like it
    implied: list[str] = field(default_factory=list)  # filled in by the genre

    def changes(self) -> list[str]:
        """The vocabulary changes grouped by the prompt's words: "lullaby → mood calm, tempo slow, no drums, bells"."""
        grouped: dict[str, list[str]] = {}
        for phrase, result in self.changed:
            grouped.setdefault(phrase, []).append(str(result))
        return [f"{phrase} → {', '.join(results)}" for phrase, results in grouped.items()]

    def rewritten(self) -> str:
        """The prompt in nano's vocabulary (empty if nano understood nothing)."""
        words = [w for w in (f"{self.bpm:.3g} BPM" if self.bpm else None,
                             {"slow": "slow", "fast": "fast", "mid": "mid-tempo"}.get(self.tempo or ""),
                             self.mood, self.genre or ("piece" if self.instruments or self.mood else None)) if w]
        text = " ".join(words)
        if self.instruments:
            text += " with " + " and ".join(self.instruments)
        if self.drums is False:
            text += ", no drums"
        elif self.kit:
            text += f", {KIT_NAMES[self.kit]}"
        elif self.drums:
            text += ", drums"
        if self.key:
            text += f" in {self.key}"
        return text.strip(", ")


def _set(heard: Heard, field_name: str, value, phrase: str, change: bool) -> None:
    """Fill a field from `phrase` unless the prompt's own words already did; note a change of vocabulary."""
    if field_name == "instrument":
        if value not in heard.instruments:
            heard.instruments.append(value)
            if change:
                heard.changed.append((phrase, value))
        return
    if getattr(heard, field_name) is not None:
        return
    setattr(heard, field_name, value)
    if change:
        shown = {"drums": "drums" if value else "no drums", "kit": KIT_NAMES.get(str(value))}.get(field_name, value)
        heard.changed.append((phrase, f"{field_name} {shown}" if field_name in ("genre", "mood", "tempo") else shown))


def _nano_words(heard: Heard, c: str, caption: str) -> None:
    """Pass 1: the words nano's corpus uses."""
    for name, g in GENRES.items():
        if any(_has(c, w) for w in g.words) or _has(c, name):
            _set(heard, "genre", name, name, False)
    for name, m in MOODS.items():
        if any(_has(c, w) for w in m["words"]) or _has(c, name):
            _set(heard, "mood", name, name, False)
    for w in exact.INSTRUMENT_WORDS:
        if _has(c, w):
            _set(heard, "instrument", w, w, False)
    for phrase, kit in exact.KIT_WORDS.items():
        if phrase in c:
            _set(heard, "kit", kit, phrase, False)
            _set(heard, "drums", True, phrase, False)
    if "no drums" in c:
        _set(heard, "drums", False, "no drums", False)
    elif _has(c, "drums"):
        _set(heard, "drums", True, "drums", False)
    for word, cls in (("fast", "fast"), ("slow", "slow"), ("mid-tempo", "mid")):
        if _has(c, word):
            _set(heard, "tempo", cls, word, False)
    m = re.search(r"(\d+(?:\.\d+)?)\s*bpm", c)
    if m:
        asked = float(m.group(1))
        heard.bpm = min(NANO_BPMS, key=lambda b: abs(b - asked))
        if abs(heard.bpm - asked) >= 1:
            heard.changed.append((m.group(0), f"{heard.bpm:.3g} BPM (nano's nearest tempo)"))
        heard.tempo = tempo_class(heard.bpm)
    key = exact.KEY_NAME.search(caption)
    if key is not None:
        heard.key = key.group(0)


def _imply_from_genre(heard: Heard) -> None:
    if heard.genre is None:
        return
    g = GENRES[heard.genre]
    kits = {k for k in g.kits if k}
    if heard.drums is None and (not g.kits or all(g.kits)):
        heard.drums = bool(kits)
        says = "drums" if kits else "no drums"
        heard.implied.append(f"{says} ({heard.genre} always has {'them' if kits else 'none'})")
    classes = {tempo_class(TEMPOS[d]) for d in g.tempos}
    if heard.tempo is None and len(classes) == 1:
        heard.tempo = classes.pop()
        heard.implied.append(f"{heard.tempo} ({heard.genre} is always {heard.tempo})")


def hear(prompt: str) -> Heard:
    """What nano can make of `prompt` (see the module docstring)."""
    c = " ".join(prompt.lower().split())
    heard = Heard()
    _nano_words(heard, c, prompt)
    rest = c
    for phrase in sorted(NEAREST, key=len, reverse=True):  # longer phrases first, and each consumes its words:
        if _has(rest, phrase):                             # "haunted house" is not house music
            for name, value in NEAREST[phrase].items():
                _set(heard, name, value, phrase, True)
            rest = re.sub(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", " | ", rest)
    heard.nothing_for = [w for w in NOTHING_FOR if _has(c, w)]
    _imply_from_genre(heard)
    return heard


def world_markdown() -> str:
    """The world nano knows, for the app and the README: what a prompt can ask for."""
    genres = ", ".join(f"{name} ({', '.join(f'{TEMPOS[t]:.3g}' for t in sorted(g.tempos, reverse=True))} BPM"
                       f"{'' if any(g.kits) else ', no drums'})" for name, g in GENRES.items())
    moods = ", ".join(f"{name} ({', '.join(m['words'][1:3])})" for name, m in MOODS.items())
    return "\n".join([
        f"- **Genres** (and their tempi): {genres}.",
        f"- **Moods** (and words for them): {moods}.",
        f"- **Instruments**: {', '.join(exact.INSTRUMENT_WORDS)}; drums: {', '.join(KIT_NAMES.values())}.",
        f"- **Tempi**: {', '.join(f'{b:.3g}' for b in NANO_BPMS)} BPM (a BPM in between goes to the nearest); fast = "
        f"{exact.FAST_BPM:g} or more, slow = {exact.SLOW_BPM:g} or less.",
        f"- **Keys**: {', '.join(KEYS)} in {', '.join(MODES)} (e.g. \"A dorian\").",
        "- **Not at all**: voices, lyrics, sound effects; a piece that develops (nano plays seconds of one groove)."])


# ---------------------------------------------------------------- what a clip played
def key_of(melody: tuple[int, ...]) -> str | None:
    """The key whose scale holds the most melody notes; among keys sharing those notes (C major, A minor, D dorian),
    the one whose tonic the melody plays most, then starts or ends on, then major before minor before dorian."""
    if len(melody) < exact.MIN_ONSETS:
        return None
    counts, rank = Counter(melody), {"major": 2, "minor": 1, "dorian": 0}
    scored = [(exact.scale_share(melody, scale, tonic), counts[tonic], (melody[0] == tonic) + (melody[-1] == tonic),
               rank[mode], f"{KEYS[tonic]} {mode}") for tonic in range(12) for mode, scale in MODES.items()]
    return max(scored)[-1]


PART_NAMES = {"lead": "melody", "bass": "bass", "harmony": "chords", "drums": "drums"}


def played(codes, prompt: str) -> dict:
    """One clip, as a musician would describe it, with ✓/✗ per checkable request of what nano heard in the prompt
    (`hear(prompt).rewritten()`: "130 bpm" is checked as nano's 120 BPM, "lullaby" as calm, slow, bells, no drums)."""
    checked = hear(prompt).rewritten() if prompt else ""
    score = exact.score_clip(codes, checked)
    r = score.reading
    parts = exact.clean_parts(r, checked)
    playing = exact.parts_playing(r, checked)
    problems = [("too little melody" if p == "lead" and r.playing[p] else f"no {PART_NAMES[p]}")
                for p in exact.parts_needed(checked) if not playing[p]]
    problems += [p for p, ok in (("noise or distortion", parts["no_noise"]), ("off the beat", parts["on_grid"]),
                                 ("wrong notes", parts["in_key"])) if not ok]
    return dict(instruments=sorted(r.instruments), drums=sorted(KIT_NAMES[k] for k in r.kits) or ["none"],
                parts=[PART_NAMES[p] for p, on in r.playing.items() if on],
                tempo=f"{r.tempo_bpm:g} BPM" if r.tempo_bpm else "no steady tempo", key=key_of(r.melody),
                problems=problems, met=score.met, undecided=list(score.undecided), checked_as=checked)
