"""Version 1 of an app, for the rolling-deploy registration test (version 2 adds a function)."""

from __future__ import annotations

import stepq as inngest

client = inngest.Inngest(app_id="t-deploy")


@client.create_function(id="old", trigger=inngest.TriggerEvent(event="test/deploy.old"))
async def old(ctx: inngest.Context) -> str:
    return "old"
