"""A deterministic simulator for Cube's control plane (see docs/testing.md).

The real manager and real workers run in one process and one thread on virtual time
(:mod:`cube.sim.loop`), talking over a network the simulator controls
(:mod:`cube.sim.net`), in a cluster it can crash and restart (:mod:`cube.sim.world`),
while a seeded schedule of user actions and faults (:mod:`cube.sim.schedule`) plays
out and invariants are checked (:mod:`cube.sim.invariants`). A seed replays exactly;
a failure shrinks to a minimal schedule (:mod:`cube.sim.explore`).
"""
