"""The engine: what train.py, eval.py, ask.py, app.py and the lmms-eval plugin run.

    infer.py          the inference core: score() (every option's mean NLL) and generate() (greedy answers,
                      first-step letters) over plain records; every caller below answers through it
    evaluation.py     eval.py's run shell: processes, output folder, items before the model, per-step gather
    scoring.py        multiple-choice benchmarks: option scores -> predictions, accuracy, output files;
                      `evaluate` for training's per-epoch evaluation
    generation.py     generation benchmarks (MVBench, MSR-VTT, VATEX): answers -> accuracy / metrics
    caption_metrics.py  COCO caption metrics through pycocoevalcap (Java)
    api.py            the Python API (TOPAVideoQA): a facade over the feature cache (video/features.py),
                      the request kinds (requests.py) and the core
    requests.py       what each API request kind asks (frames, memory, prompt, decoding) and answers
    asking.py         ask.py's run: one video -> the API -> an answer line
    lmms.py           TOPA as an lmms-eval model, a client of the API
    config.py         the settings (EvalConfig, TrainConfig, the API's QAConfig), their flags, the memory rule
    losses.py         the NLL of scored tokens (training and the core), qav, their total
    training.py       train.py's run (pre-alignment, finetuning, baseline); epoch.py: one epoch
    checkpointing.py  training checkpoints in the released layout; exact resume
"""
