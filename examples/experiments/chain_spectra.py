"""Regressing a power spectrum with MSE, the Sinkhorn distance and EMD^2 (paper section 5.2, Figure 6).

A small network (16 temporal convolution filters with a receptive field of
11 samples, tanh, one fully connected layer, squared and normalised outputs)
reads a window of a 1-D signal and outputs a histogram over frequency bins.
It is trained with Adam on three losses and scored by the exact EMD
(rho = 1) on the chain of frequency bins, on held-out windows, against
training steps, over a few seeds.

Two data sets:

* ``respiration``: synthetic respiration-like signals, 64 s at 4 Hz. The
  breathing rate drifts within 0.1-0.5 Hz; the waveform has harmonics and
  amplitude modulation. The network sees the signal with baseline wander,
  movement artefacts (steps and spikes that decay), white and 1/f noise;
  the target is the normalised power spectrum (Hann window, 0-1 Hz, 64
  bins) of the clean respiration signal, the reference a chest belt would
  give.
* ``sunspots``: the yearly sunspot numbers 1700-2008 shipped with
  statsmodels, cut into 64-year windows (training windows from 1700-1899,
  test windows from 1900-2008); the network sees the window with white and
  1/f noise and spikes added, the target is the normalised power spectrum
  of the clean window (33 bins). Skipped when statsmodels is missing.

Usage::

    python examples/experiments/chain_spectra.py            # full run
    python examples/experiments/chain_spectra.py --quick    # a couple of minutes
    python examples/experiments/chain_spectra.py --smoke    # seconds
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402

import emdtree  # noqa: E402

LOSSES = ("MSE", "SD", "EMD^2")
FS_HZ = 4.0
WINDOW_S = 64.0

# Sinkhorn: entropic strength lambda on the |i - j| ground metric of the bins
# and a fixed number of iterations.
SD_LAMBDA = 5.0
SD_ITERATIONS = 50

MODES = {
    #         steps  eval_every  batch  seeds  n_train  n_test  sunspot steps
    "full": dict(steps=2000, eval_every=50, batch=32, seeds=3, n_train=4000, n_test=500, sun_steps=1000),
    "quick": dict(steps=800, eval_every=50, batch=32, seeds=2, n_train=2000, n_test=300, sun_steps=400),
    "smoke": dict(steps=40, eval_every=20, batch=16, seeds=1, n_train=128, n_test=64, sun_steps=20),
}


# ----------------------------------------------------------------------------- data


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Unit-variance noise with power spectrum ~ 1 / f**exponent."""
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    x = np.fft.irfft(spec / f ** (exponent / 2), n)
    return x / x.std()


def artefacts(rng: np.random.Generator, t: np.ndarray, scale: float) -> np.ndarray:
    """Movement artefacts: a few steps and spikes that decay exponentially."""
    out = np.zeros_like(t)
    for _ in range(rng.poisson(1.5)):
        t0 = rng.uniform(t[0], t[-1])
        tau = rng.uniform(0.3, 4.0)
        amp = rng.standard_normal() * scale * rng.uniform(1, 4)
        after = t >= t0
        out[after] += amp * np.exp(-(t[after] - t0) / tau)
    return out


