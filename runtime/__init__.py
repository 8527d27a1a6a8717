"""stepq's runtime: run state on Redis, atomic step commits, event routing, scheduling.

Owns every stepq key and Lua script. arq carries the jobs; the truth of a run lives here.
"""
