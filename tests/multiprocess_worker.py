"""One process of a data-parallel adamx run on JAX's own multi-process runtime (CPU collectives).

Started by `test_multiprocess.py`, once per process:

    python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR MODE

Each process holds `8 // NUM_PROCESSES` CPU devices; one mesh spans all 8. The parameters are
replicated, the batch and the adamx state (EMA, accumulation and global clipping on) are split
over the `data` axis (`state_shardings(..., shard_over="data")`). MODE:
- `train`: 20 steps; an orbax checkpoint at step 10, written by every process; process 0 saves
  the final parameters and EMA to WORKDIR/train.npz.
- `resume`: restores step 10 into the same layout, trains to 20, saves WORKDIR/resume.npz.
- `die`: process 1 dies (exit status 3) once the processes have joined (the launcher must fail,
  not hang).
Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

HALFWAY, STEPS = 10, 20


def join(process_id: int, num_processes: int, port: int) -> None:
    jax.config.update("jax_num_cpu_devices", 8 // num_processes)
    if num_processes == 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _gloo_on_loopback()
    # Older JAX (0.5) has no heartbeat and shutdown timeouts to set: its defaults apply there.
    timeouts: dict[str, Any] = {"heartbeat_timeout_seconds": 30, "shutdown_timeout_seconds": 30}
    accepted = inspect.signature(jax.distributed.initialize).parameters
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        coordinator_bind_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
        **{name: seconds for name, seconds in timeouts.items() if name in accepted},
    )


def _gloo_on_loopback() -> None:
    """JAX starts gloo on the address the host name resolves to and has no setting for it; pin it
    to the loopback interface so the test never listens beyond this machine."""
    from jax._src import xla_bridge

    # The module holding the factory was `xla_client._xla` in older JAX, `_jax` since.
    module = getattr(xla_bridge, "_jax", None) or xla_bridge.xla_client._xla
    make = module.make_gloo_tcp_collectives
    module.make_gloo_tcp_collectives = lambda distributed_client: make(
        distributed_client=distributed_client, hostname="127.0.0.1"
    )


def run(workdir: Path, mode: str) -> None:
    import data_parallel as dp
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh

    import adamx

    mesh = Mesh(np.array(jax.devices()), ("data",))
    tx = dp.make_tx(clip=True)
    out_shardings, batch = dp.zero_layout(tx, mesh)
    params_sharding, state_sharding, _ = out_shardings
    step = dp.make_step(tx, out_shardings)
    tokens = dp.batches(1, STEPS)
    rows = dp.BATCH // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)

    checkpointer = ocp.StandardCheckpointer()
    if mode == "resume":
        target = jax.tree.map(
            lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            jax.eval_shape(lambda: _initial(tx)),
            (params_sharding, state_sharding),
        )
        params, state = checkpointer.restore(workdir / "step_10", target)
        first = HALFWAY
    else:
        # Built from each process's own copy: `jax.device_put` of host arrays onto a sharding
        # across processes first checks that they agree, a broadcast that gloo fails in JAX 0.5.
        params = jax.tree.map(
            lambda x, sharding: jax.make_array_from_callback(x.shape, sharding, lambda i: x[i]),
            dp.init_params(0),
            params_sharding,
        )
        state = jax.jit(tx.init, out_shardings=state_sharding)(params)
        first = 0
    for i in range(first, STEPS):
        if i == HALFWAY and mode == "train":
            checkpointer.save(workdir / "step_10", (params, state))
            checkpointer.wait_until_finished()
        # Each process feeds only its own rows of the batch.
        local = jax.make_array_from_process_local_data(batch, tokens[i][mine])
        params, state, loss = step(params, state, local)
        if jax.process_index() == 0:
            print(f"step {i + 1}: loss {float(loss):.4f}", flush=True)
    _save(workdir / f"{mode}.npz", (params, adamx.ema_params(state)))


def _initial(tx: Any) -> Any:
    import data_parallel as dp

    params = dp.init_params(0)
    return params, tx.init(params)


def _save(path: Path, tree: Any) -> None:
    """Process 0 writes the replicated arrays, gathered whole (every process must take part)."""
    from jax.experimental import multihost_utils

    leaves = [
        np.asarray(x) for x in multihost_utils.process_allgather(jax.tree.leaves(tree), tiled=True)
    ]
    if jax.process_index() == 0:
        np.savez(path, *leaves)


def main() -> None:
    process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
    workdir, mode = Path(sys.argv[4]), sys.argv[5]
    join(process_id, num_processes, port)
    if mode == "die":
        jax.devices()  # joined: every process has started its runtime
        if process_id == 1:
            print("process 1 dies on purpose", flush=True)
            os._exit(3)  # abruptly, as a crash or a kill would: no shutdown handshake
    run(workdir, mode)
    print(f"process {process_id} of {num_processes}: done", flush=True)


if __name__ == "__main__":
    main()
