"""Fast paths against the plain reference path on this device: the same training iterations of the configured model,
from the same weights, batches and random state, compared loss by loss, gradient by gradient and weight by weight
at each path's declared tolerance (engine.path.Tolerance). The doctor and the start-up self-check run these.

The comparison runs without dropout and, but for the CUDA graph's own check, without CycleGAN's image pool: the fused
kernels and the device-side pool draw their random numbers from other generators than the reference's, so with them
no two paths would see the same masks or the same history. The graph's check compares a graph replayed over a full
pool against the same paths run eagerly with that pool, with a learning-rate change and a smaller batch between
replays.
"""

import dataclasses
import math
import random
import time

import torch

from fastp2p.checkpoint import unwrap
from fastp2p.engine import prepare_model, resolve_engine, runtime_for
from fastp2p.engine.cuda_graph import WARMUP_STEPS, DeviceImagePool
from fastp2p.engine.path import AUTOCAST_VALUES
from fastp2p.engine.registry import BY_NAME, PATHS
from fastp2p.errors import OptionError, first_line
from fastp2p.models import create_model
from fastp2p.models.base_model import set_lr


@dataclasses.dataclass
class Run:
    """What a run of the check's iterations leaves: each iteration's losses, the last gradients and the weights."""

    losses: list
    gradients: dict  # network -> {parameter name: gradient}
    weights: dict  # network -> {state_dict key: tensor}
    seconds: list  # each iteration's time, the device synchronised
    cancelled: set  # (network, key) of the conv biases an InstanceNorm right after them cancels


@dataclasses.dataclass
class Verdict:
    ok: bool
    why: str
    worst: dict = dataclasses.field(default_factory=dict)  # the largest error of each kind found


def synthetic_batches(opt, sizes, seed=1, size=None):
    """Batches of random images (of the run's crop size by default), one per entry of ``sizes`` (its batch size)."""
    generator = torch.Generator().manual_seed(seed)
    channels = {"A": opt.input_nc, "B": opt.output_nc}
    size = size or opt.crop_size
    return [{**{side: torch.rand(n, c, size, size, generator=generator) * 2 - 1
                for side, c in channels.items()}, "A_paths": ["a"] * n, "B_paths": ["b"] * n} for n in sizes]


def run(opt, config, device, schedule, device_pool=False, seed=0):
    """Train a model of ``opt`` under ``config`` through ``schedule`` (a batch dict, or "lr" for a learning-rate change
    as an epoch's end makes), from ``seed``. ``device_pool``: CycleGAN's pool draws on the device, as under graphs."""
    torch.manual_seed(seed)
    random.seed(seed)
    runtime = runtime_for(config, device)
    if device_pool:
        runtime = dataclasses.replace(runtime, image_pool=DeviceImagePool)
    model = create_model(opt, runtime)
    model.setup(opt)
    cancelled = {(name, key) for name, net in model.networks() for key in biases_cancelled_by_instance_norm(net)}
    step = prepare_model(model, config)
    losses, seconds = [], []
    for item in schedule:
        if item == "lr":
            for optimizer in model.optimizers:
                for group in optimizer.param_groups:
                    set_lr(group, float(group["lr"]) * 0.5)
            continue
        synchronize(device)
        start = time.perf_counter()
        step(item)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        losses.append(model.get_current_losses())
    gradients = {name: {key: p.grad.detach().float().cpu() for key, p in unwrap(net).named_parameters()
                        if p.grad is not None} for name, net in model.networks()}
    weights = {name: {key: t.detach().float().cpu() for key, t in unwrap(net).state_dict().items()}
               for name, net in model.networks()}
    return Run(losses, gradients, weights, seconds, cancelled)


def biases_cancelled_by_instance_norm(net):
    """Keys of the conv biases an InstanceNorm right after them cancels: their true gradient is 0, the reference's
    rounding noise that Adam turns into steps of up to lr, and the fused kernels freeze them."""
    return [f"{prefix}.{i}.bias".lstrip(".") for prefix, module in net.named_modules()
            if isinstance(module, torch.nn.Sequential) for i in range(len(module) - 1)
            if getattr(module[i], "bias", None) is not None and isinstance(module[i + 1], torch.nn.InstanceNorm2d)]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_options(opt):
    """The options the check trains with: the run's networks and shapes, from fresh weights (no checkpoint is read),
    without dropout and image pool, one optimizer step per batch (the paths act per batch, --accum_steps or not)."""
    return opt.replace(no_dropout=True, pool_size=0, continue_train=False, accum_steps=1)


