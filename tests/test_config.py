"""The typed configs are the single source of defaults: a command line without flags gives exactly the
configs' defaults, and a flag that a command does not use is not accepted by it."""
from dataclasses import asdict

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
