"""What the app's pages say: texts, Markdown panels and figures made from a `Result`, free of Gradio.

Numbers are given on their stated scales (exact quality 0 … 6, r_D 0 … 1, ...) and in a musician's words first, the
technical name one click away.
"""
from __future__ import annotations

import numpy as np

from engine.figures import diversity_heatmap, quality_diversity_plot
from engine.heard import KIT_NAMES, hear
from engine.scorers import Scorers
from engine.service import MAX_PROMPT_CHARS
from engine.studio.core import Result

EXAMPLES = ["Rock song.", "calm piano", "upbeat techno with a driving kick",
            "A dreamy ambient piece with pad and bells",
            "jazz trio, walking bass, brushed drums", "sad hip hop beat with piano", "Bad audio quality."]
INTRO = ("# Diversity-rewarded CFG distillation\nDescribe some music and get several takes at once. The slider goes "
         "from the safest takes (the quality model θ_q) to the most varied ones (the diversity model θ_d); tick the "
         "comparison to hear the original model with guidance (CFG) beside them. More under *About this app* at the "
         "bottom.")
AB_INTRO = ("Two sets of clips for one prompt from two systems, in a hidden random order. Which set sounds better? "
            "Which set is more diverse?")
RESULTS_INTRO = ("One row per pair of systems and aspect: the first system's wins, losses and ties against the second, "
                 "and its win rate (W + T/2) / (W + L + T), 0 to 1, with a 95 % confidence interval.")
HELP = {  # the controls' help lines, in a musician's words first
    "prompt": f"Describe the music (up to {MAX_PROMPT_CHARS} characters). Enter or Ctrl+Enter generates.",
    "clips": "How many clips to make at once.",
    "seed": "The seed of the last takes: copy it to make them again; type or paste one to use it.",
    "lock": "Off: every press makes new takes. On: the same seed again.",
    "temperature": "Lower = safer, more repetitive; 0 = always the most likely note (then every take is the same).",
    "compare": "The same prompt and seed through the base model with classifier-free guidance, the slower method "
               "the trained models replace.",
    "guidance": "1 = no guidance; higher follows the prompt harder.",
    "plausibility": "Our addition: CFG may only choose among notes the model itself finds at least α times as likely "
                    "as its favourite, so guidance cannot push notes off the beat. On nano even 0.1 silences the "
                    "melody (its notes are each less likely than holding), so the teacher uses 0.",
    "from": "Blank: from the take's end. A time in the take (e.g. 4.5): keep it up to there, new endings after.",
    "new_length": "How long the new takes are, the kept part included.",
    "top_p": "Our addition: after guidance, play only from the likeliest notes that together make up this share of the "
             "probability (0.9 = the likeliest 90 %). Unlike a strict mask it keeps the melody; the teacher chosen by "
             "measurement uses it.",
}
# Ctrl+Enter (⌘+Enter) generates from anywhere on the page; in the prompt box Enter already does (its own submit)
HEAD = """<script>
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === "Enter" && !e.target.closest("#prompt")) {
    const button = document.querySelector("#generate");
    if (button) { e.preventDefault(); button.click(); }
  }
});
</script>"""
# tables wrap between words, never inside one; on a phone they keep their lines and scroll sideways
CSS = """
#played table, #scores table { display: block; overflow-x: auto; }
#played th, #played td, #scores th, #scores td { word-break: normal; overflow-wrap: normal; }
@media (max-width: 640px) { #played th, #played td, #scores th, #scores td { white-space: nowrap; } }
"""


def length_help(longest: float, window: float, sample_rate: int) -> str:
    """The length slider's help: the longest take, and where takes start to be continued window by window."""
    if longest <= window:
        return f"Up to {longest:g} s for this model, at {sample_rate} samples per second."
    return (f"Up to {longest:g} s. The model hears {window:g} s at a time: longer takes are continued window by "
            f"window, each new part following the take's last {window / 2:g} s (a {window:g} s take with the same "
            "seed is the start of every longer one).")


