import json

import pytest
import torch

from cap_edge.arch import ARCHITECTURES, arch_for, head_geometry
from cap_edge.errors import ModelLoadError, UnsupportedArchitectureError
from cap_edge.io import verify_digests, write_digests
from cap_edge.models import load_model, model_fingerprint, resolve_device, resolve_dtype


def test_load_hf_dir(tiny_dir, tiny_model):
    lm = load_model(str(tiny_dir), device="cpu")
    assert lm.model.config.num_hidden_layers == 2
    for (n1, a), (n2, b) in zip(sorted(lm.model.state_dict().items()), sorted(tiny_model.state_dict().items())):
        assert n1 == n2 and torch.equal(a, b)


def test_missing_path_is_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "nope.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load_model(str(tmp_path / "empty"))


def test_unsupported_architecture_names_supported(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError) as e:
        load_model(str(tiny_dir))
    for name in ARCHITECTURES:
        assert name in str(e.value)


def test_corrupt_weights_are_clear_error(tiny_dir):
    (tiny_dir / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="could not load model weights"):
        load_model(str(tiny_dir))


def test_cache_verification_detects_damage(tiny_dir):
    write_digests(tiny_dir)
    assert verify_digests(tiny_dir)
    with open(tiny_dir / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    assert not verify_digests(tiny_dir)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) in (torch.bfloat16, torch.float16)
    with pytest.raises(ModelLoadError):
        resolve_device("tpu")
    with pytest.raises(ModelLoadError):
        resolve_dtype("int3", torch.device("cpu"))


def test_fingerprint_changes_with_any_weight(tiny_model):
    a = model_fingerprint(tiny_model)
    with torch.no_grad():
        tiny_model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(tiny_model) != a


def test_geometry_gqa(tiny_model):
    g = head_geometry(tiny_model.config)
    assert (g.num_heads, g.num_kv_heads, g.head_dim, g.group_size) == (4, 2, 16, 2)
    assert arch_for(tiny_model).o.endswith("o_proj")


@pytest.mark.slow
def test_embedded_model_loads_and_caches(monkeypatch):
    """The real embedded SmolLM2-135M: converted once into the cache, verified, then reused."""
    from cap_edge.io import cache_dir
    from cap_edge.models import embedded_model_dir

    monkeypatch.delenv("CAP_EDGE_CACHE", raising=False)  # the real cache: convert at most once per machine
    d = embedded_model_dir()
    assert d.is_relative_to(cache_dir()) and verify_digests(d)
    lm = load_model(None)
    g = head_geometry(lm.model.config)
    assert (g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim) == (30, 9, 3, 64)
    assert lm.source.startswith("embedded:")
