"""Local stand-ins for external services, speaking their real wire formats over 127.0.0.1."""

from aiohttp import web


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start ``app`` on 127.0.0.1 on a free port, without an access log (the requests' paths may
    hold secrets, like a Discord webhook token). Returns the runner (``cleanup()`` stops it) and
    the base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