ABOUT = """\
**What this is.** A text-to-music model normally needs *classifier-free guidance* (CFG) to follow a prompt well: each
note is computed twice, with and without the prompt, and pushed away from the second. That doubles the cost and makes
the takes of one prompt sound alike. Following [Diversity-Rewarded CFG Distillation](https://arxiv.org/abs/2410.06084)
(Cideron et al., ICLR 2025), we train the guidance *into* the weights (the **quality model θ_q**), train a second
model that is also rewarded for making the takes of a prompt differ (the **diversity model θ_d**), and let you blend
the two with one slider (λ): the weights are averaged, (1 − λ)·θ_q + λ·θ_d, at no extra cost per note.
"""
ABOUT_NANO = """\
The model here is *MusicGen-nano*, a small model trained offline on a procedural corpus whose notes can be read back
exactly, so the app can tell you what each take played; the same code serves a real MusicGen on a GPU (README).
"""


def heard_markdown(prompt: str) -> str:
    """What nano can make of the prompt (`engine.heard`), for the panel under the prompt box. Text longer than a prompt
    may be is not read (it runs outside the models' queue: its cost stays bounded)."""
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        n = len(prompt) if isinstance(prompt, str) else 0
        return f"{n} of {MAX_PROMPT_CHARS} characters: too long, shorten it" if n else ""
    h = hear(prompt or "")
    said = [f"genre **{h.genre}**" if h.genre else None, f"mood **{h.mood}**" if h.mood else None,
            f"tempo **{h.bpm:.3g} BPM**" if h.bpm else (f"tempo **{h.tempo}**" if h.tempo else None),
            "**no drums**" if h.drums is False else (f"drums (**{KIT_NAMES[h.kit]}**)" if h.kit else
                                                     "**drums**" if h.drums else None),
            ("instruments **" + ", ".join(h.instruments) + "**") if h.instruments else None,
            f"key **{h.key}**" if h.key else None]
    said = [x for x in said if x]
    lines = ["**What nano hears:** " + ("; ".join(said) if said else "nothing it knows yet: it will choose freely")]
    if h.changes():
        lines.append("**Nearest nano can do:** " + "; ".join(h.changes()))
    if h.implied:
        lines.append("**Follows from the genre:** " + "; ".join(h.implied))
    if h.nothing_for:
        lines.append("**Nano cannot do:** " + ", ".join(h.nothing_for) + " (it has no voices or sound effects)")
    n = len(prompt or "")
    lines.append(f"{n} of {MAX_PROMPT_CHARS} characters" + (": too long, shorten it" if n > MAX_PROMPT_CHARS else ""))
    return "\n\n".join(lines)


