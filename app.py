"""A web demo of TOPA (Gradio): ask about a video, see the answer and the frames the model saw.

Upload a video or pick an example, ask an open question, a multiple-choice question or for a
description, and see the answer, the option probabilities and the frames the model saw.

  python app.py --resume vqa_checkpoint/topa_llama2_7b.pth --llama_model_path pretrained/llama2/ --model 7B \\
      --memory_path data/textvid/memory.pkl            # then open http://127.0.0.1:7860
  python app.py --toy                                   # a random tiny model, built in a temporary folder

Needs the optional install: pip install -e ".[demo]". One model per process; requests run one at a time
(a queue); uploads are deleted when their browser session ends. The answers come from the Python API
(engine/api.py), so they are the ones ask.py and eval.py give.
"""
import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional, Set

from engine.api import FRAME_RULES, QAConfig, TOPAVideoQA, add_api_args
from engine.config import add_model_args
from util.errors import InputError, one_line
from video.frames import IMAGE_EXTS, VIDEO_EXTS

MODES = ("Open question", "Multiple choice", "Multiple choice (MVBench letters)", "Describe")
MEMORY = {"protocol's": None, "on": True, "off": False}
FRAMES = {"protocol's": None, **{v: k for k, v in FRAME_RULES.items()}}
N_OPTIONS = 5
TOY_NOTE = ("**This is a random toy model** (`--toy`): a tiny Llama with random weights, a random CLIP and a "
            "random TOPA checkpoint. The answers are random text; the page shows how the demo works, not what "
            "TOPA can do. Run with real weights for real answers.")


