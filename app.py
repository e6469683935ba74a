"""Gradio app: steer quality ↔ diversity with λ, A/B the merged model against the base model with CFG, rate blind.

The Gradio layer only: flags, the page's three tabs as small builders, one wiring of events, one error wrapper. What
each button does lives in `engine.studio` (`Studio`, free of Gradio and tested without a browser); merge modes come
from `engine.modes`, CFG settings are `engine.cfg.CfgSetting`s. Each browser session's settings (λ included) travel
with its own requests, so users never share a λ.
"""
# (no `from __future__ import annotations` here: Gradio finds the gr.Request parameter of a callback by its evaluated
# annotation, and a string annotation hands it the gr.Progress instead)
import logging
import signal
import sys
from types import SimpleNamespace

from engine import threads
from engine.heard import world_markdown
from engine.ratings import TABLE_HEADERS, VOTES
from engine.service import MAX_CLIPS
from engine.studio import (
    LOG,
    MAX_PAIR_CLIPS,
    MAX_SESSIONS,
    Janitor,
    Result,
    Studio,
    Takes,
    explain_failure,
    inputs,
    make_studio,
    pages,
    private_gradio_cache,
    rater_id,
    rater_session,
    sweep_dead_owners,
)
from engine.studio.files import ARCHIVES
from engine.studio.handlers import api_error, handled, in_place, strict_arity
from engine.studio.pages import HELP
from engine.studio.startup import parse_args
from engine.studio.web import GuardMiddleware, client_key, jobs_of, unknown_key, waiting

STOPPED = "Stopped: no new takes were made; the previous ones stay."
MAX_UPLOAD = "1kb"  # no endpoint uses uploads (Gradio keeps its upload route: 500 MB were accepted before)
KEPT = " Your previous takes are kept."


# ---------------------------------------------------------------------- requests
def _session(request) -> str:
    """The key of the request's session: its browser's client cookie with Gradio's session hash (`client_key`)."""
    if request is None:
        return ""
    return client_key(getattr(request, "session_hash", None) or "", getattr(request, "cookies", None))


def _enqueued_at() -> float | None:
    """When Gradio queued the event being served (time.monotonic, as Stop records), so that a Stop pressed while it
    waited reaches it; None outside a queued event (then the request counts as submitted when it starts)."""
    from gradio.context import LocalContext  # noqa: PLC0415 (gradio takes seconds to import; only the UI needs it)

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    event = queue.event_ids_to_events.get(event_id) if queue is not None and event_id else None
    return getattr(event, "enqueue_time", None)


# ---------------------------------------------------------------------- the page
def header(gr, studio: Studio) -> None:
    gr.Markdown(pages.INTRO)
    for line in studio.banner:
        gr.Markdown(f"> ⚠️ {line}")
    if studio.models:
        with gr.Accordion("Models loaded, and where the scores come from", open=False):
            gr.Markdown(studio.models, elem_id="models")


def prompt_column(gr, studio: Studio) -> dict:
    prompt = gr.Textbox(label="Prompt", placeholder="e.g. calm piano with soft strings", lines=1, max_lines=4,
                        elem_id="prompt", info=HELP["prompt"])
    with gr.Row():  # where the eye is after typing, above the fold on a laptop screen
        go = gr.Button("Generate new takes", variant="primary", elem_id="generate")
        stop = gr.Button("Stop", variant="stop", elem_id="stop")
    # where the eye is after the click: the first take plays here while the takes are made
    live = gr.Audio(label="Take 1, playing while it is made", streaming=True, autoplay=True, interactive=False,
                    visible=studio.streams, elem_id="live")
    message = gr.Markdown(elem_id="message")
    heard = gr.Markdown(pages.heard_markdown("") if studio.readable else "", elem_id="heard", visible=studio.readable)
    with gr.Row(visible=studio.readable):
        use_nano = gr.Button("Use nano's wording", size="sm", elem_id="use-nano")
        own_words = gr.Button("Back to my words", size="sm", elem_id="own-words")
    gr.Examples(pages.EXAMPLES, inputs=prompt)
    return dict(prompt=prompt, go=go, stop=stop, live=live, message=message, heard=heard, use_nano=use_nano,
                own_words_btn=own_words)


