"""A synthetic world in which TOPA's text-only pre-alignment, and the memory projection at test time,
can be watched on a CPU in minutes with a tiny Llama.

    python -m toyworld.synthetic --out DIR [--seed 0] [--n_textvid 500] [--n_nextqa 150] [--n_egos 150]

writes the layout a user would have (docs/formats.md):

    DIR/pretrained/llama2/tokenizer.model          self-trained SentencePiece (Llama-2 style)
    DIR/pretrained/llama2/tiny/                    params.json + consolidated.00.pth (random, bf16)
    DIR/data/textvid/textvid.json                  tideos (frames as text, QAs, global caption)
    DIR/data/textvid/features/<idx>.pkl            CLIP-like *text* features, one row per frame entry
    DIR/data/textvid/memory.pkl                    [N, 768] unit-norm text features (fp16, plain pickle)
    DIR/data/nextqa/{val,train}.csv + clipvitl14.pth   NExT-QA layout, CLIP-like *image* features
    DIR/data/egos/val.csv + features/<uid>.npy     EgoSchema layout, image features
    DIR/synthetic_world.json                       what was written (paths relative to DIR, counts)

so `--llama_model_path DIR/pretrained/llama2/ --model tiny` and the data paths under `DIR/data` work as
for the real models and benchmarks.

The world
---------
* Concepts: 12 subjects ("dog", "girl", ...), 10 actions ("running", ...), 8 places ("park", ...),
  5 counts ("one" .. "five"), 10 things ("cup", ...). Each has a random unit direction `d_c` in a 768-d
  "CLIP space" (nearly orthogonal). The world has regularities, as real text does: each subject
  does 5 of the actions and is found in 3 of the places (`SUBJECTS`).
* Videos: `count` copies of a subject in one of its places doing three of its actions in turn (three
  segments; the middle frame is in segment 1), and in one segment going toward a thing. A frame's
  content is {subject, count, action, place} (+ thing). Segments are long enough that the 10 frames
  that evaluation samples always see all three.
* Text features (TextVid, memory): one row per entry of a frame's dict ("caption" names every concept
  of the frame; the optional "object", "action", "place" entries only theirs):
  `normalize(mu + s * sum_c d_c + small noise)`, `mu` a shared text mean (CLIP text features sit in
  a narrow cone).
* Image features (NExT-QA, EgoSchema; one row per frame): the same content plus a fixed *modality gap*
  (a random offset larger than the content, with a small bias along every concept direction), plus
  background clutter (2 random other subjects/actions/places at 0.6 weight) and more noise,
  normalised. Cosine between a frame's image and text features is ~0.35 (real CLIP ViT-L/14 pairs: ~0.3).
* The memory (`memory.pkl`) holds every TextVid text row plus one description of every possible frame
  (9,900 rows; a dense memory, as the real 1M-caption one is for real text). `softmax(100 v M^T) M` is
  a sharp soft nearest neighbour: the gap shifts `v . m` about equally for every row, so the winners
  are the rows that share the frame's concepts, and clutter that the world's text never combines with
  them cannot win. Their mean is a clean text feature with the frame's content: cosine to the frame's
  true text feature goes from ~0.35 (raw image) to ~0.95 (projected). So a reader trained on text
  features only gets in-distribution input again without losing the content.
* Questions (TextVid and both benchmarks) are answerable only from the video: 8 families, one per
  NExT-QA type: DO subject, DL place, DC count, TC action in the middle, TN action after X,
  TP action before X, CW why (to reach which thing), CH how (by which action). Action questions
  always offer the subject's 5 actions (so naming the subject narrows nothing), the correct position
  is uniform: a model that ignores the video is at 20%. Option texts avoid "and", "all", "both",
  "none" (so --answer_balance shuffles every QA).

Everything is drawn from one numpy generator per part, so a seed gives identical files.
"""
import argparse
import csv
import json
import math
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from dataloader.base import FEATURE_DIM

