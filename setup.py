from setuptools import find_packages, setup

VIDEO = ["transformers>=4.40", "av>=15,<19", "pillow>=9.1"]
CAPTION = ["pycocoevalcap>=1.2"]  # the COCO caption metrics (MSR-VTT, VATEX); its tokenizer and METEOR need Java
DEMO = VIDEO + ["gradio>=5", "pandas"]  # app.py (pandas: the probability chart)
# lmms-eval: the harness (model `topa`, engine/lmms.py); filelock 4 breaks its evaluator (docs/lmms_eval.md)
LMMS = VIDEO + ["lmms-eval==0.7.3", "filelock<4"]
BROWSER = ["playwright"]  # the demo's browser test (with Debian's chromium; no browser download)
# textvid.generate: a local writer model (transformers' `dtype=` loading) constrained by llguidance
# (docs/textvid.md); the HTTP writer needs nothing more. The tests serve a tiny model with `transformers serve`.
TEXTVID = ["transformers>=4.56", "llguidance>=1.0"]
SERVING = ["transformers[serving]>=4.56"]

setup(
    name="topa",
    version="0.1.0",
    description="TOPA: text-only pre-alignment of Llama-2/3 for zero-shot video question answering",
    python_requires=">=3.10",
    packages=find_packages(include=["llama", "llama.*", "dataloader", "dataloader.*", "engine", "engine.*",
                                    "text", "text.*", "util", "util.*", "toyworld", "toyworld.*", "video", "video.*",
                                    "textvid", "textvid.*"]),
    package_data={"textvid": ["prompts/*"]},  # the default prompt template and answer schema
    install_requires=["torch>=2.4", "sentencepiece", "tiktoken", "numpy", "tqdm", "srt",
                      "safetensors>=0.4",   # Hugging Face-format Llama folders (no dependencies of its own)
                      "pyarrow>=14"],       # the memory-mapped TextVid index (dataloader/textvid/index.py)
    extras_require={
        # extract_features.py: CLIP (transformers), decoding (PyAV wheels bundle FFmpeg; av 19 needs
        # Python >= 3.12, so the cap keeps a wheel for every supported Python), images (pillow)
        "video": VIDEO,
        "caption": CAPTION,
        "demo": DEMO,
        "lmms": LMMS,
        "textvid": TEXTVID,
        "test": ["pytest"] + VIDEO + CAPTION + DEMO + BROWSER + TEXTVID + SERVING,
        "tensorboard": ["tensorboard"],
    },
    # `python -m lmms_eval --model topa` (with the lmms extra installed)
    entry_points={"lmms_eval.models": ["topa = engine.lmms:manifest"]},
)
