"""Text prompts for training a real MusicGen with the recipe (`training.recipe`): written by code, nothing downloaded.

Each prompt combines a genre (40), a mood (24), one or two instruments (36), optionally a tempo word or a BPM and a
use or scene (20), in one of 10 sentence forms, the way people describe music to MusicGen ("An uplifting funk track
with slap bass and brass, 110 BPM."). `make_prompts(seed, n_train, n_heldout)` draws unique prompts with a seeded
generator and splits them: the held-out prompts are disjoint from the training ones by text, and every held-out
prompt's genre–mood pair also never occurs in training, so the evaluation asks for combinations the finetuning never
saw. The recipe's defaults: 2,000 training and 128 held-out prompts.

    python -m training.recipe_prompts --train 2000 --heldout 128 --out prompts.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

GENRES = ("rock", "indie rock", "punk", "metal", "pop", "synth-pop", "electropop", "funk", "disco", "soul",
          "r&b", "hip hop", "trap", "lo-fi hip hop", "jazz", "bebop", "bossa nova", "samba", "reggae", "dub",
          "blues", "country", "folk", "bluegrass", "classical", "baroque", "ambient", "drone", "techno", "house",
          "trance", "drum and bass", "dubstep", "synthwave", "chiptune", "orchestral", "cinematic", "gospel",
          "afrobeat", "flamenco")
MOODS = ("happy", "sad", "calm", "energetic", "dark", "dreamy", "uplifting", "melancholic", "tense", "playful",
         "romantic", "epic", "mysterious", "nostalgic", "aggressive", "peaceful", "groovy", "hopeful", "eerie",
         "triumphant", "laid-back", "bittersweet", "intense", "whimsical")
INSTRUMENTS = ("piano", "electric piano", "acoustic guitar", "electric guitar", "distorted guitar", "bass guitar",
               "slap bass", "synth bass", "upright bass", "drums", "drum machine", "808s", "hand percussion",
               "strings", "violin", "cello", "brass", "trumpet", "saxophone", "flute", "clarinet", "harp", "organ",
               "synth pad", "synth lead", "arpeggiated synth", "marimba", "vibraphone", "bells", "choir",
               "ukulele", "banjo", "harmonica", "accordion", "sitar", "steel drums")
TEMPI = ("slow", "mid-tempo", "fast", "upbeat", "relaxed", "driving")
USES = ("for a road trip", "for a rainy day", "for studying", "for a workout", "for a film trailer",
        "for a video game", "for a dinner party", "for meditation", "for a sunrise", "for a night drive",
        "for a wedding", "for a podcast intro", "for a dance floor", "for a campfire", "for a summer festival",
        "for a thriller scene", "for a cooking show", "for a lullaby", "for a fashion show", "for a documentary")
FORMS = (
    "{A} {mood} {genre} track with {inst}.",
    "{mood} {genre} with {inst}, {bpm} BPM.",
    "{genre}, {inst}, {tempo}, {mood}",
    "{A} {tempo} {genre} song featuring {inst}.",
    "{mood} {genre} music {use}.",
    "{A} {mood} {genre} piece {use}, with {inst}.",
    "{genre} instrumental, {inst}, {bpm} bpm",
    "{tempo} {mood} {genre}",
    "{inst} in a {mood} {genre} style",
    "{A} {genre} groove with {inst}, {tempo} and {mood}.",
)


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


def _prompt(rng: np.random.Generator, genre: str, mood: str) -> str:
    chosen = rng.choice(len(INSTRUMENTS), size=int(rng.integers(1, 3)), replace=False)
    inst = " and ".join(INSTRUMENTS[i] for i in chosen)
    tempo = str(rng.choice(TEMPI))
    form = FORMS[int(rng.integers(len(FORMS)))]
    first = form.split(" ")[1].strip("{},") if form.startswith("{A}") else ""
    words = dict(mood=mood, genre=genre, inst=inst, tempo=tempo, use=str(rng.choice(USES)),
                 bpm=int(rng.integers(12, 35)) * 5)
    text = form.format(A=_article(words.get(first, "x")) if first else "", **words).strip()
    return text[0].upper() + text[1:]


def make_prompts(seed: int = 0, n_train: int = 2000, n_heldout: int = 128) -> dict[str, list[str]]:
    """Unique training and held-out prompts; the held-out genre–mood pairs never occur in training."""
    rng = np.random.default_rng(seed)
    pairs = [(g, m) for g in GENRES for m in MOODS]
    order = rng.permutation(len(pairs))
    heldout_pairs = {pairs[i] for i in order[:max(n_heldout // 2, 1)]}  # about two prompts per held-out pair
    train_pairs = [p for p in pairs if p not in heldout_pairs]
    out: dict[str, list[str]] = {"train": [], "heldout": []}
    seen: set[str] = set()
    for split, pool, wanted in (("heldout", sorted(heldout_pairs), n_heldout), ("train", train_pairs, n_train)):
        for _ in range(50 * wanted):
            if len(out[split]) >= wanted:
                break
            genre, mood = pool[int(rng.integers(len(pool)))]
            text = _prompt(rng, genre, mood)
            if text.lower() not in seen:
                seen.add(text.lower())
                out[split].append(text)
    if len(out["train"]) < n_train or len(out["heldout"]) < n_heldout:
        raise ValueError(f"could not draw {n_train} + {n_heldout} unique prompts")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--heldout", type=int, default=128)
    p.add_argument("--out", default="prompts.json")
    args = p.parse_args(argv)
    Path(args.out).write_text(json.dumps(make_prompts(args.seed, args.train, args.heldout), indent=1) + "\n")


if __name__ == "__main__":
    main()