def compare(fast, reference, tolerance):
    """Verdict of ``fast`` against ``reference``: every loss of every iteration, each network's gradient (relative L2
    error and cosine of all its parameters' gradients together) and every weight, but for the conv biases an
    InstanceNorm cancels (rounding noise in the reference, frozen by the fused kernels)."""
    frozen = reference.cancelled
    worst = {"loss": 0.0, "gradient_rel_l2": 0.0, "gradient_cosine": 1.0, "weight": 0.0}
    problems = []
    for i, (losses, expected) in enumerate(zip(fast.losses, reference.losses)):
        for name, value in expected.items():
            error = abs(losses[name] - value)
            if not math.isfinite(losses[name]) or error > tolerance.loss_atol + tolerance.loss_rtol * abs(value):
                problems.append(f"loss {name} of iteration {i + 1}: {losses[name]:.6g} vs {value:.6g}")
            worst["loss"] = max(worst["loss"], error)
    for net, expected in reference.gradients.items():
        keys = [key for key in expected if key in fast.gradients[net] and (net, key) not in frozen]
        if not keys:
            continue
        ours = torch.cat([fast.gradients[net][key].flatten() for key in keys])
        theirs = torch.cat([expected[key].flatten() for key in keys])
        rel = float((ours - theirs).norm() / theirs.norm().clamp_min(1e-30))
        cosine = float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0))
        if not rel <= tolerance.grad_rel_l2:
            problems.append(f"gradients of {net}: relative L2 error {rel:.3g} > {tolerance.grad_rel_l2:g} (cosine "
                            f"{cosine:.6f})")
        worst["gradient_rel_l2"] = max(worst["gradient_rel_l2"], rel)
        worst["gradient_cosine"] = min(worst["gradient_cosine"], cosine)
    for net, expected in reference.weights.items():
        for key, value in expected.items():
            if (net, key) in frozen or not value.numel():
                continue
            error = (fast.weights[net][key] - value).abs()
            allowed = tolerance.weight_atol + tolerance.weight_rtol * value.abs()
            share = float((~(error <= allowed)).float().mean())  # NaN counts as beyond
            if share > tolerance.weight_share:
                problems.append(f"weight {net}.{key}: {share:.1%} of its elements part by more than "
                                f"{tolerance.weight_atol:g} + {tolerance.weight_rtol:g} x |value| (at most "
                                f"{tolerance.weight_share:.0%} may)")
            worst["weight"] = max(worst["weight"], float(error.max()))
    if problems:
        return Verdict(False, f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                       worst)
    return Verdict(True, "within tolerance", worst)


def schedule_for(opt, config, iterations=1):
    """The iterations a check trains: ``iterations`` full batches, and under CUDA graphs enough of them for the
    capture (after the warm-up) and several replays, with a learning-rate change and a smaller batch between them."""
    if not config.cuda_graph:
        return synthetic_batches(opt, [opt.batch_size] * iterations)
    n, small = opt.batch_size, max(1, opt.batch_size - 1)
    batches = synthetic_batches(opt, [n] * (WARMUP_STEPS + 2) + [small, n, n])
    return batches[:WARMUP_STEPS + 2] + ["lr"] + batches[WARMUP_STEPS + 2:]


def reference_config(config, precision=False):
    """The plain reference path, with the run's DDP, and with ``precision`` in the run's autocast dtype: the
    baseline of the paths that run under autocast, whose own difference from fp32 is --amp's check."""
    return type(config)(ddp=config.ddp, amp=config.amp if precision else None)


def tolerance_of(config):
    """The loosest tolerance among the paths ``config`` turns on beside --amp (checked against the plain path in
    the same precision, so under --amp no tighter than autocast's own rounding)."""
    tolerances = [BY_NAME[name].check.tolerance for name in config.on()
                  if BY_NAME[name].check is not None and name != "amp"]
    if config.amp is not None and tolerances:
        tolerances.append(AUTOCAST_VALUES)
    return max(tolerances, key=lambda tolerance: tolerance.weight_atol, default=BY_NAME["amp"].check.tolerance)


def check_training(opt, config, device, baseline):
    """Verdict of ``config``'s paths against ``baseline`` (an EngineConfig) on the check's iterations, at
    ``tolerance_of(config)`` (--amp's alone when only it is on), and the two runs."""
    opt = check_options(opt)
    schedule = schedule_for(opt, config)
    reference = run(opt, baseline, device, schedule)
    fast = run(opt, config, device, schedule)
    return compare(fast, reference, tolerance_of(config)), fast, reference


