"""``python -m metaheal.schemas``: regenerate every ``.avsc`` from the event models."""

from metaheal.schemas import write_all

for path in write_all():
    print(path.name)
