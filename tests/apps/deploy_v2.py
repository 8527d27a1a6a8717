"""Version 2 of the app of ``deploy_v1``: the same app id, one function more."""

from __future__ import annotations

import stepq as inngest

client = inngest.Inngest(app_id="t-deploy")


@client.create_function(id="old", trigger=inngest.TriggerEvent(event="test/deploy.old"))
async def old(ctx: inngest.Context) -> str:
    return "old"


@client.create_function(id="new", trigger=inngest.TriggerEvent(event="test/deploy.new"))
async def new(ctx: inngest.Context) -> str:
    return "new"