def check_graph_with_pool(opt, config, device):
    """CUDA graph replays against the same paths run eagerly, over a full image pool (CycleGAN's pool, of the
    run's batch size, full after the first iteration) drawing on the device in both."""
    opt = check_options(opt).replace(pool_size=opt.batch_size)
    schedule = schedule_for(opt, config)
    eager = run(opt, dataclasses.replace(config, cuda_graph=False), device, schedule, device_pool=True)
    graphed = run(opt, config, device, schedule, device_pool=True)
    return compare(graphed, eager, BY_NAME["cuda_graph"].check.tolerance)


# -- the checks of the doctor and of the start-up self-check, each a result -----------------------------------------

TOGETHER = "together"
"""the check of the run's paths together (beside --amp, against the plain path in the run's precision)"""


def only(opt, flags):
    """``opt`` with every fast path off but for ``flags`` (CLI flags, e.g. ['--amp', 'bf16', '--foreach_cast', 'on'];
    a flag without a value takes its const, as --compile alone does)."""
    values = {path.name: path.off_flag for path in PATHS}
    for i, flag in enumerate(flags):
        if flag.startswith("--"):
            given = flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") else None
            values[flag[2:]] = given if given is not None else BY_NAME[flag[2:]].flag.get("const")
    return opt.replace(reference=False, **values)


def alone(opt, device, name):
    """(EngineConfig of path ``name`` alone with the paths it needs, that of those it needs only: its baseline), or
    (None, the reason it cannot run here)."""
    path = BY_NAME[name]
    if path.check is None:
        return None, "it has no check of its own"
    if device.type != "cuda" and not path.check.cpu:
        return None, "it needs a GPU"
    try:
        return (resolve_engine(only(opt, [*path.check.needs, *path.on_flags()]), device),
                resolve_engine(only(opt, list(path.check.needs)), device)), None
    except OptionError as error:
        return None, str(error).split(": ", 1)[-1]


def result(name, verdict=None, why=None, tolerance=None):
    entry = {"name": name, "status": "skipped" if verdict is None else ("ok" if verdict.ok else "failed"),
             "why": why if verdict is None else verdict.why}
    if verdict is not None:
        entry["worst"] = verdict.worst
    if tolerance is not None:
        entry["tolerance"] = vars(tolerance)
    return entry


def guarded(check):
    """The verdict of ``check()``, or a failed one with the first line of the error it raised."""
    try:
        return check()
    except Exception as error:  # a broken kernel may raise anything; the first line is what the user needs
        return Verdict(False, f"{type(error).__name__}: {first_line(error)}")


def paths_beside_amp(config):
    return [name for name in config.on() if name != "amp" and BY_NAME[name].check is not None]


def check_inference(opt, config, device, baseline):
    """Verdict of the generator's forward under ``config`` (fastp2p.test's engine) against ``baseline``'s, in eval
    mode (dropout's masks come from other generators on each path), on a random batch of the run's shapes."""
    from fastp2p.inference import build_inference

    outputs = []
    for engine in (baseline, config):
        torch.manual_seed(0)
        model, _ = build_inference(opt.replace(eval=True), device, config=engine)
        x = torch.rand(opt.batch_size, opt.input_nc, opt.crop_size, opt.crop_size,
                       generator=torch.Generator().manual_seed(1)) * 2 - 1
        with torch.no_grad():
            outputs.append(model.generator()(x.to(device)).float().cpu())
    reference, fast = outputs
    tolerance = tolerance_of(config) if paths_beside_amp(config) else BY_NAME["amp"].check.tolerance
    rel = float((fast - reference).norm() / reference.norm().clamp_min(1e-30))
    ok = rel <= tolerance.grad_rel_l2
    return Verdict(ok, "within tolerance" if ok else f"the generator's output: relative L2 error {rel:.3g} > "
                                                     f"{tolerance.grad_rel_l2:g}", {"output_rel_l2": rel})


def run_check(opt, device, name, asked):
    """The result of check ``name``: TOGETHER (``asked``'s paths beside --amp) or one path alone, training (or, for
    fastp2p.test's options, inference); a check that raises has failed with its first line."""
    if name == TOGETHER:
        config, baseline, why = asked, reference_config(asked, precision=True), None
    else:
        configs, why = alone(opt, device, name)
        config, baseline = configs or (None, None)
    if config is None:
        return result(name, why=why)
    tolerance = tolerance_of(config) if name == TOGETHER else BY_NAME[name].check.tolerance
    if not opt.isTrain:
        return result(name, guarded(lambda: check_inference(opt, config, device, baseline)), tolerance=tolerance)
    verdict = guarded(lambda: check_training(opt, config, device, baseline)[0])
    if verdict.ok and config.cuda_graph:
        verdict = guarded(lambda: check_graph_with_pool(opt, config, device))
    return result(name, verdict, tolerance=tolerance)
