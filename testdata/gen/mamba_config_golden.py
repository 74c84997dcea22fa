"""Writes formats/testdata/mamba_config_phi25.json exactly as the reference
code writes mamba_config.json (json.dump with indent=4), for the Phi-2 25% plan.
Run from the repository root: python3 testdata/gen/mamba_config_golden.py"""
import json

mamba = [0, 4, 8, 12, 16, 20, 24, 28]
cfg = {
    "d_model": 2560,
    "ssm_cfg": {"expand": 1, "ngroups": 32, "d_state": 80},
    "layer_norm_eps": 1e-05,
    "vocab_size": None,
    "d_inner": 2560,
    "d_xb": 2560,
    "intermediate_size": 10240,
    "hidden_act": "gelu_new",
    "n_layer": 32,
    "attn_layers": [i for i in range(32) if i not in mamba],
    "resid_pdrop": 0.1,
    "bidirectional": False,
    "is_bias": False,
}
with open("formats/testdata/mamba_config_phi25.json", "w") as f:
    json.dump(cfg, f, indent=4)
