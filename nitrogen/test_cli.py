import json
import re

import numpy as np
import torch
from typer.testing import CliRunner

from nitrogen import InferenceSession
from nitrogen.cli import app

runner = CliRunner()


def test_info_json_reports_counts_games_and_layout(golden_dir):
    path = golden_dir / "game_padded.pt"
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert doc["parameters"] == sum(v.numel() for v in state.values())
    assert doc["parameters_per_component"]["game_embedding"] == state["game_embedding.weight"].numel()
    assert doc["game_mapping"] == {"": 0, "alpha": 1, "beta": 2}
    assert doc["vision_tower"]["tokens_per_frame"] == 16
    assert [r["name"] for r in doc["action_layout"]][18] == "SOUTH"
    assert doc["ckpt_config"]["tokenizer_cfg"]["max_sequence_length"] == 20


def test_info_tables(golden_dir):
    result = runner.invoke(app, ["info", str(golden_dir / "game_padded.pt")])
    assert result.exit_code == 0, result.output
    for text in (
        "Parameters",
        "Game mapping",
        "alpha",
        "Action layout",
        "RIGHT_TRIGGER",
        "google/siglip-large-patch16-256",
    ):
        assert text in result.output


def test_convert_both_ways_keeps_behaviour(golden_dir, tmp_path):
    src = golden_dir / "game_padded.pt"
    st, pt = tmp_path / "m.safetensors", tmp_path / "m.pt"
    assert runner.invoke(app, ["convert", str(src), str(st)]).exit_code == 0
    assert runner.invoke(app, ["convert", str(st), str(pt)]).exit_code == 0
    frame = np.load(golden_dir / "game_padded.npz")["image_0"]
    noise = np.zeros((18, 25), np.float32)
    outs = [
        InferenceSession.from_checkpoint(p, device="cpu", game="alpha").predict(frame, noise=noise)
        for p in (src, st, pt)
    ]
    for out in outs[1:]:
        np.testing.assert_array_equal(out.action_tensor, outs[0].action_tensor)


def test_convert_refuses_to_overwrite(golden_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["convert", str(golden_dir / "released_layout.pt"), str(out)])
    assert result.exit_code == 1 and "--force" in result.output
    assert out.read_bytes() == b"keep me"


def test_bad_checkpoint_is_a_clear_error_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 1
    assert "error:" in result.output and "not a readable PyTorch checkpoint" in result.output
    assert "Traceback" not in result.output


