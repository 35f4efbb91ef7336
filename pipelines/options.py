"""Sizing of the Ray Data stages: batch size, actor pools and the CPUs each asks Ray for.

Settings has no section for these (config.yaml is validated with extra keys forbidden), so they
are command-line flags with defaults that suit one machine; `ISE_PIPELINE_*` variables change
the defaults, which is how a Ray job gets them without editing the entrypoint.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

ENV_PREFIX = "ISE_PIPELINE_"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(ENV_PREFIX + name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(ENV_PREFIX + name, default))


@dataclass(frozen=True)
class PoolOptions:
    batch_size: int = 32  # images per forward pass, and per store write
    embed_actors: int = 1  # embed actors started (the pool may shrink to 1 when starved)
    embed_cpus: float = 1.0  # logical CPUs per embed actor (match model.threads)
    # Half a CPU per read/hash/decode task: they also wait on storage, and on a 2-core node a
    # whole CPU each would leave none beside the embed and write actors (the job would stall).
    decode_cpus: float = 0.5
    write_actors: int = 1  # 1-2: writes are cheap next to embedding
    write_cpus: float = 0.1


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    d = PoolOptions()
    g = parser.add_argument_group("Ray Data stages (defaults also from ISE_PIPELINE_<NAME>)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=_env_int("BATCH_SIZE", d.batch_size),
        help="images per forward pass and per store write (default %(default)s)",
    )
    g.add_argument(
        "--embed-actors",
        type=int,
        default=_env_int("EMBED_ACTORS", d.embed_actors),
        help="embed actors, each loading the model once (default %(default)s)",
    )
    g.add_argument(
        "--embed-cpus",
        type=float,
        default=_env_float("EMBED_CPUS", d.embed_cpus),
        help="CPUs each embed actor asks Ray for; match model.threads (default %(default)s)",
    )
    g.add_argument(
        "--decode-cpus",
        type=float,
        default=_env_float("DECODE_CPUS", d.decode_cpus),
        help="CPUs per read/hash/decode task (default %(default)s)",
    )
    g.add_argument(
        "--write-actors",
        type=int,
        choices=(1, 2),
        default=_env_int("WRITE_ACTORS", d.write_actors),
        help="writer actors holding store clients (default %(default)s)",
    )
    g.add_argument(
        "--write-cpus",
        type=float,
        default=_env_float("WRITE_CPUS", d.write_cpus),
        help="CPUs per writer actor (default %(default)s)",
    )


def pool_options_from_args(args: argparse.Namespace) -> PoolOptions:
    opts = PoolOptions(
        batch_size=args.batch_size,
        embed_actors=args.embed_actors,
        embed_cpus=args.embed_cpus,
        decode_cpus=args.decode_cpus,
        write_actors=args.write_actors,
        write_cpus=args.write_cpus,
    )
    if opts.batch_size < 1 or opts.embed_actors < 1:
        raise SystemExit("--batch-size and --embed-actors must be at least 1")
    return opts