# subject -> (the 5 actions it can do, the 3 places it is found in): the regularities of the world's
# text, which the memory of text features encodes and the memory projection uses as a prior
SUBJECTS = {
    "dog": (("running", "jumping", "eating", "swimming", "rolling"), ("park", "beach", "garden")),
    "cat": (("jumping", "sitting", "sleeping", "climbing", "rolling"), ("kitchen", "garden", "street")),
    "bird": (("flying", "sitting", "eating", "walking", "jumping"), ("park", "forest", "river")),
    "horse": (("running", "walking", "eating", "jumping", "sleeping"), ("field", "beach", "forest")),
    "duck": (("swimming", "walking", "flying", "eating", "sleeping"), ("river", "park", "field")),
    "cow": (("walking", "eating", "sleeping", "sitting", "running"), ("field", "river", "street")),
    "goat": (("climbing", "jumping", "eating", "walking", "running"), ("field", "forest", "street")),
    "rabbit": (("jumping", "eating", "running", "sleeping", "sitting"), ("garden", "field", "forest")),
    "monkey": (("climbing", "jumping", "eating", "sitting", "sleeping"), ("forest", "park", "river")),
    "bear": (("walking", "climbing", "swimming", "eating", "sleeping"), ("forest", "river", "beach")),
    "boy": (("running", "jumping", "sitting", "eating", "swimming"), ("park", "kitchen", "street")),
    "girl": (("running", "walking", "sitting", "eating", "climbing"), ("kitchen", "garden", "beach")),
}
OBJECTS = list(SUBJECTS)
THINGS = ["cup", "book", "chair", "phone", "apple", "box", "toy", "door", "tree", "car"]  # targets
ACTIONS = ["running", "jumping", "sitting", "eating", "sleeping", "walking", "swimming", "climbing",
           "rolling", "flying"]
PLACES = ["kitchen", "park", "beach", "street", "garden", "forest", "river", "field"]
COUNTS = ["one", "two", "three", "four", "five"]
CONCEPTS = OBJECTS + THINGS + ACTIONS + PLACES + COUNTS
FAMILIES = ["DO", "DL", "DC", "TC", "TN", "TP", "CW", "CH"]  # = NExT-QA types
# "fixed" worlds (the default): each family offers the same 5 options in the same order (the counts;
# the subject's own actions), so the answer letter is a function of the video alone. A frozen *random*
# tiny backbone cannot compare option words with the video; a real Llama can, and the "matching"
# world (every family, sampled distractors, shuffled) is there for pretrained backbones.
FIXED_FAMILIES = ["DC", "TC", "CH"]
LETTERS = "ABCDE"
T_FRAMES = 10  # max_feats of every published script: segments are long enough for this sampling
CLIP_DIM = FEATURE_DIM


