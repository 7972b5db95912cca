"""The losses under each framework's data parallelism, on two CPU devices or
processes, each in a fresh interpreter (they configure devices at start-up):
torch ``DistributedDataParallel`` (gloo, two processes) gives the gradients of
one process on the whole batch; Keras ``fit`` under
``tf.distribute.MirroredStrategy`` (two logical CPUs) follows ``fit`` on one
device, and the loss compiled by XLA in each replica equals the kernels; JAX
``jit`` over a batch sharded on two devices picks the native path, keeps the
gradient sharded without gathering the batch, and equals the kernels on the
whole batch."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT = 120  # seconds; each script takes 10-30 s on an idle machine

TREE = "emdtree.Tree.from_nested({'a': ['x', 'y', {'z': ['u', 'v']}], 'b': ['w'], 'c': None})"

TORCH_DDP = f"""
import faulthandler, sys
faulthandler.dump_traceback_later({TIMEOUT} - 30, exit=True)  # where a hang waits, in each process
import numpy as np, torch, torch.distributed as dist, torch.multiprocessing as mp
import emdtree
from emdtree.torch import EMDLoss

TREE = {TREE}


def data():
    rng = np.random.default_rng(0)
    return torch.tensor(rng.standard_normal((8, 5))), torch.tensor(rng.integers(0, TREE.n_bins, 8))


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(5, TREE.n_bins).double()


def worker(rank, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    net = torch.nn.parallel.DistributedDataParallel(model())
    x, y = data()
    half = slice(4 * rank, 4 * rank + 4)
    EMDLoss(TREE, normalize="softmax")(net(x[half]), y[half]).backward()
    if rank == 0:
        torch.save({{k: p.grad for k, p in net.module.named_parameters()}}, out)
    # both ranks done before the process group goes: DDP's reducer is freed while the
    # group still works (tearing down gloo under a live DDP module was seen to hang)
    dist.barrier()
    del net
    dist.destroy_process_group()


if __name__ == "__main__":
    store, out = sys.argv[1:]
    mp.spawn(worker, args=(store, out), nprocs=2, join=True)
    grads = torch.load(out)
    net = model()
    x, y = data()
    EMDLoss(TREE, normalize="softmax")(net(x), y).backward()
    for k, p in net.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-12, atol=1e-15)
        assert p.grad.abs().max() > 1e-3
    print("OK")
"""

TF_MIRRORED = f"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, keras
import emdtree
from emdtree.tensorflow import EMDLoss

TREE = {TREE}
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 5)).astype(np.float32)
y = (x @ rng.standard_normal((5, TREE.n_bins))).argmax(-1)


def fit(strategy, jit):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(TREE.n_bins)])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=EMDLoss(TREE, normalize="softmax"),
                      jit_compile=jit)
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    return history.history["loss"], model.get_weights()


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
want_losses, want_weights = fit(tf.distribute.get_strategy(), False)
assert want_losses[-1] < 0.95 * want_losses[0]
# (Keras cannot compile a mirrored fit with XLA on logical CPUs, whatever the
# loss: its step reads variables of the other replica)
losses, weights = fit(mirrored, False)
np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
for a, b in zip(weights, want_weights):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

# the loss compiled by XLA in each replica
loss_fn = EMDLoss(TREE, normalize="softmax", reduction=None)


@tf.function(jit_compile=True)
def value_and_grad(z, t):
    with tf.GradientTape() as tape:
        tape.watch(z)
        value = loss_fn(t, z)
        total = tf.reduce_sum(value)
    return value, tape.gradient(total, z)


z = rng.standard_normal((8, TREE.n_bins)).astype(np.float32)
data = mirrored.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((z, y[:8])).batch(8))
per_replica = mirrored.run(value_and_grad, args=next(iter(data)))
value = tf.concat(mirrored.experimental_local_results(per_replica[0]), 0)
grad = tf.concat(mirrored.experimental_local_results(per_replica[1]), 0)
want_value, want_grad = value_and_grad.python_function(tf.constant(z), tf.constant(y[:8]))  # eager: kernels
np.testing.assert_allclose(value.numpy(), want_value.numpy(), rtol=2e-6, atol=1e-7)
np.testing.assert_allclose(grad.numpy(), want_grad.numpy(), rtol=2e-6, atol=1e-7)
print("OK")
"""

JAX_SHARDED = f"""
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec
import emdtree
from emdtree.frameworks import jax_native as _jax_native
from emdtree.jax import emd_loss

jax.config.update("jax_enable_x64", True)
TREE = {TREE}
assert jax.device_count() == 2
rng = np.random.default_rng(0)
logits = rng.standard_normal((8, TREE.n_bins))
labels = rng.integers(0, TREE.n_bins, 8)
assert not _jax_native.is_preferred(jnp.asarray(logits))


def loss(x, t):
    return emd_loss(x, t, TREE, normalize="softmax").mean()


want = jax.value_and_grad(lambda x, t: emd_loss(x, t, TREE, normalize="softmax",
                                                implementation="callback").mean())(logits, labels)


def check(mesh):
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    x, t = jax.device_put(logits, rows), jax.device_put(labels, rows)
    assert _jax_native.is_preferred(x, t)
    step = jax.jit(jax.value_and_grad(loss))
    value, grad = step(x, t)
    assert grad.sharding.is_equivalent_to(rows, 2), grad.sharding
    assert "all-gather" not in step.lower(x, t).compile().as_text()  # each device keeps its rows
    np.testing.assert_allclose(value, want[0], rtol=1e-12)
    np.testing.assert_allclose(grad, want[1], rtol=1e-12, atol=1e-15)
    # per-sample gradients and Hessians of sharded rows, inside jit
    per_sample = jax.jit(jax.vmap(jax.grad(loss)))(x[:, None], t[:, None])
    np.testing.assert_allclose(np.asarray(per_sample)[:, 0] / 8, want[1], rtol=1e-12, atol=1e-15)
    p = jax.device_put(jax.nn.softmax(logits), rows)
    hess = jax.jit(jax.vmap(jax.hessian(lambda p, t: emd_loss(p, t, TREE))))(p, t)
    for r in (0, 5):
        want_h = emdtree.emd_hessian(np.asarray(p)[r], np.eye(TREE.n_bins)[labels[r]], TREE)
        np.testing.assert_allclose(np.asarray(hess)[r], want_h, rtol=1e-12, atol=1e-13)


check(jax.make_mesh((2,), ("batch",), axis_types=(AxisType.Auto,)))
explicit = jax.make_mesh((2,), ("batch",), axis_types=(AxisType.Explicit,))
with jax.set_mesh(explicit):
    check(explicit)
print("OK")
"""


def _run(script, tmp_path, *args, env=None):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
           **(env or {})}
    # a session of its own, so that a timeout ends the worker processes too
    proc = subprocess.Popen([sys.executable, str(path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
                            cwd=tmp_path, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the script did not finish in {TIMEOUT} s:\n{stderr[-6000:]}")
    assert proc.returncode == 0 and stdout.strip().endswith("OK"), stderr[-4000:]


def test_torch_distributed_data_parallel(tmp_path):
    pytest.importorskip("torch")
    _run(TORCH_DDP, tmp_path, str(tmp_path / "store"), str(tmp_path / "grads.pt"))


def test_tensorflow_mirrored_strategy(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    _run(TF_MIRRORED, tmp_path)


def test_jax_sharded_batch(tmp_path):
    pytest.importorskip("jax")
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=2"]))
    _run(JAX_SHARDED, tmp_path, env={"XLA_FLAGS": flags})
