"""The toy world: tiny random Llamas in Meta's on-disk format, a self-trained SentencePiece tokenizer and
a synthetic TOPA world (TextVid-, NExT-QA- and EgoSchema-layout data with CLIP-like features), and
(videos.py) videos whose frame k shows the number k, frame folders and random CLIP models.

Not runtime code: the tests and the benchmarks use it to stand in for what a user brings (Meta's
weights, CLIP features, benchmark files), and so does `python app.py --toy` (the one import of it from
an entry point, in `app.build_app`). Nothing in `llama/`, `dataloader/`, `engine/` or `video/` imports it
(tests/test_layers.py)."""