def take_settings(gr, studio: Studio) -> dict:
    max_dur = studio.service.max_duration_s
    num_clips = gr.Slider(1, MAX_CLIPS, value=4, step=1, label="Takes", elem_id="clips", info=HELP["clips"])
    duration = gr.Slider(0.5, max_dur, value=studio.default_seconds, step=0.5, label="Length (s)", elem_id="duration",
                         info=pages.length_help(max_dur, studio.service.window_s, studio.service.model.sample_rate))
    with gr.Row():
        seed = gr.Textbox(label="Seed", value="", max_lines=1, elem_id="seed", info=HELP["seed"])
        lock = gr.Checkbox(label="Lock seed", value=False, elem_id="lock-seed", info=HELP["lock"])
    temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Adventurousness (temperature)",
                            info=HELP["temperature"])
    return dict(num_clips=num_clips, duration=duration, seed=seed, lock=lock, temperature=temperature)


def blend_row(gr, studio: Studio) -> dict:
    first = studio.modes[0]
    with gr.Row():
        mode = gr.Radio([(m.label, m.key) for m in studio.modes], value=first.key, label="What the slider blends",
                        elem_id="mode")
        lam = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=first.slider, elem_id="lambda", info=first.help)
        with gr.Column(min_width=160):
            presets = [gr.Button(name, size="sm", elem_classes="preset") for name, _ in first.presets()]
    return dict(mode=mode, lam=lam, presets=presets, merge_info=gr.Markdown(elem_id="merge-info"),
                last_lam=gr.State(0.5))  # the session's last accepted λ, restored when a typed one is refused


def cfg_controls(gr, studio: Studio) -> dict:
    teacher = studio.teacher
    compare = gr.Checkbox(label="Also play the original model with guidance (CFG), side by side", value=False,
                          elem_id="compare", info=HELP["compare"])
    with gr.Row(visible=False) as cfg_row:
        guidance = gr.Slider(1.0, 10.0, value=teacher.guidance, step=0.25, label="Guidance strength (CFG γ)",
                             info=HELP["guidance"])
        negative = gr.Textbox(label="Steer away from (negative prompt; blank = unconditional)", value=teacher.negative)
        plausibility = gr.Slider(0.0, 0.5, value=teacher.plausibility, step=0.01,
                                 label="Plausibility mask α (0 = the paper's CFG)", info=HELP["plausibility"])
        top_p = gr.Slider(0.0, 0.99, value=teacher.top_p, step=0.01, label="Keep only the likeliest notes (top-p; 0 = "
                          "off)", info=HELP["top_p"])
    return dict(compare=compare, cfg_row=cfg_row, guidance=guidance, negative=negative, plausibility=plausibility,
                top_p=top_p)


