"""`image-search keys create|list|revoke`: API keys, straight in the configured metadata database.

No running service is needed: the key table lives next to the image rows, and the service
reads it. A new key is printed once, on stdout alone (so `KEY=$(image-search keys create ...)`
works); only its sha256 is stored.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from image_search.config import load_settings
from image_search.errors import SearchEngineError
from image_search.keys import SCOPES, KeyInfo, KeyStore

logger = logging.getLogger("image_search")
_COLUMNS = "{:<12}  {:<5}  {:<5}  {:<25}  {:<25}  {}"


def add_key_commands(subparsers: Any) -> None:
    """Called by cli.main.build_parser with its subparsers object."""
    keys = subparsers.add_parser(
        "keys", help="create, list or revoke API keys", description=__doc__
    )
    keys.add_argument("--config", default=None, help="config.yaml (default: ISE_CONFIG or ./)")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    p = sub.add_parser("create", help="make a key and print it (once)")
    p.add_argument(
        "--scope",
        choices=SCOPES,
        required=True,
        help="read: list, get, search; write: also upload, delete one; admin: all",
    )
    p.add_argument("--name", required=True, help="who or what the key is for")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("list", help="every key: id, scope, name, last 4 characters, dates")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("revoke", help="revoke a key by its id (the service stops accepting it)")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_revoke)


def _store(args: argparse.Namespace) -> KeyStore:
    settings = load_settings(args.config)
    store = KeyStore(settings.stores.metadata_uri, settings.stores.connect_timeout_s)
    store.create_schema()
    return store


def _run(args: argparse.Namespace, work: Any) -> int:
    """Open the store, do the work, close; domain errors become a message and exit code 1."""
    try:
        store = _store(args)
        try:
            work(store)
        finally:
            store.close()
    except SearchEngineError as exc:
        logger.error("%s", exc.message)
        return 1
    return 0


def _row(info: KeyInfo) -> str:
    revoked = info.revoked_at.isoformat(timespec="seconds") if info.revoked_at else "-"
    created = info.created_at.isoformat(timespec="seconds")
    return _COLUMNS.format(info.key_id, info.scope, "…" + info.last4, created, revoked, info.name)


def cmd_create(args: argparse.Namespace) -> int:
    def work(store: KeyStore) -> None:
        new = store.create(args.name, args.scope)
        sys.stdout.write(new.key + "\n")
        logger.info(
            "created %s key %s (%s); it is shown only now", new.info.scope, new.info.key_id,
            new.info.name,
        )  # fmt: skip

    return _run(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    def work(store: KeyStore) -> None:
        header = _COLUMNS.format("id", "scope", "key", "created", "revoked", "name")
        sys.stdout.write("\n".join([header, *map(_row, store.list_keys())]) + "\n")

    return _run(args, work)


def cmd_revoke(args: argparse.Namespace) -> int:
    def work(store: KeyStore) -> None:
        info = store.revoke(args.key_id)
        logger.info("revoked key %s (%s) at %s", info.key_id, info.name, info.revoked_at)

    return _run(args, work)
