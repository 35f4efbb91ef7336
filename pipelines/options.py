"""Sizing of the Ray Data stages: batch size, actor pools and the CPUs each asks Ray for.

Settings has no section for these (config.yaml is validated with extra keys forbidden), so they
are command-line flags with defaults that suit one machine; `ISE_PIPELINE_*` variables change
the defaults, which is how a Ray job gets them without editing the entrypoint.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

ENV_PREFIX = "ISE_PIPELINE_"


@dataclass(frozen=True)
class PoolOptions:
    batch_size: int = 32
    embed_actors: int = 1
    embed_cpus: float = 1.0
    # Half a CPU per read/hash/decode task: they also wait on storage, and on a 2-core node a
    # whole CPU each would leave none beside the embed and write actors (the job would stall).
    decode_cpus: float = 0.5
    write_actors: int = 1
    write_cpus: float = 0.1


# One flag per field: --batch-size for batch_size, default from ISE_PIPELINE_BATCH_SIZE.
_HELP = {
    "batch_size": "images per forward pass and per store write",
    "embed_actors": "embed actors, each loading the model once (the pool may shrink when starved)",
    "embed_cpus": "CPUs each embed actor asks Ray for (its model runs model.threads threads)",
    "decode_cpus": "CPUs per read/hash/decode task",
    "write_actors": "writer actors holding store clients (1-2: writes are cheap next to embedding)",
    "write_cpus": "CPUs per writer actor",
}
_CHOICES = {"write_actors": (1, 2)}


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Ray Data stages (defaults also from ISE_PIPELINE_<NAME>)")
    defaults = PoolOptions()
    for f in fields(PoolOptions):
        kind = int if f.type in (int, "int") else float
        default = kind(os.environ.get(ENV_PREFIX + f.name.upper(), getattr(defaults, f.name)))
        g.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=default,
            choices=_CHOICES.get(f.name),
            help=f"{_HELP[f.name]} (default %(default)s)",
        )


def pool_options_from_args(args: argparse.Namespace) -> PoolOptions:
    opts = PoolOptions(**{f.name: getattr(args, f.name) for f in fields(PoolOptions)})
    if opts.batch_size < 1 or opts.embed_actors < 1:
        raise SystemExit("--batch-size and --embed-actors must be at least 1")
    return opts
