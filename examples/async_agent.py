"""An asyncio agent: tools run concurrently with asyncio.gather, each gets its own stepIndex.

python examples/async_agent.py
"""

from __future__ import annotations

import asyncio
import os

from agent_ledger_sdk import AsyncAgentLedgerClient

CITIES = {"Paris": 14, "Oslo": -3, "Lima": 22, "Cairo": 28}


class WeatherServiceDown(ConnectionError):
    pass


def build(ledger: AsyncAgentLedgerClient) -> object:
    @ledger.tool
    async def weather(city: str) -> dict[str, object]:
        await asyncio.sleep(0.01)
        if city not in CITIES:
            raise WeatherServiceDown(f"no station for {city}")
        return {"city": city, "celsius": CITIES[city]}

    @ledger.session("travel-planner")
    async def plan(cities: list[str]) -> str:
        results = await asyncio.gather(*(weather(c) for c in cities), return_exceptions=True)
        forecasts = [r for r in results if isinstance(r, dict)]
        prompt = [{"role": "user", "content": f"Pick the warmest of {forecasts}"}]
        async with ledger.llm_call(provider="anthropic", model="claude-3-5-haiku-latest", prompt=prompt) as call:
            await asyncio.sleep(0.02)  # a real client call goes here
            warmest = max(forecasts, key=lambda f: f["celsius"])  # type: ignore[arg-type, return-value]
            answer = f"Go to {warmest['city']}."
            call.record(response=answer, tokens_in=60, tokens_out=8)
        return answer

    return plan


async def main(ledger: AsyncAgentLedgerClient) -> None:
    plan = build(ledger)
    print(await plan(["Paris", "Oslo", "Lima", "Cairo", "Atlantis"]))  # type: ignore[operator]
    await ledger.aclose()  # sends what is queued, within a bounded wait
    print(f"recorded {ledger.stats.sent} events")


if __name__ == "__main__":
    if os.environ.get("AGENT_LEDGER_BASE_URL"):
        asyncio.run(main(AsyncAgentLedgerClient()))
    else:
        from agent_ledger_sdk import local

        with local.run() as running:
            asyncio.run(main(running.async_client()))
