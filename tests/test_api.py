"""The Python API (engine/api.py) on tiny models in Meta's format with the real Llama-2 tokenizer, a tiny
random CLIP and PyAV-written videos: `choose` gives eval.py's option scores for the same question and
features, the generation requests give ask.py's text, a second question on a video decodes nothing,
the batched forms equal one request at a time, and bad input is one InputError naming it."""
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from dataloader import benchmarks
from engine.api import QAConfig, TOPAVideoQA
from llama.build import ModelConfig
from text.prompts import VIDEO
from toyworld.videos import code_image, save_random_clip, write_frame_folder, write_video
from util.errors import DataError, MissingFileError, RequestError
from video.frames import Segments, Strided

from test_eval import eval_cmd, eval_main, read_preds, write_world



@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    root = write_world(tmp_path_factory.mktemp("api"), "llama2")
    write_video(root / "clip.mp4", 61, Fraction(25), (80, 60), code=False)
    write_video(root / "other.mp4", 45, Fraction(30), (64, 48), code=False)
    save_random_clip(root / "tiny-clip")
    return root


def make_api(root, **kw) -> TOPAVideoQA:
    model = ModelConfig(llama_model_path=str(root / "pretrained/llama2"), model="tiny", adapter_len=10,
                        max_feats=10, precision="fp32")
    cfg = QAConfig(model=model, resume=str(root / "vqa_checkpoint/topa.pth"), clip_model=str(root / "tiny-clip"),
                   memory_path=str(root / "data/textvid/memory.pkl"), device="cpu", **kw)
    return TOPAVideoQA(cfg, warn=lambda m: None)


@pytest.fixture(scope="module")
def qa(world):
    return make_api(world, batch_size=3)


@pytest.mark.parametrize("memory", [False, True])
def test_choose_equals_eval_py_scores(world, qa, memory, monkeypatch):
    out = f"results/api_{memory}"
    args = eval_cmd("--output_dir", out)
    if not memory:
        args.remove("--memory")
    eval_main(world, args, monkeypatch)
    preds = {p["qid"]: p for p in read_preds(world / out / "predictions_nextqa_val.jsonl")}
    records = benchmarks.get("nextqa").read(str(world / "data"), "val", False)
    feats = torch.load(world / "data/nextqa/clipvitl14.pth", weights_only=True)
    got = qa.choose_batch([(feats[r.vid], r.question, r.options) for r in records], memory=memory)
    assert len(got) == len(records) == len(preds)
    worst = 0.0
    for r, c in zip(records, got):
        p = preds[r.qid]
        worst = max(worst, float(np.abs(np.array(c.scores) - np.array(p["scores"])).max()))
        assert c.index == p["prediction"] and c.option == r.options[c.index]
        assert abs(sum(c.probabilities) - 1) < 1e-9 and int(np.argmax(c.probabilities)) == c.index
    assert worst <= 1e-5, worst
    one = qa.choose(feats[records[0].vid], records[0].question, records[0].options, memory=memory)
    assert np.abs(np.array(one.scores) - np.array(got[0].scores)).max() <= 1e-5


def ask_text(world, *request, memory=None):
    import ask as ask_script
    argv = [str(world / "clip.mp4"), *request, "--llama_model_path", str(world / "pretrained/llama2"), "--model",
            "tiny", "--llama2", "--adapter_len", "10", "--resume", str(world / "vqa_checkpoint/topa.pth"),
            "--clip_model", str(world / "tiny-clip"), "--memory_path", str(world / "data/textvid/memory.pkl"),
            "--device", "cpu", "--precision", "fp32"] + ({False: ["--no_memory"], None: []}[memory])
    return ask_script.main(ask_script.get_args(argv))


