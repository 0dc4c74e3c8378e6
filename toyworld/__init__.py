"""The toy world: tiny random Llamas in Meta's on-disk format, a self-trained SentencePiece tokenizer and
a synthetic TOPA world (TextVid-, NExT-QA- and EgoSchema-layout data with CLIP-like features), and
(videos.py) videos whose frame k shows the number k, frame folders and random CLIP models.

Not runtime code: the demo, the tests and the benchmarks use it to stand in for what a user brings
(Meta's weights, CLIP features, benchmark files). Nothing in `llama/`, `dataloader/`, `engine/`, `video/`
or the entry points imports it."""
