"""A web demo of TOPA (Gradio): upload a video or pick an example, ask an open question, a multiple-choice
question or for a description, and see the answer, the option probabilities and the frames the model saw.

  python app.py --toy                # a random tiny model, written to a temporary folder; open http://127.0.0.1:7860
  python app.py --resume vqa_checkpoint/topa_llama2_7b.pth --llama_model_path pretrained/llama2/ --model 7B \\
      --memory_path data/textvid/memory.pkl --examples clip1.mp4 clip2.mp4

Needs the optional install: pip install -e ".[demo]". One model per process; requests run one at a time
(a queue). The flags are checked, and the port tried, before the model loads. Every file the server
writes (uploads, the frames it shows) lives in one temporary folder: a session's files are deleted when
it ends, a refused upload at once, the folder at shutdown (engine/serve.py). The answers come from the
Python API (engine/api.py), so they are the ones ask.py and eval.py give.
"""
import shutil
import sys
import tempfile
from contextlib import contextmanager
from typing import List, Optional

from engine.serve import ServeConfig, SessionFiles, start, wait
from text.prompts import LETTERS

MODES = ("Open question", "Multiple choice", "Multiple choice (MVBench letters)", "Describe")
KIND = {"Open question": "answer", "Multiple choice": "choose", "Multiple choice (MVBench letters)": "mvbench",
        "Describe": "describe"}   # the API request each mode makes
PROTOCOL = "as the benchmark's protocol"
MEMORY = {"protocol": None, "on": True, "off": False}   # the API's value of each choice
DEFAULT_QUESTION = "What is happening in the video?"
N_OPTIONS = 5
TITLE = "TOPA: ask a video"
TOY_NOTE = ("**This is a random toy model** (`--toy`): a tiny Llama with random weights, a random CLIP and a "
            "random TOPA checkpoint. The answers are random text; the page shows how the demo works, not what "
            "TOPA can do. Run with real weights for real answers.")
# Gradio marks every output of a failed request with a red "Error" badge; the one message of a refusal is
# its notice (top right), so the badges are hidden (the progress animation still shows).
CSS = "[data-testid='status-tracker']:has(> .error) { display: none !important; }"


def frame_choices() -> list:
    """(label, value) of the frame rules: the value is the API's rule name ("protocol": the request's)."""
    from engine.api import FRAME_RULES
    return [(PROTOCOL, "protocol"), *((label, name) for name, label in FRAME_RULES.items())]


def protocol_note(mode: str) -> str:
    """What "as the benchmark's protocol" means for a request kind (engine/api.py's table)."""
    from engine.api import FRAME_RULES, KINDS
    kind = KINDS[KIND[mode]]
    how = "every option scored, no generation" if mode == "Multiple choice" else "greedy generation"
    return (f"*{PROTOCOL.capitalize()}* for **{mode}**: memory {'on' if kind.memory else 'off'}, "
            f"frames: {FRAME_RULES[kind.rule]}, {how} (engine/api.py).")


def caption(index: int, time: float) -> str:
    return f"#{index} · {time:.1f} s"


