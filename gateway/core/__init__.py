"""Sans-I/O core: pure decisions and data, no asyncio, network or database library."""