def respiration(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One window: (clean respiration signal, measured signal)."""
    t = np.arange(n) / FS_HZ
    # breathing rate: a random walk around a random rate, kept in 0.1-0.5 Hz
    rate = rng.uniform(0.12, 0.45) + np.cumsum(rng.standard_normal(n)) * rng.uniform(0.0, 0.004)
    rate = np.clip(rate, 0.1, 0.5)
    phase = 2 * np.pi * np.cumsum(rate) / FS_HZ + rng.uniform(0, 2 * np.pi)
    wave = np.sin(phase)
    for h in (2, 3):
        wave += rng.uniform(0, 0.5 / h) * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    am = 1 + rng.uniform(0, 0.5) * np.sin(2 * np.pi * rng.uniform(0.005, 0.05) * t
                                          + rng.uniform(0, 2 * np.pi))
    clean = am * wave
    wander = rng.uniform(0, 1.5) * np.sin(2 * np.pi * rng.uniform(0.003, 0.04) * t
                                          + rng.uniform(0, 2 * np.pi))
    wander += rng.uniform(0, 0.5) * colored_noise(rng, n, 2.0)
    noisy = (clean + wander + artefacts(rng, t, 1.0)
             + rng.uniform(0.1, 0.8) * rng.standard_normal(n)
             + rng.uniform(0.1, 0.6) * colored_noise(rng, n, 1.0))
    return clean, noisy


def power_spectrum(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Normalised power spectrum of each row (Hann window, mean removed), first ``n_bins`` bins."""
    x = x - x.mean(axis=-1, keepdims=True)
    power = np.abs(np.fft.rfft(x * np.hanning(x.shape[-1]), axis=-1)) ** 2
    power = power[..., :n_bins]
    return power / power.sum(axis=-1, keepdims=True)


def standardize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    return x / (x.std(axis=-1, keepdims=True) + 1e-12)


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    freqs: np.ndarray
    freq_unit: str


def respiration_dataset(n_train: int, n_test: int, seed: int = 0) -> Dataset:
    n = int(WINDOW_S * FS_HZ)
    n_bins = n // 4  # 0 to 1 Hz
    rng = np.random.default_rng(seed)
    clean, noisy = map(np.array, zip(*(respiration(rng, n) for _ in range(n_train + n_test))))
    y = power_spectrum(clean, n_bins)
    x = standardize(noisy)
    freqs = np.fft.rfftfreq(n, 1 / FS_HZ)[:n_bins]
    return _split("respiration", x, y, n_train, freqs, "Hz")


def sunspot_series() -> np.ndarray | None:
    """Yearly sunspot numbers 1700-2008 from statsmodels, or None when it is not installed."""
    try:
        from statsmodels.datasets import sunspots
    except ImportError:
        return None
    return np.asarray(sunspots.load_pandas().data["SUNACTIVITY"], dtype=np.float64)


def sunspot_windows(series: np.ndarray, n_train: int, n_test: int, seed: int = 0) -> Dataset:
    """64-year windows; training windows lie in 1700-1899, test windows in 1900-2008."""
    n = 64
    split = 1900 - 1700
    starts_train = np.arange(0, split - n + 1)
    starts_test = np.arange(split, series.size - n + 1)
    rng = np.random.default_rng(seed)
    # each draw is a window with a fresh corruption: noise is the augmentation
    starts = np.concatenate([rng.choice(starts_train, n_train), rng.choice(starts_test, n_test)])
    clean = np.stack([series[s:s + n] for s in starts])
    clean = standardize(clean)
    t = np.arange(n, dtype=np.float64)
    noisy = np.stack([
        c + rng.uniform(0.1, 0.6) * rng.standard_normal(n)
        + rng.uniform(0.1, 0.6) * colored_noise(rng, n, 1.0) + artefacts(rng, t, 1.0)
        for c in clean
    ])
    y = power_spectrum(clean, n // 2 + 1)
    return _split("sunspots", standardize(noisy), y, n_train, np.fft.rfftfreq(n), "1/year")


def _split(name, x, y, n_train, freqs, unit) -> Dataset:
    x = torch.as_tensor(x, dtype=torch.float32)[:, None, :]
    y = torch.as_tensor(y, dtype=torch.float32)
    return Dataset(name, x[:n_train], y[:n_train], x[n_train:], y[n_train:], freqs, unit)


# ----------------------------------------------------------------------------- model and training


class SpectrumNet(nn.Module):
    """16 temporal filters (receptive field 11), tanh, one fully connected layer, squared, normalised."""

    def __init__(self, n_samples: int, n_bins: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 16, kernel_size=11)
        self.fc = nn.Linear(16 * (n_samples - 10), n_bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)
        power = self.fc(h) ** 2 + 1e-8
        return power / power.sum(dim=1, keepdim=True)


def make_loss(name: str, tree: emdtree.Tree):
    if name == "MSE":
        return nn.functional.mse_loss
    if name == "SD":
        sd = common.Sinkhorn(tree.distance_matrix(), SD_LAMBDA, SD_ITERATIONS)
        return sd.loss
    if name == "EMD^2":
        return lambda pred, target: common.emd2_loss(pred, target, tree)
    raise ValueError(f"unknown loss {name!r}")


def test_emd(model: nn.Module, data: Dataset, tree: emdtree.Tree) -> float:
    """Mean exact EMD (rho = 1) between predicted and target spectra on the test windows."""
    with torch.no_grad():
        pred = model(data.x_test).double().numpy()
    return float(emdtree.emd(pred, data.y_test.double().numpy(), tree, rho=1.0, normalize="l1").mean())


def train(data: Dataset, loss_name: str, seed: int, steps: int, eval_every: int, batch: int) -> dict:
    tree = emdtree.Tree.chain(data.y_train.shape[1])
    torch.manual_seed(seed)
    model = SpectrumNet(data.x_train.shape[2], tree.n_bins)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = make_loss(loss_name, tree)
    gen = torch.Generator().manual_seed(seed)
    eval_steps, curve = [0], [test_emd(model, data, tree)]
    clock = common.Stopwatch()
    for step in range(1, steps + 1):
        idx = torch.randint(0, data.x_train.shape[0], (batch,), generator=gen)
        loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            eval_steps.append(step)
            curve.append(test_emd(model, data, tree))
    with torch.no_grad():
        example = model(data.x_test[:3]).numpy()
    return {"steps": eval_steps, "test_emd": curve, "seconds": clock(), "example": example}


# ----------------------------------------------------------------------------- report


def summarize(name: str, runs: dict) -> tuple[dict, list[list[str]], list[float]]:
    """Per loss: final test EMD and the steps its seed-mean curve takes to reach two levels."""
    steps = np.asarray(runs[LOSSES[0]][0]["steps"])
    curves = {k: np.array([r["test_emd"] for r in runs[k]]) for k in LOSSES}
    lowest = {k: float(curves[k].mean(axis=0).min()) for k in LOSSES}
    # level A: the lowest mean test EMD of the worst loss (every loss gets there);
    # level B: 1.1 x the lowest mean test EMD of the best loss
    levels = [max(lowest.values()), 1.1 * min(lowest.values())]
    summary, rows = {}, []
    for k in LOSSES:
        c = curves[k]
        reach = [common.steps_to_reach(steps, c.mean(axis=0), lv) for lv in levels]
        summary[k] = {
            "final_test_emd_mean": float(c[:, -1].mean()), "final_test_emd_min": float(c[:, -1].min()),
            "final_test_emd_max": float(c[:, -1].max()), "lowest_mean_test_emd": lowest[k],
            "steps_to_levels": reach, "seconds_per_run": float(np.mean([r["seconds"] for r in runs[k]])),
        }
        rows.append([name, k, common.fmt(c[:, -1].mean(), 4),
                     f"{common.fmt(c[:, -1].min(), 4)}-{common.fmt(c[:, -1].max(), 4)}",
                     common.fmt(reach[0]), common.fmt(reach[1]),
                     common.fmt(summary[k]["seconds_per_run"], 3)])
    return summary, rows, levels


def plot(path: str, datasets: list[Dataset], all_runs: dict) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.2 * len(datasets), 7.0), squeeze=False)
    for col, data in enumerate(datasets):
        runs = all_runs[data.name]
        ax = axes[0, col]
        for k in LOSSES:
            curves = np.array([r["test_emd"] for r in runs[k]])
            common.plot_band(ax, np.asarray(runs[k][0]["steps"]), curves, k)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("test EMD (exact, rho = 1), bins")
        ax.set_title(f"{data.name}: mean and min-max over {len(runs[LOSSES[0]])} seed(s)")
        ax.legend()
        ax.grid(alpha=0.3, which="both")
        ax = axes[1, col]
        ax.plot(data.freqs, data.y_test[0].numpy(), color="k", lw=2.2, label="target")
        for k in LOSSES:
            ax.plot(data.freqs, runs[k][0]["example"][0], color=common.LOSS_COLORS[k], lw=1.2, label=k)
        ax.set_xlabel(f"frequency ({data.freq_unit})")
        ax.set_ylabel("normalised power")
        ax.set_title("one test window, seed 0, after training")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = common.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    mode = common.mode_of(args)
    cfg = MODES[mode]
    seeds = args.seeds or cfg["seeds"]
    common.set_threads(args.threads)
    clock = common.Stopwatch()

    datasets = [respiration_dataset(cfg["n_train"], cfg["n_test"])]
    series = sunspot_series()
    if series is None:
        print("statsmodels is not installed: skipping the sunspot data set")
    else:
        datasets.append(sunspot_windows(series, cfg["n_train"], min(cfg["n_test"], 300)))

    all_runs, summaries, rows, levels = {}, {}, [], {}
    for data in datasets:
        steps = cfg["steps"] if data.name == "respiration" else cfg["sun_steps"]
        every = cfg["eval_every"]
        all_runs[data.name] = {k: [train(data, k, s, steps, every, cfg["batch"]) for s in range(seeds)]
                               for k in LOSSES}
        summaries[data.name], r, levels[data.name] = summarize(data.name, all_runs[data.name])
        rows += r
        for k in LOSSES:
            final = summaries[data.name][k]["final_test_emd_mean"]
            print(f"{data.name:12s} {k:6s} final test EMD {final:.4f}")

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "chain_spectra.png")
    plot(png, datasets, all_runs)
    headers = ["data", "loss", "final test EMD (mean)", "min-max over seeds",
               "steps to level A", "steps to level B", "s per run"]
    md = [f"# Chain: power spectrum regression ({mode} mode, {seeds} seed(s))", "",
          common.markdown_table(headers, rows), ""]
    for name, (a, b) in levels.items():
        md.append(f"* {name}: level A = {a:.4g} (lowest seed-mean test EMD of the worst loss), "
                  f"level B = {b:.4g} (1.1 x that of the best loss); steps: first evaluation at which the "
                  "seed-mean curve is at or below the level, '-' = not reached.")
    md.append(f"* Sinkhorn: lambda = {SD_LAMBDA}, {SD_ITERATIONS} iterations; total time {clock():.0f} s.")
    text = "\n".join(md)
    print(text)
    results = {
        "experiment": "chain_spectra", "mode": mode, "seeds": seeds, "config": cfg,
        "sinkhorn": {"lambda": SD_LAMBDA, "iterations": SD_ITERATIONS,
                     "gradient": "envelope (dual potential)"},
        "machine": common.machine_info(args.threads), "total_seconds": clock(), "levels": levels,
        "summary": summaries,
        "curves": {d: {k: {"steps": runs[k][0]["steps"], "test_emd": [r["test_emd"] for r in runs[k]]}
                       for k in LOSSES} for d, runs in all_runs.items()},
    }
    files = common.write_outputs(args.out, "chain_spectra", results, text) + [png]
    print("wrote", ", ".join(files))
    return results


if __name__ == "__main__":
    main()
