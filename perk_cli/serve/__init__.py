"""`perk serve`: many memories behind one loaded model, over HTTP (FastAPI + uvicorn).

    perk serve --store memories/ --port 8765            # the shipped checkpoint, loopback only
    curl -X POST localhost:8765/v1/memories -d '{"text": "Mary went to the kitchen."}'

`store` is the folder of memory files (the ones `perk adapt` writes), `service` the loaded model with its
adaptation jobs and its cache of memories, `app` the HTTP routes, `client` the standard-library client
`perk ask --server` uses (no torch import). No model code of its own: it calls perk_cli.memory.
"""
