"""The engine: what train.py and eval.py run.

    config.py         flags -> typed configs (EvalConfig, TrainConfig), built once
    evaluation.py     multiple-choice scoring (shared prefix or full), accuracy, output files; eval.py's run
    training.py       losses, one epoch, train.py's run (pre-alignment, finetuning, baseline)
    checkpointing.py  training checkpoints in the released layout; exact resume
"""
