import os
import pickle
import zipfile

import pytest
import torch

from nitrogen import CheckpointError, UnknownVisionEncoderError, read_checkpoint, save_checkpoint
from nitrogen.model.checkpoint import convert_checkpoint, load_model, model_from_checkpoint


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