class DemoApp:
    """The page and its handlers around one TOPAVideoQA; `files` knows which session holds which file
    (default: a folder of its own, deleted by close())."""

    def __init__(self, qa, examples=(), toy: bool = False, max_upload_mb: float = 200.0, title: str = TITLE,
                 files: Optional[SessionFiles] = None):
        self.qa, self.examples, self.toy, self.title = qa, [str(e) for e in examples], toy, title
        self.files = files or SessionFiles(tempfile.mkdtemp(prefix="topa_demo_"))
        self.max_upload_mb = max_upload_mb
        self.demo = None   # build()

    def close(self):
        self.files.close()

    # ---- the request ----
    def ask(self, video, mode, question, *rest, request=None):
        """-> (chat history, the answer, the probability chart, the frame gallery). A refusal is a gr.Error
        (its one line in the page, no traceback in the server's log)."""
        import gradio as gr

        from util.errors import InputError, one_line
        session = getattr(request, "session_hash", None)
        options = [o.strip() for o in rest[:N_OPTIONS] if o and o.strip()]
        memory, frames, max_new, history = rest[N_OPTIONS:]
        question = (question or "").strip()
        try:
            path = self.check_video(video, session)
            if mode != "Describe" and not question:
                raise gr.Error("Type a question.", print_exception=False)
            if mode.startswith("Multiple choice") and len(options) < 2:
                raise gr.Error("Multiple choice needs at least two options.", print_exception=False)
            feats = self.read(path, session)
            kw = {"memory": MEMORY[memory], "frames": None if frames == "protocol" else frames}
            if mode != "Multiple choice" and max_new:
                kw["max_new_tokens"] = int(max_new)
            a, text, shown, chart = self.request(feats, mode, question, options, kw)
        except InputError as e:
            raise gr.Error(one_line(e), print_exception=False) from None
        history = list(history or []) + [{"role": "user", "content": shown}, {"role": "assistant", "content": text}]
        return (history, text, gr.update(value=self._chart(chart), visible=chart is not None),
                self.gallery(a.frames, session))

    def request(self, feats, mode, question, options, kw):
        """The API call of `mode` -> (its result, the answer's text, the question as the chat shows it, chart)."""
        listed = question + "".join(f"\n({LETTERS[k]}) {o}" for k, o in enumerate(options))
        if mode == "Describe":
            a = self.qa.describe(feats, **kw)
            return a, a.text, "Describe this video.", None
        if mode == "Open question":
            a = self.qa.answer(feats, question, **kw)
            return a, a.text, question, None
        if mode == "Multiple choice":
            a = self.qa.choose(feats, question, options, **kw)
            chart = {"option": [f"({LETTERS[k]}) {o}" for k, o in enumerate(options)], "probability": a.probabilities}
            return a, f"({a.letter}) {a.option}", listed, chart
        a = self.qa.mvbench(feats, question, options, **kw)
        text = f"({a.letter}) {options[a.choice]}"
        if a.free_letter != a.letter:
            text += f" (generated freely: {a.text!r})"
        return a, text, listed, None

    # ---- the video ----
    def check_video(self, path: Optional[str], session: Optional[str]) -> str:
        """The upload's path, or a gr.Error (and a refused upload is deleted at once)."""
        import os
        from pathlib import Path

        import gradio as gr

        from video.frames import IMAGE_EXTS, VIDEO_EXTS
        if not path:
            raise gr.Error("Upload a video (or pick an example) first.", print_exception=False)
        name, ext = Path(path).name, Path(path).suffix.lower()
        if not os.path.exists(path):
            raise gr.Error(f"{name} is no longer on the server (its session ended); upload it again.",
                           print_exception=False)
        why = None
        if ext not in VIDEO_EXTS:
            kind = "an image" if ext in IMAGE_EXTS else f"a '{ext or 'no extension'}' file"
            why = f"{name} is {kind}, not a video ({', '.join(VIDEO_EXTS)})."
        elif os.path.getsize(path) > self.max_upload_mb * 2 ** 20:
            why = f"{name} is {os.path.getsize(path) / 2 ** 20:.1f} MB, over the {self.max_upload_mb:g} MB limit."
        if why:
            self.files.reject(session, path)
            raise gr.Error(why, print_exception=False)
        self.files.hold(session, path)
        return path

    def read(self, path: str, session: Optional[str]):
        """The video's features (decoded once, then cached); a video that gives no frames at all is refused."""
        from util.errors import InputError
        try:
            feats = self.qa.features(path)
        except InputError:
            self.files.reject(session, path)
            raise
        if all(isinstance(r, Exception) for r in feats.rules.values()):
            self.files.reject(session, path)
        return feats

    # ---- the answer ----
    @staticmethod
    def _chart(chart):
        import pandas as pd
        return pd.DataFrame(chart or {"option": [], "probability": []})

    def gallery(self, frames, session: Optional[str]) -> List[tuple]:
        """The crops CLIP saw, written once into a fresh folder of the session (engine/serve.py says why)."""
        if frames is None or frames.images is None:
            return []
        from PIL import Image
        folder = self.files.frames_folder(session)
        out = []
        for k, (img, i, t) in enumerate(zip(frames.images, frames.indices, frames.times)):
            path = folder / f"{k:03d}.webp"
            Image.fromarray(img).save(path, quality=90)
            out.append((str(path), caption(i, t)))
        return out

    def end_session(self, request=None):
        self.files.end(getattr(request, "session_hash", None))

    # ---- the page ----
    def build(self):
        import gradio as gr
        with gr.Blocks(title=self.title) as demo:
            gr.Markdown(f"# {self.title}\nTOPA (text-only pre-alignment) answers from the CLIP features of a few "
                        f"frames. Upload a video (or pick an example), choose what to ask, press **Ask**; "
                        f"follow-up questions on the same video reuse its decoded frames.")
            if self.toy:
                gr.Markdown(TOY_NOTE, elem_id="toy-note")
            with gr.Row():
                with gr.Column(scale=1):
                    video = gr.Video(label="Video", sources=["upload"], elem_id="video")
                    mode = gr.Radio(list(MODES), value=MODES[0], label="Request", elem_id="mode")
                    question = gr.Textbox(label="Question", value=DEFAULT_QUESTION, elem_id="question")
                    with gr.Group(visible=False) as option_box:
                        options = [gr.Textbox(label=f"Option {LETTERS[k]}", elem_id=f"option-{k}")
                                   for k in range(N_OPTIONS)]
                    if self.examples:
                        gr.Examples([[e, DEFAULT_QUESTION] for e in self.examples], inputs=[video, question],
                                    label="Examples (a video and a question: click one, then Ask)")
                    with gr.Accordion("Settings", open=False):
                        note = gr.Markdown(protocol_note(MODES[0]), elem_id="protocol")
                        memory = gr.Radio([(PROTOCOL if k == "protocol" else k, k) for k in MEMORY], value="protocol",
                                          label="Memory (project the frames onto the text memory)", elem_id="memory")
                        frames = gr.Dropdown(frame_choices(), value="protocol", label="Frames", elem_id="frames")
                        max_new = gr.Slider(0, 64, value=0, step=1, label=f"New tokens (0: {PROTOCOL})")
                    ask = gr.Button("Ask", variant="primary", elem_id="ask")
                with gr.Column(scale=1):
                    answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                    chart = gr.BarPlot(x="option", y="probability", y_lim=[0, 1], title="Option probabilities",
                                       visible=False, elem_id="chart")
                    gallery = gr.Gallery(label="The frames the model saw (frame number · time)", columns=5,
                                         height="auto", elem_id="gallery")
                    chat = gr.Chatbot(label="This video's questions", elem_id="chat", height=300)
            mode.change(lambda m: (gr.update(visible=m.startswith("Multiple choice")),
                                   gr.update(visible=m != "Describe"), protocol_note(m)),
                        mode, [option_box, question, note], api_name=False)
            video.change(lambda v: ([], "", [], gr.update(visible=False)), video, [chat, answer, gallery, chart],
                         api_name=False)

            def uploaded(video, request: gr.Request):   # held by the session (or refused) at once, not at Ask
                self.check_video(video, getattr(request, "session_hash", None))

            video.upload(uploaded, video, None, api_name=False, show_progress="hidden")

            def handler(video, mode, question, o1, o2, o3, o4, o5, memory, frames, max_new, history,
                        request: gr.Request):
                return self.ask(video, mode, question, o1, o2, o3, o4, o5, memory, frames, max_new, history,
                                request=request)

            ask.click(handler, [video, mode, question, *options, memory, frames, max_new, chat],
                      [chat, answer, chart, gallery], api_name="ask")

            def unload(request: gr.Request):
                self.end_session(request)

            demo.unload(unload)
        demo.queue(default_concurrency_limit=1)
        self.demo = demo
        return demo

    def launch_options(self) -> dict:
        """launch()'s page options: the theme (Gradio's default with a complete bold font: its bundled
        600-weight Source Sans Pro holds a few glyphs only, so headings mixed two fonts, "TOPᴀ"), the CSS,
        and the example files Gradio may read."""
        import gradio as gr
        fonts = gr.themes.LocalFont("Source Sans Pro", weights=(400, 700)), "ui-sans-serif", "system-ui", "sans-serif"
        mono = gr.themes.LocalFont("IBM Plex Mono", weights=(400, 700)), "ui-monospace", "monospace"
        return {"theme": gr.themes.Default(font=fonts, font_mono=mono), "css": CSS, "allowed_paths": self.examples}


