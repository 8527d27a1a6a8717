"""The randomized torture test's parts: programs, their generator and reference model, the interpreter
that runs them as stepq functions, the cluster and faults they run under, and the invariants checked.

A *program* is a small JSON tree of operations (see ``program``). The interpreter walks it inside a
stepq function; the model walks it in plain Python and says what the run must end as. The driver
sends a few hundred programs to a fleet that is being SIGKILLed, paused and cut off from Redis, then
``invariants`` compares every run with its model.
"""
