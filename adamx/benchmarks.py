"""`python -m adamx.benchmarks`: one training-step update, adamx against optax, Keras and torch.

For each tree and optimizer it compiles `step(params, state, grads) -> (params, state)` with
`jax.jit(..., donate_argnums=(0, 1))` on JAX's default device (CPU, GPU or TPU), and reports:

- median time per call, its spread (interquartile range) over repeats run interleaved (the order
  reverses every repeat), and the ratio to `optax.adam`;
- achieved bandwidth: Adam's minimal traffic (read p, g, m, v; write p, m, v: 28 bytes per float32
  parameter) over the time, and its ratio to NumPy's in-place `y += x` timed in the same run;
- compile time from cold caches (the median of three when well under a second), state bytes per
  parameter, and two figures free of timing noise: XLA's `cost_analysis()` bytes accessed per
  parameter (in float32 passes) and the kernel count (fusions and other non-trivial instructions).

"all features" is global clipping, weight decay with exclusions, EMA with overwrite and a static
loss scale; "all + accum. 4" adds gradient accumulation over 4 calls (times are per call: every call
runs the whole update, and micro-steps keep its state). "loss scaling" is the mixed-precision recipe
`adamx.loss_scale_optimizer(adamx.adam(global_clipnorm=1.0))`, which checks the gradients, may skip
the call, and clips the unscaled gradients. "adamx grouped" runs on `adamx.group_leaves` parameters
and gradients (one flat buffer per dtype); "grouped, leaf grads" groups per-leaf gradients inside
the step, the cost of a model whose gradients are not computed through `ungroup()`. "bf16
state" stores both moments in bfloat16 (computed in float32), rounded to nearest or
stochastically; "8-bit moments" stores them as 8-bit codes with a scale per block of 256
(`mu_dtype="8bit", nu_dtype="8bit"`; tensors under 4096 elements keep float32). torch
(`fused=True`, `foreach=True`) joins when installed; the run names the peers it leaves out,
and why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx

BYTES_PER_PASS = 4  # one float32 read or write of every parameter
ADAM_MINIMUM_PASSES = 7  # read p, g, m, v; write p, m, v
ALL_FEATURES: dict[str, Any] = {
    "global_clipnorm": 1.0,
    "weight_decay": 0.004,
    "exclude_from_weight_decay": ["bias", "scale"],
    "use_ema": True,
    "ema_overwrite_frequency": 100,
    "loss_scale_factor": 1024.0,
}
WITH_ACCUMULATION = {**ALL_FEATURES, "gradient_accumulation_steps": 4}
BFLOAT16_STATE = {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16}
EIGHT_BIT_STATE: dict[str, Any] = {"mu_dtype": "8bit", "nu_dtype": "8bit"}
Step = Callable[[Any, Any, Any], tuple[Any, Any]]  # (params, state, grads) -> (params, state)


# --- parameter trees -------------------------------------------------------------------------


def one_tensor(scale: float) -> dict[str, Any]:
    return {"w": (int(2**25 * scale),)}


def transformer(scale: float, layers: int = 12) -> dict[str, Any]:
    """12 layers (attention, MLP, two layer norms, biases) and an embedding: 147 tensors
    (`--quick` keeps 1 layer: 15 tensors)."""
    d = int(384 * scale**0.5) // 8 * 8

    def dense(fan_in: int, fan_out: int) -> dict[str, Any]:
        return {"kernel": (fan_in, fan_out), "bias": (fan_out,)}

    norm = {"scale": (d,), "bias": (d,)}
    layer = {
        "attention": {"qkv": dense(d, 3 * d), "out": dense(d, d)},
        "mlp": {"up": dense(d, 4 * d), "down": dense(4 * d, d)},
        "norm1": norm,
        "norm2": norm,
    }
    tree: dict[str, Any] = {f"layer_{i:02d}": layer for i in range(layers)}
    tree["embedding"] = {"kernel": (int(10_000 * scale), d)}
    tree["final_norm"] = norm
    return tree


def many_small(scale: float) -> dict[str, Any]:
    return {f"t{i:04d}": (1000,) for i in range(int(2000 * scale))}


TREES: dict[str, Callable[..., dict[str, Any]]] = {
    "one_tensor": one_tensor,
    "transformer": transformer,
    "many_small": many_small,
}


def materialize(shapes: Any, seed: int) -> Any:
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    arrays = [
        jax.random.normal(k, shape, jnp.float32) * 0.02
        for k, shape in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, arrays)


# --- candidates ------------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str
    run: Callable[[], None]  # one call, blocking until done
    compile_seconds: float | None = None
    passes: float | None = None  # XLA bytes accessed per parameter / 4
    kernels: int | None = None
    state_bytes_per_param: float | None = None
    times: list[float] = field(default_factory=list)


KERNEL_FREE = {"parameter", "tuple", "get-tuple-element", "constant", "bitcast"}
INSTRUCTION = re.compile(r"=\s*(?:\([^=]*?\)|\S+)\s+([a-z][\w-]*)\(")


def entry_instructions(compiled: Any) -> list[str]:
    """The lines of the compiled entry computation's body, one instruction each."""
    text = compiled.as_text()
    entry = text[text.index("ENTRY") :]
    return entry[: entry.index("\n}")].splitlines()[1:]


