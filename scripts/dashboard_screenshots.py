"""Screenshots of the dashboard for docs/dashboard.md: python scripts/dashboard_screenshots.py

Starts a local ledger on a temporary database, records demo data into it through the SDK
(several agents; a session whose tools call tools and LLMs; two runs of one agent whose
prompts differ by a word; a budget that refuses a call), and saves what a headless Chromium
shows at 1280x800 into docs/images/:

    dashboard-sessions.png   /                      the sessions
    dashboard-session.png    /sessions/{id}         a session, one step open
    dashboard-compare.png    /compare?a=...&b=...   two runs side by side
    dashboard-costs.png      /costs                 spend by day, agent, model, user
    dashboard-budgets.png    /budgets               budgets and the refusals

Needs the server extra, the playwright package (in ".[dev]") and Chromium
(``apt-get install chromium``, or ``--chromium PATH`` / AGENT_LEDGER_CHROMIUM); Playwright
drives that browser, never one of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from agent_ledger_sdk import AgentLedgerClient, BudgetGuardrailError, local

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # Chromium is found and launched as the browser tests do it, in one place

from tests.browser import CHROMIUM_FLAGS, find_chromium  # noqa: E402

IMAGES = ROOT / "docs" / "images"
VIEWPORT = {"width": 1280, "height": 800}
PROVIDER, MODEL = "openai", "gpt-4o-mini"


def call(client: AgentLedgerClient, prompt: str, response: str, tokens_in: int, tokens_out: int) -> None:
    with client.llm_call(provider=PROVIDER, model=MODEL, prompt=prompt) as llm:
        llm.record(response=response, tokens_in=tokens_in, tokens_out=tokens_out, model=MODEL)


def record_demo(ledger: local.LocalLedger) -> dict[str, str]:
    """Demo data, recorded through the SDK; the ids of the sessions the screenshots open."""
    client = ledger.client()

    @client.tool
    def fetch_page(url: str) -> str:
        return f"<html>refund policy at {url}: 14 days, original payment method</html>"

    @client.tool
    def search_docs(query: str, limit: int = 3) -> list[str]:
        page = fetch_page("https://shop.example/help/refunds")
        call(client, f"Extract the refund rules from this page:\n{page}", "Refunds: 14 days.", 1_800, 60)
        return [f"Refunds take 14 days ({query})"][:limit]

    for n, ticket in enumerate(("Where is my parcel?", "Can I change my address?", "Do you ship to Norway?")):
        with client.session("support-bot", user_id=f"customer-{n + 1}", tags=["prod", "eu"]):
            call(client, f"Answer the customer: {ticket}", "Here is what I found.", 900 + 300 * n, 120)

    with client.session("research-bot", user_id="customer-2", tags=["prod"]) as research:
        hits = search_docs("how long do refunds take")
        notes = "\n".join(f"- note {n}: customer asked about order {4100 + n}" for n in range(40))
        call(client, f"Summarise the notes and answer with {hits}:\n{notes}", "Refunds take 14 days.", 6_500, 400)
        call(client, "Write the reply to the customer.", "Your refund will arrive within 14 days.", 1_200, 90)

    runs = []
    for name in ("Alice", "Bob"):
        with client.session("writer-bot", tags=["staging"]) as run:
            call(
                client, f"Write a short note to {name} about the refund of order 1042.", "Dear customer, ...", 700, 150
            )
        runs.append(run)

    for n in range(4):
        with client.session("billing-bot", user_id="finance"):
            call(client, f"Reconcile the invoices of batch {n}.", "All invoices match.", 30_000 + 9_000 * n, 2_000)

    assert client.flush(10) == 0
    ledger.set_budget("support-bot", 1.0, monthly_limit_usd=20)
    ledger.set_budget("runaway-bot", 0.002)
    try:
        with client.session("runaway-bot"):
            for _ in range(10):  # each reserves $0.001, which fits, then spends $0.0027: the next is refused
                with client.llm_call(provider=PROVIDER, model=MODEL, prompt="Think again.", max_cost_usd=0.001) as llm:
                    llm.record(response="Still thinking.", tokens_in=10_000, tokens_out=2_000, model=MODEL)
    except BudgetGuardrailError:
        pass  # the refusal the budgets page shows
    else:
        raise SystemExit("the runaway agent was never stopped: the demo needs its refusal")
    assert client.flush(10) == 0
    client.close()
    ids = {"session": research.id, "previous": runs[0].id, "run": runs[1].id}
    if None in ids.values():
        raise SystemExit(f"the ledger did not start every session: {ids}")
    return {name: str(value) for name, value in ids.items()}


def take(output: Path, chromium: str) -> list[Path]:
    """Record the demo into a new local ledger and save the five screenshots into ``output``."""
    from playwright.sync_api import sync_playwright

    output.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with local.run() as ledger:
        ids = record_demo(ledger)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]

            def shot(name: str, path: str) -> None:
                response = page.goto(f"{ledger.url}{path}")
                if response is None or response.status != 200:
                    raise SystemExit(f"{path}: HTTP {response.status if response else '?'}")
                page.wait_for_load_state("networkidle")
                saved.append(output / f"dashboard-{name}.png")
                page.screenshot(path=str(saved[-1]))

            shot("sessions", "/")
            page.goto(f"{ledger.url}/sessions/{ids['session']}")
            for step in page.locator('section#tree details.step[data-type="tool_call"]').all()[:1]:
                step.locator("summary").first.click()  # the first tool, and what ran inside it
            for step in page.locator('section#tree details.step[data-type="llm_call"]').all()[:1]:
                step.locator("summary").first.click()  # the LLM call: prompt, response, tokens, cost
            page.locator("section#tree").scroll_into_view_if_needed()
            page.evaluate("document.querySelector('section#tree').scrollIntoView({block: 'start'})")
            saved.append(output / "dashboard-session.png")
            page.screenshot(path=str(saved[-1]))
            shot("compare", f"/compare?a={ids['previous']}&b={ids['run']}")
            shot("costs", "/costs")
            shot("budgets", "/budgets")
            browser.close()
    return saved


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=IMAGES, help="where the PNGs go (default: docs/images)")
    parser.add_argument("--chromium", default=None, help="Chromium's path (default: AGENT_LEDGER_CHROMIUM, else found)")
    args = parser.parse_args(argv)
    chromium = args.chromium or find_chromium()
    if chromium is None:
        print("no Chromium: apt-get install chromium (or pass --chromium PATH)", file=sys.stderr)
        return 1
    for path in take(args.output, chromium):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
