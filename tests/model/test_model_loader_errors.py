"""Every way a checkpoint can be broken gives a CheckpointError (a ValueError) that names the file,
and the tensor when one is at fault, so a user can tell what to fix without a debugger.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from nanovllm.model import CheckpointError, load_gpt2


def load_error(model_dir) -> str:
    with pytest.raises(CheckpointError) as info:
        load_gpt2(model_dir)
    return str(info.value)


def assert_names(message: str, *parts) -> None:
    for part in parts:
        assert str(part) in message, f"{part!s} not in error message: {message}"


def write_raw_safetensors(path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


def last_tensor(path) -> str:
    """The tensor whose bytes come last in a safetensors file."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    return max(header, key=lambda name: header[name]["data_offsets"][1])


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


# --- tensors that do not fit the config ---------------------------------------------------------

def test_missing_tensor(tiny_tensors, write_checkpoint):
    del tiny_tensors["h.1.mlp.c_fc.bias"]
    ckpt = write_checkpoint(tiny_tensors)
    assert_names(load_error(ckpt), ckpt / "model.safetensors", "missing tensor h.1.mlp.c_fc.bias",
                 ckpt / "config.json")


def test_missing_tensor_in_a_sharded_checkpoint_names_every_shard(tiny_tensors, write_checkpoint):
    del tiny_tensors["ln_f.bias"]
    ckpt = write_checkpoint(tiny_tensors, shards=2)
    assert_names(load_error(ckpt), "missing tensor ln_f.bias",
                 ckpt / "model-00001-of-00002.safetensors", ckpt / "model-00002-of-00002.safetensors")


def test_unexpected_tensor(tiny_tensors, write_checkpoint):
    tiny_tensors["h.0.attn.adapter.weight"] = np.zeros((4, 4), np.float32)
    ckpt = write_checkpoint(tiny_tensors)
    assert_names(load_error(ckpt), ckpt / "model.safetensors", "unexpected tensor h.0.attn.adapter.weight")


def test_unexpected_tensor_with_transformer_prefix(tiny_tensors, write_checkpoint):
    tensors = {f"transformer.{k}": v for k, v in tiny_tensors.items()}
    tensors["score.weight"] = np.zeros((2, 64), np.float32)  # e.g. a classification head
    ckpt = write_checkpoint(tensors)
    assert_names(load_error(ckpt), ckpt / "model.safetensors", "unexpected tensor score.weight")


def test_wrong_shape(tiny_tensors, write_checkpoint):
    tiny_tensors["h.0.attn.c_attn.weight"] = tiny_tensors["h.0.attn.c_attn.weight"].T.copy()
    ckpt = write_checkpoint(tiny_tensors)
    assert_names(load_error(ckpt), ckpt / "model.safetensors", "tensor h.0.attn.c_attn.weight",
                 "(192, 64)", "(64, 192)")


def test_tensor_in_two_shards(tiny_tensors, write_checkpoint):
    ckpt = write_checkpoint(tiny_tensors, shards=2)
    first = ckpt / "model-00001-of-00002.safetensors"
    shard = load_file(str(first))
    name = next(iter(shard))
    second = ckpt / "model-00002-of-00002.safetensors"
    save_file({**load_file(str(second)), name: shard[name]}, str(second))
    assert_names(load_error(ckpt), first, second, f"tensor {name}")


def test_lm_head_different_from_wte(tiny_tensors, write_checkpoint):
    tiny_tensors["lm_head.weight"] = tiny_tensors["wte.weight"] + 1e-3
    ckpt = write_checkpoint(tiny_tensors)
    assert_names(load_error(ckpt), ckpt / "model.safetensors", "lm_head.weight", "wte.weight")


# --- config.json that does not fit the weights ----------------------------------------------------

def test_config_with_more_layers_than_the_weights(tiny_tensors, tiny_config, write_checkpoint):
    ckpt = write_checkpoint(tiny_tensors, config={**tiny_config, "n_layer": 3})
    assert_names(load_error(ckpt), ckpt / "model.safetensors", "missing tensor h.2.", ckpt / "config.json")


def test_config_with_fewer_layers_than_the_weights(tiny_tensors, tiny_config, write_checkpoint):
    ckpt = write_checkpoint(tiny_tensors, config={**tiny_config, "n_layer": 1})
    assert_names(load_error(ckpt), ckpt / "model.safetensors", "unexpected tensor h.1.")


@pytest.mark.parametrize("field, value, tensor", [("n_embd", 32, "wte.weight"),
                                                  ("vocab_size", 1000, "wte.weight"),
                                                  ("n_positions", 1024, "wpe.weight")])
def test_config_size_that_does_not_match_the_weights(tiny_tensors, tiny_config, write_checkpoint,
                                                      field, value, tensor):
    ckpt = write_checkpoint(tiny_tensors, config={**tiny_config, field: value})
    assert_names(load_error(ckpt), ckpt / "model.safetensors", f"tensor {tensor} has shape",
                 ckpt / "config.json")


# --- unsupported configs --------------------------------------------------------------------------

@pytest.mark.parametrize("override, words", [
    ({"activation_function": "relu"}, ["activation_function", "relu"]),
    ({"model_type": "bert"}, ["model_type", "bert"]),
    ({"n_inner": 100}, ["n_inner=100"]),
    ({"scale_attn_by_inverse_layer_idx": True}, ["scale_attn_by_inverse_layer_idx"]),
    ({"reorder_and_upcast_attn": True}, ["reorder_and_upcast_attn"]),
    ({"scale_attn_weights": False}, ["scale_attn_weights"]),
])
def test_unsupported_config(tiny_tensors, tiny_config, write_checkpoint, override, words):
    ckpt = write_checkpoint(tiny_tensors, config={**tiny_config, **override})
    assert_names(load_error(ckpt), ckpt / "config.json", *words)


