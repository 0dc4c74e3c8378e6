"""bench/gpu_check.sh --tiny: the one-command GPU check runs end to end on CPU (tiny shapes) and writes
its JSON and markdown table, with small numeric differences, so it never rots before a GPU node runs it."""
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny(tmp_path):
    out = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--tiny", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(res) >= {"device", "torch", "tiny", "shapes", "vit", "seconds"} and res["tiny"] is True
    assert set(res["shapes"]) == {"tiny_llama2", "tiny_gqa"}
    for name, r in res["shapes"].items():
        assert set(r) >= {"numerics", "sdpa", "eval", "train", "generate"}, name
        n = r["numerics"]
        assert n["scores_fused_vs_eager_fp32"] < 1e-4 and n["losses_fused_vs_eager_fp32"] < 1e-4
        assert 0 < n["scores_bf16_vs_fp32"] < 0.1 and n["losses_bf16_vs_fp32"] < 0.1
        assert n["scores_fused_vs_eager_bf16"] < 0.1 and n["losses_fused_vs_eager_bf16"] < 0.1
        assert all(ops for k, ops in r["sdpa"].items() if k != "math_fallback"), r["sdpa"]  # SDPA ran, named
        assert r["sdpa"]["math_fallback"] == []
        assert r["eval"]["max_score_diff"] < 0.1 and r["eval"]["questions_per_s_shared_prefix"] > 0
        assert r["train"]["plain"]["tokens_per_s"] > 0 and r["train"]["grad_checkpointing"]["tokens_per_s"] > 0
        assert r["train"]["plain"]["mfu"] is None                       # no GPU peak to divide by
        assert r["generate"]["same_tokens"] and r["generate"]["batch16_kv_cache_tokens_per_s"] > 0
    mem = res["shapes"]["tiny_llama2"]["memory"]
    assert set(mem) == {"eval_packed", "finetune", "finetune_grad_checkpointing"}
    assert all(m["computed_gib"] > 0 and m["measured_gib"] is None for m in mem.values())  # measured on CUDA only
    assert res["vit"]["frames_per_s"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| tiny_llama2 |" in table and "| tiny_gqa |" in table
