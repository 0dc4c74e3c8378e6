"""The writer of TextVid: seed captions -> an LLM (an OpenAI-compatible server, or a local transformers model
with JSON-schema constrained decoding) -> tideos checked by the dataset's own rules -> a TextVid folder in
the released layout. Entry point: `python -m textvid.generate` (docs/textvid.md)."""
