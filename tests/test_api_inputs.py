"""The Python API's edge (engine/edge.py) on the demo's toy world (tiny random Llama-2-style model in
Meta's format, tiny random CLIP, H.264 examples; toyworld/demo.py): what a notebook, app.py or the
lmms-eval plugin may pass, and the one line each refusal is, the same through the API, the demo's page
(gradio_client) and lmms-eval. Every test here failed before the edge existed: the request was answered
(options split into letters, a repeated option, an empty or non-finite feature tensor, an image read as
H frames, float or int64 frames, memory="no" as True, max_new_tokens=0 as the default, a 30,000-word
question after half a minute), or refused by some request kinds only (a one-frame video), or failed
deep inside with an AttributeError or without the index of the bad request in a batch."""
import numpy as np
import pytest
import torch

from engine.api import QAConfig, TOPAVideoQA
from engine.asking import AskConfig
from llama.build import ModelConfig, context_length
from text.protocols import MSRVTT, OPEN_P2, prompt_ids
from toyworld.demo import EXAMPLES, TOY_SETTINGS, build_toy, example_frames, write_mp4
from util.errors import ConfigError, RequestError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_inputs")
    w = build_toy(root)
    frames = example_frames(*EXAMPLES["red_ball.mp4"], n=12)
    w.update(root=root, frames=frames, video=w["examples"][0],
             one_frame=str(write_mp4(root / "one_frame.mp4", frames[:1])))
    return w


def make_api(toy, **kw) -> TOPAVideoQA:
    """The API on a toyworld.demo.build_toy world (`kw`: more QAConfig settings); tests/test_infer.py's too."""
    model = ModelConfig(llama_model_path=toy["llama_model_path"], model=toy["model"], precision="fp32",
                        adapter_len=TOY_SETTINGS["adapter_len"], max_feats=TOY_SETTINGS["max_feats"])
    return TOPAVideoQA(QAConfig(model=model, resume=toy["resume"], clip_model=toy["clip_model"],
                                memory_path=toy["memory_path"], device="cpu", **kw), warn=lambda m: None)


@pytest.fixture(scope="module")
def qa(toy):
    return make_api(toy)


def refusal(call, *args, **kw) -> str:
    with pytest.raises(RequestError) as e:
        call(*args, **kw)
    line = str(e.value)
    assert "\n" not in line
    return line


# ---------------------------------------------------------------- wrong types and shapes

def test_options_given_as_one_string_are_refused(qa, toy):
    """They were read letter by letter ("abc" -> options a, b, c) and scored."""
    v = toy["video"]
    assert "options is one string ('a ball'): pass a list of strings" in refusal(qa.choose, v, "What moves?", "a ball")
    assert refusal(qa.mvbench_batch, [(v, "What moves?", ["a", "b"]), (v, "Which?", "ab")]).startswith(
        "request 1: options is one string ('ab')")


def test_a_repeated_option_is_refused_as_ask_py_refuses_it(qa, toy):
    """The API scored it; ask.py refused it. One rule (text.prompts.choice_problem), one message."""
    options = ["a ball", "a cat", "a ball "]
    with pytest.raises(ConfigError) as ask:
        AskConfig(video=toy["video"], question="What moves?", options=options)
    for call in (qa.choose, qa.mvbench):
        line = refusal(call, toy["video"], "What moves?", options)
        assert line == "options 0 and 2 are the same text 'a ball': the answer could not tell them apart"
        assert str(ask.value) == f"--options: {line}"
    assert refusal(qa.answer, toy["video"], "  ") == "the question text is empty"
    assert refusal(qa.choose, toy["video"], "Why?", ["a", ""]) == "option 1 is empty"


