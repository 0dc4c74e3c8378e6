"""The typed configs are the single source of defaults: a command line without flags gives exactly the
configs' defaults, and a flag that a command does not use is not accepted by it."""
import importlib.util
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

import eval as eval_cli
import train as train_cli
from engine.config import EvalConfig, TrainConfig
from llama.adapter import TOPAArgs
from llama.build import ModelConfig


def test_eval_flags_default_to_the_config():
    assert asdict(EvalConfig.from_args(eval_cli.get_args([]))) == asdict(EvalConfig())


def test_train_flags_default_to_the_config():
    got = asdict(TrainConfig.from_args(train_cli.get_args([])))
    want = asdict(TrainConfig())
    # the one flag whose default depends on others: evaluate the finetuned benchmark (nextqa) after each epoch
    assert got.pop("eval_datasets") == ["nextqa"] and want.pop("eval_datasets") == []
    assert got == want


def test_model_defaults_are_the_model_args():
    m = ModelConfig()
    assert (m.adapter_len, m.max_feats, m.bias) == (TOPAArgs.adapter_len, TOPAArgs.max_feats, TOPAArgs.bias) \
        == (50, 10, 3.0)


def test_tau_is_a_training_flag_only(capsys):
    assert train_cli.get_args(["--tau", "7"]).tau == 7.0
    with pytest.raises(SystemExit):
        eval_cli.get_args(["--tau", "7"])
    assert "unrecognized arguments: --tau 7" in capsys.readouterr().err


def test_errors_say_what_they_are(tmp_path):
    """A bad memory file is a data error, a bad tokenizer file a tokenizer error (not a checkpoint's)."""
    import torch

    from llama.memory import load_memory
    from text.tokenizer import load_tokenizer
    from util.errors import CheckpointError, DataError, TokenizerError
    torch.save(torch.randn(4, 5), tmp_path / "memory.pkl")
    with pytest.raises(DataError, match=r"memory\.pkl: memory must be \[N, 768\]") as e:
        load_memory(tmp_path / "memory.pkl")
    assert not isinstance(e.value, CheckpointError)
    (tmp_path / "tokenizer.model").write_bytes(b"not a tokenizer\n")
    with pytest.raises(TokenizerError, match=r"tokenizer\.model"):
        load_tokenizer(tmp_path / "tokenizer.model")


# ---------------------------------------------------------------- one source of settings, everywhere

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["eval.py", "train.py", "ask.py", "extract_features.py", "textvid/generate.py", "app.py"]
# a value other than the default for every ModelConfig setting, and the original flags that say it
MODEL_VALUES = {"llama_model_path": "/models/x", "model": "1B", "family": "llama3", "rope_theta": 500000.0,
                "rope_scaling_factor": 8.0, "adapter_len": 7, "adapter_layer": 3, "max_feats": 6, "bias": 2.5,
                "precision": "fp16", "attn_impl": "eager"}


def model_argv():
    return [x for k, v in MODEL_VALUES.items() for x in (["--llama3"] if k == "family" else [f"--{k}", str(v)])]


def test_every_model_setting_is_reachable_from_every_entry():
    """Each ModelConfig field, set to a value other than its default, arrives through eval.py's, train.py's,
    ask.py's and app.py's flags, lmms-eval's --model_args, QAConfig, and the args a checkpoint records. On
    the previous code lmms-eval refused rope_scaling_factor as an unknown setting."""
    from dataclasses import fields

    import ask as ask_cli
    from engine.config import QAConfig, flat_args
    assert {f.name for f in fields(ModelConfig)} == set(MODEL_VALUES), "MODEL_VALUES must name every setting"
    want = ModelConfig(**MODEL_VALUES)
    assert all(getattr(want, k) != getattr(ModelConfig(), k) for k in MODEL_VALUES)
    assert EvalConfig.from_args(eval_cli.get_args(model_argv())).model == want
    train = TrainConfig.from_args(train_cli.get_args(model_argv()))
    assert train.model == want
    assert QAConfig.from_args(ask_cli.get_args(["v.mp4", "--describe"] + model_argv())).model == want
    recorded = vars(flat_args(train))
    assert {k: recorded[k] for k in MODEL_VALUES if k != "family"} == {k: v for k, v in MODEL_VALUES.items()
                                                                        if k != "family"}
    assert (recorded["llama2"], recorded["llama3"]) == (False, True)   # the original code's two flags
    if os.environ.get("TOPA_CI") or importlib.util.find_spec("lmms_eval"):
        from engine.lmms import model_config
        assert model_config({k: str(v) for k, v in MODEL_VALUES.items()}).model == want
    if os.environ.get("TOPA_CI") or importlib.util.find_spec("gradio"):
        import app
        assert QAConfig.from_args(app.get_args(model_argv())).model == want