def test_generation_equals_ask_py_and_the_cache_decodes_once(world, capsys):
    qa = make_api(world)
    video = str(world / "clip.mp4")
    assert qa.describe(video).text == ask_text(world, "--describe")
    assert qa.stats == {"decoded": 1, "cache_hits": 0}
    assert qa.describe(video, memory=False).text == ask_text(world, "--describe", memory=False)
    assert qa.answer(video, "where is it", max_new_tokens=6).text == ask_text(world, "-q", "where is it",
                                                                              "--max_new_tokens", "6")
    opts = ["noise", "a cat", "a car"]
    a = qa.mvbench(video, "What is shown?", opts)
    line = ask_text(world, "-q", "What is shown?", "--options", *opts)
    assert line.startswith(f"({a.letter}) {opts[a.choice]}") and a.letter == "ABC"[a.choice]
    qa.choose(video, "What is shown?", opts)
    qa.loglikelihood(video, "Question: what is shown?\nAnswer:", " noise")
    # every request kind above read the one decoding (three frame rules, one pass)
    assert qa.stats == {"decoded": 1, "cache_hits": 5}
    capsys.readouterr()
    # a touched file with the same content is not decoded again; a changed one is; a second video is its own entry
    os.utime(video, ns=(1, 1))
    qa.describe(video)
    assert qa.stats == {"decoded": 1, "cache_hits": 6}
    write_video(world / "changed.mp4", 61, Fraction(25), (80, 60), code=True)
    os.replace(world / "changed.mp4", video)
    qa.describe(video)
    qa.describe(str(world / "other.mp4"))
    assert qa.stats["decoded"] == 3


def test_a_frame_folder_rewritten_in_place_is_decoded_again(world, tmp_path):
    """Issue 23: the cache keys a frame folder by its files (names, sizes, mtimes; then their content), not
    by the folder's own mtime, which stays the same when frames are rewritten in place."""
    folder = write_frame_folder(tmp_path / "frames", 40, size=(64, 48))
    qa = make_api(world)
    before = qa.features(str(folder)).frames("strided").features.clone()
    qa.features(str(folder))
    assert qa.stats == {"decoded": 1, "cache_hits": 1}
    st = os.stat(folder)
    for k in range(40):   # the same names, other pictures (frame k now shows the number k + 7)
        Image.fromarray(code_image(k + 7, (64, 48))).save(folder / f"{k + 1:05d}.jpg", quality=95)
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(folder).st_mtime_ns == st.st_mtime_ns
    after = qa.features(str(folder)).frames("strided").features
    assert qa.stats == {"decoded": 2, "cache_hits": 1}
    fresh = make_api(world).features(str(folder)).frames("strided").features   # a cache that never saw the old frames
    assert torch.equal(after, fresh) and not torch.allclose(after, before, atol=1e-3)
    for f in folder.iterdir():   # touched, same content: answered from the cache (its content digest)
        os.utime(f, ns=(1, 1))
    assert torch.equal(qa.features(str(folder)).frames("strided").features, fresh)
    assert qa.stats == {"decoded": 2, "cache_hits": 2}


def test_features_pick_the_protocol_frames(world, qa):
    f = qa.features(str(world / "clip.mp4"))
    assert f.fps == 25.0
    assert f.frames("segments").indices == Segments(10).indices(61, Fraction(25))
    assert f.frames("strided").indices == Strided(10).indices(61, Fraction(25))
    assert f.frames("fps1").indices == [0, 25, 50]   # 1 frame/s, all of them kept (fewer than T)
    s = f.frames("strided")
    assert s.times == [i / 25 for i in s.indices] and s.images.shape == (10, 224, 224, 3)
    assert s.features.shape == (10, 768)
    # the same frames as an array (decoded here with PyAV) give the same features
    with av.open(str(world / "clip.mp4")) as c:
        frames = np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)])
    g = qa.features(frames, fps=25)
    for rule in ("segments", "strided", "fps1"):
        assert g.frames(rule).indices == f.frames(rule).indices
        assert torch.allclose(g.frames(rule).features, f.frames(rule).features, atol=1e-5)
    # answers from an array, from features() and from the file agree
    assert qa.describe(frames).text == qa.describe(f).text == qa.describe(str(world / "clip.mp4")).text


