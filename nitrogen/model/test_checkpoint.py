import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from nitrogen import CheckpointError, UnknownVisionEncoderError, read_checkpoint, save_checkpoint
from nitrogen.model.checkpoint import (
    build_model,
    convert_checkpoint,
    estimate_parameters,
    load_model,
    model_from_checkpoint,
    vision_spec_for,
)
from nitrogen.model.configuration import CheckpointConfig
from nitrogen.model.vision import lookup_spec


def _raw_dict(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _write(path, obj):
    torch.save(obj, path)
    return path


def test_round_trip_pt_safetensors_pt_keeps_everything(golden_dir, tmp_path):
    src = golden_dir / "game_padded.pt"
    st = convert_checkpoint(src, tmp_path / "a.safetensors")
    back = convert_checkpoint(st, tmp_path / "b.pt")
    orig, again = read_checkpoint(src), read_checkpoint(back)
    assert again.config == orig.config
    assert again.config.to_dict() == _raw_dict(src)["ckpt_config"]
    assert again.game_mapping == orig.game_mapping == {"": 0, "alpha": 1, "beta": 2}
    assert again.state_dict.keys() == orig.state_dict.keys()
    for k, v in orig.state_dict.items():
        assert torch.equal(v, again.state_dict[k]), k
    # The .pt we write is the released format: plain data that torch.load(weights_only=True) reads.
    assert set(_raw_dict(back)) == {"ckpt_config", "model", "game_mapping"}


def test_loading_assigns_tensors_without_a_second_copy(tiny_ckpt):
    raw = read_checkpoint(tiny_ckpt)
    pointers = {k: v.data_ptr() for k, v in raw.state_dict.items()}
    model = model_from_checkpoint(raw)
    shared = sum(model.state_dict()[k].data_ptr() == p for k, p in pointers.items())
    assert shared == len(pointers)


def test_missing_key_is_named(tiny_ckpt, tmp_path):
    ck = _raw_dict(tiny_ckpt)
    del ck["model"]["model.proj_out_2.bias"]
    with pytest.raises(CheckpointError, match=r"missing key\(s\): model.proj_out_2.bias"):
        load_model(_write(tmp_path / "x.pt", ck))


def test_unexpected_key_is_named(tiny_ckpt, tmp_path):
    ck = _raw_dict(tiny_ckpt)
    ck["model"]["extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): extra.weight"):
        load_model(_write(tmp_path / "x.pt", ck))


def test_shape_mismatch_is_named(tiny_ckpt, tmp_path):
    ck = _raw_dict(tiny_ckpt)
    ck["model"]["action_decoder.layer2.b"] = torch.zeros(1, 21)
    with pytest.raises(CheckpointError, match=r"action_decoder.layer2.b: checkpoint \(1, 21\) vs model \(1, 25\)"):
        load_model(_write(tmp_path / "x.pt", ck))


def test_unknown_vision_encoder(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    ck = _raw_dict(tiny_ckpt)
    ck["ckpt_config"]["model_cfg"]["vision_encoder_name"] = "acme/not-a-siglip"
    with pytest.raises(UnknownVisionEncoderError, match="unknown vision encoder 'acme/not-a-siglip'"):
        load_model(_write(tmp_path / "x.pt", ck))


def test_invalid_config_field_is_named(tiny_ckpt, tmp_path):
    ck = _raw_dict(tiny_ckpt)
    ck["ckpt_config"]["model_cfg"]["action_horizon"] = "many"
    with pytest.raises(CheckpointError, match="model_cfg.action_horizon"):
        read_checkpoint(_write(tmp_path / "x.pt", ck))


def test_game_embedding_without_mapping(golden_dir, tmp_path):
    ck = _raw_dict(golden_dir / "game_padded.pt")
    del ck["game_mapping"]
    with pytest.raises(CheckpointError, match="no 'game_mapping'"):
        load_model(_write(tmp_path / "x.pt", ck))


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_is_not_plain_data_is_refused_and_nothing_runs(tiny_ckpt, tmp_path):
    marker = tmp_path / "pwned"
    ck = _raw_dict(tiny_ckpt)
    ck["payload"] = _RunsACommand(marker)
    path = tmp_path / "evil.pt"
    torch.save(ck, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="not plain data: it refers to 'posix.system'"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2, 3], "expected a dict"),
        ({"model": {}}, "missing top-level key 'ckpt_config'"),
        ({"ckpt_config": {}, "model": {"a": 1}}, "state dict of tensors"),
        ({"ckpt_config": [], "model": {}}, "must be a dict"),
    ],
)
def test_foreign_structures(tmp_path, obj, message):
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(_write(tmp_path / "x.pt", obj))


