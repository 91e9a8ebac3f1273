"""Application services: configurations and breakers as domain records, between transport and engine.

Each service holds its records, writes them through the store and installs them in the engine. Domain values
in and out (store/records.py), never protobuf; errors are store/errors.py's (`NotFound`, `Conflict`,
`StoreUnavailable`, `BadCursor`), which each transport maps once (api/errors.py `store_errors` for gRPC).
"""
