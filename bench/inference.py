"""Per-chunk inference latency of the NitroGen sampler: our cached path against the original recipe.

A *chunk* is what one ``predict`` call costs: encode one frame with the vision tower, build the
conditioning, and integrate an ``(1, H, 25)`` action chunk with ``--steps`` Euler steps. Both paths
run in the same process on the same model, so the numbers compare like with like.

* **reference**: what the original NitroGen does. At every Euler step it rebuilds the VL tokens,
  re-runs the VL mixer and the cross-attention key/value projections, recomputes the timestep
  embedding of that step, then runs the DiT. With CFG the conditional and unconditional branches
  are two sequential passes per step, each with its own mixer pass. It is written here from the
  model's modules; it is not the library's sampler.
* **nitrogen**: the library's sampler. The conditioning is built once per frame, the timestep
  modulations once per schedule, and each step runs only the DiT over the action tokens; CFG runs
  both branches as one batched pass.

The vision tower runs once per chunk in both paths, as in the original.

Rows: 1 reference, fp32 weights + bf16 autocast (the released recipe); 2 reference, bf16 weights;
3 nitrogen, bf16 weights (the headline); 4 nitrogen, fp32 weights; 5a/5b CFG scale 2.0 at one
frame of context, reference two-pass vs nitrogen batched, bf16 weights. (Two frames of context do
not fit the released config's 256 VL tokens.) Each row is the median over ``--repeats`` chunks after
one warm-up chunk, with p90, min and the vision / context / DiT breakdown. Before the table, a
parity line shows that both samplers compute the same actions on the tiny golden model in fp32.

Run from the repository root::

    PYTHONPATH=. python bench/inference.py --tiny              # smoke test on the tiny golden model
    PYTHONPATH=. python bench/inference.py --repeats 3         # full-size released config, random weights
    PYTHONPATH=. python bench/inference.py --rows 3,4 --threads 2 --json results.json
    PYTHONPATH=. python bench/inference.py --device cuda
    PYTHONPATH=. python bench/inference.py --ckpt nitrogen/assets/default-agent/model.pt --rows 1,3,4

The full-size model is the released config (494M parameters) with random weights: latency does not
depend on the weight values. It is built once in fp32 and copied to bf16; the rows run round-robin
(one repeat of every row, then the next repeat), so that the drift of a shared machine hits every
row alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from machine import machine_info  # bench/machine.py (this folder is on sys.path)
from torch import Tensor

from nitrogen.atomic import atomic_write_json
from nitrogen.inference.cpu_kernels import pack_linears, packing_available, unpack_linears
from nitrogen.model.checkpoint import build_model, load_model
from nitrogen.model.configuration import CheckpointConfig
from nitrogen.model.modeling import Conditioning, NitroGenModel

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = REPO_ROOT.parent / "shared" / "golden"
TINY_CHECKPOINT = GOLDEN / "released_layout.pt"
TINY_CFG_CHECKPOINT = GOLDEN / "two_frames_cfg_sinusoidal.pt"
CPU_TARGET_MS = 1000.0  # headline target for row 3 on the 2-core CPU box
PARITY_TOLERANCE = 1e-4

SamplerName = Literal["reference", "nitrogen"]
Weights = Literal["fp32", "bf16"]


# ------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class RowSpec:
    key: str
    path: SamplerName
    weights: Weights
    autocast: bool
    cfg_scale: float
    packed: bool = False
    steps: int | None = None  # Euler steps of this row (None: --steps)
    compiled: bool = False  # torch.compile'd denoiser and tower (nitrogen.inference.compiled)

    @property
    def precision(self) -> str:
        return (
            f"{self.weights} weights"
            + (" + bf16 autocast" if self.autocast else "")
            + (", packed" if self.packed else (", unpacked" if self.path == "nitrogen" else ""))
            + (", torch.compile" if self.compiled else "")
        )

    @property
    def model_key(self) -> str:
        """Which model instance the row runs on: compiling changes an instance, so it gets its own."""
        return f"{self.weights}-compiled" if self.compiled else self.weights

    @property
    def label(self) -> str:
        if self.steps is not None:
            return f"{self.path} {self.steps} steps"
        if self.cfg_scale == 1.0:
            return self.path
        return f"{self.path} CFG {self.cfg_scale:g} ({'two-pass' if self.path == 'reference' else 'batched'})"


ROWS: tuple[RowSpec, ...] = (
    RowSpec("1", "reference", "fp32", autocast=True, cfg_scale=1.0),
    RowSpec("2", "reference", "bf16", autocast=False, cfg_scale=1.0),
    RowSpec("3", "nitrogen", "bf16", autocast=False, cfg_scale=1.0, packed=True),
    RowSpec("3u", "nitrogen", "bf16", autocast=False, cfg_scale=1.0),
    RowSpec("4", "nitrogen", "fp32", autocast=False, cfg_scale=1.0, packed=True),
    RowSpec("5a", "reference", "bf16", autocast=False, cfg_scale=2.0),
    RowSpec("5b", "nitrogen", "bf16", autocast=False, cfg_scale=2.0, packed=True),
)
BASELINE_KEY = "1"
HEADLINE_KEY = "3"


def sweep_rows(steps: Sequence[int], compiled: bool) -> list[RowSpec]:
    """The step sweep (issue 23): the headline row at each step count, and its compiled twin."""
    rows = [RowSpec(f"3@{k}", "nitrogen", "bf16", autocast=False, cfg_scale=1.0, packed=True, steps=k) for k in steps]
    if compiled:
        rows += [
            RowSpec(f"3c@{k}", "nitrogen", "bf16", autocast=False, cfg_scale=1.0, steps=k, compiled=True) for k in steps
        ]
    return rows


def select_rows(spec: str | None) -> list[RowSpec]:
    """``"1,3,5"`` -> those rows; ``"5"`` selects both 5a and 5b."""
    if not spec:
        return list(ROWS)
    wanted = {s.strip() for s in spec.split(",") if s.strip()}
    rows = [r for r in ROWS if r.key in wanted or r.key.rstrip("abu") in wanted]
    unknown = wanted - {r.key for r in rows} - {r.key.rstrip("abu") for r in rows}
    if unknown or not rows:
        raise SystemExit(f"--rows: unknown row(s) {sorted(unknown) or spec!r}; choose from {[r.key for r in ROWS]}")
    return rows


# ---------------------------------------------------------------------------------- timing


class Stopwatch:
    """Wall-clock sections of one chunk. On CUDA every reading synchronises the device first."""

    def __init__(self, device: torch.device):
        self._sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.sections: dict[str, float] = defaultdict(float)

    def now(self) -> float:
        self._sync()
        return time.perf_counter()

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = self.now()
        yield
        self.sections[name] += self.now() - t0


class _NoClock(Stopwatch):
    """A stopwatch that records nothing, for the parity check."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        yield