def test_recorded_args_keep_the_original_names():
    """The `args` a training checkpoint records: the flag names (and, for these flags, the values) that the
    released checkpoints and the original code use; a new setting adds a key, a renamed one would fail."""
    from engine.config import flat_args
    rec = vars(flat_args(TrainConfig.from_args(train_cli.get_args(["--textvid", "--bias", "3.5"]))))
    assert {k: rec[k] for k in ("llama2", "llama3", "model", "llama_model_path", "adapter_len", "adapter_layer",
                                "max_feats", "bias", "max_seq_len", "batch_size", "accum_iter", "blr", "lr",
                                "weight_decay", "epochs", "warmup_epochs", "textvid", "vaq", "qav", "tau",
                                "dataset", "seed", "output_dir")} == {
        "llama2": True, "llama3": False, "model": "7B", "llama_model_path": "./pretrained/llama2/",
        "adapter_len": 50, "adapter_layer": None, "max_feats": 10, "bias": 3.5, "max_seq_len": 128, "batch_size": 8,
        "accum_iter": 1, "blr": 1e-2, "lr": None, "weight_decay": 0.1, "epochs": 5, "warmup_epochs": 1.0,
        "textvid": True, "vaq": False, "qav": False, "tau": 100.0, "dataset": "textvid", "seed": 0,
        "output_dir": "./output"}
    assert "family" not in rec and "tensorboard" in rec and "kv_cache" not in rec


def parsers():
    import ask as ask_cli
    import extract_features
    from engine.asking import AskConfig
    from engine.config import add_api_args, add_model_args, eval_parser, train_parser
    from textvid import generate as textvid_generate
    from textvid.config import GenConfig
    from util.settings import add_flags, make_parser
    from video.config import ExtractConfig
    return {"eval.py": eval_parser(eval_cli.__doc__), "train.py": train_parser(train_cli.__doc__),
            "ask.py": add_flags(make_parser(ask_cli.__doc__), AskConfig),
            "extract_features.py": add_flags(make_parser(extract_features.__doc__), ExtractConfig),
            "textvid.generate": add_flags(make_parser(textvid_generate.__doc__), GenConfig),
            "add_api_args + add_model_args": add_model_args(add_api_args(make_parser("app.py's TOPA flags"))),
            "app.py": __import__("app").parser()}


@pytest.mark.parametrize("name", list(parsers()))
def test_every_flag_has_help_and_shows_its_default(name):
    """Every flag explains itself, and every flag that takes a value shows its default (the value, or what
    the default means where it is decided later); the description is whole, with an example command."""
    p = parsers()[name]
    formatter = p._get_formatter()
    for action in p._actions:
        if action.dest == "help":
            continue
        text = formatter._get_help_string(action)
        assert action.help and len(action.help) > 10, f"{name}: {action.option_strings} has no help"
        if action.nargs != 0 and not action.required:
            assert "default" in text.lower(), f"{name}: {action.option_strings} does not show its default"
    page = p.format_help()
    assert "(default: None)" not in page
    if not name.startswith("add_"):
        assert f"python {name}" in page or f" {name} " in page, "the description shows an example command"
        first = p.description.strip().split("\n\n")[0]
        assert first.endswith(".") and len(first) > 100, f"the description is cut: {first!r}"


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_imports_no_torch(script):
    """`--help` of each entry point answers without importing torch (lazy imports; the config modules do
    not import it), so it answers at once; app.py's without gradio either."""
    code = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
            f"try:\n    runpy.run_path({script!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if {'torch', 'gradio'} & set(sys.modules) else 'NO TORCH', file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and r.stderr.strip().endswith("NO TORCH"), r.stderr[-2000:]


def test_backbone_table_answers_the_scripts_without_torch():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "llama.backbones", "llama3_2_1b", "--shell"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "torch" not in r.stderr.replace("llama", "")
    got = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert (got["FAMILY"], got["MODEL"], got["FOLDER"], got["LAYERS"], got["THETA"]) == ("llama3", "1B", "llama3_2",
                                                                                        "16", "-")
    assert (got["PRE_BATCH"], got["PRE_ACCUM"], float(got["PRE_BLR"]), got["BIAS"]) == ("14", "8", 5e-3, "3.5")


def test_recipe_values_are_the_defaults_or_named():
    """Every value the published jobs share is the flag's default, or is named as the recipe's own with a
    reason (`--bias 3.5`: the original code's flag default is 3.0)."""
    from llama.backbones import RECIPE, RECIPE_ON_PURPOSE
    defaults = vars(train_cli.get_args([]))
    differ = {k for k, v in RECIPE.items() if v != defaults[k]}
    assert differ == set(RECIPE_ON_PURPOSE) == {"bias"}
    assert ModelConfig.bias == 3.0 and RECIPE["bias"] == 3.5


def test_memory_rule_has_one_home():
    """eval.py and the API decide the memory projection by the same rule: the request's choice, then the
    run's flag, then the protocol's."""
    from engine.config import memory_on
    assert memory_on(None, None, protocol=True) and not memory_on(None, None, protocol=False)
    assert not memory_on(None, False, protocol=True) and memory_on(True, False, protocol=False)
    assert not memory_on(False, True, protocol=True)
    for dataset, flags, want in (("mvbench", [], True), ("vatex", [], False), ("nextqa", [], False),
                                 ("nextqa", ["--memory"], True), ("msrvtt", ["--no_memory"], False)):
        assert EvalConfig.from_args(eval_cli.get_args(["--dataset", dataset] + flags)).use_memory is want
