"""More than one bridge: nodes that share state through Redis (DESIGN.md section 7).

Without a `cluster:` section none of this runs and a bridge keeps everything in memory. With
it, each node holds a lease in Redis (`node`), takes each call exactly once (`claim`), counts
calls against cluster-wide limits (`limits`) and mirrors its open dialogs (`dialogs`), so that
a survivor ends a dead node's calls (`reaper`). Redis is the engine: redis-py's asyncio client,
plain keys, a few Lua scripts, no protocol of our own.
"""