# -------------------------------------------------------------------------------- samplers


def reference_sample(
    model: NitroGenModel,
    frames: Tensor,
    noise: Tensor,
    num_steps: int,
    *,
    game: int | None = None,
    cfg_scale: float = 1.0,
    clock: Stopwatch | None = None,
) -> Tensor:
    """The original NitroGen sampler: everything is recomputed at every Euler step.

    ``frames (F, P, D)`` are one sample's vision features, oldest first; ``noise (1, H, A)``.
    The conditional branch sees every frame and the game token; with CFG the unconditional branch
    sees the newest frame and no game, and runs as its own full pass.
    """
    clock = clock or _NoClock()
    branches: list[tuple[Tensor, int | None]] = [(frames, game)]
    if cfg_scale != 1.0:
        branches.append((frames[-1:], None))
    num_buckets = model.config.model_cfg.num_timestep_buckets
    x = noise.float()
    for i in range(num_steps):
        t = i / num_steps
        bucket = torch.tensor([int(t * num_buckets)], dtype=torch.long, device=noise.device)
        velocities: list[Tensor] = []
        for branch_frames, branch_game in branches:
            with clock.section("context"):
                cond = model.condition(model.vl_tokens([branch_frames], [branch_game]))
                temb = model.model.schedule(bucket)
            with clock.section("dit"):
                v = model.velocity(x, cond, temb.buckets, temb.block_modulations, temb.out_modulation)
                velocities.append(v.float())
        with clock.section("dit"):
            v = velocities[0]
            if len(velocities) == 2:
                v = v + cfg_scale * (v - velocities[1])
            x = x + v / num_steps
    return x


