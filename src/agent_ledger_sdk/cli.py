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
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Optional, Union

from ._version import __version__


def _store(args: argparse.Namespace) -> Any:
    """The ledger's service over ``--db``. Only ``serve`` and ``migrate`` upgrade a shared (PostgreSQL) schema."""
    from .local.service import LedgerService
    from .local.store import open_store

    return LedgerService(open_store(args.db, migrate=args.command in ("serve", "migrate")))


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


def _amount(text: str) -> Decimal:
    """A command-line amount, read exactly (``0.1`` is one tenth, not the float nearest to it)."""
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not amount.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return amount


def _percent(text: str) -> Decimal:
    value = _amount(text)
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 and at most 100 (a percentage of the limit)")
    return value


def _cmd_budget(args: argparse.Namespace) -> int:
    from .local.records import UNSET
    from .local.report import budgets_table, usd

    with _store(args) as store:
        command = args.budget_command
        if command in ("set", "set-workspace") and args.usd < 0:
            raise ValueError("a budget must be zero or more US dollars")
        warn = args.warn_at if getattr(args, "warn_at", None) is not None else UNSET
        if command == "set":
            window = "monthly" if args.monthly else "daily"
            limits = {"monthly_limit_usd": args.usd} if args.monthly else {"daily_limit_usd": args.usd}
            budget = store.set_budget(args.workspace, args.agent, warn_at_percent=warn, **limits)
            spent, resets = (
                (budget["spentThisMonthUsd"], budget["monthResetsAt"])
                if args.monthly
                else (budget["spentTodayUsd"], budget["resetsAt"])
            )
            warning = f"; warns at {budget['warnAtPercent']}%" if budget["warnAtPercent"] is not None else ""
            print(
                f"{window.capitalize()} budget of {args.agent!r} in workspace {args.workspace}: {usd(args.usd)} "
                f"(spent {'this month' if args.monthly else 'today'}: {usd(spent)}; resets {resets}{warning})."
            )
        elif command == "remove":
            which = {"daily": ("daily_limit_usd",), "monthly": ("monthly_limit_usd",)}.get(
                args.only or "", ("daily_limit_usd", "monthly_limit_usd")
            )
            store.set_budget(args.workspace, args.agent, **dict.fromkeys(which))
            what = f"{args.only} budget" if args.only else "budgets"
            print(f"Removed the {what} of {args.agent!r} in workspace {args.workspace}.")
        elif command == "set-workspace":
            budget = store.set_workspace_budget(args.workspace, args.usd, warn_at_percent=warn)
            print(
                f"Daily budget of workspace {args.workspace}, all agents together: {usd(args.usd)} "
                f"(spent today: {usd(budget['spentTodayUsd'])}; resets {budget['resetsAt']})."
            )
        elif command == "remove-workspace":
            store.set_workspace_budget(args.workspace, None)
            print(f"Removed the daily budget of workspace {args.workspace}.")
        else:
            print(budgets_table(store.budgets(args.workspace), store.workspace_budgets(args.workspace)))
    return 0


def _cmd_prices(args: argparse.Namespace) -> int:
    from .local.pricing import PriceBook, Rates, normalise_name
    from .local.report import prices_table

    with _store(args) as store:
        if args.prices_command == "set":
            rates = Rates(args.input, args.output, args.cache_read, args.cache_write)
            if any(r is not None and r < 0 for r in (args.input, args.output, args.cache_read, args.cache_write)):
                raise ValueError("prices must be zero or more US dollars per million tokens")
            name = normalise_name(args.model)
            store.set_price(args.workspace, name, rates)
            print(f"Price of {name} in workspace {args.workspace}: {rates.describe()}.")
        elif args.prices_command == "remove":
            name = normalise_name(args.model)
            if not store.remove_price(args.workspace, name):
                raise LookupError(f"no price for {name!r} in workspace {args.workspace}; `agent-ledger prices list`")
            print(f"Removed the price of {name} in workspace {args.workspace}.")
        elif args.prices_command == "check":
            found, description = PriceBook(args.prices).describe(
                args.provider, args.model, store.prices(args.workspace)
            )
            print(description)
            return 0 if found else 1
        else:
            print(prices_table(store.prices(args.workspace)))
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.settings_command == "set":
            value = args.value.strip().lower()
            if value not in ("true", "false", "on", "off", "yes", "no", "1", "0"):
                raise ValueError(f"allow-unpriced-models takes true or false, not {args.value!r}")
            store.set_settings(args.workspace, allow_unpriced_models=value in ("true", "on", "yes", "1"))
        settings = store.settings(args.workspace)
        allowed = settings["allowUnpricedModels"]
        print(
            f"Workspace {args.workspace}: allow-unpriced-models = {str(allowed).lower()} "
            + (
                "(agents with a budget may call models the ledger cannot price; those calls count as $0)."
                if allowed
                else "(agents with a budget are refused calls the ledger cannot price)."
            )
        )
    return 0