@dataclass
class Video:
    obj: str
    count: str
    place: str
    actions: List[str]        # the 3 actions, in order
    target: str               # the second object
    target_seg: int           # the segment in which the main object goes toward the target
    segs: List[int]           # segment of each frame

    @property
    def n_frames(self):
        return len(self.segs)

    def subject(self):
        return f"the {self.obj}" if self.count == "one" else f"the {self.obj}s"

    def be(self):
        return "is" if self.count == "one" else "are"

    def do(self):
        return "does" if self.count == "one" else "do"

    def frame_concepts(self, t: int) -> List[str]:
        s = self.segs[t]
        c = [self.obj, self.count, self.actions[s], self.place]
        return c + [self.target] if s == self.target_seg else c

    def caption(self, t: int, template: int = 0) -> str:
        s = self.segs[t]
        noun = self.obj if self.count == "one" else self.obj + "s"
        toward = f" toward the {self.target}" if s == self.target_seg else ""
        if template == 0:
            return f"{self.count} {noun} {self.be()} {self.actions[s]}{toward} in the {self.place}"
        return f"in the {self.place}, {self.count} {noun} {self.be()} {self.actions[s]}{toward}"

    def summary(self) -> str:
        noun = self.obj if self.count == "one" else self.obj + "s"
        a = self.actions
        return (f"{self.count} {noun} {self.be()} {a[0]}, then {a[1]}, then {a[2]} in the {self.place}, "
                f"going toward the {self.target} while {a[self.target_seg]}.")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class World:
    """The hidden concept space and the two feature maps (text, image). See the module docstring.

    content: weight of each concept direction against the unit mean `mu`; text_noise, image_noise:
    norms of the isotropic noise; gap: norm of the random modality offset; gap_bias: std of its
    component along each concept direction; clutter: weight (relative to `content`) of the
    `n_clutter` random other subjects, actions or places that every image frame also shows in the
    background (never a thing or a count, so "why", "how" and "how many" stay unambiguous)."""

    def __init__(self, seed: int = 0, content: float = 0.8, text_noise: float = 0.25, gap: float = 5.0,
                 gap_bias: float = 0.1, image_noise: float = 1.0, clutter: float = 0.6, n_clutter: int = 2,
                 dim: int = CLIP_DIM, fixed: bool = True):
        rng = np.random.default_rng([seed, 1])
        self.fixed = fixed
        self.dim, self.content = dim, content
        self.text_noise, self.image_noise = text_noise, image_noise
        self.clutter, self.n_clutter = clutter, n_clutter
        self.dirs = dict(zip(CONCEPTS, _unit(rng.standard_normal((len(CONCEPTS), dim)))))
        self.mu = _unit(rng.standard_normal(dim))
        bias = sum(w * self.dirs[c] for c, w in zip(CONCEPTS, rng.standard_normal(len(CONCEPTS)) * gap_bias))
        self.gap = gap * _unit(rng.standard_normal(dim)) + bias

    def _content(self, concepts):
        return self.mu + self.content * sum(self.dirs[c] for c in concepts)

    def text_feature(self, concepts, rng) -> np.ndarray:
        """CLIP-like text feature of a description naming `concepts` (unit norm)."""
        noise = rng.standard_normal(self.dim) * (self.text_noise / math.sqrt(self.dim))
        return _unit(self._content(concepts) + noise)

    def image_feature(self, concepts, rng) -> np.ndarray:
        """CLIP-like image feature of a frame showing `concepts` (unit norm): content + modality gap +
        clutter (other concepts in the background) + noise."""
        others = [c for c in OBJECTS + ACTIONS + PLACES if c not in concepts]
        bg = rng.choice(others, self.n_clutter, replace=False) if self.n_clutter else []
        x = self._content(concepts) + self.gap + self.clutter * self.content * sum(self.dirs[c] for c in bg)
        return _unit(x + rng.standard_normal(self.dim) * (self.image_noise / math.sqrt(self.dim)))

    @staticmethod
    def all_frame_concepts() -> List[List[str]]:
        """Every concept set a frame can have (subject, count, one of its actions, one of its places,
        optionally a thing): the world's whole space of frame descriptions."""
        out = []
        for obj, (actions, places) in SUBJECTS.items():
            for count in COUNTS:
                for act in actions:
                    for place in places:
                        out += [[obj, count, act, place]] + [[obj, count, act, place, t] for t in THINGS]
        return out

    # -- videos and questions --
    @staticmethod
    def sample_video(rng, n_min: int = 6, n_max: int = 16) -> Video:
        """A subject (and a count of it) in one of its places doing 3 of its actions in turn, going
        toward a thing during one of them; n_min..n_max frames, every segment >= ceil(n/10) frames."""
        n = int(rng.integers(n_min, n_max + 1))
        min_seg = max(2, math.ceil(n / T_FRAMES))
        if 3 * min_seg > n:
            raise ValueError(f"{n} frames cannot hold 3 segments of >= {min_seg} frames")
        while True:  # segment 1 holds the middle frame(s), so "in the middle of the video" is segment 1
            lens = [min_seg + int(e) for e in rng.multinomial(n - 3 * min_seg, [1 / 3] * 3)]
            if lens[0] <= (n - 1) // 2 and lens[0] + lens[1] > n // 2:
                break
        segs = [s for s in range(3) for _ in range(lens[s])]
        obj = str(rng.choice(OBJECTS))
        actions, places = SUBJECTS[obj]
        return Video(obj=obj, count=str(rng.choice(COUNTS)), place=str(rng.choice(places)),
                     actions=[str(x) for x in rng.choice(actions, 3, replace=False)],
                     target=str(rng.choice(THINGS)), target_seg=int(rng.integers(3)), segs=segs)

    @staticmethod
    def question(v: Video, family: str, rng, fixed: bool = False) -> dict:
        """{family, question (lower case, no '?'), options[5], answer (int), open (open-ended answer)}.

        Action questions always offer the subject's 5 actions, so the question text (which names the
        subject) does not narrow the options; the correct position is uniform. `fixed`: the options
        are the family's 5 in canonical order (FIXED_FAMILIES only), not sampled and shuffled."""
        def pick(pool, correct, must=()):
            if fixed:
                if len(pool) != 5:
                    raise ValueError(f"family {family!r} has no fixed set of 5 options")
                pool = [str(x) for x in pool]
                return pool, pool.index(correct)
            rest = [x for x in pool if x != correct and x not in must]
            opts = [correct] + list(must) + [str(x) for x in rng.choice(rest, 4 - len(must), replace=False)]
            order = rng.permutation(5)
            return [opts[i] for i in order], int(np.where(order == 0)[0][0])

        subj, be, do, a = v.subject(), v.be(), v.do(), v.actions
        own = SUBJECTS[v.obj][0]
        if family == "DO":
            q = "what animal or person is in the video"
            opts, ans = pick(OBJECTS, v.obj)
            open_ = f"the {v.obj}"
        elif family == "DL":
            q = "where does the video take place"
            opts, ans = pick(PLACES, v.place)
            open_ = f"in the {v.place}"
        elif family == "DC":
            q = f"how many {v.obj}s are there in the video"
            opts, ans = pick(COUNTS, v.count)
            open_ = v.count
        elif family == "TC":
            q = f"what {be} {subj} doing in the middle of the video"
            opts, ans = pick(own, a[1])
            open_ = f"{subj} {be} {a[1]}"
        elif family == "TN":
            i = int(rng.integers(2))
            q = f"what {do} {subj} do after {a[i]}"
            opts, ans = pick(own, a[i + 1])
            open_ = f"{subj} start {a[i + 1]}"
        elif family == "TP":
            i = int(rng.integers(1, 3))
            q = f"what {do} {subj} do before {a[i]}"
            opts, ans = pick(own, a[i - 1])
            open_ = f"{subj} {be} {a[i - 1]}"
        elif family == "CW":
            q = f"why {be} {subj} {a[v.target_seg]}"
            opts, ans = pick([f"to reach the {x}" for x in THINGS], f"to reach the {v.target}")
            open_ = f"to reach the {v.target}"
        elif family == "CH":
            q = f"how {do} {subj} reach the {v.target}"
            opts, ans = pick([f"by {x}" for x in own], f"by {a[v.target_seg]}")
            open_ = f"by {a[v.target_seg]}"
        else:
            raise ValueError(f"unknown question family {family!r}")
        return {"family": family, "question": q, "options": opts, "answer": ans, "open": open_}

    def questions(self, v: Video, k: int, rng, families=None) -> List[dict]:
        """k questions of distinct families about video v (the world's families by default)."""
        families = families or (FIXED_FAMILIES if self.fixed else FAMILIES)
        fams = rng.choice(families, min(k, len(families)), replace=False)
        return [self.question(v, str(f), rng, fixed=self.fixed) for f in fams]


