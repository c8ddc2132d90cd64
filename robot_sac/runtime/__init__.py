"""Asynchronous actor/learner runtime: actor processes collect, one learner ingests and updates.

`local.LocalRuntime` runs the actors as ``torch.multiprocessing`` (spawn) processes on this machine,
`ray_fleet.RayRuntime` as Ray actors on a cluster (optional extra ``ray``); `channels` and `ray_link`
hold their transports; `actor` is the one actor loop both run, `learner` the one learner loop, and
`protocols` the two contracts between them.
"""