def test_config_whose_n_head_does_not_divide_n_embd(tiny_tensors, tiny_config, write_checkpoint):
    ckpt = write_checkpoint(tiny_tensors, config={**tiny_config, "n_head": 5})
    assert_names(load_error(ckpt), "n_embd=64", "n_head=5")


def test_config_whose_n_head_does_not_divide_n_embd_names_the_file(tiny_tensors, tiny_config,
                                                                     write_checkpoint):
    ckpt = write_checkpoint(tiny_tensors, config={**tiny_config, "n_head": 5})
    assert_names(load_error(ckpt), ckpt / "config.json")


@pytest.mark.parametrize("override", [{"n_layer": "2"}, {"n_embd": 64.0}])
def test_config_with_non_integer_sizes(tiny_tensors, tiny_config, write_checkpoint, override):
    ckpt = write_checkpoint(tiny_tensors, config={**tiny_config, **override})
    assert_names(load_error(ckpt), ckpt / "config.json", next(iter(override)))


def test_config_that_is_not_json(tiny_ckpt, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    (ckpt / "config.json").write_text("{not json")
    assert_names(load_error(ckpt), ckpt / "config.json")


def test_config_that_is_a_json_list(tiny_ckpt, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    (ckpt / "config.json").write_text("[]")
    assert_names(load_error(ckpt), ckpt / "config.json")


def test_config_with_zero_heads(tiny_tensors, tiny_config, write_checkpoint):
    ckpt = write_checkpoint(tiny_tensors, config={**tiny_config, "n_head": 0})
    assert_names(load_error(ckpt), ckpt / "config.json", "n_head")


# --- missing files --------------------------------------------------------------------------------

def test_missing_config_json(tiny_ckpt, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    (ckpt / "config.json").unlink()
    assert_names(load_error(ckpt), ckpt / "config.json", "missing")


def test_missing_weights_file(tiny_ckpt, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    assert_names(load_error(ckpt), ckpt, "model.safetensors", "model.safetensors.index.json")


def test_missing_directory(tmp_path):
    assert_names(load_error(tmp_path / "nowhere"), tmp_path / "nowhere" / "config.json")


def test_shard_listed_in_the_index_is_missing(tiny_tensors, write_checkpoint):
    ckpt = write_checkpoint(tiny_tensors, shards=2)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    assert_names(load_error(ckpt), ckpt / "model-00002-of-00002.safetensors", "missing")


def test_corrupt_shard_index(tiny_tensors, write_checkpoint):
    ckpt = write_checkpoint(tiny_tensors, shards=2)
    (ckpt / "model.safetensors.index.json").write_text('{"metadata": {}}')  # no weight_map
    assert_names(load_error(ckpt), ckpt / "model.safetensors.index.json", "weight_map")


# --- damaged safetensors files --------------------------------------------------------------------

def test_truncated_file_names_the_cut_tensor(tiny_ckpt, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    cut = last_tensor(weights)
    weights.write_bytes(weights.read_bytes()[:-100])
    assert_names(load_error(ckpt), weights, f"tensor {cut}", "truncated")


@pytest.mark.parametrize("keep", [0, 5, 40])  # inside the length prefix, inside the header
def test_file_truncated_inside_the_header(tiny_ckpt, tmp_path, keep):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    assert_names(load_error(ckpt), weights)


def test_garbage_header(tiny_ckpt, tmp_path):
    """A valid length prefix followed by bytes that are not JSON."""
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff\xfe garbage \x00\x01" + bytes(range(20))
    weights.write_bytes(bytes(data))
    assert_names(load_error(ckpt), weights, "corrupt safetensors header")


def test_file_of_random_bytes(tiny_ckpt, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_names(load_error(ckpt), weights)


def test_header_that_is_not_an_object(tiny_ckpt, tmp_path):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    write_raw_safetensors(weights, [1, 2, 3], b"")
    assert_names(load_error(ckpt), weights, "corrupt safetensors header")


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [4]},                                   # no data_offsets
    "not an object",
    {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]},          # 12 bytes for 4 floats
    {"dtype": "F32", "shape": [4], "data_offsets": [8, 0]},           # end before start
    {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]},         # beyond the data
])
def test_corrupt_header_entry_names_the_tensor(tiny_ckpt, tmp_path, entry):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    write_raw_safetensors(weights, {"ln_f.bias": entry}, bytes(16))
    assert_names(load_error(ckpt), weights, "tensor ln_f.bias")


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": ["a"], "data_offsets": [0, 4]},
    {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]},
    {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]},
])
def test_header_entry_with_wrong_types_names_the_tensor(tiny_ckpt, tmp_path, entry):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    write_raw_safetensors(weights, {"ln_f.bias": entry}, bytes(4))
    assert_names(load_error(ckpt), weights, "tensor ln_f.bias")


@pytest.mark.parametrize("dtype, code", [(np.int32, "I32"), (np.float64, "F64"), (np.int64, "I64")])
def test_unsupported_dtype(tiny_tensors, write_checkpoint, dtype, code):
    tiny_tensors["h.1.ln_2.weight"] = tiny_tensors["h.1.ln_2.weight"].astype(dtype)
    ckpt = write_checkpoint(tiny_tensors)
    assert_names(load_error(ckpt), ckpt / "model.safetensors", "tensor h.1.ln_2.weight", code)