def nitrogen_sample(
    model: NitroGenModel,
    frames: Tensor,
    noise: Tensor,
    num_steps: int,
    *,
    game: int | None = None,
    cfg_scale: float = 1.0,
    clock: Stopwatch | None = None,
) -> Tensor:
    """The library path: one mixer pass (both CFG branches batched), one schedule, then the DiT."""
    clock = clock or _NoClock()
    with clock.section("context"):
        uncond: Conditioning | None = None
        if cfg_scale == 1.0:
            cond = model.condition(model.vl_tokens([frames], [game]))
        else:
            both = model.condition(model.vl_tokens([frames, frames[-1:]], [game, None]))
            cond, uncond = both.rows(0, 1), both.rows(1, 2)
        schedule = model.model.schedule(model.step_buckets(num_steps, noise.device))
    with clock.section("dit"):
        return model.sample(cond, noise, num_steps, uncond, cfg_scale, schedule)


SAMPLERS = {"reference": reference_sample, "nitrogen": nitrogen_sample}


# ------------------------------------------------------------------------------------ parity


def parity_check(num_steps: int, device: torch.device) -> list[str]:
    """Both samplers on the tiny golden models in fp32, same frames and noise: max |diff|."""
    lines = []
    cases = [(TINY_CHECKPOINT, 1, 1.0), (TINY_CFG_CHECKPOINT, 2, 2.0)]
    for path, num_frames, cfg_scale in cases:
        if not path.is_file():
            lines.append(f"parity: skipped ({path} not found)")
            continue
        model, _ = load_model(path, device=device)
        model.eval()
        size = model.vision_spec.image_size
        H, A = model.config.model_cfg.action_horizon, model.config.model_cfg.action_dim
        gen = torch.Generator().manual_seed(0)
        pixels = (torch.rand(num_frames, 3, size, size, generator=gen) * 2 - 1).to(device)
        noise = torch.randn(1, H, A, generator=gen).to(device)
        with torch.inference_mode():
            frames = model.encode_frames(pixels)
            ref = reference_sample(model, frames, noise, num_steps, cfg_scale=cfg_scale)
            fast = nitrogen_sample(model, frames, noise, num_steps, cfg_scale=cfg_scale)
        diff = (ref - fast).abs().max().item()
        verdict = "OK" if diff < PARITY_TOLERANCE else "MISMATCH"
        lines.append(
            f"parity ({path.stem}, fp32, {num_frames} frame(s), CFG {cfg_scale:g}, {num_steps} steps): "
            f"max |reference - nitrogen| = {diff:.2e} (tolerance {PARITY_TOLERANCE:g}) {verdict}"
        )
    return lines


# -------------------------------------------------------------------------------- benchmark