def count_kernels(compiled: Any) -> int:
    """Instructions of the entry computation that run as kernels (fusions included)."""
    opcodes = [m.group(1) for m in map(INSTRUCTION.search, entry_instructions(compiled)) if m]
    return sum(opcode not in KERNEL_FREE for opcode in opcodes)


def bytes_accessed(compiled: Any) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older JAX returns one dict per computation
        analysis = analysis[0]
    return float(analysis.get("bytes accessed", float("nan")))


def timed_compile(
    step: Step, params: Any, state: Any, grads: Any, compiles: int = 3
) -> tuple[Any, float]:
    """Traces, lowers and compiles `step`: the median of up to `compiles` compiles from cold
    caches within 2 s in all, as those of a second or less vary by tens of percent between
    runs. With `compiles=1` (`--quick`) JAX's caches are kept: the step is still compiled
    afresh, but the small eager operations around it are not recompiled every time."""
    seconds: list[float] = []
    while not seconds or (len(seconds) < compiles and sum(seconds) < 2.0):
        if compiles > 1:
            jax.clear_caches()
        start = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
        seconds.append(time.perf_counter() - start)
    return compiled, statistics.median(seconds)


def jax_candidate(
    name: str,
    init: Callable[[Any], Any],
    step: Step,
    params: Any,
    grads: Any,
    size: int,
    compiles: int = 3,
) -> Candidate:
    params = jax.tree.map(jnp.copy, params)
    state = init(params)
    compiled, compile_seconds = timed_compile(step, params, state, grads, compiles)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    box = {"params": params, "state": state}

    def run() -> None:
        box["params"], box["state"] = compiled(box["params"], box["state"], grads)
        jax.block_until_ready(box["params"])

    passes = bytes_accessed(compiled) / size / BYTES_PER_PASS
    kernels = count_kernels(compiled)
    return Candidate(name, run, compile_seconds, passes, kernels, state_bytes / size)


def optax_step(tx: optax.GradientTransformation) -> Step:
    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def optax_composition() -> tuple[Callable[[Any], Any], Step]:
    """What an optax user writes for the same features: global clipping, AdamW with a mask,
    and a hand-rolled EMA of the parameters."""

    def mask(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: not re.search("bias|scale", jax.tree_util.keystr(path)), params
        )

    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(1e-3, eps=1e-7, weight_decay=0.004, mask=mask)
    )

    def init(params: Any) -> Any:
        return tx.init(params), jax.tree.map(jnp.copy, params)

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        opt_state, ema = state
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: 0.99 * e + 0.01 * p, ema, params)
        return params, (opt_state, ema)

    return init, step


