"""Raw video (and text) -> CLIP ViT-L/14 feature files (extract_features.py).

  frames.py         decoding (PyAV; folders of numbered JPEGs) and the frame-sampling rules
  clip.py           OpenAI's image preprocessing and the CLIP image/text encoder (Hugging Face transformers)
  sources.py        what to extract per benchmark: (video, [(feature key, rule)]) from the annotation files
  store.py          outputs written atomically, resumable parts, the failures list
  extract.py        what each --dataset means; decoding workers feeding batched encoding
  extraction.py     the run: torchrun processes, resume, failures, the final file
  text_features.py  CLIP text features: TextVid per-tideo files, memory.pkl

Needs the optional install `pip install -e ".[video]"` (transformers, av, pillow).
"""