def played_markdown(result: Result) -> str:
    """Per clip, what nano played (read from its tokens): its parts, instruments, drums, tempo and key, with ✓/✗ for
    each checkable request of what nano heard in the prompt (? where the clip cannot tell, e.g. a key with too few
    melody notes)."""
    rows, checked_as = [], ""
    for key, title in (("merged", result.label), ("base", result.base_label)):
        for i, p in enumerate(result.played.get(key, [])):
            checks = " ".join([f"{'✓' if ok else '✗'} {name}" for name, ok in p["met"].items()]
                              + [f"? {name}" for name in p["undecided"]]) or "–"
            checked_as = p["checked_as"]
            rows.append(f"| {title} {i + 1} | {', '.join(p['parts']) or 'silence'} | "
                        f"{', '.join(p['instruments']) or '–'} | {', '.join(p['drums'])} | {p['tempo']} | "
                        f"{p['key'] or '–'} | {', '.join(p['problems']) or 'none'} | {checks} |")
    if not rows:
        return ""
    asked = f" Checked against what nano heard: *{checked_as}*." if checked_as else ""
    return (f"**What each clip played** (read from its notes).{asked}\n\n| clip | parts playing | instruments | drums "
            "| tempo | key | problems | what the prompt asked |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def summary_markdown(result: Result) -> str:
    """Seed, notices, and each column's wall time, real-time factor and cost."""
    m = result.merged
    lines = [f"**Seed {m.seed}** (enter it to reproduce these clips)"] + [f"- {n}" for n in m.notices]
    for title, gen in ((f"{result.label} ({m.model})", m), (result.base_label, result.base)):
        if gen is not None:
            t = gen.timings
            merge = f", merge {t['merge'] * 1000:.0f} ms" if t.get("merge") else ""
            lines.append(f"- **{title}**: {t['total']:.2f} s wall, {gen.real_time_factor:.1f}× real time "
                         f"(text {t['text']:.2f} s, sampling {t['sampling']:.2f} s, codec {t['codec']:.2f} s{merge})")
    if result.base is not None:
        ratio = result.base.timings["sampling"] / max(result.merged.timings["sampling"], 1e-9)
        lines.append(f"- CFG costs **{ratio:.2f}×** the merged model's sampling time here.")
    return "\n".join(lines)


def exact_markdown(result: Result) -> list[str]:
    """nano's exact metrics per set: what the prompt asks that the tokens can check, and how the clips meet it."""
    lines = []
    for key, title in (("merged", result.label), ("base", result.base_label)):
        e = result.exact.get(key)
        if e is None:
            continue
        quality = (f"exact quality {e.mean_quality:.2f} of 6" if e.mean_quality is not None
                   else "no exact quality: the prompt asks nothing the tokens can check")
        lines.append(f"- **{title}** (read from the notes) · {quality} · clean clips {np.mean(e.clean):.0%} · "
                     f"exact diversity {e.diversity:.3f}")
    if lines:  # one list item per line: Markdown would run plain lines together
        asked = result.exact["merged"]
        lines.append(f"- checked in the notes: {', '.join(asked.requests) or 'nothing'}"
                     + (f"; not checkable: {', '.join(asked.unchecked)}" if asked.unchecked else ""))
        lines += ["- exact quality = 5 · share of the checkable requests met + clean (every part the prompt calls for "
                  "playing, the melody with enough notes; no noise, on the 16th grid, in one key); exact diversity = "
                  "mean share of differing note events between two clips", ""]
    return lines


def scores_markdown(result: Result) -> str:
    """Per set: exact metrics (nano), mean diversity and Vendi, mean quality, and a per-clip table."""
    lines = exact_markdown(result)
    for key, title in (("merged", result.label), ("base", result.base_label)):
        s = result.scores.get(key)
        if s is None:
            continue
        head = [f"**{title}**"]
        if s.mean_diversity is not None:
            head.append(f"mean diversity {s.mean_diversity:.3f}, Vendi {s.vendi:.2f} of {len(s.diversity)}")
        if s.quality is not None:
            head.append(f"mean quality {s.mean_quality:.2f}")
        lines.append(" · ".join(head))
        if s.quality is not None:
            lines.append("| clip | quality | adherence | audio quality |\n|---|---|---|---|")
            lines += [f"| {i + 1} | {q:.2f} | {a:.3f} | {c:.3f} |"
                      for i, (q, a, c) in enumerate(zip(s.quality, s.adherence, s.audio_quality, strict=True))]
        elif s.adherence is not None:
            lines.append("adherence: " + ", ".join(f"{a:.3f}" for a in s.adherence))
        lines.append("")
    if not lines:
        return "_No scorers loaded: diversity and quality are not shown._"
    if not result.scores:
        return "\n".join(lines)
    omega = next(iter(result.scores.values())).omega
    return "\n".join(lines) + (f"\nLearned judges (stand-ins for what a real model would use): quality = {omega:g} · "
                                f"adherence + audio quality, from −{omega:g} to {omega + 1:g}; adherence = how well "
                                "the take matches the prompt's text (cosine, −1 … 1); audio quality = the chance "
                                "that it has no wrong notes, timing slips or noise (0 … 1); diversity = mean r_D "
                                "(0 = identical takes).")


def heatmaps(result: Result) -> list:
    """The pairwise-diversity heatmap of each set (None where there is no set or no E)."""
    out = []
    for key, title in (("merged", result.label), ("base", result.base_label)):
        s = result.scores.get(key)
        out.append(diversity_heatmap(s.diversity, f"r_D, {title}")
                   if s is not None and s.diversity is not None else None)
    return out


def qd_figure(fronts: dict, result: Result | None = None, fronts_exact: dict | None = None,
              measured: dict | None = None):
    """The takes on the quality–diversity plane, compared like with like: the precomputed fronts (`measured`: their
    prompts, takes and seconds) are drawn with a set only when it has as many takes of the same length; otherwise
    the set is shown with its own reference (the original model with CFG on the same prompt and seed, when
    comparing). On nano's exact axes when the clips have them, else on the learned scores'. None if nothing to show."""
    measured = measured or {}
    points, exact_axes = {}, bool(fronts_exact) and (result is None or bool(result.exact))
    if result is not None:
        for key, title in (("merged", result.label), ("base", result.base_label)):
            s, e = result.scores.get(key), result.exact.get(key)
            if exact_axes and e is not None and e.mean_quality is not None:
                points[f"{title} (this prompt)"] = (e.diversity, e.mean_quality)
            elif not exact_axes and s is not None and s.mean_diversity is not None and s.quality is not None:
                points[f"{title} (this prompt)"] = (s.mean_diversity, s.mean_quality)
    shown = fronts_exact if exact_axes else fronts
    where = (f"fronts: means over {measured['prompts']} test prompts, {measured['clips']} takes x "
             f"{measured['seconds']:g} s" if {"prompts", "clips", "seconds"} <= set(measured) else "fronts: measured")
    note = where
    if result is not None and shown:
        same = (measured.get("clips") == result.merged.audio.shape[0]
                and abs(float(measured.get("seconds", -1)) - result.merged.duration_s) < 0.05)
        if not same:
            shown = {}
            note = (f"fronts hidden: they were measured with {measured.get('clips', '?')} takes of "
                    f"{measured.get('seconds', '?')} s; make that many to see them")
        else:
            note = where + "; one prompt's point can sit far from them (prompts differ)"
    if not shown and not points:
        return None
    title = "exact quality (0-6) vs exact diversity (0-1)" if exact_axes else "quality vs diversity"
    xlabel = "exact diversity (share of differing notes)" if exact_axes else "diversity (mean r_D)"
    return quality_diversity_plot(shown, points, title=title, xlabel=xlabel, note=note)


def models_markdown(base: str, sources: dict[str, str | None], scorers: Scorers, readable: bool,
                    sound: str = "") -> str:
    """Which models this server loaded and where each score comes from (shown folded at the top of the page);
    `sound`: how nano's notes are played (the codec's description)."""
    lines = [f"- **Base model**: {base}" + (" (MusicGen-nano: every take's notes can be read back)" if readable
                                               else "")]
    if sound:
        lines.append(f"- **Sound**: nano's notes played by {sound}; every take at one loudness (−14 LUFS)")
    lines += [f"- **{name}**: {path or 'the base model (none given)'}" for name, path in sources.items()]
    if scorers.has_diversity:
        lines.append("- **Diversity**: the diversity embedding E (mean r_D between takes)")
    if readable:
        lines.append("- **Quality**: read from the notes (exact quality), and nano's learned judges")
    elif scorers.clap is not None:
        lines.append("- **Quality**: CLAP adherence (how well a take matches the prompt's text)")
    else:
        lines.append("- **Quality**: none (no CLAP model configured: `--clap`)")
    return "\n".join(lines)



def nano_wording(prompt) -> tuple[str, str]:
    """("Use nano's wording"): the prompt in nano's vocabulary, and the user's own words to restore. Text longer than a
    prompt may be, or not text, is left as it is (not read)."""
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        return prompt, prompt
    return hear(prompt).rewritten() or prompt, prompt


GENERATE_API = """Make takes of music from a text prompt with the trained model at the blend λ, and (compare = true)
takes of the original model with guidance (CFG) beside them; returns the takes' audio files, a summary, their scores
(quality and how different the takes are) and the download files.

Args:
    prompt: what to play, in words (e.g. "calm piano with soft strings"); at most 500 characters
    num_clips: how many takes, 1 to 8
    duration: each take's length in seconds (at most the server's --max-duration)
    seed: a whole number makes the same takes again; blank = new takes
    temperature: adventurousness, 0 (always the likeliest notes) to 2; 1 = as trained
    mode: what λ blends: "q-d" (quality model to diversity model), "q-base" or "soup"
    lam: the blend λ, 0 to 1 (0 = the quality model, 1 = the diversity model)
    compare: also make takes of the original model with CFG
    guidance: the CFG strength γ of the comparison, 1 to 10
    negative: the prompt the comparison steers away from (blank = none)
    plausibility: the comparison's plausibility mask α, 0 to 0.5 (0 = the paper's CFG)
    top_p: the comparison keeps only its likeliest notes (0 = off)
"""


def documented(text: str):
    """Give a callback the docstring its API endpoint shows (Gradio's API page and MCP tools read the description and
    the `Args:` lines), kept here with the page's other words."""
    def decorate(fn):
        fn.__doc__ = text
        return fn
    return decorate
