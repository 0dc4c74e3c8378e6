from setuptools import find_packages, setup

setup(
    name="topa",
    version="0.1.0",
    description="TOPA: text-only pre-alignment of Llama-2/3 for zero-shot video question answering",
    python_requires=">=3.10",
    packages=find_packages(include=["llama", "llama.*", "dataloader", "dataloader.*", "engine", "engine.*",
                                    "util", "util.*", "toyworld", "toyworld.*"]),
    install_requires=["torch>=2.4", "sentencepiece", "tiktoken", "numpy", "tqdm", "srt"],
    extras_require={"test": ["pytest"], "tensorboard": ["tensorboard"]},
)