def keras_missing() -> str | None:
    """Why the Keras rows cannot run here, or None if they can."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        return "Keras not installed: the Keras rows are left out (pip install keras)"
    if keras.backend.backend() != "jax":
        return (
            f"Keras runs on {keras.backend.backend()} (KERAS_BACKEND), not JAX: the Keras rows "
            "are left out"
        )
    return None


def torch_missing(no_torch: bool) -> str | None:
    """Why the PyTorch rows are left out, or None if they run."""
    if no_torch:
        return "--no-torch: the PyTorch rows are left out"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch not installed: the PyTorch rows are left out (pip install torch)"
    return None


def keras_candidate(
    name: str, kwargs: dict[str, Any], params: Any, grads: Any, size: int, compiles: int = 3
) -> Candidate | None:
    if keras_missing() is not None:
        return None
    import keras

    leaves = jax.tree.leaves(params)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    names = [re.sub(r"\W+", "_", path).strip("_") for path in paths]
    variables = [keras.Variable(np.asarray(x), name=n) for x, n in zip(leaves, names, strict=True)]
    keras_kwargs = {k: v for k, v in kwargs.items() if k != "exclude_from_weight_decay"}
    optimizer = keras.optimizers.Adam(**keras_kwargs)
    if "exclude_from_weight_decay" in kwargs:
        optimizer.exclude_from_weight_decay(var_names=kwargs["exclude_from_weight_decay"])
    optimizer.build(variables)

    def init(values: Any) -> Any:
        return [v.value for v in optimizer.variables]

    def step(values: Any, opt_values: Any, grads: Any) -> tuple[Any, Any]:
        new_values, new_opt_values = optimizer.stateless_apply(opt_values, grads, values)
        return list(new_values), list(new_opt_values)

    return jax_candidate(
        name, init, step, [v.value for v in variables], jax.tree.leaves(grads), size, compiles
    )


def torch_candidate(mode: str, params: Any) -> Candidate | None:
    try:
        import torch
    except ImportError:
        return None
    weights = [torch.nn.Parameter(torch.from_numpy(np.array(x))) for x in jax.tree.leaves(params)]
    for w in weights:
        w.grad = torch.full_like(w, 0.01)
    optimizer = torch.optim.Adam(weights, lr=1e-3, eps=1e-7, **{mode: True})
    optimizer.step()  # allocates the state
    return Candidate(f"torch.optim.Adam({mode}=True)", optimizer.step, state_bytes_per_param=8.0)


NAMES = [  # every candidate, in the order of the table
    "optax.adam",
    "adamx.adam()",
    "adamx.adam(amsgrad=True)",
    "adamx bf16 state",
    "adamx bf16 state, stochastic",
    "adamx 8-bit moments",
    "adamx.adam(all features)",
    "adamx.adam(all + accum. 4)",
    "adamx loss scaling",
    "adamx grouped",
    "adamx grouped, leaf grads",
    "optax clip+adamw+EMA",
    "keras Adam()",
    "keras Adam(all features)",
    "keras Adam(all + accum. 4)",
    "torch.optim.Adam(fused=True)",
    "torch.optim.Adam(foreach=True)",
]


def chosen_names(only: str | None) -> list[str]:
    """The candidates' names that `only` matches, and the `optax.adam` baseline."""
    return [name for name in NAMES if name == "optax.adam" or re.search(only or "", name)]


def candidates_for(
    params: Any,
    grads: Any,
    size: int,
    with_torch: bool,
    only: str | None = None,
    compiles: int = 3,
    progress: Callable[[str], None] = lambda line: None,
    skip: tuple[str, ...] = (),
) -> list[Candidate]:
    """Builds (and compiles) the candidates; `only` keeps those whose name matches it, plus
    the `optax.adam` baseline, and those whose name starts with one of `skip` are left out.
    `progress` is told as each one is ready."""

    def jax_one(tx: optax.GradientTransformation) -> Callable[[str], Candidate]:
        return lambda name: jax_candidate(
            name, tx.init, optax_step(tx), params, grads, size, compiles
        )

    def grouped(group_grads: bool) -> Callable[[str], Candidate]:
        tx = adamx.adam()

        def step(grouped_params: Any, state: Any, step_grads: Any) -> tuple[Any, Any]:
            if group_grads:  # per-leaf gradients, one concatenation per buffer inside the step
                step_grads = adamx.group_leaves(step_grads)
            return optax_step(tx)(grouped_params, state, step_grads)

        def build(name: str) -> Candidate:
            step_grads = grads if group_grads else adamx.group_leaves(grads)
            grouped_params = adamx.group_leaves(params)
            return jax_candidate(name, tx.init, step, grouped_params, step_grads, size, compiles)

        return build

    def composition(name: str) -> Candidate:
        return jax_candidate(name, *optax_composition(), params, grads, size, compiles)

    def keras(kwargs: dict[str, Any]) -> Callable[[str], Candidate | None]:
        return lambda name: keras_candidate(name, kwargs, params, grads, size, compiles)

    def torch(mode: str) -> Callable[[str], Candidate | None]:
        return lambda name: torch_candidate(mode, params) if with_torch else None

    builders: dict[str, Callable[[str], Candidate | None]] = {
        "optax.adam": jax_one(optax.adam(1e-3, eps=1e-7)),
        "adamx.adam()": jax_one(adamx.adam()),
        "adamx.adam(amsgrad=True)": jax_one(adamx.adam(amsgrad=True)),
        "adamx bf16 state": jax_one(adamx.adam(**BFLOAT16_STATE)),
        "adamx bf16 state, stochastic": jax_one(adamx.adam(**BFLOAT16_STATE, rounding_seed=0)),
        "adamx 8-bit moments": jax_one(adamx.adam(**EIGHT_BIT_STATE)),
        "adamx.adam(all features)": jax_one(adamx.adam(**ALL_FEATURES)),
        "adamx.adam(all + accum. 4)": jax_one(adamx.adam(**WITH_ACCUMULATION)),
        "adamx loss scaling": jax_one(adamx.loss_scale_optimizer(adamx.adam(global_clipnorm=1.0))),
        "adamx grouped": grouped(group_grads=False),
        "adamx grouped, leaf grads": grouped(group_grads=True),
        "optax clip+adamw+EMA": composition,
        "keras Adam()": keras({}),
        "keras Adam(all features)": keras(ALL_FEATURES),
        "keras Adam(all + accum. 4)": keras(WITH_ACCUMULATION),
        "torch.optim.Adam(fused=True)": torch("fused"),
        "torch.optim.Adam(foreach=True)": torch("foreach"),
    }
    assert list(builders) == NAMES
    chosen = [name for name in chosen_names(only) if not name.startswith(skip)]
    candidates = []
    for i, name in enumerate(chosen, 1):
        start = time.perf_counter()
        candidate = builders[name](name)
        if candidate is not None:
            candidates.append(candidate)
            seconds = time.perf_counter() - start
            progress(f"  [{i}/{len(chosen)}] {name}: built and compiled in {seconds:.1f} s")
    return candidates


