"""Asynchronous actor/learner runtime: actor processes collect, one learner ingests and updates.

`local.LocalRuntime` runs the actors as ``torch.multiprocessing`` (spawn) processes on this machine;
`channels` holds the shared-memory and queue transports; `actor` is the actor process's main.
"""
