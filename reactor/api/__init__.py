"""The runner's HTTP surface (Starlette, served by uvicorn in the reactor's event loop)."""