# --- measurement -----------------------------------------------------------------------------


def bandwidth_floor(megabytes: int = 256, repeats: int = 7) -> float:
    """GB/s of NumPy's in-place `y += x` (read x, read y, write y) over `megabytes`."""
    n = megabytes * 2**20 // 4
    x, y = np.ones(n, np.float32), np.ones(n, np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        y += x
        times.append(time.perf_counter() - start)
    return 3 * n * 4 / statistics.median(times) / 1e9


def measure(
    candidates: list[Candidate],
    repeats: int,
    calls: int,
    progress: Callable[[str], None] = lambda line: None,
) -> None:
    progress(f"  timing {len(candidates)} optimizers: {repeats} repeats of {calls} calls each")
    for candidate in candidates:  # warm up
        for _ in range(2):
            candidate.run()
    for repeat in range(repeats):
        order = candidates if repeat % 2 == 0 else candidates[::-1]
        for candidate in order:
            start = time.perf_counter()
            for _ in range(calls):
                candidate.run()
            candidate.times.append((time.perf_counter() - start) / calls)


def spread(times: Sequence[float]) -> float:
    if len(times) < 4:
        return max(times) - min(times)
    q = statistics.quantiles(times, n=4)
    return q[2] - q[0]


def rows_for(tree: str, candidates: list[Candidate], size: int, floor: float) -> list[dict]:
    baseline = statistics.median(candidates[0].times)
    rows = []
    for c in candidates:
        median = statistics.median(c.times)
        gbps = ADAM_MINIMUM_PASSES * BYTES_PER_PASS * size / median / 1e9
        row = {
            "tree": tree,
            "optimizer": c.name,
            "median_ms": median * 1e3,
            "spread_ms": spread(c.times) * 1e3,
            "vs_optax_adam": median / baseline,
            "gb_per_s": gbps,
            "vs_bandwidth_floor": gbps / floor,
            "compile_s": c.compile_seconds,
            "state_bytes_per_param": c.state_bytes_per_param,
            "xla_passes_per_param": c.passes,
            "kernels": c.kernels,
        }
        rows.append(row)
    return rows


def show(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or digits == 0:
        return str(round(value))
    return f"{value:.{digits}f}"


COLUMNS = (  # (heading, row key, width, digits)
    ("median ms", "median_ms", 10, 2),
    ("IQR ms", "spread_ms", 6, 2),
    ("x optax", "vs_optax_adam", 7, 2),
    ("GB/s", "gb_per_s", 6, 1),
    ("x floor", "vs_bandwidth_floor", 7, 2),
    ("compile s", "compile_s", 9, 2),
    ("state B/p", "state_bytes_per_param", 9, 1),
    ("XLA passes", "xla_passes_per_param", 10, 1),
    ("kernels", "kernels", 7, 0),
)


def print_table(rows: list[dict], tree: str, size: int, tensors: int) -> None:
    print(f"\n{tree}: {size / 1e6:.1f}M parameters in {tensors} tensors", flush=True)
    print(f"  {'optimizer':28s}" + "".join(f" {head:>{width}s}" for head, _, width, _ in COLUMNS))
    for r in rows:
        cells = "".join(f" {show(r[key], digits):>{width}s}" for _, key, width, digits in COLUMNS)
        print(f"  {r['optimizer']:28s}{cells}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default, where it has one, after its
    help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if isinstance(action.default, list):
            return f"{text} (default: {' '.join(action.default)})"
        return f"{text} (default: %(default)s)"


@dataclass(frozen=True)
class Settings:
    scale: float  # tree size factor
    repeats: int  # timed repeats per candidate
    calls: int  # calls per timed repeat
    layers: int  # transformer layers
    compiles: int  # compiles per candidate (the median is reported)


QUICK = Settings(scale=0.01, repeats=5, calls=3, layers=1, compiles=1)
FULL = Settings(scale=1.0, repeats=11, calls=4, layers=12, compiles=3)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adamx.benchmarks", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a first look in under a minute on 2 CPU cores: trees at 1%% of full size, a "
        "1-layer transformer, 5 repeats of 3 calls, one compile each",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure to this file")
    parser.add_argument(
        "--trees",
        nargs="+",
        choices=list(TREES),
        default=list(TREES),
        metavar="TREE",
        help=f"the parameter trees to run, among: {', '.join(TREES)}",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per optimizer, interleaved (default: 11, or 5 with --quick)",
    )
    parser.add_argument(
        "--no-torch", action="store_true", help="leave out the PyTorch rows even if installed"
    )
    parser.add_argument(
        "--only",
        metavar="REGEX",
        help="run only the optimizers whose name matches this regular expression (and the "
        "optax.adam baseline)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="tree size factor in (0, 4]: 1 is the full 32M-parameter tensor, 25M-parameter "
        "transformer and 2000 small tensors (default: 1, or 0.01 with --quick)",
    )
    return parser


def machine_facts(floor: float) -> dict[str, Any]:
    """The device, the versions and the measured bandwidth floor, for the table's first line."""
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {getattr(device, 'device_kind', device)}",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "adamx": adamx.__version__,
        "bandwidth_floor_gb_per_s": floor,
    }


def print_header(machine: dict[str, Any], skipped: list[str], repeats: int, calls: int) -> None:
    """The machine, the peers left out and why, and the columns' units."""
    facts = (f"{k}: {show(v, 1) if isinstance(v, float) else v}" for k, v in machine.items())
    print(" | ".join(facts))
    for reason in skipped:
        print(f"skipped: {reason}")
    print(
        f"median and IQR (interquartile range): ms per call over {repeats} interleaved repeats "
        f"of {calls} calls; x optax: median over optax.adam's; GB/s: Adam's 28 bytes "
        "per parameter over the median; x floor: over NumPy's y += x; state B/p: state bytes "
        "per parameter; XLA passes: bytes accessed / 4 per parameter",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser_ = parser()
    args = parser_.parse_args(argv)
    settings = QUICK if args.quick else FULL
    scale = settings.scale if args.scale is None else args.scale
    repeats = settings.repeats if args.repeats is None else args.repeats
    if not 0 < scale <= 4 or repeats < 1:
        parser_.error("--scale must be in (0, 4] and --repeats >= 1")
    try:
        re.compile(args.only or "")
    except re.error as error:
        parser_.error(f"--only is not a regular expression: {error}")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    floor = bandwidth_floor(64 if args.quick else 256)
    reasons = {"keras": keras_missing(), "torch": torch_missing(args.no_torch)}
    skip = tuple(prefix for prefix, reason in reasons.items() if reason)
    skipped = [
        reason
        for prefix, reason in reasons.items()
        if reason and any(name.startswith(prefix) for name in chosen_names(args.only))
    ]
    chosen = [name for name in chosen_names(args.only) if not name.startswith(skip)]
    machine = machine_facts(floor)
    print_header(machine, skipped, repeats, settings.calls)
    all_rows: list[dict] = []
    for tree in args.trees:
        shapes = (
            TREES[tree](scale, settings.layers) if tree == "transformer" else TREES[tree](scale)
        )
        params, grads = materialize(shapes, 0), materialize(shapes, 1)
        leaves = jax.tree.leaves(params)
        size = sum(x.size for x in leaves)
        progress(f"{tree}: building and compiling {len(chosen)} optimizers")
        candidates = candidates_for(
            params,
            grads,
            size,
            not args.no_torch,
            only=args.only,
            compiles=settings.compiles,
            progress=progress,
            skip=skip,
        )
        measure(candidates, repeats, settings.calls, progress)
        rows = rows_for(tree, candidates, size, floor)
        print_table(rows, tree, size, len(leaves))
        all_rows.extend(rows)
        del candidates, params, grads
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "skipped": skipped, "results": all_rows}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