def test_keys_generate_writes_a_server_key_and_an_allow_list(tmp_path):
    result = runner.invoke(app, ["keys", "generate", str(tmp_path / "keys"), "--clients", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "keys" / "server.key_secret").is_file()
    assert len(list((tmp_path / "keys" / "clients").glob("*.key"))) == 2
    again = runner.invoke(app, ["keys", "generate", str(tmp_path / "keys")])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


def test_serve_refuses_an_exposed_host_without_keys(golden_dir):
    result = runner.invoke(app, ["serve", str(golden_dir / "released_layout.pt"), "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "CURVE" in result.output and "--insecure" in result.output


def test_play_command_records_a_run(tiny_ckpt, tmp_path):
    result = runner.invoke(
        app,
        ["play", "--env", "ale:Breakout", "--ckpt", str(tiny_ckpt), "--mode", "sync", "--max-frames", "36"]
        + ["--seed", "0", "--out", str(tmp_path), "--no-video"],
    )
    assert result.exit_code == 0, result.output
    [run_dir] = list(tmp_path.iterdir())
    assert len((run_dir / "actions.jsonl").read_text().splitlines()) == 36
    episode = json.loads((run_dir / "episode.json").read_text())
    assert episode["frames"] == 36 and episode["mode"] == "sync"
    assert "episode 0: score" in result.output


def test_play_replay_of_a_run_sends_the_recorded_pad_states(tiny_ckpt, tmp_path):
    """`nitrogen play --replay RUN/actions.jsonl`, as the README describes, on a run of a model
    (action shift 1, sync); the replay's states equal the recording's, frame by frame."""
    args = ["play", "--env", "ale:Breakout", "--mode", "sync", "--max-frames", "50", "--seed", "0", "--no-video"]
    result = runner.invoke(app, [*args, "--ckpt", str(tiny_ckpt), "--steps", "2", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    [first] = list((tmp_path / "a").iterdir())
    replay = first / "actions.jsonl"
    again = ["play", "--env", "ale:Breakout", "--max-frames", "50", "--no-video", "--replay", str(replay)]
    result = runner.invoke(app, [*again, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    [second] = list((tmp_path / "b").iterdir())
    states = [
        [json.loads(line)["state"] for line in (d / "actions.jsonl").read_text().splitlines()] for d in (first, second)
    ]
    assert len(states[0]) == 50 and states[1] == states[0]
    assert json.loads((second / "episode.json").read_text())["mode"] == "sync"  # a replay defaults to sync


def test_play_command_needs_one_game_and_one_policy(tiny_ckpt):
    result = runner.invoke(app, ["play", "--ckpt", str(tiny_ckpt)])
    assert result.exit_code == 1 and "exactly one of --env" in result.output
    result = runner.invoke(app, ["play", "--env", "ale:Breakout"])
    assert result.exit_code == 1 and "exactly one policy" in result.output


def test_record_then_finetune_reads_it_unchanged_then_eval(tiny_ckpt, tmp_path):
    data = tmp_path / "breakout"
    result = runner.invoke(
        app,
        ["record", "--env", "ale:Breakout", "--policy", "scripted", "--episodes", "2", "--max-frames", "40"]
        + ["--shard-frames", "25", "--out", str(data)],
    )
    assert result.exit_code == 0, result.output
    assert len(list((data / "data").glob("*.parquet"))) == 4
    run = tmp_path / "run"
    args = ["finetune", "--data", str(data / "data"), "--ckpt", str(tiny_ckpt), "--out", str(run)]
    result = runner.invoke(app, args + ["--eval-fraction", "0.5", "--set", "max_steps=2", "--set", "batch_size=2"])
    assert result.exit_code == 0, result.output
    assert (run / "model.pt").is_file()
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        ["eval", "--env", "ale:Breakout", "--policy", f"ckpt:{run / 'model.pt'}", "--episodes", "1"]
        + ["--max-frames", "60", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    table = (out / "results.md").read_text()
    for name in ("ckpt:", "random", "scripted"):
        assert name in table
    assert "ale:Breakout random seed 0: score" in result.output  # one progress line per episode


def test_eval_on_a_game_without_an_expert_skips_that_baseline(tmp_path):
    out = tmp_path / "eval"
    args = ["eval", "--env", "ale:Tennis", "--policy", "random", "--episodes", "1", "--max-frames", "20"]
    result = runner.invoke(app, args + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    table = (out / "results.md").read_text()
    assert "| ale:Tennis | random | 1 |" in table and "scripted" not in table


def test_record_and_eval_run_the_loop_in_either_mode(tmp_path):
    out = tmp_path / "rec"
    args = ["record", "--env", "ale:Breakout", "--policy", "random", "--max-frames", "30", "--mode", "async"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "info.json").read_text())["frames"] == 30
    result = runner.invoke(
        app, ["eval", "--env", "ale:Breakout", "--policy", "random", "--no-baselines", "--mode", "bogus"]
    )
    assert result.exit_code == 1 and "--mode must be sync or async" in result.output
    args = ["eval", "--env", "ale:Breakout", "--policy", "random", "--no-baselines", "--episodes", "1"]
    result = runner.invoke(app, [*args, "--max-frames", "20", "--mode", "async", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [e["length"] for e in doc["episodes"]] == [20]


def test_info_refuses_a_checkpoint_that_does_not_match_its_config(tiny_ckpt, tmp_path):
    ck = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ck["model"]["action_decoder.layer2.b"] = torch.zeros(1, 21)
    torch.save(ck, tmp_path / "mismatch.pt")
    ck["model"]["action_decoder.layer2.b"] = torch.zeros(1).expand(1, 25)
    torch.save(ck, tmp_path / "expanded.pt")
    for name, message in (
        ("mismatch.pt", r"action_decoder.layer2.b: checkpoint \(1, 21\) vs model \(1, 25\)"),
        ("expanded.pt", "action_decoder.layer2.b has stride 0"),
    ):
        for args in ([], ["--json"]):
            result = runner.invoke(app, ["info", str(tmp_path / name), *args])
            assert result.exit_code == 1, result.output
            assert re.search(message, result.output) and "Traceback" not in result.output


def test_dagger_record_finetune_and_loop_commands(tiny_ckpt, tmp_path):
    """record --label scripted, finetune --data DIR:WEIGHT on it, and one `nitrogen dagger` round."""
    from nitrogen.data import load_gameplay

    data = tmp_path / "labelled"
    args = ["record", "--env", "ale:Gopher", "--policy", f"ckpt:{tiny_ckpt}", "--max-frames", "40"]
    result = runner.invoke(app, [*args, "--label", "scripted", "--beta", "0.5", "--out", str(data)])
    assert result.exit_code == 0, result.output
    assert "agreement with the scripted labeller in the policy's own states" in " ".join(result.output.split())
    rows = load_gameplay(data / "data")[:]
    assert set(rows["driver"]) == {"policy", "expert"} and len(rows["agrees"]) == 40
    bad = runner.invoke(app, [*args, "--beta", "0.5", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "need --label" in " ".join(bad.output.split())
    rtc = [*args, "--label", "scripted", "--mode", "async", "--chunking", "rtc", "--latency-ms", "50"]
    result = runner.invoke(app, [*rtc, "--out", str(tmp_path / "rtc")])
    assert result.exit_code == 0, result.output
    assert load_gameplay(tmp_path / "rtc" / "data")[:]["driver"] == ["policy"] * 40
    bad = runner.invoke(app, [*rtc[:-4], "--chunking", "smooth", "--out", str(tmp_path / "y")])
    assert bad.exit_code == 1 and "--chunking must be naive, prefix or rtc" in bad.output

    fast = ["--set=max_steps=1", "--set=batch_size=2", "--set=progress=false", "--set=save_every=0"]
    tuned = tmp_path / "tuned"
    result = runner.invoke(
        app,
        [
            "finetune",
            "--data",
            f"{data / 'data'}:2",
            "--ckpt",
            str(tiny_ckpt),
            "--out",
            str(tuned),
            "--eval-fraction",
            "0",
            *fast,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tuned / "model.pt").is_file()

    run = tmp_path / "dagger"
    loop = ["dagger", "--env", "ale:Gopher", "--init", str(tuned / "model.pt"), "--out", str(run), "--rounds", "1"]
    loop += ["--episodes", "1", "--max-frames", "30", "--steps", "1", "--eval-seeds", "5", "--eval-max-frames", "20"]
    result = runner.invoke(app, [*loop, "--set", "batch_size=2", "--set", "progress=false", "--set", "save_every=0"])
    assert result.exit_code == 0, result.output
    assert "round 0: 30 frames labelled" in " ".join(result.output.split())
    assert json.loads((run / "dagger.json").read_text())["rounds"][0]["frames_labelled"] == 30


def test_play_and_eval_take_chunking_execute_and_simulated_latency(tiny_ckpt, tmp_path):
    args = ["play", "--env", "ale:Breakout", "--ckpt", str(tiny_ckpt), "--mode", "async", "--max-frames", "24"]
    args += ["--chunking", "rtc", "--execute", "3", "--latency-ms", "50", "--seed", "0", "--no-video"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "play")])
    assert result.exit_code == 0, result.output
    [run_dir] = list((tmp_path / "play").iterdir())
    episode = json.loads((run_dir / "episode.json").read_text())
    assert episode["chunking"] == "rtc" and episode["frames"] == 24 and episode["delay_mean"] > 0
    bad = runner.invoke(app, [*args[:-1], "--chunking", "smooth"])
    assert bad.exit_code == 1 and "--chunking must be naive, prefix or rtc" in bad.output
    ev = ["eval", "--env", "ale:Breakout", "--policy", f"ckpt:{tiny_ckpt}", "--no-baselines", "--episodes", "1"]
    ev += ["--max-frames", "18", "--mode", "async", "--chunking", "prefix", "--latency-ms", "100", "--steps", "3"]
    result = runner.invoke(app, [*ev, "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [e["length"] for e in doc["episodes"]] == [18]
    assert doc["policies"][f"ckpt:{tiny_ckpt}"]["num_steps"] == 3  # --steps reached the model


def test_in_flight_pipelines_simulated_requests_in_play_and_eval(tiny_ckpt, tmp_path):
    """At 200 ms (12 frames) an 18-action chunk cannot last until the next one arrives when the
    next request waits for it; two in flight (one every 6 frames) keep a chunk playing, and each
    request's prefix comes from the previous one's output."""
    args = ["play", "--env", "ale:Breakout", "--ckpt", str(tiny_ckpt), "--mode", "async", "--max-frames", "72"]
    args += ["--chunking", "prefix", "--execute", "6", "--latency-ms", "200", "--seed", "0", "--no-video"]
    episodes = {}
    for n in (1, 2):
        result = runner.invoke(app, [*args, "--in-flight", str(n), "--out", str(tmp_path / f"x{n}")])
        assert result.exit_code == 0, result.output
        [run_dir] = list((tmp_path / f"x{n}").iterdir())
        episodes[n] = json.loads((run_dir / "episode.json").read_text())
    assert episodes[2]["starved_frames"] == 12  # only the 12 frames before the first chunk arrives
    assert episodes[1]["starved_frames"] > episodes[2]["starved_frames"] + 20
    assert "delay_mean" not in episodes[1]  # one in flight: the old chunk has run out, nothing to join
    # Requests at frames 6, 12, ..., 66 carry a prefix: the first before any latency is measured
    # (d = 0), the other ten with d = 12 frames - the shift of 1.
    assert episodes[2]["delay_mean"] == (0 + 10 * 11) / 11
    live = [a for a in args if a not in ("--latency-ms", "200")]
    bad = runner.invoke(app, [*live, "--in-flight", "2", "--out", str(tmp_path / "live")])
    assert bad.exit_code == 1 and "--in-flight above 1 needs --latency-ms" in bad.output
    ev = ["eval", "--env", "ale:Breakout", "--policy", f"ckpt:{tiny_ckpt}", "--no-baselines", "--episodes", "1"]
    bad = runner.invoke(app, [*ev, "--in-flight", "2", "--out", str(tmp_path / "ev")])
    assert bad.exit_code == 1 and "--in-flight above 1 needs --latency-ms" in bad.output
    ev += ["--max-frames", "36", "--mode", "async", "--latency-ms", "200", "--in-flight", "2", "--execute", "6"]
    result = runner.invoke(app, [*ev, "--steps", "2", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert [e["length"] for e in json.loads((tmp_path / "ev" / "results.json").read_text())["episodes"]] == [36]
