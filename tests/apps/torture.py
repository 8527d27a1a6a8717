"""The torture test's app, run by ``stepq worker tests.apps.torture:client``: the program interpreter
(``tests/torture/interpreter.py``) as ``torture`` (event ``torture/run``) and ``torture-child``."""

from __future__ import annotations

import stepq
from tests.torture.interpreter import define

client = stepq.Client("t-torture")
torture, torture_child = define(client, "torture")
