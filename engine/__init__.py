"""The engine: what train.py and eval.py run.

    config.py         the settings (EvalConfig, TrainConfig, the API's QAConfig), their flags, the memory rule
    evaluation.py     multiple-choice scoring (shared prefix or full), accuracy, output files; eval.py's run
    generation.py     generation benchmarks (MVBench, MSR-VTT, VATEX): greedy answers, accuracy / metrics
    caption_metrics.py  COCO caption metrics through pycocoevalcap (Java)
    ask.py            ask.py's run: one video -> CLIP -> TOPA -> answer
    training.py       losses, one epoch, train.py's run (pre-alignment, finetuning, baseline)
    checkpointing.py  training checkpoints in the released layout; exact resume
"""