@dataclass
class RowResult:
    spec: RowSpec
    totals_ms: list[float] = field(default_factory=list)
    sections_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def median(self, section: str | None = None) -> float:
        return statistics.median(self.totals_ms if section is None else self.sections_ms[section])

    @property
    def p90(self) -> float:
        ordered = sorted(self.totals_ms)
        return ordered[min(len(ordered) - 1, max(0, -(-9 * len(ordered) // 10) - 1))]  # nearest rank

    @property
    def min(self) -> float:
        return min(self.totals_ms)


def run_chunk(
    model: NitroGenModel,
    spec: RowSpec,
    pixels: Tensor,
    noise: Tensor,
    num_steps: int,
    device: torch.device,
) -> tuple[float, dict[str, float]]:
    """One full chunk: vision tower, conditioning, sampling. Returns (total s, sections s)."""
    clock = Stopwatch(device)
    sampler = SAMPLERS[spec.path]
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.autocast):
        start = clock.now()
        with clock.section("vision"):
            frames = model.encode_frames(pixels)  # (1, P, D): one frame of context
        actions = sampler(model, frames, noise, num_steps, cfg_scale=spec.cfg_scale, clock=clock)
        actions = actions.float().cpu()
        total = clock.now() - start
    return total, dict(clock.sections)


def set_packing(model: NitroGenModel, packed: bool, device: torch.device) -> None:
    """Pre-pack weights for oneDNN exactly as InferenceSession does on CPU, or undo it."""
    unpack_linears(model)
    dtype = next(model.parameters()).dtype
    if packed and packing_available(device, dtype):
        for part in (model.model, model.action_encoder, model.action_decoder):
            pack_linears(part, model.config.model_cfg.action_horizon)
        if dtype != torch.float32:
            tokens = model.vision_spec.tokens_per_frame
            pack_linears(model.vision_encoder, tokens)
            pack_linears(model.vl_self_attention_model, tokens)


def bench_rows(
    models: dict[str, NitroGenModel], specs: Sequence[RowSpec], repeats: int, num_steps: int, device: torch.device
) -> dict[str, RowResult]:
    """Time every row, round-robin: repeat ``r`` of every row runs before repeat ``r + 1`` of any.

    A shared 2-core machine drifts by 10-30% over minutes; interleaving spreads that drift over all
    rows alike, so their ratios stay meaningful. Repeat 0 is a warm-up and is not recorded.
    """
    some = next(iter(models.values()))
    size = some.vision_spec.image_size
    H, A = some.config.model_cfg.action_horizon, some.config.model_cfg.action_dim
    gen = torch.Generator().manual_seed(1234)
    results = {spec.key: RowResult(spec) for spec in specs}
    for rep in range(repeats + 1):
        pixels = (torch.rand(1, 3, size, size, generator=gen) * 2 - 1).to(device)
        noise = torch.randn(1, H, A, generator=gen).to(device)
        for spec in specs:
            model = models[spec.model_key]
            set_packing(model, spec.packed, device)
            total, sections = run_chunk(model, spec, pixels, noise, spec.steps or num_steps, device)
            if rep == 0:
                continue
            results[spec.key].totals_ms.append(total * 1e3)
            for name in ("vision", "context", "dit"):
                results[spec.key].sections_ms[name].append(sections.get(name, 0.0) * 1e3)
        print(f"  repeat {rep}/{repeats} done", file=sys.stderr, flush=True)
    return results


# ------------------------------------------------------------------------------------ report


def model_info(model: NitroGenModel, name: str) -> dict[str, Any]:
    mcfg = model.config.model_cfg
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vision_layers": model.vision_spec.num_layers,
        "vision_tokens_per_frame": model.vision_spec.tokens_per_frame,
        "vl_tokens": model.max_vl_tokens,
        "mixer_layers": mcfg.vl_self_attention_cfg.num_layers,
        "dit_layers": mcfg.diffusion_model_cfg.num_layers,
        "width": mcfg.hidden_size,
        "action_horizon": mcfg.action_horizon,
    }


def format_table(results: Sequence[RowResult], num_steps: int) -> str:
    baseline = next((r for r in results if r.spec.key == BASELINE_KEY), None)
    header = (
        "| # | sampler | precision | chunk median ms | p90 ms | min ms | vision ms | context ms | DiT ms "
        "| per step ms | speedup vs 1 |"
    )
    lines = [header, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        per_step = (r.median("context") + r.median("dit")) / (r.spec.steps or num_steps)
        speedup = f"{baseline.median() / r.median():.1f}x" if baseline is not None else "n/a"
        lines.append(
            f"| {r.spec.key} | {r.spec.label} | {r.spec.precision} | {r.median():.0f} | {r.p90:.0f} | {r.min:.0f} "
            f"| {r.median('vision'):.0f} | {r.median('context'):.0f} | {r.median('dit'):.0f} "
            f"| {per_step:.1f} | {speedup} |"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny golden model, a smoke test (2 repeats by default)")
    parser.add_argument(
        "--ckpt", type=Path, default=None, help="time this checkpoint instead, e.g. the shipped default agent"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed chunks per row after 1 warm-up (default 5; 2 with --tiny)"
    )
    parser.add_argument("--steps", type=int, default=16, help="Euler steps per chunk (default 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rows", default=None, help="rows to run, e.g. 1,3,5 (5 = 5a and 5b); default all")
    parser.add_argument(
        "--sweep", default=None, help="also time the headline row at these step counts, e.g. 16,4,2,1 (issue 23)"
    )
    parser.add_argument("--compiled", action="store_true", help="with --sweep: also torch.compile'd twins")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.sweep = [int(k) for k in args.sweep.split(",") if k.strip()] if args.sweep else []
    if any(k < 1 for k in args.sweep):
        parser.error("--sweep step counts must be >= 1")
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 5
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    return args


def build_bench_model(tiny: bool, ckpt: Path | None, device: torch.device) -> tuple[NitroGenModel, str]:
    if ckpt is not None:
        model, _ = load_model(ckpt, device=device)
        return model.eval(), f"checkpoint {ckpt}"
    if tiny:
        model, _ = load_model(TINY_CHECKPOINT, device=device)
        return model.eval(), f"tiny golden model ({TINY_CHECKPOINT.name})"
    torch.manual_seed(0)
    model = build_model(CheckpointConfig(), device=device)
    return model.eval(), "released config, random weights"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    rows = select_rows(args.rows) + sweep_rows(args.sweep, args.compiled)

    info = machine_info(device)
    print("## NitroGen inference benchmark\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    sys.stdout.flush()

    parity = parity_check(args.steps, device)
    print()
    for line in parity:
        print(line)
    sys.stdout.flush()

    t0 = time.perf_counter()
    model, name = build_bench_model(args.tiny, args.ckpt, device)
    minfo = model_info(model, name)
    print(
        f"\nmodel: {name}, {minfo['parameters'] / 1e6:.1f}M parameters (built in {time.perf_counter() - t0:.1f} s); "
        f"chunk = 1 frame ({minfo['vision_tokens_per_frame']} vision tokens) + (1, {minfo['action_horizon']}, 25) "
        f"actions, {args.steps} steps; {args.repeats} timed chunk(s) per row after 1 warm-up"
    )
    sys.stdout.flush()

    # One model per weight type (about 3 GB for the full size in fp32 + bf16), so rows can interleave.
    models: dict[str, NitroGenModel] = {}
    for weights in ("fp32", "bf16"):
        if any(r.weights == weights for r in rows):
            models[weights] = model if weights == "fp32" else copy.deepcopy(model).to(torch.bfloat16)
    for r in rows:
        if r.compiled and r.model_key not in models:
            from nitrogen.inference.compiled import compile_model

            twin = copy.deepcopy(model).to(torch.bfloat16 if r.weights == "bf16" else torch.float32)
            models[r.model_key] = compile_model(twin)  # compiled on its first chunk (the warm-up)
    if not any(r.weights == "fp32" for r in rows):
        del model
    t_bench = time.perf_counter()
    results = bench_rows(models, rows, args.repeats, args.steps, device)
    ordered = [results[r.key] for r in [*ROWS, *sweep_rows(args.sweep, args.compiled)] if r.key in results]
    print(f"\nrows timed in {time.perf_counter() - t_bench:.0f} s (compiling, if any, happens in the warm-up)")

    print()
    print(format_table(ordered, args.steps))
    print()
    print(
        "context = VL tokens + mixer + cross-attention K/V + timestep modulations (reference: summed over all steps "
        "and branches); DiT = action encoder + DiT + decoder + Euler updates; per step = (context + DiT) / steps."
    )
    if "5a" in results and "5b" in results:
        print(
            f"CFG {results['5b'].spec.cfg_scale:g}: nitrogen batched is "
            f"{results['5a'].median() / results['5b'].median():.1f}x "
            "faster than the reference two-pass sampler (row 5a / row 5b)."
        )
    if HEADLINE_KEY in results and device.type == "cpu" and not args.tiny and args.ckpt is None:
        ms = results[HEADLINE_KEY].median()
        verdict = "met" if ms <= CPU_TARGET_MS else "NOT met"
        print(
            f"headline (row {HEADLINE_KEY}, nitrogen bf16): {ms:.0f} ms per chunk; "
            f"target <= {CPU_TARGET_MS:.0f} ms: {verdict}"
        )

    if args.json is not None:
        payload = {
            "machine": info,
            "model": minfo,
            "steps": args.steps,
            "repeats": args.repeats,
            "parity": parity,
            "rows": [
                {
                    **asdict(r.spec),
                    "label": r.spec.label,
                    "precision": r.spec.precision,
                    "median_ms": r.median(),
                    "p90_ms": r.p90,
                    "min_ms": r.min,
                    "vision_ms": r.median("vision"),
                    "context_ms": r.median("context"),
                    "dit_ms": r.median("dit"),
                    "per_step_ms": (r.median("context") + r.median("dit")) / (r.spec.steps or args.steps),
                    "speedup_vs_1": results[BASELINE_KEY].median() / r.median() if BASELINE_KEY in results else None,
                    "totals_ms": r.totals_ms,
                    "sections_ms": dict(r.sections_ms),
                }
                for r in ordered
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
