"""``agent-ledger``: run and inspect a local ledger.

Every command that reads or writes the database takes ``--db PATH`` (default:
``AGENT_LEDGER_DB``, else ``ledger.db`` in the ledger's state directory:
``AGENT_LEDGER_HOME``, else the user's data directory) and works whether or not
a server is running on it.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ._version import __version__


def _store(args: argparse.Namespace) -> Any:
    from .local.storage import SQLiteStore

    return SQLiteStore(args.db)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .local.app import create_app
    from .local.pricing import PriceBook
    from .local.server import ensure_local_key, serve_forever

    say = functools.partial(print, flush=True)  # a log file or a pipe sees each line at once

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"Warning: listening on {args.host}, not only on this machine: anyone who can reach it can try keys. "
            "Put TLS and a firewall in front of it.",
            file=sys.stderr,
        )
    with _store(args) as store:
        say(f"Database: {args.db}")
        try:
            key_path, created = ensure_local_key(store)
        except OSError as exc:  # a read-only home: serve anyway, with keys made by hand
            print(
                f"Warning: could not write the local key file ({exc}); give clients a key from "
                "`agent-ledger keys create --name NAME` as AGENT_LEDGER_API_KEY.",
                file=sys.stderr,
                flush=True,
            )
        else:
            say(
                f"{'Wrote a new' if created else 'Kept the'} local key in {key_path}: clients on this machine "
                "with no AGENT_LEDGER_API_KEY use it automatically."
            )
        serve_forever(create_app(store, PriceBook(args.prices)), args.host, args.port, announce=say)
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from .local.report import keys_table

    with _store(args) as store:
        if args.keys_command == "create":
            new = store.create_key(args.name, args.workspace)
            print(f"Created key {new.key.id} ({new.key.name}) in workspace {new.key.workspace}.")
            print("Store it now: it is shown only once. Use it as AGENT_LEDGER_API_KEY:")
            print(new.secret)
        elif args.keys_command == "list":
            print(keys_table(store.list_keys()))
        else:
            revoked = store.revoke_key(args.key_id)
            print(f"Revoked key {revoked.id} ({revoked.name}).")
    return 0


def _cmd_budget(args: argparse.Namespace) -> int:
    from .local.report import budgets_table, usd

    with _store(args) as store:
        if args.budget_command == "set":
            if args.usd < 0:
                raise ValueError("the daily budget must be zero or more US dollars")
            budget = store.set_budget(args.workspace, args.agent, args.usd)
            print(
                f"Daily budget of {args.agent!r} in workspace {args.workspace}: {usd(budget['dailyLimitUsd'])} "
                f"(spent today: {usd(budget['spentTodayUsd'])}; resets {budget['resetsAt']})."
            )
        elif args.budget_command == "remove":
            store.set_budget(args.workspace, args.agent, None)
            print(f"Removed the daily budget of {args.agent!r} in workspace {args.workspace}.")
        else:
            print(budgets_table(store.budgets(args.workspace)))
    return 0


def _cmd_sessions(args: argparse.Namespace) -> int:
    from .local.report import sessions_table
    from .local.storage import SessionQuery

    with _store(args) as store:
        page = store.list_sessions(
            SessionQuery(
                agent_name=args.agent,
                status=args.status,
                user_id=args.user,
                tags=tuple(args.tag or ()),
                limit=args.limit,
                workspace=args.workspace,
            )
        )
        print(sessions_table(page["sessions"]))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .local.report import timeline

    with _store(args) as store:
        print(timeline(store.get_session(args.session_id)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .local.demo import run_demo

    return run_demo(db=args.db_explicit)


def _db_path(value: str) -> Path:
    return Path(value).expanduser()


def build_parser() -> argparse.ArgumentParser:
    from .local.server import DEFAULT_PORT, default_db_path

    db_help = "SQLite database (default: $AGENT_LEDGER_DB, else ledger.db in $AGENT_LEDGER_HOME or your data directory)"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=_db_path, default=None, help=db_help)

    parser = argparse.ArgumentParser(
        prog="agent-ledger", description="Run and inspect a local Agent Ledger: sessions, costs and budgets."
    )
    parser.add_argument("--version", action="version", version=f"agent-ledger-sdk {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="serve the Agent Ledger API")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument("--prices", default=None, help="JSON file of price overrides ($AGENT_LEDGER_PRICES)")
    serve.set_defaults(handler=_cmd_serve)

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", parents=[common], help="create a key; prints it once, last")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--workspace", default="default", help="the key's workspace (default: default)")
    key_commands.add_parser("list", parents=[common], help="list keys (never their secrets)")
    revoke = key_commands.add_parser("revoke", parents=[common], help="revoke a key by its id")
    revoke.add_argument("key_id", help="the id that `keys list` shows")
    keys.set_defaults(handler=_cmd_keys)

    budget = commands.add_parser("budget", help="set and show daily USD budgets per agent")
    budget_commands = budget.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    budget_set = budget_commands.add_parser("set", parents=[common], help="set an agent's daily limit in USD")
    budget_set.add_argument("agent", help="agent name")
    budget_set.add_argument("usd", type=float, help="daily limit in US dollars")
    budget_remove = budget_commands.add_parser("remove", parents=[common], help="remove an agent's limit")
    budget_remove.add_argument("agent", help="agent name")
    budget_commands.add_parser("show", parents=[common], help="spend today against each limit")
    for sub in (budget_set, budget_remove):
        sub.add_argument("--workspace", default="default", help="workspace (default: default)")
    budget_commands.choices["show"].add_argument("--workspace", default=None, help="only this workspace")
    budget.set_defaults(handler=_cmd_budget)

    sessions = commands.add_parser("sessions", parents=[common], help="list recorded sessions, newest first")
    sessions.add_argument("--agent", help="only this agent")
    sessions.add_argument("--status", choices=["running", "success", "error"], help="only this status")
    sessions.add_argument("--user", help="only this userId")
    sessions.add_argument("--tag", action="append", help="only sessions with this tag (repeat: with every one)")
    sessions.add_argument("--workspace", help="only this workspace")
    sessions.add_argument("--limit", type=int, default=20, help="how many (default: 20)")
    sessions.set_defaults(handler=_cmd_sessions)

    show = commands.add_parser("show", parents=[common], help="a session's timeline with costs")
    show.add_argument("session_id")
    show.set_defaults(handler=_cmd_show)

    demo = commands.add_parser("demo", parents=[common], help="run an example agent against a local ledger")
    demo.set_defaults(handler=_cmd_demo)

    parser.set_defaults(default_db=default_db_path)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``agent-ledger`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.db_explicit = getattr(args, "db", None)
    if getattr(args, "db", None) is None:
        args.db = args.default_db()
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except ImportError as exc:
        print(
            f"agent-ledger {args.command} needs the server extra ({exc}): pip install 'agent-ledger-sdk[server]'",
            file=sys.stderr,
        )
        return 2
    except (ValueError, OSError, LookupError) as exc:
        print(f"agent-ledger: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from .local.storage import StoreError

        if isinstance(exc, StoreError):
            print(f"agent-ledger: error: {exc.message}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