def parser():
    from engine.config import add_api_args, add_model_args
    from util.settings import add_flags, make_parser
    return add_model_args(add_api_args(add_flags(make_parser(__doc__), ServeConfig)))


def get_args(argv=None):
    return parser().parse_args(argv)


def build_app(args, cfg: ServeConfig, files: SessionFiles, toy_root: Optional[str] = None) -> DemoApp:
    """The app of the parsed flags and their ServeConfig `cfg` (the model loaded); with --toy the toy world is
    written to `toy_root` first."""
    from engine.api import TOPAVideoQA
    from engine.config import QAConfig
    examples: List[str] = list(cfg.examples)
    if cfg.toy:   # toyworld/ is test support, not runtime code: --toy is the one runtime use of it
        from toyworld.demo import build_toy, toy_flags
        world = build_toy(toy_root)
        for flag, value in toy_flags(world).items():
            setattr(args, flag, value)
        examples += world["examples"]
    qa = TOPAVideoQA(QAConfig.from_args(args), warn=lambda m: print(m, file=sys.stderr, flush=True)).load()
    return DemoApp(qa, examples, toy=cfg.toy, max_upload_mb=cfg.max_upload_mb,
                   title="TOPA demo: random toy model" if cfg.toy else TITLE, files=files)


@contextmanager
def running(args, cfg: ServeConfig):
    """The app of the flags, served in the background for the block -> (app, local URL, public URL or None);
    however the block ends, the server stops and its folder (and a --toy world) is deleted."""
    files, demo = SessionFiles.create(), None
    toy_root = tempfile.mkdtemp(prefix="topa_toy_") if cfg.toy else None
    try:
        app = build_app(args, cfg, files, toy_root)
        demo = app.build()
        files.seal()
        yield (app, *start(demo, cfg, **app.launch_options()))
    finally:
        if demo is not None:
            demo.close(verbose=False)
        files.close()
        if toy_root:
            shutil.rmtree(toy_root, ignore_errors=True)


def main(args):
    cfg = ServeConfig.from_args(args)
    cfg.check_address()
    with running(args, cfg) as (app, url, share_url):
        print(f"app.py: serving on {url}" + (f" and {share_url}" if share_url else " (--share: a public gradio.live "
              "link too)") + "; Ctrl-C or SIGTERM stops it", flush=True)
        wait(app.demo)


if __name__ == "__main__":
    from util.errors import run_cli
    run_cli(main, get_args(), "app.py")
