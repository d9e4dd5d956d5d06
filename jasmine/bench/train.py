"""`jasmine bench train`: step time, tokens/s, XLA and model FLOPs, MFU, train-state and scratch bytes per device."""

from __future__ import annotations

import time

import numpy as np

from jasmine.bench.common import matmul_peak, synthetic_batch


def params_by_path(tree) -> dict[str, int]:
    """Parameter count per '/'-joined path of each leaf."""
    import jax

    return {
        "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): int(np.prod(x.shape))
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def bench_train(cfg, component, timed_steps: int = 10, inputs: str = "frames") -> dict[str, float]:
    """Median step time, tokens/s, XLA FLOPs, model FLOPs (6 x params x tokens) and MFU."""
    import jax

    from jasmine import config as C
    from jasmine.train.components import precision
    from jasmine.train.loop import count_params, setup
    from jasmine.train.mesh import global_batch, mesh_for

    mesh = mesh_for(cfg)
    C.validate(cfg, mesh.size)
    model, state, _, step_fn = setup(cfg, component, mesh, pretrained=False)  # random weights time the same
    if inputs == "tokens" and not hasattr(cfg, "tokenizer_model"):
        raise ValueError(f"--inputs tokens is only for dynamics, not {component.name}")
    num_actions = getattr(cfg, "num_actions", 0) or 15
    batch = global_batch(synthetic_batch(cfg, component.batch_keys(cfg), num_actions, inputs=inputs), mesh)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", 0.0)) * mesh.size  # the cost analysis is of one device's partition
    fused = compiled.as_text().count("__cudnn$fmha")  # cuDNN fused attention custom calls, forward and backward
    scratch = step_scratch(compiled)
    times = []
    for i in range(2 + timed_steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, step_fn.schedule)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    padding = encoder_padding(model.merge(state["params"], state["frozen"], state["rest"]), batch.get("frames"), step_s)
    params = count_params(state["params"])
    tokens = component.tokens_per_batch(cfg)
    sizes = {**params_by_path(state["params"]), **params_by_path(state["frozen"])}
    model_flops = component.model_flops(cfg, sizes, inputs)

    peak = matmul_peak(precision(cfg).dtype)
    r = {
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "xla_flops": xla_flops,
        "model_flops": model_flops,
        "params": params,
        "peak_flops": peak,
        "mfu": model_flops / step_s / peak,
        "hfu": xla_flops / step_s / peak,
        "compile_s": compile_s,
        "cudnn_attention_calls": fused,
        **scratch,
        **padding,
    }
    mem = state_memory(state)
    r.update({f"{k}_bytes": v for k, v in mem.items()})
    dev = jax.devices()[0]
    print(
        f"{component.name}: {params / 1e6:.1f}M params, batch {cfg.batch_size}x{cfg.seq_len} of "
        f"{'x'.join(map(str, cfg.image_size))} ({inputs}), {tokens} tokens/step, remat {cfg.remat}, "
        f"{precision(cfg).dtype.name} on {mesh.size}x {dev.platform} ({dev.device_kind})"
    )
    print(f"  compile          {compile_s:.1f} s")
    print(f"  attention        --attention {cfg.attention}: {fused} cuDNN fused-attention calls in the compiled step")
    print(f"  step time        {step_s:.3f} s (median of {timed_steps}; min {min(times):.3f}, max {max(times):.3f})")
    print(f"  tokens/s         {r['tokens_per_s']:,.0f}")
    print(f"  XLA FLOPs/step   {xla_flops / 1e9:,.1f} GFLOP (cost analysis, all devices)")
    print(f"  model FLOPs/step {model_flops / 1e9:,.1f} GFLOP (6 x trained params x tokens, 2 x frozen forwards)")
    print(f"  matmul peak      {peak / 1e9:,.1f} GFLOP/s ({precision(cfg).dtype.name} 2048^2, same process)")
    print(f"  MFU              {r['mfu']:.1%}   (HFU from XLA FLOPs: {r['hfu']:.1%})")

    def mib(b):
        return f"{b / 2**20:,.1f} MiB"

    def line(p):
        return (
            f"params {mib(mem[p + 'params'])} + frozen {mib(mem[p + 'frozen'])} + optimizer "
            f"{mib(mem[p + 'opt'])} = {mib(mem[p + 'total'])}"
        )

    print(
        f"  state/device     {line('')} (fullest of {mesh.size} devices; mesh dp {mesh.shape['dp']} x fsdp "
        f"{mesh.shape['fsdp']})"
    )
    print(f"  replicated (dp)  {line('dp_')}  -> this mesh holds {mem['total'] / mem['dp_total']:.2f}x")
    if padding:
        print(
            f"  frozen encoder   {padding['frames']} frames in chunks of {padding['window']}: "
            f"{padding['encode_s']:.3f} s as the step runs it (last chunk unpadded), "
            f"{padding['padded_encode_s']:.3f} s padded to {padding['padded_frames']} (as before): a padded step "
            f"would take {padding['padded_step_s']:.3f} s ({padding['padded_step_s'] / step_s:.2f}x this one)"
        )
    if scratch:
        print(
            f"  step scratch     {mib(scratch['temp_bytes'])} device + {mib(scratch['host_temp_bytes'])} host "
            f"(XLA's temporaries per device: activations kept for the backward pass; --remat {cfg.remat})"
        )
    return r


def encoder_padding(module, frames_BTHWC, step_s: float, repeats: int = 3) -> dict[str, float]:
    """The frozen tokenizer's encode of the batch's clip as the step runs it (a last, shorter chunk unpadded)
    against the clip padded to whole chunks, as steps ran before (zero frames encoded and dropped), timed in
    this process (best of ``repeats``); ``padded_step_s`` is the step plus the difference. Empty where the
    clip tiles into chunks or the component encodes no frames."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    window = getattr(module, "tokenizer_window", None)
    if frames_BTHWC is None or window is None or frames_BTHWC.shape[1] % window == 0:
        return {}
    T = frames_BTHWC.shape[1]
    padded_T = -(-T // window) * window
    pad = [(0, 0), (0, padded_T - T)] + [(0, 0)] * (frames_BTHWC.ndim - 2)
    graphdef, st = nnx.split(module)
    unpadded = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x))
    padded = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(jnp.pad(x, pad))[:, :T])

    def best(fn):
        jax.block_until_ready(fn(st, frames_BTHWC))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(st, frames_BTHWC))
            times.append(time.perf_counter() - t0)
        return min(times)

    enc, enc_padded = best(unpadded), best(padded)
    return {
        "frames": T,
        "window": window,
        "padded_frames": padded_T,
        "encode_s": enc,
        "padded_encode_s": enc_padded,
        "padded_step_s": step_s + enc_padded - enc,
    }


def step_scratch(compiled) -> dict[str, int]:
    """XLA's temporary bytes per device for the compiled step (``temp_bytes``) and in host memory
    (``host_temp_bytes``, where --remat offload keeps activations); empty where the backend does not say."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    return {"temp_bytes": int(stats.temp_size_in_bytes), "host_temp_bytes": int(stats.host_temp_size_in_bytes)}


def state_memory(state) -> dict[str, int]:
    """Bytes of the train state on the fullest device (``params``, ``frozen``, ``opt``, ``total``), and the
    same replicated on every device as data parallelism holds them (``dp_*``)."""
    import jax

    from jasmine.train.mesh import bytes_per_device

    held = {k: bytes_per_device(state[k]) for k in ("params", "frozen", "opt")}
    fullest = max(set().union(*held.values()), key=lambda d: sum(h.get(d, 0) for h in held.values()))
    mem = {k: h.get(fullest, 0) for k, h in held.items()}
    mem |= {f"dp_{k}": int(sum(x.nbytes for x in jax.tree.leaves(state[k]))) for k in held}
    return mem | {"total": sum(mem[k] for k in held), "dp_total": sum(mem[f"dp_{k}"] for k in held)}
