"""The executor: the tactics layer.

A directive becomes a plan (:mod:`.planner`), passes the trust check (:mod:`metaheal.agents.common.policy`),
waits for an operator when needed (:mod:`.approvals`), runs through
the actuators (:mod:`.actuators`), is verified on live telemetry (:mod:`.verification`) and rolled back when it
did not work; :mod:`.service` drives it and :mod:`.state` makes it restart-safe.
"""