def test_batched_equals_one_by_one(world, qa):
    v1, v2 = str(world / "clip.mp4"), str(world / "other.mp4")
    reqs = [(v1, "What is shown?", ["noise", "a cat"]), (v2, "what color is it", ["red", "blue", "green"]),
            (v1, "Is it day?", ["yes", "no", "maybe", "never"]), (v2, "who", ["me", "you"])]
    for batch, one in ((qa.choose_batch(reqs), [qa.choose(*r) for r in reqs]),
                       (qa.mvbench_batch(reqs), [qa.mvbench(*r) for r in reqs])):
        for b, o in zip(batch, one):
            assert vars(b).keys() == vars(o).keys()
            if hasattr(b, "scores"):
                assert b.index == o.index and np.abs(np.array(b.scores) - np.array(o.scores)).max() <= 1e-5
            else:
                assert (b.text, b.choice, b.free_letter) == (o.text, o.choice, o.free_letter)
    open_q = [(v1, "where is it"), (v2, "what happens"), (v1, "why")]
    assert [a.text for a in qa.answer_batch(open_q)] == [qa.answer(*r).text for r in open_q]
    assert [a.text for a in qa.describe_batch([v1, v2])] == [qa.describe(v).text for v in (v1, v2)]
    ll = [(v1, "Question: what is it?\nAnswer:", " a cat"), (v2, "Question: what is it? Answer: ", "a red car"),
          (v1, "Hello", " world and more words")]
    batch = qa.loglikelihood_batch(ll, with_greedy=True)
    for b, r in zip(batch, ll):
        o = qa.loglikelihood(*r, with_greedy=True)
        assert abs(b.mean - o.mean) <= 1e-5 and b.n_tokens == o.n_tokens and b.greedy == o.greedy
        assert abs(b.sum - b.mean * b.n_tokens) <= 1e-4


def test_loglikelihood_is_the_mean_nll_of_the_continuation(world, qa):
    v = str(world / "clip.mp4")
    got = qa.loglikelihood(v, "Question: what is it?\nAnswer:", " a cat", with_greedy=True)
    tok, model = qa.tok, qa.model
    prompt = [tok.bos_id] + tok.encode("Instruction: Predict the answer based on the video and question.\nVideo:")
    prompt += [VIDEO] * 10
    ctx = tok.encode("Question: what is it?\nAnswer:")
    full = tok.encode("Question: what is it?\nAnswer: a cat")
    assert full[:len(ctx)] == ctx
    seq = prompt + full
    video = qa._video(v, "loglikelihood", None)[0]
    tokens = torch.tensor([[0 if t == VIDEO else t for t in seq]])
    with torch.no_grad():
        h = model.hidden(tokens, torch.arange(len(seq))[None], None, video[None], torch.tensor([seq.index(VIDEO)]))
        logp = torch.log_softmax(model.logits(h[0]), -1)
    start = len(prompt) + len(ctx)
    nll = [-float(logp[i - 1, seq[i]]) for i in range(start, len(seq))]
    assert got.n_tokens == len(nll) and abs(got.mean - np.mean(nll)) <= 1e-5
    assert got.greedy == all(int(logp[i - 1].argmax()) == seq[i] for i in range(start, len(seq)))


def test_bad_input_is_one_error_naming_it(world, qa, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(DataError, match="broken.mp4: unreadable"):
        qa.describe(str(bad))
    with pytest.raises(MissingFileError, match="nowhere.mp4"):
        qa.answer(str(tmp_path / "nowhere.mp4"), "why?")
    short = write_video(tmp_path / "short.mp4", 4, 25, (64, 48))
    a = qa.mvbench(str(short), "What?", ["a", "b"])   # MVBench's segments take any length: frames repeat
    assert a.frames.indices == Segments(10).indices(4, Fraction(25)) == [0, 0, 1, 1, 1, 2, 2, 2, 2, 3]
    # and so does every kind: fewer frames than T are repeated, frame floor(i * 4 / 10)
    assert qa.describe(str(short)).frames.indices == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    with pytest.raises(RequestError, match="give 2 to 26 options"):
        qa.choose(str(world / "clip.mp4"), "What?", ["only one"])
    with pytest.raises(RequestError, match="option 1 is empty"):
        qa.mvbench(str(world / "clip.mp4"), "What?", ["a", " "])
    with pytest.raises(RequestError, match=r"\[n, 768\]"):
        qa.choose(torch.zeros(4, 5), "What?", ["a", "b"])
    nomem = make_api(world)
    nomem.cfg.memory_path = str(tmp_path / "none.pkl")
    with pytest.raises(MissingFileError, match="none.pkl.*--no_memory"):
        nomem.describe(str(world / "clip.mp4"))


def test_one_caller_at_a_time(world):
    """Threads share one instance: each call holds the lock, so answers equal those of sequential calls
    and the video is decoded once."""
    import threading
    qa = make_api(world)
    v = str(world / "other.mp4")
    want = make_api(world).describe(v).text
    got, errors = [], []

    def worker():
        try:
            got.append(qa.describe(v).text)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == [want] * 4 and qa.stats["decoded"] == 1