def _cmd_sessions(args: argparse.Namespace) -> int:
    from .local.records import SessionQuery
    from .local.report import sessions_table

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
        print(timeline(store.session_with_all_events(args.session_id)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .local.demo import run_demo

    return run_demo(db=args.db_explicit)


def _db_path(value: str) -> Union[Path, str]:
    from .local.store import is_url

    return value if is_url(value) else Path(value).expanduser()


def build_parser() -> argparse.ArgumentParser:
    from .local.server import DEFAULT_PORT, default_db_path

    db_help = (
        "a SQLite file or a postgresql:// URL (default: $AGENT_LEDGER_DB, else ledger.db in $AGENT_LEDGER_HOME "
        "or your data directory)"
    )
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

    budget = commands.add_parser("budget", help="set and show USD budgets: per agent, per workspace")
    budget_commands = budget.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    budget_set = budget_commands.add_parser(
        "set", parents=[common], help="set an agent's daily (UTC day) or, with --monthly, monthly limit in USD"
    )
    budget_set.add_argument("agent", help="agent name")
    budget_set.add_argument("usd", type=_amount, help="limit in US dollars")
    budget_set.add_argument("--monthly", action="store_true", help="the limit per UTC calendar month")
    budget_remove = budget_commands.add_parser("remove", parents=[common], help="remove an agent's limits")
    budget_remove.add_argument("agent", help="agent name")
    only = budget_remove.add_mutually_exclusive_group()
    only.add_argument("--daily", dest="only", action="store_const", const="daily", help="only the daily limit")
    only.add_argument("--monthly", dest="only", action="store_const", const="monthly", help="only the monthly limit")
    budget_workspace = budget_commands.add_parser(
        "set-workspace", parents=[common], help="set the workspace's daily limit in USD, all agents together"
    )
    budget_workspace.add_argument("usd", type=_amount, help="daily limit in US dollars")
    budget_unset_workspace = budget_commands.add_parser(
        "remove-workspace", parents=[common], help="remove the workspace's daily limit"
    )
    for sub in (budget_set, budget_workspace):
        sub.add_argument(
            "--warn-at",
            type=_percent,
            metavar="PERCENT",
            help="record a budget_warning (and log it) when the spend crosses this share of the limit, e.g. 80",
        )
    budget_commands.add_parser("show", parents=[common], help="each budget: spent, reserved, remaining, reset")
    for sub in (budget_set, budget_remove, budget_workspace, budget_unset_workspace):
        sub.add_argument("--workspace", default="default", help="workspace (default: default)")
    budget_commands.choices["show"].add_argument("--workspace", default=None, help="only this workspace")
    budget.set_defaults(handler=_cmd_budget)

    prices = commands.add_parser("prices", help="price models genai-prices does not know, per workspace")
    price_commands = prices.add_subparsers(dest="prices_command", required=True, metavar="ACTION")
    price_set = price_commands.add_parser(
        "set", parents=[common], help="price a model in USD per million tokens (PROVIDER/MODEL or MODEL)"
    )
    price_set.add_argument("model", help="provider/model, or model for any provider, e.g. openai/my-finetune")
    price_set.add_argument("--input", type=_amount, required=True, help="USD per million input tokens")
    price_set.add_argument("--output", type=_amount, required=True, help="USD per million output tokens")
    price_set.add_argument("--cache-read", type=_amount, help="USD per million cached input tokens read")
    price_set.add_argument("--cache-write", type=_amount, help="USD per million input tokens written to the cache")
    price_remove = price_commands.add_parser("remove", parents=[common], help="remove a model's price")
    price_remove.add_argument("model", help="as given to `prices set`")
    price_list = price_commands.add_parser("list", parents=[common], help="the prices added to a workspace")
    price_check = price_commands.add_parser("check", parents=[common], help="how the ledger prices a model")
    price_check.add_argument("provider", help="the provider, as the llm_call event carries it")
    price_check.add_argument("model", help="the model, as the llm_call event carries it")
    price_check.add_argument("--prices", default=None, help="JSON file of price overrides ($AGENT_LEDGER_PRICES)")
    for sub in (price_set, price_remove, price_list, price_check):
        sub.add_argument("--workspace", default="default", help="workspace (default: default)")
    prices.set_defaults(handler=_cmd_prices)

    settings = commands.add_parser("settings", help="show and change a workspace's settings")
    settings_commands = settings.add_subparsers(dest="settings_command", required=True, metavar="ACTION")
    settings_set = settings_commands.add_parser("set", parents=[common], help="change a setting")
    settings_set.add_argument("name", choices=["allow-unpriced-models"], help="the setting")
    settings_set.add_argument("value", help="true or false")
    settings_show = settings_commands.add_parser("show", parents=[common], help="show the settings")
    for sub in (settings_set, settings_show):
        sub.add_argument("--workspace", default="default", help="workspace (default: default)")
    settings.set_defaults(handler=_cmd_settings)

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
        from .local.records import LedgerError
        from .local.store import MigrationError

        if isinstance(exc, MigrationError):
            print(f"agent-ledger: error: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, LedgerError):
            print(f"agent-ledger: error: {exc.message}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