def test_truncated_and_garbage_files(tiny_ckpt, tmp_path):
    data = tiny_ckpt.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 10)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    for name in ("cut.pt", "junk.pt", "junk.safetensors"):
        with pytest.raises(CheckpointError, match=name):
            read_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.pt")


def test_safetensors_without_our_metadata(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no 'ckpt_config'"):
        read_checkpoint(tmp_path / "plain.safetensors")


def test_failed_write_leaves_the_old_file_and_no_temporary(tiny_ckpt, tmp_path, monkeypatch):
    raw = read_checkpoint(tiny_ckpt)
    target = save_checkpoint(tmp_path / "ckpt.pt", raw.state_dict, raw.config)
    before = target.read_bytes()

    def crash_midway(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, raw.state_dict, raw.config)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert zipfile.is_zipfile(target)


def test_unknown_suffix(tiny_ckpt, tmp_path):
    raw = read_checkpoint(tiny_ckpt)
    with pytest.raises(CheckpointError, match="unknown checkpoint suffix"):
        save_checkpoint(tmp_path / "x.onnx", raw.state_dict, raw.config)
    assert list(tmp_path.iterdir()) == []


def test_load_in_bfloat16(tiny_ckpt):
    model, _ = load_model(tiny_ckpt, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.vision_encoder.embeddings.position_ids.dtype == torch.long
    assert bool(torch.isfinite(model.action_decoder.layer2.W.float()).all())


# ------------------------------------------------------------------ hostile checkpoints of plain data
#
# Each file below holds only what torch.load(weights_only=True) admits (tensors, dicts, numbers), or
# is a well-formed safetensors file; each is refused with a clear CheckpointError before any tensor
# data is copied.


class _Forged:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride)``: a tensor view
    with any strides over a real storage, which weights_only loading admits."""

    def __init__(self, base: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.base, self.offset, self.size, self.stride = base, offset, size, stride

    def __reduce__(self):
        from torch._utils import _rebuild_tensor_v2

        storage = torch.storage.TypedStorage(
            wrap_storage=self.base.untyped_storage(), dtype=self.base.dtype, _internal=True
        )
        return (_rebuild_tensor_v2, (storage, self.offset, self.size, self.stride, False, OrderedDict()))


def _hostile(tiny_ckpt, tmp_path, name, *, model=None, config=None, **top):
    """The tiny checkpoint with some tensors replaced (``model``) and config fields set (``config``:
    dotted path -> value), saved to ``name``."""
    ck = _raw_dict(tiny_ckpt)
    ck["model"].update(model or {})
    for dotted, value in (config or {}).items():
        *parents, leaf = dotted.split(".")
        node = ck["ckpt_config"]
        for part in parents:
            node = node[part]
        node[leaf] = value
    ck.update(top)
    return _write(tmp_path / name, ck)


STRIDE_ZERO_POSITIONS = "vision_encoder.embeddings.position_embedding.weight"


def _stride_zero_tower(tiny_ckpt, tmp_path):
    """A 6 MB file whose position table is one row expanded to a 4096 x 4096 grid of patches: 2.1 GB
    once converted to bfloat16, and a consistent geometry (the tower's size is read from it)."""
    row = torch.zeros(1, 64)
    return _hostile(tiny_ckpt, tmp_path, "stride0.pt", model={STRIDE_ZERO_POSITIONS: row.expand(4096 * 4096, 64)})


def test_stride_zero_tensor_is_refused_by_name(tiny_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match=rf"{re.escape(STRIDE_ZERO_POSITIONS)} has stride 0"):
        load_model(_stride_zero_tower(tiny_ckpt, tmp_path), dtype=torch.bfloat16)
    # Also when its shape is the expected one, and for a 2.4 GB flat expansion.
    key = "model.proj_out_2.weight"
    for name, view in (
        ("right-shape", torch.zeros(64, 1).expand(64, 64)),
        ("flat", torch.zeros(1).expand(600_000_000)),
    ):
        with pytest.raises(CheckpointError, match=rf"{re.escape(key)} has stride 0"):
            read_checkpoint(_hostile(tiny_ckpt, tmp_path, f"{name}.pt", model={key: view}))


def test_overlapping_and_shared_tensors_are_refused(tiny_ckpt, tmp_path):
    key, other = "model.proj_out_2.weight", "model.transformer_blocks.0.attn1.to_q.weight"
    base = torch.randn(64 * 64)
    overlapping = _Forged(base, 0, (64, 64), (1, 1))  # row i starts one element after row i-1
    with pytest.raises(CheckpointError, match=rf"{re.escape(key)} has overlapping strides"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "overlap.pt", model={key: overlapping}))
    shared = torch.randn(64, 64)
    with pytest.raises(CheckpointError, match="shares its data with"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "tied.pt", model={key: shared, other: shared}))
    half = torch.randn(64 * 64 + 32 * 64)
    pair = {key: half[: 64 * 64].view(64, 64), other: half[32 * 64 :].view(64, 64)}  # half of their rows in common
    with pytest.raises(CheckpointError, match="shares its data with"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "half.pt", model=pair))
    # A transposed (non-contiguous, non-overlapping) tensor of the right shape is fine.
    transposed = torch.randn(64, 64).t()
    raw = read_checkpoint(_hostile(tiny_ckpt, tmp_path, "t.pt", model={key: transposed}))
    assert torch.equal(raw.state_dict[key], transposed)