def vocabulary_texts() -> List[str]:
    """Texts the tokenizer is trained on: every word and phrase the world can write."""
    rng = np.random.default_rng(12345)
    texts = []
    for _ in range(300):
        v = World.sample_video(rng)
        texts += [v.caption(t, t % 2) for t in range(v.n_frames)] + [v.summary()]
        for f in FAMILIES:
            q = World.question(v, f, rng)
            texts += [q["question"].capitalize() + "?", q["open"]] + [f"({LETTERS[i]}) {o}" for i, o in
                                                                      enumerate(q["options"])]
    texts += [" ".join(CONCEPTS), " ".join(o + "s" for o in OBJECTS)]
    return texts


# ---- writers ----

def _write_csv(path: Path, header: List[str], rows: List[list]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _image_video(world: World, rng, n_min, n_max):
    v = world.sample_video(rng, n_min, n_max)
    feats = np.stack([world.image_feature(v.frame_concepts(t), rng) for t in range(v.n_frames)])
    return v, torch.from_numpy(feats.astype(np.float32))


def build(out, seed: int = 0, n_textvid: int = 500, qas_per_tideo: int = 4, n_nextqa: int = 150,
          n_nextqa_train: int = 200, n_egos: int = 150, dim: int = 128, n_layers: int = 2, n_heads: int = 4,
          vocab_size: int = 1000, model_name: str = "tiny", world: Optional[World] = None,
          write_model: bool = True, dense_memory: bool = True, matching: bool = False,
          std: Optional[float] = None) -> Dict:
    """Write the world under `out` (see the module docstring); returns the summary dict that is also
    written to `out/synthetic_world.json` (absolute paths in the dict, relative ones in the file)."""
    from toyworld.tiny import make_tiny_llama, train_sentencepiece

    out = Path(out)
    world = world or World(seed, fixed=not matching)
    data = out / "data"
    files = {}

    # TextVid: text features, one row per frame-dict entry
    rng = np.random.default_rng([seed, 2])
    tv_dir = data / "textvid"
    (tv_dir / "features").mkdir(parents=True, exist_ok=True)
    tideos, memory, n_rows = [], [], 0
    for idx in range(n_textvid):
        v = world.sample_video(rng)
        frames, rows = [], []
        for t in range(v.n_frames):
            s = v.segs[t]
            entries = {"caption": (v.caption(t, int(rng.integers(2))), v.frame_concepts(t))}
            noun = v.obj if v.count == "one" else v.obj + "s"
            extra = {"object": (f"{v.count} {noun}", [v.count, v.obj]),
                     "action": (v.actions[s], [v.actions[s]]),
                     "place": (v.place, [v.place])}
            for key in rng.choice(list(extra), int(rng.integers(0, 3)), replace=False):
                entries[str(key)] = extra[str(key)]
            frames.append({k: text for k, (text, _) in entries.items()})
            rows += [world.text_feature(c, rng) for _, c in entries.values()]
        feats = torch.from_numpy(np.stack(rows).astype(np.float16))
        torch.save(feats, tv_dir / "features" / f"{idx}.pkl")
        memory.append(feats)
        n_rows += feats.shape[0]
        qas = []
        for q in world.questions(v, qas_per_tideo, rng):
            qa = {"question": q["question"].capitalize() + "?", "options": q["options"],
                  "answer": LETTERS[q["answer"]]}
            if rng.random() < 0.75:
                qa["answer_open_ended"] = q["open"]
            qas.append(qa)
        tideos.append({"idx": idx, "frames": frames, "QAs": qas, "global_video_caption": v.summary()})
    with open(tv_dir / "textvid.json", "w") as f:
        json.dump(tideos, f)
    if dense_memory:  # plus one description of every possible frame (a dense memory, as 1M real captions are)
        mrng = np.random.default_rng([seed, 5])
        memory.append(torch.from_numpy(np.stack([world.text_feature(c, mrng) for c in world.all_frame_concepts()])
                                       .astype(np.float16)))
    mem = torch.cat(memory)
    with open(tv_dir / "memory.pkl", "wb") as f:
        pickle.dump(mem, f)  # a plain pickle of a tensor, like the released memory.pkl
    files.update(textvid_json=tv_dir / "textvid.json", textvid_features=tv_dir / "features",
                 memory=tv_dir / "memory.pkl")

    # NExT-QA layout: val (+ train), several questions per video, qid repeating across videos
    rng = np.random.default_rng([seed, 3])
    nq_dir = data / "nextqa"
    nq_feats, used = {}, set()
    header = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
              "a0", "a1", "a2", "a3", "a4"]
    counts = {}
    for split, n_q in (("val", n_nextqa), ("train", n_nextqa_train)):
        rows = []
        while len(rows) < n_q:
            vid = int(rng.integers(2_000_000_000, 9_999_999_999))
            if vid in used:
                continue
            used.add(vid)
            v, feats = _image_video(world, rng, 6, 16)
            nq_feats[str(vid)] = feats
            for qid, q in enumerate(world.questions(v, int(rng.integers(2, 5)), rng)[: n_q - len(rows)]):
                rows.append([vid, v.n_frames * 24, 640, 480, q["question"], q["answer"], qid, q["family"]]
                            + q["options"])
        if n_q:
            _write_csv(nq_dir / f"{split}.csv", header, rows)
            files[f"nextqa_{split}"] = nq_dir / f"{split}.csv"
        counts[f"n_nextqa_{split}"] = len(rows)
    nq_dir.mkdir(parents=True, exist_ok=True)
    torch.save(nq_feats, nq_dir / "clipvitl14.pth")
    files["nextqa_features"] = nq_dir / "clipvitl14.pth"

    # EgoSchema layout: one question per (longer) video, uid-named .npy features
    rng = np.random.default_rng([seed, 4])
    eg_dir = data / "egos"
    (eg_dir / "features").mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(n_egos):
        h = rng.integers(0, 16, 32)
        hexs = "".join("0123456789abcdef"[i] for i in h)
        uid = f"{hexs[:8]}-{hexs[8:12]}-{hexs[12:16]}-{hexs[16:20]}-{hexs[20:]}"
        v, feats = _image_video(world, rng, 20, 60)
        np.save(eg_dir / "features" / f"{uid}.npy", feats.numpy())
        q = world.questions(v, 1, rng)[0]
        rows.append([uid, q["question"].capitalize() + "?"] + q["options"] + [q["answer"]])
    _write_csv(eg_dir / "val.csv", ["uid", "question", "a0", "a1", "a2", "a3", "a4", "answer"], rows)
    files.update(egos_val=eg_dir / "val.csv", egos_features=eg_dir / "features")

    # tokenizer and tiny backbone
    llama_dir = out / "pretrained" / "llama2"
    tok = train_sentencepiece(out / "tokenizer.tmp.model", vocab_texts(tideos), vocab_size=vocab_size)
    if write_model:
        # weights ~ N(0, 1/dim) (default): attention that routes and logits with a useful range
        files["model_dir"] = make_tiny_llama(llama_dir, tok, dim=dim, n_layers=n_layers, n_heads=n_heads,
                                             seed=seed, name=model_name, std=std or dim ** -0.5)
    else:
        llama_dir.mkdir(parents=True, exist_ok=True)
        (llama_dir / "tokenizer.model").write_bytes(tok.read_bytes())
    tok.unlink()
    files.update(tokenizer=llama_dir / "tokenizer.model", llama_model_path=llama_dir)

    summary = {"root": out, "seed": seed, "model": model_name, **files,
               "n_textvid": n_textvid, "n_textvid_qas": sum(len(t["QAs"]) for t in tideos),
               "n_textvid_rows": n_rows, "n_memory": int(mem.shape[0]), **counts,
               "n_nextqa_videos": len(nq_feats), "n_egos": n_egos}
    rel = {k: (str(Path(v).relative_to(out)) if isinstance(v, Path) and k != "root" else v)
           for k, v in summary.items() if k != "root"}
    with open(out / "synthetic_world.json", "w") as f:
        json.dump(rel, f, indent=1)
    return {k: (Path(v) if isinstance(v, Path) else v) for k, v in summary.items()}


