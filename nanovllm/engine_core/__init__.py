"""The engine core in a process of its own: `client.ProcessEngineClient` is the API server's
EngineClient of it, `proc` the engine process's side, `wire` what crosses between them."""