def test_storage_smaller_than_the_shape_is_refused(tiny_ckpt, tmp_path):
    key = "model.proj_out_2.weight"
    for name, forged in (
        ("short", _Forged(torch.zeros(100), 0, (64, 64), (64, 1))),
        ("offset", _Forged(torch.zeros(64 * 64), 1, (64, 64), (64, 1))),
    ):
        path = _hostile(tiny_ckpt, tmp_path, f"{name}.pt", model={key: forged})
        with pytest.raises(CheckpointError, match=rf"{name}\.pt"):
            read_checkpoint(path)


def test_tensors_that_are_not_dense_float_weights_are_refused(tiny_ckpt, tmp_path):
    key = "model.proj_out_2.bias"
    cases = {
        "int": (torch.zeros(64, dtype=torch.int64), "dtype int64"),
        "complex": (torch.zeros(64, dtype=torch.complex64), "dtype complex64"),
        "sparse": (torch.zeros(64).to_sparse(), "sparse"),
    }
    for name, (tensor, message) in cases.items():
        with pytest.raises(CheckpointError, match=rf"{re.escape(key)} .*{message}"):
            read_checkpoint(_hostile(tiny_ckpt, tmp_path, f"{name}.pt", model={key: tensor}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_cfg.num_inference_timesteps", 10**7),
        ("model_cfg.diffusion_model_cfg.num_layers", 10**6),
        ("model_cfg.vl_self_attention_cfg.num_layers", 10**6),
        ("model_cfg.num_timestep_buckets", 10**9),
        ("model_cfg.max_seq_len", 10**8),
        ("model_cfg.diffusion_model_cfg.max_num_positional_embeddings", 10**8),
        ("model_cfg.diffusion_model_cfg.num_attention_heads", 10**5),
        ("model_cfg.max_num_embodiments", 10**6),
        ("tokenizer_cfg.max_sequence_length", 10**7),
        ("modality_cfg.frame_per_sample", 10**4),
        ("model_cfg.noise_s", float("nan")),
        ("model_cfg.diffusion_model_cfg.norm_eps", float("inf")),
    ],
)
def test_config_beyond_sane_bounds_is_refused_before_building(tiny_ckpt, tmp_path, field, value):
    with pytest.raises(CheckpointError, match=rf"invalid ckpt_config: {re.escape(field)}"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "big.pt", config={field: value}))


