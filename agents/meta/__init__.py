"""The meta loop: the strategy layer.

One cycle reads the evidence (:mod:`.observations`), chooses a focus area (:mod:`.focus`), moves the
guardrails (:mod:`.guardrails`) from what was learned (:mod:`.learning`), enables probes (:mod:`.probes`),
and emits directives (:mod:`.loop`); one instance leads at a time (:mod:`.leader`).
"""