def test_feature_tensors_without_rows_or_with_non_finite_rows_are_refused(qa):
    """[0, 768] was answered (zero rows); a NaN row in the caller's features was blamed on "the
    checkpoint's tensors"."""
    assert "video features [0, 768] hold no row" in refusal(qa.choose, torch.zeros(0, 768), "Why?", ["a", "b"])
    feats = torch.randn(6, 768)
    feats[2, 5], feats[4, 0] = float("nan"), float("inf")
    line = refusal(qa.describe, feats)
    assert "row 2 is not finite (NaN or Inf; 2 such rows): the features passed in are broken" in line
    assert "checkpoint" not in line
    assert "floating point" in refusal(qa.describe, torch.ones(3, 768, dtype=torch.int64))
    # numpy features are read like torch ones
    assert qa.describe(feats.numpy()[:2]).text == qa.describe(feats[:2]).text


def test_an_image_and_frames_of_other_dtypes_are_refused_saying_what_to_pass(qa, toy):
    """A single image [H, W, 3] was read as H frames of W pixels; float frames (0..1) as an almost
    black video; int16 / int64 frames were cast silently. Each is refused with what to pass, and what it
    says to pass is answered."""
    frames = toy["frames"]
    image = frames[0]
    assert "video is a single image [144, 192, 3]" in refusal(qa.describe, image)
    assert "pass image[None] for a one-frame video" in refusal(qa.describe, image)
    assert "pass image.unsqueeze(0)" in refusal(qa.describe, torch.from_numpy(image))
    assert qa.describe(image[None]).text   # what it says to pass
    assert ("video frames are float32: pass uint8 RGB values 0..255 (for values in 0..1: "
            "(frames * 255).round().astype(np.uint8))") in refusal(qa.describe, frames.astype(np.float32) / 255)
    for dtype in (np.int16, np.int64):
        line = refusal(qa.answer, frames.astype(dtype), "what is it")
        assert f"video frames are {np.dtype(dtype)}: pass uint8 RGB values 0..255 (frames.astype(np.uint8)" in line
    assert "video frame 1 is float64: pass uint8" in refusal(qa.describe, [frames[0], frames[1] / 255.0])
    assert "RGB frames [n, H, W, 3] (channels last)" in refusal(qa.describe, frames.transpose(0, 3, 1, 2))
    assert "hold no frame" in refusal(qa.describe, frames[:0])
    # uint8 frames as torch, or as a list of PIL images, are the same video as the numpy array
    from PIL import Image
    want = qa.describe(frames).text
    assert qa.describe(torch.from_numpy(frames)).text == want
    assert qa.describe([Image.fromarray(f) for f in frames]).text == want


def test_flags_are_what_they_say(qa, toy):
    """memory="no" switched the memory projection on; max_new_tokens=0 generated the default length."""
    v = toy["video"]
    assert refusal(qa.describe, v, memory="no") == "memory must be True, False or None, not 'no'"
    assert refusal(qa.describe, v, max_new_tokens=0) == \
        "max_new_tokens must be an integer >= 1 (None: the protocol's), not 0"
    assert "not 2.5" in refusal(qa.answer, v, "why", max_new_tokens=2.5)
    assert "not True" in refusal(qa.mvbench, v, "why", ["a", "b"], max_new_tokens=True)
    assert refusal(qa.complete, v, "Q:", max_new_tokens=None) == "max_new_tokens must be an integer >= 1, not None"
    assert "frames must be one of segments, strided, fps1" in refusal(qa.choose, v, "Why?", ["a", "b"], frames="all")
    assert "with_greedy must be True or False" in refusal(qa.loglikelihood, v, "Q:", " a", with_greedy="yes")
    assert "fps must be a positive number" in refusal(qa.features, toy["frames"], fps=0)
    assert "memory must be True, False or None" in refusal(qa.check_memory, "describe", "off")
    assert "until must be a list of non-empty strings" in refusal(qa.complete, v, "Q:", until=[""])
    # right flags are taken (numpy's bool too); one string is one stop string, as a list of it
    qa.describe(v, memory=np.bool_(False), max_new_tokens=np.int64(2))
    assert qa.complete(v, "Question: what is it?\nAnswer:", until="\n", max_new_tokens=4).text == \
        qa.complete(v, "Question: what is it?\nAnswer:", until=["\n"], max_new_tokens=4).text