def test_parameter_budget_is_checked_before_building(tiny_ckpt, tmp_path):
    # Consistent widths, every field within its own bound, but about 3.6e12 parameters in all.
    wide = {"num_attention_heads": 256, "attention_head_dim": 128, "num_layers": 256}
    config = {f"model_cfg.diffusion_model_cfg.{k}": v for k, v in wide.items()}
    config |= {f"model_cfg.vl_self_attention_cfg.{k}": v for k, v in wide.items()}
    config |= {
        "model_cfg.hidden_size": 32768,
        "model_cfg.vision_hidden_size": 32768,
        "model_cfg.diffusion_model_cfg.output_dim": 32768,
        "model_cfg.vision_num_heads": 2,
    }
    path = _hostile(tiny_ckpt, tmp_path, "huge.pt", config=config)
    with pytest.raises(CheckpointError, match=r"about [\d,]+ parameters, over the limit of 10,000,000,000"):
        read_checkpoint(path)
    raw = _raw_dict(path)
    with pytest.raises(ValueError, match="over the limit"):
        build_model(CheckpointConfig.model_validate(raw["ckpt_config"]), device="meta")


@pytest.mark.parametrize("name", ["released_layout", "game_padded", "two_frames_cfg_sinusoidal"])
def test_parameter_estimate_matches_the_built_model(golden_dir, name):
    raw = read_checkpoint(golden_dir / f"{name}.pt")
    vision = vision_spec_for(raw)
    games = len(raw.game_mapping) if raw.game_mapping else None
    built = sum(t.numel() for t in build_model(raw.config, vision, games, device="meta").state_dict().values())
    assert abs(estimate_parameters(raw.config, vision, games) - built) <= built // 1000


def test_parameter_estimate_of_the_released_config_and_variants(golden_dir):
    released = json.loads((golden_dir / "ng_ckpt_config.json").read_text())
    variants = [
        {},
        {"diffusion_model_cfg": {"cross_attention_dim": 512, "norm_elementwise_affine": True, "attention_bias": False}},
        {"diffusion_model_cfg": {"interleave_self_attention": False, "positional_embeddings": "sinusoidal"}},
        {"max_num_embodiments": 3, "add_pos_embed": False},
    ]
    for change in variants:
        cfg = json.loads(json.dumps(released))
        for key, value in change.items():
            if isinstance(value, dict):
                cfg["model_cfg"][key].update(value)
            else:
                cfg["model_cfg"][key] = value
        config = CheckpointConfig.model_validate(cfg)
        vision = lookup_spec(config.model_cfg.vision_encoder_name)
        built = sum(t.numel() for t in build_model(config, vision, 4, device="meta").state_dict().values())
        assert abs(estimate_parameters(config, vision, 4) - built) <= built // 1000, change


def test_vision_geometry_beyond_bounds_is_refused(tiny_ckpt, tmp_path):
    ck = _raw_dict(tiny_ckpt)
    fc1 = ck["model"]["vision_encoder.encoder.layers.0.mlp.fc1.weight"]
    layers = {f"vision_encoder.encoder.layers.{i}.mlp.fc1.weight": fc1.clone() for i in range(300)}
    with pytest.raises(CheckpointError, match=r"num_layers must be an integer in 0\.\.256, got 300"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "deep-tower.pt", model=layers))
    bad_shapes = {
        "vision_encoder.embeddings.patch_embedding.weight": torch.zeros(64, 3),
        STRIDE_ZERO_POSITIONS: torch.zeros(16),
    }
    for key, tensor in bad_shapes.items():
        with pytest.raises(CheckpointError, match=rf"{re.escape(key)} has shape"):
            read_checkpoint(_hostile(tiny_ckpt, tmp_path, "odd.pt", model={key: tensor}))


def _handmade_pt(path, pickled: bytes):
    """A zip-format torch checkpoint whose ``data.pkl`` is ``pickled``, written as torch writes one."""
    template = path.with_name("template.pt")
    torch.save({}, template)
    writer = torch._C.PyTorchFileWriter(str(path))
    with zipfile.ZipFile(template) as z:
        for name in z.namelist():
            record = name.split("/", 1)[1]
            data = pickled if record == "data.pkl" else z.read(name)
            if record != ".data/serialization_id":
                writer.write_record(record, data, len(data))
    writer.write_end_of_file()
    del writer
    return path


