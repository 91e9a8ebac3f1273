"""The pure risk engine: no grpc, asyncio or database imports; time comes from an injected clock."""