def test_wrong_types_name_the_argument(qa, toy):
    """None or a number as the question, an option, the video or the context raised AttributeError or
    TypeError from deep inside."""
    v = toy["video"]
    assert refusal(qa.answer, v, None) == "question must be a str, not NoneType"
    assert refusal(qa.choose, v, 42, ["a", "b"]) == "question must be a str, not int"
    assert refusal(qa.mvbench, v, "Why?", ["a", None]) == "option 1 must be a str, not NoneType"
    assert refusal(qa.choose, v, "Why?", {"a", "b"}) == "options must be a list or tuple of str, not set"
    assert refusal(qa.describe, None).startswith("video: NoneType is not a video; pass a path")
    assert refusal(qa.answer, 3, "why").startswith("video: int is not a video")
    assert "video frame 0 is str: a list holds frames" in refusal(qa.describe, [v])
    assert refusal(qa.complete, v, None) == "context must be a str, not NoneType"
    assert refusal(qa.loglikelihood, v, "Q:", 7) == "continuation must be a str, not int"
    assert refusal(qa.complete, v, "Q:", p1=b"x") == "p1 must be a str, not bytes"
    # a RequestError is a ValueError and a TypeError: code that caught those still does
    with pytest.raises(TypeError):
        qa.answer(v, None)


# ---------------------------------------------------------------- a huge question

def test_a_prompt_longer_than_the_context_is_refused_with_count_and_limit_before_any_compute(toy):
    """A question of tens of thousands of words took half a minute and gigabytes (or the kernel killed
    the process); now it is refused at once with its token count and the backbone's context (Llama-2:
    4096 positions), before anything is decoded or loaded."""
    qa = make_api(toy)
    limit = context_length(qa.cfg.model)
    assert limit == 4096
    v, T, tok = toy["video"], qa.T, qa.tok
    question = "where does the red ball roll " * 1000
    n = len(prompt_ids(tok, MSRVTT.p1, OPEN_P2.format(question=question.capitalize().strip() + "?"), T))
    assert n > limit
    line = refusal(qa.answer, v, question)
    assert line == (f"too long: the prompt is {n} tokens ({T} video positions included) + 20 new tokens = {n + 20}, "
                    f"over the backbone's context of {limit} positions; shorten the question")
    assert refusal(qa.choose, v, "Which?", ["a", question]).startswith("too long: the prompt is ")
    assert "shorten the context or the continuation" in refusal(qa.loglikelihood_batch, [(v, "Q:", " a"),
                                                                                          (v, "Q:", question)])
    assert refusal(qa.complete_batch, [(v, question)]).startswith("request 0: too long")
    # a continuation that adds no token is refused with the rest, before request 0's video is decoded
    assert refusal(qa.loglikelihood_batch, [(v, "Q:", " a"), (v, "Q:", "")]) == \
        "request 1: the continuation '' adds no token to the context"
    # a prompt that fits, with too many new tokens: the budget that fits is named
    short = len(prompt_ids(tok, MSRVTT.p1, MSRVTT.p2, T))
    assert refusal(qa.describe, v, max_new_tokens=limit).endswith(f"lower max_new_tokens to {limit - short} or less")
    assert qa._model is None and qa._clip is None and qa.stats == {"decoded": 0, "cache_hits": 0}


# ---------------------------------------------------------------- which request, which frames

def test_a_bad_request_in_a_batch_names_its_index(qa, toy):
    v = toy["video"]
    assert refusal(qa.choose_batch, [(v, "Why?", ["a", "b"]), (v, "Why?", ["a", "b"]), (v, "Why?", ["a", "a"])]) \
        .startswith("request 2: options 0 and 1 are the same text 'a'")
    assert refusal(qa.describe_batch, [v, v, None]).startswith("request 2: video: NoneType is not a video")
    assert refusal(qa.answer_batch, [(v, "why"), (v, "")]) == "request 1: the question text is empty"
    assert refusal(qa.loglikelihood_batch, [(v, "Q:", " a"), (v, "Q:")]) == \
        "request 1: a request is (video, context, continuation), got 2 items"
    assert refusal(qa.answer_batch, [v]) == "request 0: a request is (video, question), got str"
    assert refusal(qa.describe_batch, v).startswith("the requests must be a list (or tuple), not str")
    assert refusal(qa.describe_batch, [v, toy["frames"][0]]).startswith("request 1: video is a single image")