def test_deeply_nested_or_foreign_config_data_is_refused(tiny_ckpt, tmp_path):
    # {"ckpt_config": {"notes": [[[...]]] 100,000 deep}, "model": {}}, built by pickle opcodes:
    # torch.save itself cannot write it, but a hand-made file can, and loading it is iterative.
    depth = 100_000
    text = lambda s: b"X" + struct.pack("<I", len(s)) + s  # BINUNICODE
    pickled = (
        b"\x80\x02}("
        + text(b"ckpt_config")
        + b"}("
        + text(b"notes")
        + b"]" * depth
        + b"a" * (depth - 1)
        + b"u"
        + text(b"model")
        + b"}u."
    )
    with pytest.raises(CheckpointError, match="'ckpt_config' is nested more than 32 levels deep"):
        read_checkpoint(_handmade_pt(tmp_path / "deep-pickle.pt", pickled))
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(CheckpointError, match="'ckpt_config' is nested more than 32 levels deep"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "deep.pt", config={"model_cfg.notes": deep}))
    loop: list = []
    loop.append(loop)
    with pytest.raises(CheckpointError, match="nested more than 32"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "loop.pt", config={"notes": loop}))
    with pytest.raises(CheckpointError, match="more than 100000 values"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "wide.pt", config={"notes": list(range(200_000))}))
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "tensor.pt", config={"notes": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match="game_mapping"):
        read_checkpoint(_hostile(tiny_ckpt, tmp_path, "games.pt", game_mapping={"": 0, (1, 2): 1}))


