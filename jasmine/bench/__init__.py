"""Benchmarks behind ``jasmine bench``, a module per command; each prints figures measured in one run."""

from jasmine.bench.common import matmul_peak, synthetic_batch, with_frame_tokenizer
from jasmine.bench.data import BenchDataArgs, bench_data
from jasmine.bench.play import BenchPlayArgs, bench_play
from jasmine.bench.sample import BenchSampleArgs, bench_sample, pass_times
from jasmine.bench.train import bench_train, params_by_path, state_memory

__all__ = ["BenchDataArgs", "BenchPlayArgs", "BenchSampleArgs", "bench_data", "bench_play", "bench_sample",
           "bench_train", "matmul_peak", "params_by_path", "pass_times", "state_memory", "synthetic_batch",
           "with_frame_tokenizer"]  # fmt: skip