def take_outputs(gr, studio: Studio) -> dict:
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Trained model (the slider's blend)")
            merged = [gr.Audio(label=f"Take {i + 1}", visible=False, type="filepath", elem_classes="merged-clip")
                      for i in range(MAX_CLIPS)]
        with gr.Column(visible=False) as base_col:
            gr.Markdown("### Original model + guidance (CFG)")
            base = [gr.Audio(label=f"Take {i + 1}", visible=False, type="filepath", elem_classes="base-clip")
                    for i in range(MAX_CLIPS)]
    with gr.Accordion("Longer takes and variations: continue a take, or new endings from a point", open=False):
        with gr.Row():
            take = gr.Number(1, label="Take", precision=0, minimum=1, maximum=MAX_CLIPS, elem_id="vary-take")
            from_s = gr.Textbox(label="From (s)", max_lines=1, elem_id="vary-from", info=HELP["from"])
            new_length = gr.Slider(0.5, studio.service.max_duration_s, value=studio.service.max_duration_s, step=0.5,
                                   label="New length (s)", elem_id="vary-length", info=HELP["new_length"])
        with gr.Row():
            extend = gr.Button("Continue this take", elem_id="continue")
            endings = gr.Button("New endings from here", elem_id="new-endings")
        vary_message = gr.Markdown(elem_id="vary-message")
    played, scores = gr.Markdown(elem_id="played"), gr.Markdown(elem_id="scores")
    with gr.Accordion("How different are the takes? (pairwise diversity heatmaps)", open=False):
        with gr.Row():
            heat_merged = gr.Image(label="Trained model: 0 = identical, 1 = unrelated (r_D)", type="pil")
            heat_base = gr.Image(label="Original + CFG (r_D)", type="pil", visible=False)
    with gr.Accordion("Quality vs diversity, against the measured fronts", open=False):
        qd = gr.Image(label="Quality vs diversity", type="pil",
                      value=pages.qd_figure(studio.fronts, None, studio.fronts_exact, studio.measured))
    files = gr.File(label="Download: all takes in one ZIP (FLAC: lossless, smaller), and each take as WAV",
                    file_count="multiple", elem_id="files")
    return dict(merged_audio=merged, base_audio=base, base_col=base_col, played=played, scores=scores,
                heat_merged=heat_merged, heat_base=heat_base, qd=qd, files=files, take=take, from_s=from_s,
                new_length=new_length, extend=extend, endings=endings, vary_message=vary_message,
                takes=gr.State(None),  # what the session's last takes were made of (engine.studio.Takes)
                shown_seed=gr.State(""))  # the seed the last takes showed in the seed box


def generate_tab(gr, studio: Studio) -> SimpleNamespace:
    with gr.Row():
        with gr.Column(scale=2):
            ui = prompt_column(gr, studio)
        with gr.Column():
            ui |= take_settings(gr, studio)
    ui |= blend_row(gr, studio) | cfg_controls(gr, studio)
    ui["info"] = gr.Markdown(elem_id="info")
    ui |= take_outputs(gr, studio)
    with gr.Accordion("About this app", open=False):
        gr.Markdown(pages.ABOUT + (pages.ABOUT_NANO if studio.readable else ""))
    with gr.Accordion("What nano knows (what a prompt can ask for)", open=False, visible=studio.readable):
        gr.Markdown(world_markdown())
    return SimpleNamespace(**ui)


def ab_tab(gr, studio: Studio) -> SimpleNamespace:
    gr.Markdown(pages.AB_INTRO)
    systems, max_dur = studio.systems(), studio.service.max_duration_s
    with gr.Row():
        ui = dict(prompt=gr.Textbox(label="Prompt", value="Rock song.", elem_id="pair-prompt"),
                  system_1=gr.Dropdown(systems, value=studio.teacher.label, label="System 1"),
                  system_2=gr.Dropdown(systems, value="merged λ=0.5", label="System 2"),
                  clips=gr.Slider(1, MAX_PAIR_CLIPS, value=2, step=1, label="Clips per set"),
                  duration=gr.Slider(0.5, max_dur, value=studio.default_seconds, step=0.5, label="Duration (s)"))
    with gr.Row():
        ui["make"] = gr.Button("New pair", variant="primary", elem_id="new-pair")
        ui["next"] = gr.Button("Next pair (same settings)", elem_id="next-pair")
    ui["token"] = gr.Textbox(visible=False)
    with gr.Row():
        for letter in "AB":
            with gr.Column():
                gr.Markdown(f"### Set {letter}")
                ui[f"set_{letter.lower()}"] = [gr.Audio(label=f"{letter}{i + 1}", visible=False, type="filepath")
                                               for i in range(MAX_PAIR_CLIPS)]
    with gr.Row():
        ui["vote_q"] = gr.Radio(list(VOTES), label="Better quality", elem_id="vote-quality")
        ui["vote_d"] = gr.Radio(list(VOTES), label="More diverse", elem_id="vote-diversity")
    ui["submit"] = gr.Button("Submit rating", elem_id="submit-rating", interactive=False)
    ui["reveal"] = gr.Markdown(elem_id="reveal")
    ui["api_pair"], ui["api_rate"] = gr.Button(visible=False), gr.Button(visible=False)  # the API's endpoints
    return SimpleNamespace(**ui)


def results_tab(gr, studio: Studio) -> SimpleNamespace:
    gr.Markdown(pages.RESULTS_INTRO)
    # a function as the value: Gradio calls it at every page load, so a new visitor sees the ratings so far
    table = gr.Dataframe(headers=TABLE_HEADERS, value=studio.results_table, interactive=False, elem_id="results")
    with gr.Row():
        refresh, export = gr.Button("Refresh"), gr.Button("Export CSV")
    return SimpleNamespace(table=table, refresh=refresh, export=export, file=gr.File(label="ratings.csv"))


# ---------------------------------------------------------------------- events
TAKE_PANELS = ("info", "scores", "heat_merged", "heat_base", "qd", "files", "seed", "played", "message")


def take_outputs_of(ui) -> list:
    """Every component a generation writes: defined once, for both the API endpoint and the button."""
    return ui.merged_audio + ui.base_audio + [getattr(ui, name) for name in TAKE_PANELS]


def render(gr, studio: Studio, ui, r: Result) -> dict:
    """A generation's values, by component (so no order has to match a list elsewhere)."""
    n = r.merged.audio.shape[0]
    files = {"merged": r.files[ARCHIVES:ARCHIVES + n], "base": r.files[ARCHIVES + n:]}  # first: the ZIPs of all
    out = {}
    for key, _, gen in r.sets():
        for i, player in enumerate(ui.merged_audio if key == "merged" else ui.base_audio):
            visible = gen is not None and i < gen.audio.shape[0]
            out[player] = gr.update(value=files[key][i] if visible else None, visible=visible)
    heat_m, heat_b = pages.heatmaps(r)
    values = dict(info=pages.summary_markdown(r), scores=pages.scores_markdown(r), heat_merged=heat_m,
                  heat_base=heat_b, qd=pages.qd_figure(studio.fronts, r, studio.fronts_exact, studio.measured),
                  files=r.files, seed=str(r.merged.seed),
                  played=pages.played_markdown(r) if studio.readable else "", message="")
    return out | {getattr(ui, name): values[name] for name in TAKE_PANELS}


def streamed(studio: Studio, ui, work):
    """work(tap): the takes, the first one heard while it is made where the page streams (`engine.stream`)."""
    live = studio.live_take()
    if live is None:
        return work(None)
    return (yield from live.play(work, lambda chunk: {ui.live: chunk}))


def wire_generate(gr, studio: Studio, ui) -> None:
    inputs = [ui.prompt, ui.num_clips, ui.duration, ui.seed, ui.temperature, ui.mode, ui.lam, ui.compare, ui.guidance,
              ui.negative, ui.plausibility, ui.top_p]
    outputs = take_outputs_of(ui)

    @handled("generate", api_error(gr))
    @pages.documented(pages.GENERATE_API)  # what the API page and MCP clients read
    def generate(prompt, num_clips, duration, seed, temperature, mode, lam, compare, guidance, negative,
                 plausibility, top_p, request: gr.Request,
                 progress=gr.Progress()):  # noqa: B008 (Gradio injects it from this default)
        return render(gr, studio, ui, studio.generate(
            prompt, num_clips, duration, seed, temperature, mode, lam, compare, guidance, negative, plausibility,
            top_p, _session(request), progress, submitted=_enqueued_at()))

    @handled("generate", in_place(ui.message, STOPPED, KEPT))
    def generate_ui(prompt, num_clips, duration, seed, lock, temperature, mode, lam, compare, guidance, negative,
                    plausibility, top_p, request: gr.Request,
                    progress=gr.Progress()):  # noqa: B008 (Gradio injects it from this default)
        """The button: new takes each press unless the seed is locked; a refusal or a Stop is a message in place,
        and the previous takes stay."""
        r = yield from streamed(studio, ui, lambda tap: studio.generate(
            prompt, num_clips, duration, seed if lock else None, temperature, mode, lam, compare, guidance, negative,
            plausibility, top_p, _session(request), progress, submitted=_enqueued_at(), tap=tap))
        yield render(gr, studio, ui, r) | session_state(r)

    def session_state(r: Result) -> dict:
        return {ui.takes: Takes.of(r), ui.vary_message: "", ui.shown_seed: str(r.merged.seed)}

    def vary(keep_all: bool):
        @handled("vary", in_place(ui.vary_message, STOPPED, KEPT))
        def vary_ui(takes, take, from_s, seconds, num_clips, seed, lock, temperature, mode, lam, request: gr.Request,
                    progress=gr.Progress()):  # noqa: B008 (Gradio injects it from this default)
            """Continue a take (from its end) or give it new endings (from the time typed), as new takes."""
            r = yield from streamed(studio, ui, lambda tap: studio.vary(
                takes, take, None if keep_all else from_s, seconds, num_clips, seed if lock else None, temperature,
                mode, lam, _session(request), progress, submitted=_enqueued_at(), tap=tap))
            yield render(gr, studio, ui, r) | session_state(r)
        return vary_ui

    # raw values reach the input layer (preprocess=False); the model-running endpoints share one limit
    models = dict(preprocess=False, concurrency_id="models", concurrency_limit=studio.concurrency)
    api_go = gr.Button(visible=False)  # /generate: the seed as sent, errors as errors (the button uses generate_ui)
    api_go.click(generate, inputs=inputs, outputs=outputs, api_name="generate", **models)
    button_inputs = inputs[:4] + [ui.lock] + inputs[4:]
    ui_outputs = outputs + [ui.takes, ui.vary_message, ui.shown_seed, ui.live]  # the session's state, the stream
    ui.go.click(generate_ui, inputs=button_inputs, outputs=ui_outputs, api_name=False, trigger_mode="always_last",
                **models)
    vary_inputs = [ui.takes, ui.take, ui.from_s, ui.new_length, ui.num_clips, ui.seed, ui.lock, ui.temperature,
                   ui.mode, ui.lam]
    for button, keep_all in ((ui.extend, True), (ui.endings, False)):
        button.click(vary(keep_all), vary_inputs, ui_outputs, api_name=False, trigger_mode="always_last", **models)

    def stop(request: gr.Request):
        """Stop the caller's own generation, running or waiting; its earlier takes stay."""
        return studio.stop(_session(request))

    # Stop reaches a queued or running job through the Studio's signal, which ends it with its own message and leaves
    # every earlier take in place (Gradio's `cancels` killed the task and could blank the outputs with "Error" badges).
    # The button writes nothing (a reply to it could arrive after the job's and hide it); /stop answers API callers.
    ui.stop.click(stop, None, None, api_name=False, queue=False)
    api_stop = gr.Button(visible=False)
    api_stop.click(stop, None, gr.Textbox(visible=False), api_name="stop", queue=False)
    ui.prompt.submit(generate_ui, inputs=button_inputs, outputs=ui_outputs, api_name=False,
                     trigger_mode="always_last", **models)
    # a seed typed or pasted (any value but the one the last takes showed) is the one to use: lock it
    ui.seed.change(lambda v, shown: gr.update(value=True) if (v or "").strip() not in ("", shown) else gr.update(),
                   [ui.seed, ui.shown_seed], ui.lock, api_name=False, queue=False)
    wire_blend(gr, studio, ui)
    ui.compare.change(lambda on: [gr.update(visible=on) for _ in range(3)], ui.compare,
                      [ui.cfg_row, ui.base_col, ui.heat_base], api_name=False, queue=False)
    ui.prompt.change(pages.heard_markdown, ui.prompt, ui.heard, api_name=False, queue=False)
    own_words = gr.State("")
    ui.use_nano.click(pages.nano_wording, ui.prompt, [ui.prompt, own_words], api_name=False, queue=False)
    ui.own_words_btn.click(lambda own, p: own or p, [own_words, ui.prompt], ui.prompt, api_name=False, queue=False)


def wire_blend(gr, studio: Studio, ui) -> None:
    """λ typed or dragged re-merges the weights (the last value wins); a refused λ (outside 0 … 1) is said in place and
    the slider goes back to the session's last accepted one, which the next Generate uses. The mode sets the slider's
    words and presets (greyed out where λ is unused); a preset sets λ and merges. /merge (the API) merges or raises."""
    api_merge = gr.Button(visible=False)
    api_merge.click(handled("merge", api_error(gr))(studio.merge), [ui.mode, ui.lam], ui.merge_info, api_name="merge",
                    preprocess=False)

    def merge_ui(mode, lam, last):
        try:
            return {ui.merge_info: studio.merge(mode, lam), ui.last_lam: float(lam)}
        except Exception as e:
            _, message = explain_failure("merge", e)
            return {ui.merge_info: f"⚠️ {message}. λ stays at {last:.2f}.", ui.lam: gr.update(value=last)}

    @handled("mode", api_error(gr))
    def mode_changed(mode):
        m = studio.mode(mode)
        presets = [gr.update(value=label, interactive=m.uses_lambda) for label, _ in m.presets()]
        return [gr.update(interactive=m.uses_lambda, info=m.help, label=m.slider)] + presets

    merging = dict(fn=merge_ui, inputs=[ui.mode, ui.lam, ui.last_lam], outputs=[ui.merge_info, ui.lam, ui.last_lam],
                   api_name=False, preprocess=False)
    ui.lam.input(trigger_mode="always_last", **merging)  # the user's own moves; a restored value does not re-fire
    ui.mode.change(mode_changed, ui.mode, [ui.lam, *ui.presets], api_name=False, queue=False).then(**merging)
    for button, (_, value) in zip(ui.presets, studio.modes[0].presets(), strict=True):
        button.click(lambda v=value: v, None, ui.lam, api_name=False, queue=False).then(**merging)
    ui.page.load(lambda mode, lam: studio.describe(mode, lam), [ui.mode, ui.lam], ui.merge_info, api_name=False,
                 queue=False)


def wire_ab(gr, studio: Studio, ab, results) -> None:
    pair_inputs = [ab.prompt, ab.system_1, ab.system_2, ab.clips, ab.duration]
    pair_sets = [ab.token] + ab.set_a + ab.set_b

    def make_pair(prompt, system_1, system_2, num_clips, duration) -> dict:
        """A blind pair: two sets of takes of one prompt, by two systems in a hidden order (A, B), and its token.

        Args:
            prompt: what to play, in words
            system_1: one system (a name from the page's list, e.g. "merged λ=0.5")
            system_2: the other system
            num_clips: takes per set, 1 to 4
            duration: each take's length in seconds
        """
        token, a, b = studio.new_pair(prompt, system_1, system_2, num_clips, duration)
        files, n = studio.write_pair(token, a, b), a.audio.shape[0]
        players = {p: gr.update(value=files[i] if i < n else None, visible=i < n) for i, p in enumerate(ab.set_a)}
        players |= {p: gr.update(value=files[n + i] if i < n else None, visible=i < n) for i, p in enumerate(ab.set_b)}
        return {ab.token: token, **players, ab.reveal: "Listen to both sets, then vote."}

    def open_votes(prompt, system_1, system_2, num_clips, duration) -> dict:
        """New pair from the UI: every vote cleared and open again (one update per component: Gradio pops the value
        out of an update it applies, so a shared one cleared only the first vote); a refusal is a message, the old
        pair stays."""
        return make_pair(prompt, system_1, system_2, num_clips, duration) | {
            ab.vote_q: gr.update(value=None, interactive=True), ab.vote_d: gr.update(value=None, interactive=True),
            ab.submit: gr.update(interactive=True)}

    def rate(token, quality, diversity, request: gr.Request, rater=None) -> dict:
        """A vote on a blind pair; reveals which system was A and which was B.

        Args:
            token: the pair's token, from make_pair
            quality: which set sounds better: "A", "B" or "tie"
            diversity: which set's takes differ more from each other: "A", "B" or "tie"
        """
        message = studio.rate(token, quality, diversity, rater_session(rater, _session(request)),
                              studio.addresses.of_request(request))
        return {ab.reveal: message, ab.token: "", results.table: studio.results_table()}

    def rate_ui(token, quality, diversity, rater, request: gr.Request) -> dict:
        """Submit from the UI, as the browser's rater: the votes close after one submit, so the pair cannot be rated
        twice; a refusal is a message and the Results table stays as it was."""
        out = rate(token, quality, diversity, request, rater)
        return out | {ab.reveal: out[ab.reveal] + " Press **Next pair** for another.",
                      **{c: gr.update(interactive=False) for c in (ab.vote_q, ab.vote_d, ab.submit)}}

    models = dict(preprocess=False, concurrency_id="models", concurrency_limit=studio.concurrency)
    ab.api_pair.click(handled("new_pair", api_error(gr))(make_pair), pair_inputs, pair_sets + [ab.reveal],
                      api_name="new_pair", **models)
    for button in (ab.make, ab.next):
        button.click(handled("new_pair", in_place(ab.reveal))(open_votes), pair_inputs,
                     pair_sets + [ab.vote_q, ab.vote_d, ab.submit, ab.reveal], api_name=False, **models)
    votes = [ab.token, ab.vote_q, ab.vote_d]
    ab.api_rate.click(handled("rate", api_error(gr))(rate), votes, [ab.reveal, ab.token, results.table],
                      api_name="rate", preprocess=False)
    ab.submit.click(handled("rate", in_place(ab.reveal))(rate_ui), votes + [ab.rater],
                    [ab.reveal, ab.token, results.table, ab.vote_q, ab.vote_d, ab.submit], api_name=False,
                    preprocess=False)
    results.refresh.click(studio.results_table, None, results.table, api_name="results")
    results.export.click(handled("export", api_error(gr))(studio.export_ratings), None, results.file,
                         api_name="export_ratings")


def build_ui(studio: Studio, file_lifetime: int = 3600):
    import gradio as gr  # noqa: PLC0415 (gradio takes seconds to import; only the UI needs it)

    # Gradio's copies of served files are deleted once `file_lifetime` old (checked every sixth of it), and at restart
    lifetime = max(inputs.whole("file lifetime", file_lifetime), 6)
    with gr.Blocks(title="Diversity-rewarded CFG distillation", delete_cache=(lifetime // 6, lifetime)) as demo:
        header(gr, studio)
        # one rater identity per browser, kept in its storage across page loads (a refresh is not a new rater); outside
        # the tabs, which Gradio mounts only when opened (one inside neither reads nor writes the storage before)
        secret = studio.ratings.browser_secret() if studio.ratings is not None else None
        rater = gr.BrowserState("", storage_key="cfg-distill-rater", secret=secret)
        with gr.Tab("Generate"):
            ui = generate_tab(gr, studio)
            ui.page = demo
        with gr.Tab("Blind A/B"):
            ab = ab_tab(gr, studio)
            ab.rater = rater
        with gr.Tab("Results"):
            results = results_tab(gr, studio)
        wire_generate(gr, studio, ui)
        wire_ab(gr, studio, ab, results)
        demo.load(rater_id, ab.rater, ab.rater, api_name=False, queue=False)  # a new browser gets its identity
    strict_arity(demo, gr.Error)
    return demo


# ---------------------------------------------------------------------- the server
def main(argv=None) -> None:
    from gradio.route_utils import FnIndexInferError  # noqa: PLC0415 (gradio takes seconds to import)
    from starlette.middleware import Middleware  # noqa: PLC0415 (a Gradio dependency; only the server needs it)

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    LOG.setLevel(logging.INFO)
    # a stop by SIGTERM (a service manager, Spaces, `kill`) exits like Ctrl-C, so the atexit clean-ups run and no
    # temporary folder is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    args = parse_args(argv)
    stale = sweep_dead_owners()
    if stale:
        LOG.info("removed %d temporary folder(s) of servers that died without cleaning up", len(stale))
    cache = private_gradio_cache()
    studio = threads.in_own_thread(make_studio, args)  # the main thread opens no OpenMP pool (engine.threads)
    demo = build_ui(studio, args.file_lifetime)
    addresses = studio.addresses
    if cache is not None:
        Janitor(cache, args.file_lifetime).start()
    # api_open=False: every model call goes through the queue (its limits and each client's share), none around it
    demo.queue(default_concurrency_limit=studio.concurrency, max_size=args.queue_size, api_open=False)
    LOG.info("serving on http://%s:%d (monitoring %s)", args.host, args.port, "on" if args.monitoring else "off")
    demo.launch(server_name=args.host, server_port=args.port, state_session_capacity=MAX_SESSIONS,
                enable_monitoring=args.monitoring, quiet=not args.monitoring, css=pages.CSS, head=pages.HEAD,
                mcp_server=args.mcp,  # the named endpoints as MCP tools, called back through the queue like any client
                max_file_size=MAX_UPLOAD,  # nothing here takes uploads: Gradio's upload route gets the smallest cap
                app_kwargs=dict(exception_handlers={KeyError: unknown_key, FnIndexInferError: unknown_key},
                                middleware=[Middleware(GuardMiddleware, sessions=lambda: waiting(demo),
                                                       in_flight=lambda address: jobs_of(demo, address, addresses),
                                                       share=args.client_share or None, addresses=addresses)]))


if __name__ == "__main__":
    main()