def test_mismatched_shape_is_named_without_building_weights(tiny_ckpt, tmp_path):
    path = _hostile(tiny_ckpt, tmp_path, "mismatch.pt", model={"action_decoder.layer2.b": torch.zeros(1, 21)})
    with pytest.raises(CheckpointError, match=r"action_decoder.layer2.b: checkpoint \(1, 21\) vs model \(1, 25\)"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="action_decoder.layer2.b"):
        convert_checkpoint(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


# ----------------------------------------------------------------------------- crafted safetensors


def _safetensors(path, header: dict, data: bytes = b""):
    """A safetensors file written by hand: 8-byte header length, JSON header, tensor bytes."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _released_safetensors(tiny_ckpt, tmp_path, **metadata):
    """The tiny checkpoint as a hand-written safetensors file, with metadata entries replaced."""
    raw = read_checkpoint(tiny_ckpt)
    header: dict = {"__metadata__": {"format": "nitrogen", "ckpt_config": json.dumps(raw.config.to_dict()), **metadata}}
    chunks, offset = [], 0
    for key, tensor in raw.state_dict.items():
        blob = tensor.contiguous().numpy().tobytes()
        header[key] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(blob)]}
        chunks.append(blob)
        offset += len(blob)
    return header, b"".join(chunks)


def test_handwritten_safetensors_loads(tiny_ckpt, tmp_path):
    header, data = _released_safetensors(tiny_ckpt, tmp_path)
    raw = read_checkpoint(_safetensors(tmp_path / "ok.safetensors", header, data))
    assert raw.state_dict.keys() == read_checkpoint(tiny_ckpt).state_dict.keys()


def test_safetensors_metadata_nested_too_deep_is_a_checkpoint_error(tiny_ckpt, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    for key in ("ckpt_config", "game_mapping"):
        header, data = _released_safetensors(tiny_ckpt, tmp_path, **{key: deep})
        with pytest.raises(CheckpointError, match=f"metadata '{key}' is nested more than 32 levels deep"):
            read_checkpoint(_safetensors(tmp_path / "deep.safetensors", header, data))
    # Brackets inside strings do not count; a string with escaped quotes does not hide real nesting.
    header, data = _released_safetensors(tiny_ckpt, tmp_path)
    config = json.loads(header["__metadata__"]["ckpt_config"])
    config["notes"] = "[" * 1000 + '\\"{'
    header["__metadata__"]["ckpt_config"] = json.dumps(config)
    assert read_checkpoint(_safetensors(tmp_path / "strings.safetensors", header, data)).config.notes.startswith("[[")
    config["notes"] = ['\\"' + "[" * 10] + [[[[]]]] * 3
    nested = json.dumps(config)[:-1] + ', "more": ' + "[" * 40 + "]" * 40 + "}"
    header["__metadata__"]["ckpt_config"] = nested
    with pytest.raises(CheckpointError, match="nested more than 32"):
        read_checkpoint(_safetensors(tmp_path / "hidden.safetensors", header, data))


def test_safetensors_metadata_too_long_or_not_json(tiny_ckpt, tmp_path):
    header, data = _released_safetensors(tiny_ckpt, tmp_path, ckpt_config=" " * (2 << 20) + "{}")
    with pytest.raises(CheckpointError, match="characters long"):
        read_checkpoint(_safetensors(tmp_path / "long.safetensors", header, data))
    for text in ("{", "1" * 10_000, '{"model_cfg": NaN'):
        header, data = _released_safetensors(tiny_ckpt, tmp_path, ckpt_config=text)
        with pytest.raises(CheckpointError, match="ckpt_config"):
            read_checkpoint(_safetensors(tmp_path / "bad.safetensors", header, data))


def test_safetensors_header_is_checked_before_tensor_data(tiny_ckpt, tmp_path):
    huge = tmp_path / "huge-header.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header of 1099511627776 bytes is over the limit"):
        read_checkpoint(huge)
    key = "action_decoder.layer2.b"
    header, data = _released_safetensors(tiny_ckpt, tmp_path)
    header[key]["shape"] = [1, 5, 5]  # same bytes, another shape
    with pytest.raises(CheckpointError, match=rf"{key}: checkpoint \(1, 5, 5\) vs model \(1, 25\)"):
        read_checkpoint(_safetensors(tmp_path / "shape.safetensors", header, data))
    header, data = _released_safetensors(tiny_ckpt, tmp_path)
    header[key]["shape"] = [1, 10**9]  # claims 4 GB in 100 bytes
    with pytest.raises(CheckpointError, match="shape.safetensors|not a readable safetensors"):
        read_checkpoint(_safetensors(tmp_path / "shape.safetensors", header, data))
    header, data = _released_safetensors(tiny_ckpt, tmp_path)
    header[key]["dtype"] = "I32"
    with pytest.raises(CheckpointError, match=rf"{key} has dtype I32"):
        read_checkpoint(_safetensors(tmp_path / "dtype.safetensors", header, data))
    header, data = _released_safetensors(
        tiny_ckpt, tmp_path, ckpt_config=json.dumps({"model_cfg": {"num_inference_timesteps": 10**7}})
    )
    with pytest.raises(CheckpointError, match="num_inference_timesteps"):
        read_checkpoint(_safetensors(tmp_path / "steps.safetensors", header, data))


# ------------------------------------------------------------------------------- peak memory

_MEASURE = """
import json, sys
import torch
from nitrogen.errors import CheckpointError
from nitrogen.model.checkpoint import load_model

def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

load_model(sys.argv[1])  # warm up: imports, allocator, a real load
before, errors = peak_kib(), []
for path in sys.argv[2:]:
    try:
        load_model(path, dtype=torch.bfloat16)
        errors.append(None)
    except CheckpointError as exc:
        errors.append(str(exc))
print(json.dumps({"growth_mib": (peak_kib() - before) / 1024, "errors": errors}))
"""


def test_hostile_checkpoints_fail_with_little_memory(tiny_ckpt, tmp_path):
    """In a fresh process: the peak resident memory (VmHWM) barely moves while every hostile file
    is refused, though materialising the first would take 2.1 GB."""
    header, data = _released_safetensors(tiny_ckpt, tmp_path, ckpt_config="[" * 100_000)
    hostile = [
        _stride_zero_tower(tiny_ckpt, tmp_path),
        _hostile(tiny_ckpt, tmp_path, "flat.pt", model={"model.proj_out_2.weight": torch.zeros(1).expand(600_000_000)}),
        _hostile(tiny_ckpt, tmp_path, "steps.pt", config={"model_cfg.num_inference_timesteps": 10**7}),
        _hostile(tiny_ckpt, tmp_path, "layers.pt", config={"model_cfg.diffusion_model_cfg.num_layers": 10**6}),
        _safetensors(tmp_path / "deep.safetensors", header, data),
    ]
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tiny_ckpt), *map(str, hostile)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(result["errors"]), result["errors"]
    assert "stride 0" in result["errors"][0] and "nested" in result["errors"][-1]
    assert result["growth_mib"] < 64, result