def test_a_video_of_one_frame_is_answered_by_every_request_kind(qa, toy):
    """It was refused by describe and answer (their frame rule needs T frames) and answered by the
    others; now every kind answers it (the strided rule repeats the frames of a shorter video), from the
    file, and from the one-frame array that the refusal of an image asks for."""
    v = toy["one_frame"]
    assert qa.describe(v).frames.indices == [0] * qa.T
    assert qa.answer(v, "what is it").frames.indices == [0] * qa.T
    assert qa.choose(v, "What moves?", ["a ball", "a cat"]).frames.indices == [0]
    assert qa.mvbench(v, "What moves?", ["a ball", "a cat"]).letter in "AB"
    assert qa.complete(v, "Question: what is it?\nAnswer:", max_new_tokens=3).frames.indices == [0] * qa.T
    assert np.isfinite(qa.loglikelihood(v, "Question: what is it?\nAnswer:", " a ball").mean)
    # a video of 4 frames (fewer than T = 10): frame floor(i * 4 / 10) for i < 10
    four = str(write_mp4(toy["root"] / "four.mp4", toy["frames"][:4]))
    assert qa.describe(four).frames.indices == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]


# ---------------------------------------------------------------- the same line through the demo and lmms-eval

@pytest.fixture(scope="module")
def served():
    """app.py's --toy app, served as its main serves it (app.running)."""
    pytest.importorskip("gradio_client")   # under TOPA_CI=1 a skip fails the test (tests/conftest.py)
    from gradio_client import Client

    import app as app_script
    from engine.serve import ServeConfig
    from test_app import free_port
    args = app_script.get_args(["--toy", "--device", "cpu"])
    with app_script.running(args, ServeConfig(toy=True, port=free_port())) as (app, url, _):
        client = Client(url, verbose=False)
        yield app, client
        client.close()


def test_the_demo_shows_the_api_refusal_as_it_is(served):
    from gradio_client.exceptions import AppError

    from test_app import ask
    app, client = served
    video = app.examples[0]
    cases = [("Multiple choice (MVBench letters)", "What moves?", ["a ball", "a ball"], app.qa.mvbench),
             ("Multiple choice", "What moves?", ["a ball", "a cat ", "a cat"], app.qa.choose),
             ("Open question", "where does the red ball roll " * 1000, [], app.qa.answer)]
    for mode, question, options, call in cases:
        want = refusal(call, video, question.strip(), *([options] if options else []))
        with pytest.raises(AppError) as e:
            ask(client, video, mode, question, options)
        assert str(e.value) == want, mode


def test_lmms_eval_stops_with_the_api_refusal(toy, tmp_path):
    """A task document whose options repeat: lmms-eval's run stops with the API's line (the batched form's,
    with the request's index), and writes no results; it was answered."""
    pytest.importorskip("lmms_eval")   # under TOPA_CI=1 a skip fails the test (tests/conftest.py)
    from test_lmms import run_lmms
    args = {"llama_model_path": toy["llama_model_path"], "model": "tiny", "adapter_len": "10",
            "resume": toy["resume"], "clip_model": toy["clip_model"], "memory_path": toy["memory_path"],
            "device": "cpu", "precision": "fp32"}
    p = run_lmms({"root": toy["root"], "args": args}, "topa_toy_repeated", tmp_path / "out")
    assert p.returncode != 0 and not list((tmp_path / "out").rglob("*_results.json")), (p.stdout + p.stderr)[-3000:]
    qa = make_api(toy)
    want = refusal(qa.mvbench_batch, [(str(toy["root"] / "red_ball.mp4"), "What moves?", ["a ball", "a ball"])])
    assert want == "request 0: options 0 and 1 are the same text 'a ball': the answer could not tell them apart"
    assert want in p.stdout + p.stderr
