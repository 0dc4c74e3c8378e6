"""Flags shared by train.py and eval.py, with the original TOPA scripts' names and meanings."""
import argparse


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def add_model_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("model")
    g.add_argument("--model", default="7B", help="model folder under --llama_model_path (7B, 13B, 8B)")
    g.add_argument("--llama_model_path", default="./pretrained/llama2/",
                   help="folder holding <model>/ (shards + params.json) and tokenizer.model")
    v = g.add_mutually_exclusive_group()
    v.add_argument("--llama2", action="store_true", help="Llama-2 (SentencePiece tokenizer; default)")
    v.add_argument("--llama3", action="store_true", help="Llama-3 (tiktoken tokenizer)")
    g.add_argument("--rope_theta", type=float, default=None,
                   help="override params.json's rope_theta (released Llama-3 TOPA checkpoints expect 10000)")
    g.add_argument("--max_seq_len", type=int, default=128,
                   help="training: longest sequence; eval: reported only (prompts are never cut)")
    g.add_argument("--max_feats", type=int, default=10, help="T: video frames fed to the LLM")
    g.add_argument("--adapter_len", type=int, default=50,
                   help="adapter prompt rows per adapted layer (50 in every published script and checkpoint)")
    g.add_argument("--adapter_layer", type=int, default=None, help="adapted layers (default: all)")
    g.add_argument("--bias", type=float, default=3.0, help="gate2 init is -bias")
    g.add_argument("--tau", type=float, default=100.0, help="temperature of the qav frame loss")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="backbone compute dtype (default: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    return p


def add_data_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="nextqa", help="nextqa, star, tvqa, egos (eval/finetune); textvid")
    g.add_argument("--data_root", default="./data", help="root holding nextqa/, star/, tvqa/, egos/, textvid/")
    g.add_argument("--memory", action="store_true", help="project eval video features onto the text memory")
    g.add_argument("--memory_path", default=None, help="memory.pkl (default <data_root>/textvid/memory.pkl)")
    g.add_argument("--sub", action="store_true", help="TVQA: add the clip's subtitles (\"Dialogue:\" segment)")
    g.add_argument("--truncate_dialogue", action="store_true",
                   help="TVQA: cut subtitle tokens so that each prompt fits --max_seq_len, as the published code "
                        "did (question, options and answer stay whole; the number of cut prompts is reported). "
                        "Default: prompts are never cut")
    g.add_argument("--skip_missing", action="store_true",
                   help="drop questions whose video has no features (reported), instead of failing")
    g.add_argument("--batch_size", type=int, default=8, help="questions per batch per process")
    g.add_argument("--num_workers", type=int, default=2)
    g.add_argument("--output_dir", default="./output")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dry_run", action="store_true", help="parse the arguments, print them and exit")
    return p


def run_cli(main, args, prog: str):
    """Run `main(args)`; bad input (missing files, malformed data, refused pickles, shape mismatches)
    ends with one line naming the culprit instead of a traceback. TOPA_TRACEBACK=1 shows it anyway."""
    import os
    import pickle
    import sys
    try:
        return main(args)
    except (FileNotFoundError, ValueError, KeyError, pickle.UnpicklingError) as e:
        if os.environ.get("TOPA_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {type(e).__name__}: {msg}", file=sys.stderr)
        sys.exit(1)