def vocab_texts(tideos) -> List[str]:
    """Tokenizer corpus: the world's fixed vocabulary plus the TextVid texts actually written."""
    texts = vocabulary_texts()
    for t in tideos[:200]:
        texts.append(t["global_video_caption"])
        for fr in t["frames"]:
            texts += list(fr.values())
        for qa in t["QAs"]:
            texts += [qa["question"]] + qa["options"]
    return texts


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a synthetic TOPA world (tiny Llama, tokenizer, TextVid, "
                                            "NExT-QA and EgoSchema layouts with CLIP-like features).")
    p.add_argument("--out", required=True, help="root folder (pretrained/ and data/ are written under it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_textvid", type=int, default=500, help="number of tideos")
    p.add_argument("--qas_per_tideo", type=int, default=4)
    p.add_argument("--n_nextqa", type=int, default=150, help="NExT-QA val questions")
    p.add_argument("--n_nextqa_train", type=int, default=200, help="NExT-QA train questions (0: no train.csv)")
    p.add_argument("--n_egos", type=int, default=150, help="EgoSchema val questions")
    p.add_argument("--dim", type=int, default=128, help="tiny Llama width")
    p.add_argument("--n_layers", type=int, default=2)
    p.add_argument("--n_heads", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=1000, help="upper bound for the SentencePiece vocabulary")
    p.add_argument("--model_name", default="tiny", help="model folder name under pretrained/llama2/")
    p.add_argument("--matching", action="store_true",
                   help="every question family with sampled, shuffled options (needs a backbone that can "
                        "read; the default fixed-option world is learnable with the random tiny one)")
    p.add_argument("--sparse_memory", action="store_true",
                   help="memory.pkl = the TextVid rows only (no description of every possible frame)")
    a = p.parse_args(argv)
    s = build(a.out, seed=a.seed, n_textvid=a.n_textvid, qas_per_tideo=a.qas_per_tideo, n_nextqa=a.n_nextqa,
              n_nextqa_train=a.n_nextqa_train, n_egos=a.n_egos, dim=a.dim, n_layers=a.n_layers,
              n_heads=a.n_heads, vocab_size=a.vocab_size, model_name=a.model_name,
              dense_memory=not a.sparse_memory, matching=a.matching)
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in s.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