class DemoApp:
    """The page and its handlers around one TOPAVideoQA."""

    def __init__(self, qa: TOPAVideoQA, examples=(), toy: bool = False, max_upload_mb: float = 200.0,
                 title: str = "TOPA: ask a video"):
        self.qa, self.examples, self.toy, self.title = qa, [str(e) for e in examples], toy, title
        self.max_upload_mb = max_upload_mb
        self.sessions: Dict[str, Set[str]] = {}   # session -> its uploaded files (deleted when it ends)
        self._sessions_lock = threading.Lock()

    # ---- checks ----
    def check_video(self, path: Optional[str]) -> str:
        import gradio as gr
        if not path:
            raise gr.Error("Upload a video (or pick an example) first.")
        ext = Path(path).suffix.lower()
        if ext not in VIDEO_EXTS:
            kind = "an image" if ext in IMAGE_EXTS else f"a '{ext or 'no extension'}' file"
            raise gr.Error(f"{Path(path).name} is {kind}, not a video ({', '.join(VIDEO_EXTS)}).")
        size = os.path.getsize(path) / 2 ** 20
        if size > self.max_upload_mb:
            raise gr.Error(f"{Path(path).name} is {size:.0f} MB, over the {self.max_upload_mb:g} MB limit.")
        return path

    # ---- the request ----
    def ask(self, video, mode, question, *rest, request=None):
        """-> (chat history, the answer, the probability chart, the frame gallery)."""
        import gradio as gr
        options = [o.strip() for o in rest[:N_OPTIONS] if o and o.strip()]
        memory, frames, max_new, history = rest[N_OPTIONS:]
        path = self.check_video(video)
        self._remember(request, path)
        kw = {"memory": MEMORY.get(memory), "frames": FRAMES.get(frames)}
        if mode != "Multiple choice" and max_new:
            kw["max_new_tokens"] = int(max_new)
        question = (question or "").strip()
        if mode != "Describe" and not question:
            raise gr.Error("Type a question.")
        if mode.startswith("Multiple choice") and len(options) < 2:
            raise gr.Error("Multiple choice needs at least two options.")
        try:
            if mode == "Describe":
                a, shown, chart = self.qa.describe(path, **kw), "Describe this video.", None
                text = a.text
            elif mode == "Open question":
                a, shown, chart = self.qa.answer(path, question, **kw), question, None
                text = a.text
            elif mode == "Multiple choice":
                a = self.qa.choose(path, question, options, **kw)
                text = f"({a.letter}) {a.option}"
                chart = {"option": [f"({'ABCDE'[k]}) {o}" for k, o in enumerate(options)],
                         "probability": a.probabilities}
                shown = question + "\n" + "\n".join(f"({'ABCDE'[k]}) {o}" for k, o in enumerate(options))
            else:
                a = self.qa.mvbench(path, question, options, **kw)
                text = f"({a.letter}) {options[a.choice]}"
                if a.free_letter != a.letter:
                    text += f" (generated freely: {a.text!r})"
                shown, chart = question + "\n" + "\n".join(f"({'ABCDE'[k]}) {o}" for k, o in enumerate(options)), None
        except InputError as e:
            raise gr.Error(one_line(e)) from None
        history = list(history or []) + [{"role": "user", "content": shown}, {"role": "assistant", "content": text}]
        return (history, text, gr.update(value=self._chart(chart), visible=chart is not None),
                self._gallery(a.frames))

    @staticmethod
    def _chart(chart):
        import pandas as pd
        return pd.DataFrame(chart or {"option": [], "probability": []})

    @staticmethod
    def _gallery(frames):
        if frames is None:
            return []
        return [(img, f"frame {i} · {t:.2f} s") for img, i, t in zip(frames.images, frames.indices, frames.times)]

    # ---- uploads ----
    def _remember(self, request, path: str):
        """Files under Gradio's upload folder belong to the session that sent them."""
        session = getattr(request, "session_hash", None)
        if session is None or path in self.examples:
            return
        with self._sessions_lock:
            self.sessions.setdefault(session, set()).add(path)

    def end_session(self, request=None):
        """The browser session ended: delete its uploads (and their folders when empty)."""
        session = getattr(request, "session_hash", None)
        with self._sessions_lock:
            paths = self.sessions.pop(session, set())
        for p in paths:
            try:
                os.remove(p)
                os.rmdir(os.path.dirname(p))
            except OSError:
                pass

    # ---- the page ----
    def build(self):
        import gradio as gr
        with gr.Blocks(title=self.title, delete_cache=(3600, 3600)) as demo:
            gr.Markdown(f"# {self.title}\nTOPA (text-only pre-alignment) answers from the CLIP features of a few "
                        f"frames. Upload a video, choose what to ask, press **Ask**; follow-up questions on the "
                        f"same video reuse its decoded frames.")
            if self.toy:
                gr.Markdown(TOY_NOTE, elem_id="toy-note")
            with gr.Row():
                with gr.Column(scale=1):
                    video = gr.Video(label="Video", sources=["upload"], elem_id="video")
                    if self.examples:
                        gr.Examples(self.examples, inputs=[video], label="Examples")
                    mode = gr.Radio(list(MODES), value=MODES[0], label="Request", elem_id="mode")
                    question = gr.Textbox(label="Question", placeholder="What is happening?", elem_id="question")
                    with gr.Group(visible=False) as option_box:
                        options = [gr.Textbox(label=f"Option {'ABCDE'[k]}", elem_id=f"option-{k}")
                                   for k in range(N_OPTIONS)]
                    with gr.Accordion("Settings", open=False):
                        memory = gr.Radio(list(MEMORY), value="protocol's", label="Memory projection")
                        frames = gr.Dropdown(list(FRAMES), value="protocol's", label="Frames")
                        max_new = gr.Slider(0, 64, value=0, step=1, label="Max new tokens (0: the protocol's)")
                    ask = gr.Button("Ask", variant="primary", elem_id="ask")
                with gr.Column(scale=1):
                    answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                    chart = gr.BarPlot(x="option", y="probability", y_lim=[0, 1], title="Option probabilities",
                                       visible=False, elem_id="chart")
                    gallery = gr.Gallery(label="The frames the model saw", columns=5, height="auto",
                                         elem_id="gallery")
                    chat = gr.Chatbot(label="This video's questions", elem_id="chat", height=300)
            mode.change(lambda m: (gr.update(visible=m.startswith("Multiple choice")),
                                   gr.update(visible=m != "Describe")), mode, [option_box, question],
                        api_name=False)
            video.change(lambda v: ([], "", [], gr.update(visible=False)), video, [chat, answer, gallery, chart],
                         api_name=False)

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
        return demo


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_argument_group("demo")
    g.add_argument("--toy", action="store_true",
                   help="build a random tiny model (and example videos) in a temporary folder and serve it")
    g.add_argument("--port", type=int, default=7860)
    g.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    g.add_argument("--share", action="store_true", help="a public gradio.live link (off by default)")
    g.add_argument("--examples", nargs="*", default=[], help="example videos shown under the upload box")
    g.add_argument("--max_upload_mb", type=float, default=200.0, help="largest accepted upload")
    add_api_args(p)
    add_model_args(p)
    return p.parse_args(argv)


def build_app(args, toy_root: Optional[str] = None) -> DemoApp:
    """The app of the parsed flags; with --toy the toy world is written to `toy_root` first."""
    examples: List[str] = list(args.examples)
    if args.toy:
        from toyworld.demo import TOY_SETTINGS, build_toy
        w = build_toy(toy_root)
        args.llama_model_path, args.model, args.clip_model = w["llama_model_path"], w["model"], w["clip_model"]
        args.resume, args.memory_path = w["resume"], w["memory_path"]
        args.adapter_len, args.max_feats = TOY_SETTINGS["adapter_len"], TOY_SETTINGS["max_feats"]
        args.llama3 = False
        examples += w["examples"]
    qa = TOPAVideoQA(QAConfig.from_args(args), warn=lambda m: print(m, file=sys.stderr, flush=True)).load()
    return DemoApp(qa, examples, toy=args.toy, max_upload_mb=args.max_upload_mb,
                   title="TOPA demo: random toy model" if args.toy else "TOPA: ask a video")


def main(args):
    toy_root = tempfile.mkdtemp(prefix="topa_toy_") if args.toy else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` also removes the toy world
    try:
        app = build_app(args, toy_root)
        demo = app.build()
        demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                    max_file_size=f"{args.max_upload_mb:g}mb", allowed_paths=app.examples)
    finally:
        if toy_root:
            shutil.rmtree(toy_root, ignore_errors=True)


if __name__ == "__main__":
    from util.errors import run_cli
    run_cli(main, get_args(), "app.py")
