"""The ``nitrogen`` command line."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import NitrogenError

app = typer.Typer(
    name="nitrogen",
    help="Serve, play and fine-tune NitroGen gaming agents.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


BUTTON_ORDER_HELP = (
    "The checkpoint's order of its 21 button dims: alphabetical (the released code's, default) or grouped "
    "(the original repository's issue #43); see README 'Button order'."
)


def _check_mode(mode: str) -> None:
    if mode not in ("sync", "async"):
        _fail(ValueError(f"--mode must be sync or async, got {mode!r}"))


def _check_in_flight(in_flight: int, latency_ms: float | None) -> None:
    if in_flight > 1 and latency_ms is None:
        _fail(ValueError("--in-flight above 1 needs --latency-ms: pipelined requests exist in simulated time only"))


def _check_chunking(chunking: str | None) -> None:
    if chunking is not None and chunking not in ("naive", "prefix", "rtc"):
        _fail(ValueError("--chunking must be naive, prefix or rtc"))


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=1)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: the episode stops, the run folder is finished,
    and the env's close resumes a paused game and releases every key (Python's default action for
    these signals exits at once, with no cleanup, and would leave the game stopped, a key down)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    wanted = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    try:
        previous = {s: signal.signal(s, interrupt) for s in wanted}
    except ValueError:  # not the main thread: leave the signals alone
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# The real-time chunking options of `play` and `eval` (issue 19), spelled once.
ChunkingOption = Annotated[
    str | None,
    typer.Option(help="naive, prefix or rtc (real-time chunking); default: rtc in async mode if the policy can."),
]
ExecuteOption = Annotated[
    int | None, typer.Option(help="Execution horizon: ask for the next chunk after S actions.", min=1)
]
LatencyOption = Annotated[
    float | None, typer.Option(help="Simulated latency: the game runs in simulated time (see README).", min=0)
]
InFlightOption = Annotated[
    int,
    typer.Option(
        "--in-flight",
        help="With --latency-ms: requests in flight at once (pipelined, one every --execute frames).",
        min=1,
    ),
]


@app.command()
def info(
    checkpoint: Annotated[
        str, typer.Argument(help="A .pt (released format) or .safetensors checkpoint, or hf://OWNER/REPO[/FILE][@REV].")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")] = False,
) -> None:
    """Show a checkpoint's config, parameter counts, game mapping and action layout."""
    from .actions import layout_description
    from .model.checkpoint import COMPONENTS, parameter_counts, read_checkpoint, vision_spec_for

    try:
        raw = read_checkpoint(checkpoint)
        spec = vision_spec_for(raw)
    except NitrogenError as exc:
        _fail(exc)
    shapes = {k: tuple(v.shape) for k, v in raw.state_dict.items()}
    counts = parameter_counts(shapes)
    total = sum(counts.values())
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in raw.state_dict.values()})
    doc = {
        "checkpoint": str(checkpoint),
        "file": str(raw.path),
        "tensors": len(shapes),
        "parameters": total,
        "dtypes": dtypes,
        "parameters_per_component": counts,
        "vision_tower": spec.__dict__ | {"tokens_per_frame": spec.tokens_per_frame},
        "game_mapping": raw.game_mapping,
        "action_layout": layout_description(),
        "ckpt_config": raw.config.to_dict(),
        "distillation": raw.config.distillation(),
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return

    mcfg, tcfg, modality = raw.config.model_cfg, raw.config.tokenizer_cfg, raw.config.modality_cfg
    dit, mixer = mcfg.diffusion_model_cfg, mcfg.vl_self_attention_cfg
    console.print(f"[bold]{checkpoint}[/]  ({len(shapes)} tensors, {total:,} parameters, {', '.join(dtypes)})")
    console.print(f"experiment: {raw.config.experiment_name}")

    summary = Table(title="Config", show_header=False)
    summary.add_column("field")
    summary.add_column("value")
    summary.add_row(
        "vision encoder",
        f"{mcfg.vision_encoder_name}: {spec.num_layers} layers, width {spec.hidden_size}, "
        f"{spec.num_heads} heads, patch {spec.patch_size}, image {spec.image_size} "
        f"-> {spec.tokens_per_frame} tokens/frame",
    )
    summary.add_row(
        "VL mixer",
        f"{mixer.num_layers} blocks, {mixer.num_attention_heads}x{mixer.attention_head_dim} heads, "
        f"positions: {mixer.positional_embeddings or 'none'}",
    )
    summary.add_row(
        "DiT",
        f"{dit.num_layers} blocks, width {dit.inner_dim}, "
        f"{'interleaved cross/self attention' if dit.interleave_self_attention else 'cross attention in every block'}, "
        f"positions: {dit.positional_embeddings or 'none'}",
    )
    summary.add_row(
        "actions",
        f"horizon {mcfg.action_horizon} x {mcfg.action_dim} dims, action position embedding: {mcfg.add_pos_embed}",
    )
    summary.add_row(
        "sampling", f"{mcfg.num_inference_timesteps} Euler steps, {mcfg.num_timestep_buckets} timestep buckets"
    )
    if (record := raw.config.distillation()) is not None:
        summary.add_row(
            "distilled",
            f"{record.get('method')} distillation to {record.get('steps')} steps from "
            f"{record.get('teacher')} (sha256 {str(record.get('teacher_sha256'))[:12]}..., "
            f"{record.get('teacher_steps')} steps)",
        )
    summary.add_row(
        "training time", f"t = (1 - Beta({mcfg.noise_beta_alpha}, {mcfg.noise_beta_beta})) * {mcfg.noise_s}"
    )
    summary.add_row(
        "context",
        f"{modality.frame_per_sample} frame(s), max {tcfg.max_sequence_length} VL tokens, "
        f"action shift {modality.action_shift} frames",
    )
    console.print(summary)

    params = Table(title="Parameters")
    params.add_column("component")
    params.add_column("key prefix")
    params.add_column("parameters", justify="right")
    params.add_column("share", justify="right")
    for prefix, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        params.add_row(COMPONENTS.get(prefix, prefix), prefix, f"{n:,}", f"{100 * n / max(total, 1):.1f}%")
    params.add_row("[bold]total[/]", "", f"[bold]{total:,}[/]", "100%")
    console.print(params)

    if raw.game_mapping:
        games = Table(title="Game mapping")
        games.add_column("id", justify="right")
        games.add_column("game")
        for name, gid in sorted(raw.game_mapping.items(), key=lambda kv: kv[1]):
            games.add_row(str(gid), name or "(unconditional)")
        console.print(games)
    else:
        console.print("Game mapping: none (the model has no game conditioning)")

    layout = Table(title="Action layout")
    for col in ("dim", "name", "kind", "encoding"):
        layout.add_column(col)
    for row in layout_description():
        layout.add_row(str(row["index"]), str(row["name"]), str(row["kind"]), str(row["encoding"]))
    console.print(layout)


@app.command()
def convert(
    checkpoint: Annotated[
        str, typer.Argument(help="Source checkpoint, .pt or .safetensors, or hf://OWNER/REPO[/FILE].")
    ],
    out: Annotated[Path, typer.Argument(help="Destination; its suffix (.pt or .safetensors) picks the format.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Convert a checkpoint between .pt and .safetensors, keeping its config and game mapping."""
    from .model.checkpoint import convert_checkpoint

    if out.exists() and not force:
        _fail(FileExistsError(f"{out} exists; pass --force to overwrite it"))
    if not checkpoint.startswith("hf://") and out.resolve() == Path(checkpoint).resolve():
        _fail(ValueError("source and destination are the same file"))
    try:
        written = convert_checkpoint(checkpoint, out)
    except NitrogenError as exc:
        _fail(exc)
    console.print(f"wrote {written} ({written.stat().st_size:,} bytes)")


keys_app = typer.Typer(help="CURVE keys for serving beyond loopback.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(
    directory: Annotated[Path, typer.Argument(help="Folder for the server key and the clients/ allow-list.")],
    clients: Annotated[int, typer.Option(help="How many client keypairs to create.", min=1)] = 1,
) -> None:
    """Create a server keypair and client keypairs for `nitrogen serve --curve-dir`."""
    from .serving.keys import generate_keys

    try:
        paths = generate_keys(directory, clients=clients)
    except (FileExistsError, OSError, ValueError) as exc:
        _fail(exc)
    console.print(f"server public key: {paths.server_public} (give it to clients)")
    console.print(f"server secret key: {paths.server_secret} (keep it on the server)")
    console.print(f"allowed client public keys: {paths.clients_dir}")
    for secret in paths.client_secret:
        console.print(f"client secret key: {secret} (copy to that client)")


@app.command()
def serve(
    checkpoint: Annotated[
        str, typer.Argument(help="A .pt (released format) or .safetensors checkpoint, or hf://OWNER/REPO[/FILE][@REV].")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind; anything but loopback needs CURVE or --insecure.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 5555,
    cfg: Annotated[float, typer.Option("--cfg", help="Default CFG scale; 1.0 is off.")] = 1.0,
    ctx: Annotated[int | None, typer.Option("--ctx", help="Frames of context (default: the checkpoint's).")] = None,
    game: Annotated[str | None, typer.Option(help="Default game, by name or id (see `nitrogen info`).")] = None,
    steps: Annotated[int | None, typer.Option(help="Euler steps (default: the checkpoint's).")] = None,
    device: Annotated[str | None, typer.Option(help="cuda, cpu, cuda:1, ... (default: CUDA if available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 or bfloat16 weights (default: see README).")] = None,
    max_batch: Annotated[int, typer.Option(help="Most predict requests run as one batch.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more requests.")] = 2.0,
    curve_dir: Annotated[Path | None, typer.Option(help="Keys from `nitrogen keys generate`: turns CURVE on.")] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback --host without CURVE.")] = False,
    legacy_pickle: Annotated[
        bool, typer.Option(help="Accept the original client's pickled messages (restricted unpickler).")
    ] = False,
    stats_interval_s: Annotated[float, typer.Option(help="Seconds between stats log lines.")] = 30.0,
    max_sessions: Annotated[
        int,
        typer.Option(help="Most client sessions kept; an idle one may go, an active one never: newcomers are refused."),
    ] = 256,
    session_ttl_s: Annotated[float, typer.Option(help="Idle seconds before a client session expires.")] = 600.0,
    button_order: Annotated[str, typer.Option(help=BUTTON_ORDER_HELP)] = "alphabetical",
    fast: Annotated[
        str,
        typer.Option(
            help="off; graphs: the denoising loop as a CUDA graph per batch bucket (GPU); "
            "compile: torch.compile of the denoiser and tower (slow to start)."
        ),
    ] = "off",
) -> None:
    """Serve a checkpoint to game machines over ZeroMQ (msgpack protocol, per-client sessions, batching)."""
    import logging
    import threading

    from pydantic import ValidationError

    from .inference.engine import PolicyEngine
    from .serving.server import InferenceServer, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = ServerConfig(
            host=host,
            port=port,
            cfg_scale=cfg,
            context_length=ctx,
            game=int(game) if game is not None and game.isdigit() else game,
            max_batch=max_batch,
            batch_wait_ms=batch_wait_ms,
            curve_dir=curve_dir,
            insecure=insecure,
            legacy_pickle=legacy_pickle,
            stats_interval_s=stats_interval_s,
            max_sessions=max_sessions,
            session_ttl_s=session_ttl_s,
        )
    except ValidationError as exc:
        _fail(ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())))
    try:
        engine = PolicyEngine.from_checkpoint(
            checkpoint, device=device, dtype=dtype, num_steps=steps, button_order=button_order
        )
        if fast != "off":
            from .inference.compiled import accelerate_engine

            accelerate_engine(engine, fast)  # type: ignore[arg-type]
        server = InferenceServer(engine, config).start()
    except (NitrogenError, ValueError, OSError) as exc:
        _fail(exc)
    info = engine.info()
    console.print(
        f"serving [bold]{checkpoint}[/] on [bold]{server.address}[/]"
        f"{' (CURVE)' if curve_dir else ''}{' (legacy pickle accepted)' if legacy_pickle else ''}\n"
        f"  {info['name']}: {info['image_size']}x{info['image_size']} frames, {info['device']}, {info['precision']}, "
        f"{info['num_steps']} steps, context {server.context_length}, cfg {cfg}, game {server.default_game[1]!r}, "
        f"batches up to {max_batch} within {batch_wait_ms} ms"
    )

    def shutdown(signum: int, _frame: object) -> None:
        console.print(f"{signal.Signals(signum).name}: answering requests in flight, then stopping")
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    server.wait()
    console.print("stopped")


@app.command("play")
def play_command(
    env: Annotated[str | None, typer.Option(help="Embedded game: ale:Breakout, gym:CarRacing-v3, ...")] = None,
    process: Annotated[str | None, typer.Option(help="Desktop game by process name (case-insensitive).")] = None,
    pid: Annotated[int | None, typer.Option(help="Desktop game by process id.")] = None,
    server: Annotated[str | None, typer.Option(help="Policy server address, tcp://HOST:PORT.")] = None,
    port: Annotated[int | None, typer.Option(help="Shorthand for --server tcp://127.0.0.1:PORT.")] = None,
    ckpt: Annotated[
        str | None, typer.Option(help="Run the policy in-process from this checkpoint (a file or hf://OWNER/REPO).")
    ] = None,
    replay: Annotated[
        Path | None, typer.Option(help="Replay a run folder (or its actions.jsonl) instead of a model.")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="sync (the game waits for the policy) or async (it never waits); default: async, sync for --replay."
        ),
    ] = None,
    max_frames: Annotated[
        int | None, typer.Option(help="Stop each episode after this many game frames.", min=1)
    ] = None,
    episodes: Annotated[int, typer.Option(help="Episodes to play.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed of the game (and of the policy's noise in-process).")] = None,
    allow_menu: Annotated[bool, typer.Option(help="Let START, GUIDE and BACK through.")] = False,
    startup: Annotated[Path | None, typer.Option(help="JSON list of start-up presses [{buttons, frames}].")] = None,
    out: Annotated[Path, typer.Option(help="Folder for run folders (videos, actions.jsonl, episode.json).")] = Path(
        "runs"
    ),
    video: Annotated[bool, typer.Option(help="Write the clean and debug videos.")] = True,
    fps: Annotated[float | None, typer.Option(help="Game clock for async mode (default: the game's).")] = None,
    actions_per_chunk: Annotated[
        int | None, typer.Option(help="Play the first N actions of each chunk, then switch to the next.", min=1)
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="For --ckpt: Euler steps (default: the checkpoint's).", min=1)
    ] = None,
    device: Annotated[str | None, typer.Option(help="For --ckpt: cuda, cpu, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="For --ckpt: float32 or bfloat16 weights.")] = None,
    game: Annotated[str | None, typer.Option(help="For --ckpt: the game to condition on, by name or id.")] = None,
    button_order: Annotated[str | None, typer.Option(help="For --ckpt: " + BUTTON_ORDER_HELP)] = None,
    input_: Annotated[
        str,
        typer.Option(
            "--input", help="Desktop games: pad (virtual gamepad) or keys (keyboard and mouse via XTEST, Linux)."
        ),
    ] = "pad",
    keymap: Annotated[
        str | None, typer.Option(help="For --input keys: a preset (arrows, wasd-mouse) or a YAML/JSON keymap file.")
    ] = None,
    chunking: ChunkingOption = None,
    execute: ExecuteOption = None,
    latency_ms: LatencyOption = None,
    in_flight: InFlightOption = 1,
) -> None:
    """Let the agent play a game through a virtual gamepad, and record the run.

    With no game and no policy, it is `nitrogen demo`: the shipped agent plays its embedded games.
    """
    from pydantic import ValidationError

    from .runtime.loop import PlayConfig, StartupPress, play
    from .runtime.sources import make_policy

    _check_chunking(chunking)
    _check_in_flight(in_flight, latency_ms)
    targets = [t for t in (env, process, pid) if t is not None]
    sources = [s for s in (server, port, ckpt, replay) if s is not None]
    if not targets and not sources:
        # `nitrogen play` alone: the shipped agent on its embedded games.
        demo(episodes=episodes, max_frames=max_frames, seed=seed if seed is not None else 1000, out=out, video=video)
        return
    if len(targets) != 1:
        _fail(ValueError("give exactly one of --env, --process or --pid"))
    if len(sources) != 1:
        _fail(ValueError("give exactly one policy: --server, --port, --ckpt or --replay"))
    try:
        presses = [StartupPress(**p) for p in json.loads(startup.read_text())] if startup else []
        config = PlayConfig(
            mode=mode or ("sync" if replay is not None else "async"),
            max_frames=max_frames,
            episodes=episodes,
            seed=seed,
            allow_menu=allow_menu,
            startup=presses,
            fps=fps,
            video=video,
            actions_per_chunk=actions_per_chunk,
            chunking=chunking,
            execute=execute,
            latency_ms=latency_ms,
            in_flight=in_flight,
        )
    except (ValidationError, ValueError, OSError, TypeError) as exc:
        _fail(ValueError(f"invalid play settings: {exc}"))
    if input_ not in ("pad", "keys"):
        _fail(ValueError("--input must be pad or keys"))
    if keymap is not None and input_ != "keys":
        _fail(ValueError("--keymap goes with --input keys"))
    if ckpt is not None:
        source = f"ckpt:{ckpt}"
    elif replay is not None:
        source = f"replay:{replay}"
    else:
        source = f"server:{server or f'tcp://127.0.0.1:{port}'}"
    try:
        policy = make_policy(
            source, seed=seed, device=device, dtype=dtype, game=game, num_steps=steps, button_order=button_order
        )
        if env is not None:
            from .envs import make_env

            game_env = make_env(env)
        else:
            from .desktop import make_desktop_env

            game_env = make_desktop_env(process if process is not None else pid, input=input_, keymap=keymap)
    except (NitrogenError, ValueError, OSError, RuntimeError) as exc:
        _fail(exc)
    try:
        with _terminate_as_interrupt():
            summaries = play(game_env, policy, config, out_dir=out, progress=True)
    finally:
        game_env.close()
        policy.close()
    for s in summaries:
        console.print(
            f"episode {s['episode']}: score {s['score']:g}, {s['frames']} frames at {s['real_fps']:.1f} fps, "
            f"{s['executed_actions']} actions ({s['stale_actions']} stale, {s['starved_frames']} starved frames), "
            f"latency p50 {s['latency_p50_ms']:.0f} ms -> {s.get('run_dir', '')}"
            + (" [interrupted]" if s["interrupted"] else "")
        )


@app.command()
def demo(
    game: Annotated[str | None, typer.Option(help="One of the agent's games (default: all of them).")] = None,
    episodes: Annotated[int, typer.Option(help="Episodes per game.", min=1)] = 1,
    max_frames: Annotated[
        int | None, typer.Option(help="Frames per episode (default: the agent card's).", min=1)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first episode.")] = 1000,
    out: Annotated[Path, typer.Option(help="Folder for the run folders.")] = Path("runs"),
    video: Annotated[bool, typer.Option(help="Write the clean and debug videos.")] = True,
    expert: Annotated[bool, typer.Option(help="Also score the scripted expert on the same seeds.")] = False,
) -> None:
    """The shipped default agent plays the embedded games; prints its score against a random policy."""
    from rich.table import Table

    from .default_agent import demo as run_demo
    from .default_agent import load_card, write_demo_summary

    try:
        card = load_card()
        if game is not None and game not in card.games:
            raise ValueError(f"the default agent plays {', '.join(card.games)}, not {game!r}")
        console.print(
            f"default agent ({card.preset}, trained on {', '.join(card.games)}): "
            f"{card.play.actions_per_chunk} actions per chunk, {max_frames or card.play.max_frames} frames per episode"
        )
        results = run_demo(
            game,
            episodes=episodes,
            max_frames=max_frames,
            seed=seed,
            out_dir=out,
            video=video,
            expert=expert,
            progress=True,
        )
    except (NitrogenError, ValueError, OSError) as exc:
        _fail(exc)
    table = Table(title="default agent vs random policy (same seed, same frames)")
    for column in ("game", "seed", "frames", "agent", "random", *(["expert"] if expert else []), "run folder"):
        table.add_column(column, justify="left" if column in ("game", "run folder") else "right")
    for r in results:
        row = [r.game, str(r.seed), str(r.frames), f"{r.agent_score:g}", f"{r.random_score:g}"]
        if expert:
            row.append("-" if r.expert_score is None else f"{r.expert_score:g}")
        table.add_row(*row, r.run_dir or "-")
    console.print(table)
    summary = write_demo_summary(results, out / "demo.json")
    console.print(f"wrote {summary}")


@app.command()
def finetune(
    data: Annotated[
        list[str],
        typer.Option(
            help="Dataset: hub id, folder, parquet file or save_to_disk folder; repeat to train on several. "
            "DIR:WEIGHT weights a dataset's rows (e.g. runs/round-02:2)."
        ),
    ],
    ckpt: Annotated[
        str, typer.Option(help="Checkpoint to start from (e.g. the released ng.pt), or init:PRESET for a fresh model.")
    ],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, metrics, curves, the exported model.")],
    config: Annotated[Path | None, typer.Option(help="YAML or JSON with FinetuneConfig fields.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config field, key=value (repeatable).")
    ] = None,
    mapping: Annotated[
        str | None, typer.Option(help="Column mapping: a preset (xbox, nes, snes, genesis, atari) or a file.")
    ] = None,
    eval_fraction: Annotated[float, typer.Option(help="Share of episodes held out for evaluation.")] = 0.1,
    context: Annotated[int | None, typer.Option(help="Frames of context (default: the checkpoint's).")] = None,
    deadzone: Annotated[float | None, typer.Option(help="Analog stick deadzone, per axis.")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Warn about corrupt rows and skip them instead of stopping.")] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Keep decoded frames (at the tower's input size) here for later runs.")
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            help="Read image cells that hold only a relative path from this folder, never outside it. "
            "Without it training reads image bytes only, and a path-only cell is a corrupt row."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoints/latest.")] = False,
    button_order: Annotated[str, typer.Option(help=BUTTON_ORDER_HELP)] = "alphabetical",
    intervention_weight: Annotated[
        float, typer.Option(help="Weight of rows a person drove (intervention) in human-labelled recordings.", min=0.0)
    ] = 1.0,
    passive_weight: Annotated[
        float,
        typer.Option(help="Weight of the other rows of human-labelled recordings (0 drops them).", min=0.0),
    ] = 1.0,
) -> None:
    """Fine-tune a checkpoint on a gameplay dataset, with LoRA or fully (also under `accelerate launch`)."""
    from pydantic import ValidationError

    from .data.schema import CorruptRowError
    from .training.run import finetune as run_finetune
    from .training.run import parse_data_spec, prepare_finetune

    try:
        sources, weights = zip(*(parse_data_spec(d) for d in data), strict=True)
        prep = prepare_finetune(
            list(sources),
            ckpt,
            weights=list(weights),
            intervention_weight=intervention_weight,
            passive_weight=passive_weight,
            config=config,
            overrides=set_ or [],
            mapping=mapping,
            deadzone=deadzone,
            context=context,
            eval_fraction=eval_fraction,
            skip_bad=skip_bad,
            cache_dir=cache_dir,
            image_root=image_root,
            button_order=button_order,
        )
    except (NitrogenError, CorruptRowError, ValidationError, ValueError, OSError, KeyError) as exc:
        _fail(exc)
    cfg = prep.config
    console.print(
        f"{len(prep.dataset)} windows ({len(prep.train_indices)} train, {len(prep.eval_indices)} eval) "
        f"from {', '.join(data)}; {cfg.mode} fine-tuning of {ckpt} for {cfg.max_steps} steps -> {out}"
    )
    try:  # images are read as training goes: a corrupt one stops it with the same one-line error
        summary = run_finetune(cfg, prep.checkpoint, prep.train, prep.eval, out, resume=resume)
    except CorruptRowError as exc:
        _fail(exc)
    except RuntimeError as exc:
        # A DataLoader worker's CorruptRowError comes back as a RuntimeError carrying the worker's
        # traceback, whose last line is "...CorruptRowError: corrupt row N, column ...".
        last = str(exc).strip().rsplit("\n", 1)[-1]
        marker = f"{CorruptRowError.__name__}: "
        if marker not in last:
            raise
        _fail(ValueError(last.split(marker, 1)[1]))
    console.print(f"done at step {summary.get('step')}: {summary.get('paths')}")


@app.command("distill")
def distill_command(
    data: Annotated[
        list[str], typer.Option(help="Frames to distil on: any dataset `finetune` reads; repeat for several.")
    ],
    teacher: Annotated[str, typer.Option(help="The teacher checkpoint (e.g. the released ng.pt).")],
    steps: Annotated[int, typer.Option(help="Euler steps of the student (its num_inference_timesteps).", min=1)],
    out: Annotated[Path, typer.Option(help="Run folder: labels, checkpoints, metrics, curves, model.pt.")],
    method: Annotated[str, typer.Option(help="reflow (one stage) or progressive (halving stages).")] = "reflow",
    teacher_steps: Annotated[
        int | None, typer.Option(help="Steps of the teacher's labels (default: the teacher's own).", min=1)
    ] = None,
    noises_per_frame: Annotated[int, typer.Option(help="Teacher chunks per frame, each from its own noise.")] = 2,
    max_frames: Annotated[int, typer.Option(help="Training windows labelled, spread evenly (0: all).", min=0)] = 4096,
    eval_frames: Annotated[int, typer.Option(help="Held-out windows for the agreement eval (0: none).", min=0)] = 256,
    config: Annotated[Path | None, typer.Option(help="YAML or JSON with FinetuneConfig fields.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a fine-tuning config field, key=value (repeatable).")
    ] = None,
    mapping: Annotated[
        str | None, typer.Option(help="Column mapping: a preset (xbox, nes, snes, genesis, atari) or a file.")
    ] = None,
    eval_fraction: Annotated[float, typer.Option(help="Share of episodes held out for the agreement eval.")] = 0.1,
    cache_dir: Annotated[Path | None, typer.Option(help="Keep decoded frames here for later runs.")] = None,
    image_root: Annotated[
        Path | None, typer.Option(help="Read image cells that hold only a relative path from this folder.")
    ] = None,
    skip_bad: Annotated[bool, typer.Option(help="Warn about corrupt rows and skip them instead of stopping.")] = False,
    labels: Annotated[
        Path | None, typer.Option(help="Teacher-label cache, shareable between runs (default: OUT/labels).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's labels and checkpoints.")] = False,
) -> None:
    """Distil a checkpoint into a few-step student in the same format (reflow or progressive)."""
    from pydantic import ValidationError

    from .data.schema import CorruptRowError
    from .training.distill import DistillConfig, distill, distill_finetune_config
    from .training.run import prepare_finetune

    try:
        options = DistillConfig(
            method=method,
            steps=steps,
            teacher_steps=teacher_steps,
            noises_per_frame=noises_per_frame,
            max_frames=max_frames or None,
            eval_frames=eval_frames,
        )
        cfg = distill_finetune_config(config, set_ or [])
        prep = prepare_finetune(
            data,
            teacher,
            config=cfg,
            mapping=mapping,
            eval_fraction=eval_fraction,
            skip_bad=skip_bad,
            cache_dir=cache_dir,
            image_root=image_root,
        )
        options.check_steps(options.teacher_steps or prep.checkpoint.config.model_cfg.num_inference_timesteps)
    except (NitrogenError, CorruptRowError, ValidationError, ValueError, OSError, KeyError) as exc:
        _fail(exc)
    console.print(
        f"{len(prep.train_indices)} train / {len(prep.eval_indices)} eval windows from {', '.join(data)}; "
        f"{options.method} distillation of {teacher} to {steps} steps, {cfg.max_steps} steps per stage -> {out}"
    )
    try:
        summary = distill(
            prep.checkpoint,
            prep.train,
            prep.eval,
            out,
            options=options,
            config=prep.config,
            resume=resume,
            data=data,
            label_dir=labels,
        )
    except CorruptRowError as exc:
        _fail(exc)
    console.print(f"done: {summary['model']} samples with {steps} steps by default")


@app.command("record")
def record_command(
    env: Annotated[str, typer.Option(help="Embedded game: ale:Freeway, ale:Gopher, gym:CarRacing-v3, ...")],
    policy: Annotated[
        str,
        typer.Option(help="scripted, random, human (window + gamepad/keyboard), default, or ckpt:PATH / server:ADDR."),
    ] = "scripted",
    episodes: Annotated[int, typer.Option(help="Episodes to record.")] = 1,
    out: Annotated[Path, typer.Option(help="Dataset folder (parquet shards under OUT/data).")] = Path("data"),
    seed: Annotated[int, typer.Option(help="Seed of episode 0; episode i uses seed + i.")] = 0,
    max_frames: Annotated[int | None, typer.Option(help="Frame budget per episode.", min=1)] = None,
    shard_frames: Annotated[int, typer.Option(help="Rows per parquet shard.")] = 500,
    explore: Annotated[
        float,
        typer.Option(
            help="Per-frame chance of a burst of random actions that is played but not recorded "
            "(rows keep the policy's action), so the data shows recoveries.",
            min=0.0,
            max=0.99,
        ),
    ] = 0.0,
    actions_per_chunk: Annotated[
        int | None, typer.Option(help="A model policy plays the first N actions of each chunk.", min=1)
    ] = None,
    mode: Annotated[str, typer.Option(help="sync (the game waits for the policy) or async (it never waits).")] = "sync",
    device: Annotated[str | None, typer.Option(help="For ckpt: policies.")] = None,
    label: Annotated[
        str | None,
        typer.Option(
            help="scripted: the expert labels every frame the policy reaches (DAgger); human: you take over "
            "when the policy goes wrong (HG-DAgger). Rows then hold the label, plus driver, agrees, intervention."
        ),
    ] = None,
    beta: Annotated[
        float, typer.Option(help="With --label scripted: chance per frame that the expert drives.", min=0.0, max=1.0)
    ] = 0.0,
    takeover_key: Annotated[
        str | None,
        typer.Option(help="With --label human: hold this key (a pygame key name, e.g. 'left shift') to drive."),
    ] = None,
    chunking: ChunkingOption = None,
    execute: ExecuteOption = None,
    latency_ms: LatencyOption = None,
) -> None:
    """Record gameplay as a Hugging Face dataset in the fine-tuning schema."""
    _check_mode(mode)
    _check_chunking(chunking)
    from .envs import make_env
    from .runtime.dataset_writer import LABEL_KINDS, record
    from .runtime.sources import make_policy

    if label is not None and label not in LABEL_KINDS:
        _fail(ValueError(f"--label must be one of {', '.join(LABEL_KINDS)}"))
    if label is None and (beta or takeover_key):
        _fail(ValueError("--beta and --takeover-key need --label"))

    try:
        game_env = make_env(env)
    except (NitrogenError, ValueError, OSError) as exc:
        _fail(exc)
    try:
        source = make_policy(policy, env=game_env, seed=seed, device=device)
    except (NitrogenError, ValueError, OSError) as exc:
        game_env.close()
        _fail(exc)
    try:
        summary = record(
            game_env,
            source,
            episodes=episodes,
            out_dir=out,
            seed=seed,
            max_frames=max_frames,
            shard_frames=shard_frames,
            explore=explore,
            actions_per_chunk=actions_per_chunk,
            mode=mode,
            label=label,
            beta=beta,
            takeover_key=takeover_key,
            chunking=chunking,
            execute=execute,
            latency_ms=latency_ms,
        )
    except (NitrogenError, FileExistsError, ValueError) as exc:
        _fail(exc)
    finally:
        game_env.close()
        source.close()
    console.print(
        f"recorded {summary['frames']} frames in {len(summary['shards'])} shard(s) to {out / 'data'}; "
        f"scores {summary['scores']}"
    )
    if label is not None:
        agreement = summary["agreement"]
        console.print(
            f"drivers {summary['driver_frames']}; {summary['intervention_frames']} intervention frames; agreement "
            f"with the {label} labeller in the policy's own states: {'-' if agreement is None else f'{agreement:.2f}'}"
        )


@app.command("dagger")
def dagger_command(
    env: Annotated[str, typer.Option(help="Embedded game with a scripted expert: ale:Gopher, ale:Boxing, ...")],
    init: Annotated[str, typer.Option(help="Released-format checkpoint of round 0 (or init:PRESET).")],
    out: Annotated[Path, typer.Option(help="Run folder: dagger.json, dagger.png, round-NN/.")],
    expert: Annotated[str, typer.Option(help="The labeller: scripted.")] = "scripted",
    rounds: Annotated[int, typer.Option(help="Rounds of record, aggregate, fine-tune, evaluate.", min=1)] = 3,
    episodes: Annotated[int, typer.Option(help="Episodes recorded per round.", min=1)] = 2,
    max_frames: Annotated[int, typer.Option(help="Frames per recorded episode.", min=1)] = 1000,
    record_seed: Annotated[int, typer.Option(help="Round r, episode i records seed SEED + r*episodes + i.")] = 1000,
    beta: Annotated[float, typer.Option(help="Chance per frame that the expert drives, round 0.", min=0, max=1)] = 0.0,
    beta_decay: Annotated[float, typer.Option(help="Round r uses beta * decay**r.", min=0, max=1)] = 1.0,
    steps: Annotated[int, typer.Option(help="Training steps per round.", min=1)] = 200,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="FinetuneConfig override for every round, key=value.")
    ] = None,
    eval_seeds: Annotated[str, typer.Option(help="Held-out seeds, comma-separated.")] = "0,1,2",
    eval_max_frames: Annotated[int, typer.Option(help="Frames per evaluation episode.", min=1)] = 1000,
    actions_per_chunk: Annotated[int | None, typer.Option(help="The model plays N actions per chunk.", min=1)] = None,
    num_steps: Annotated[int | None, typer.Option(help="Euler steps (default: the checkpoint's).", min=1)] = None,
    device: Annotated[str | None, typer.Option(help="Torch device of the model.")] = None,
) -> None:
    """DAgger: the model plays, the expert labels its states, aggregate, fine-tune, evaluate; resumable."""
    from pydantic import ValidationError

    from .runtime.dagger import PLOT_FILE, DaggerConfig, run_dagger

    try:
        config = DaggerConfig(
            env=env,
            init=init,
            expert=expert,
            rounds=rounds,
            episodes=episodes,
            max_frames=max_frames,
            record_seed=record_seed,
            beta=beta,
            beta_decay=beta_decay,
            steps=steps,
            overrides=set_ or [],
            eval_seeds=[int(s) for s in eval_seeds.split(",") if s.strip()],
            eval_max_frames=eval_max_frames,
            actions_per_chunk=actions_per_chunk,
            num_steps=num_steps,
            device=device,
        )
    except (ValidationError, ValueError) as exc:
        _fail(exc)

    def report(entry: dict[str, Any]) -> None:
        e = entry["eval"]
        agreement = "-" if e["agreement"] is None else f"{e['agreement']:.2f}"
        console.print(
            f"round {entry['round']}: {entry['frames_labelled_total']} frames labelled, score "
            f"{e['score_mean']:g} ± {e['score_std']:.1f} on seeds {e['seeds']}, agreement in own states {agreement}"
        )

    try:
        state = run_dagger(config, out, on_round=report)
    except (NitrogenError, ValidationError, ValueError, OSError) as exc:
        _fail(exc)
    console.print(f"{len(state['rounds'])} rounds in {out / 'dagger.json'}; plot {out / PLOT_FILE}")


data_app = typer.Typer(help="Datasets: import the released NitroGen dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("import-nitrogen")
def import_nitrogen_command(
    actions: Annotated[
        Path, typer.Argument(help="The release's actions/ folder, one shard folder, or a .tar.gz shard.")
    ],
    videos: Annotated[Path, typer.Option(help="Folder of the downloaded videos, <video_id>.mp4|webm|mkv.")],
    out: Annotated[Path, typer.Option(help="Output: OUT/data/*.parquet (the fine-tuning schema) and OUT/import.json.")],
    video_map: Annotated[
        Path | None, typer.Option(help="JSON {video_id: file name under --videos} for other names.")
    ] = None,
    processed: Annotated[bool, typer.Option(help="Read actions_processed.parquet instead of actions_raw.")] = False,
    drop_idle: Annotated[bool, typer.Option(help="Remove runs of idle rows (no button, sticks centred).")] = False,
    idle_min_run: Annotated[int, typer.Option(help="Shortest idle run removed, in 60 Hz rows.", min=1)] = 60,
    games: Annotated[list[str] | None, typer.Option(help="Import only these games (repeatable).")] = None,
    workers: Annotated[int, typer.Option(help="Decoding processes.", min=1)] = 1,
) -> None:
    """Turn the released NitroGen dataset and your downloads of its videos into fine-tuning data."""
    from pydantic import ValidationError

    from .data.nitrogen_import import ImportConfig, import_nitrogen

    try:
        config = ImportConfig(
            actions=actions,
            videos=videos,
            out=out,
            video_map=video_map,
            processed=processed,
            drop_idle=drop_idle,
            idle_min_run=idle_min_run,
            games=games or None,
            workers=workers,
        )
    except ValidationError as exc:
        _fail(ValueError("; ".join(e["msg"] for e in exc.errors())))

    def progress(report: dict[str, Any]) -> None:
        speed = report["this_run"].get("rows_per_s")
        console.print(
            f"{report['chunks_imported']} chunks imported, {report['chunks_skipped']} skipped, "
            f"{report['rows_written']} rows" + (f" ({speed:g} rows/s)" if speed else "")
        )

    try:
        report = import_nitrogen(config, progress=progress)
    except (ValueError, OSError) as exc:
        _fail(exc)
    for key, reason in report["skipped"].items():
        console.print(f"skipped {key}: {reason}", markup=False)
    run = report["this_run"]
    console.print(
        f"{report['chunks_imported']} chunks imported ({run['chunks_already_done']} from an earlier run), "
        f"{report['chunks_skipped']} skipped; {report['rows_written']} rows written, "
        f"idle share {100 * report['idle_share']:.1f}%, games {report['games']}; "
        f"decoding {run['decode_frames_per_s_per_worker']} frames/s per worker -> {out / 'import.json'}",
        markup=False,
    )


@app.command("eval")
def eval_command(
    env: Annotated[str, typer.Option(help="Games, comma-separated: ale:Freeway,ale:Gopher")],
    policy: Annotated[
        list[str], typer.Option(help="ckpt:PATH, default, server:ADDR, replay:PATH, random or scripted.")
    ],
    episodes: Annotated[int, typer.Option(help="Episodes per game (seeds 0..N-1 unless --seeds).")] = 3,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds.")] = None,
    max_frames: Annotated[int, typer.Option(help="Frame budget per episode.", min=1)] = 10_000,
    baselines: Annotated[bool, typer.Option(help="Also run the random policy and the scripted expert.")] = True,
    out: Annotated[Path, typer.Option(help="Folder for results.md, results.json and results.png.")] = Path("eval"),
    device: Annotated[str | None, typer.Option(help="For ckpt: policies.")] = None,
    actions_per_chunk: Annotated[
        int | None, typer.Option(help="Play the first N actions of each chunk, then switch to the next.", min=1)
    ] = None,
    mode: Annotated[
        str, typer.Option(help="sync (scores the policy alone) or async (the game keeps its clock while it thinks).")
    ] = "sync",
    button_order: Annotated[str | None, typer.Option(help="For ckpt: policies: " + BUTTON_ORDER_HELP)] = None,
    steps: Annotated[
        int | None, typer.Option(help="For ckpt: policies: Euler steps (default: the checkpoint's).", min=1)
    ] = None,
    chunking: ChunkingOption = None,
    execute: ExecuteOption = None,
    latency_ms: LatencyOption = None,
    in_flight: InFlightOption = 1,
) -> None:
    """Benchmark policies on fixed seeds against the random policy and the scripted expert."""
    _check_mode(mode)
    _check_chunking(chunking)
    _check_in_flight(in_flight, latency_ms)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .runtime.benchmark import EpisodeResult, markdown_table, run_benchmark, summarize, write_results
    from .runtime.loop import policy_summary
    from .runtime.sources import AGENT_SOURCES, has_policy_for, make_policy

    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else list(range(episodes))
    except ValueError:
        _fail(ValueError(f"--seeds must be comma-separated integers, got {seeds!r}"))
    specs = list(dict.fromkeys([*policy, *(["random", "scripted"] if baselines else [])]))
    models: dict[str, Any] = {}
    try:
        for spec in specs:  # models load once, before any game; agents are made per game
            if spec not in AGENT_SOURCES:
                models[spec] = make_policy(
                    spec, seed=seed_list[0], device=device, num_steps=steps, button_order=button_order
                )
    except (NitrogenError, ValueError, OSError, ImportError) as exc:
        for model in models.values():
            model.close()
        _fail(exc)

    def factory(spec: str) -> Any:
        if spec in models:
            return lambda game_env: models[spec]
        return lambda game_env: make_policy(spec, env=game_env, seed=seed_list[0])

    env_ids = env.split(",")
    pairs = sum(has_policy_for(spec, env_id) for env_id in env_ids for spec in specs)
    try:
        with Progress(
            TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("eval", total=pairs * len(seed_list))

            def on_episode(r: EpisodeResult) -> None:
                bar.console.print(f"{r.env} {r.contender} seed {r.seed}: score {r.score:g} in {r.length} frames")
                bar.advance(task)

            results = run_benchmark(
                env_ids,
                {spec: factory(spec) for spec in specs},
                seed_list,
                max_frames=max_frames,
                actions_per_chunk=actions_per_chunk,
                on_episode=on_episode,
                mode=mode,
                chunking=chunking,
                execute=execute,
                latency_ms=latency_ms,
                in_flight=in_flight,
            )
        infos = {spec: policy_summary(model) for spec, model in models.items()}  # never raises
    finally:
        for model in models.values():
            model.close()
    paths = write_results(results, out, policies=infos)
    console.print(markdown_table(summarize(results)))
    console.print(f"wrote {paths['markdown']}, {paths['json']}, {paths['png']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
