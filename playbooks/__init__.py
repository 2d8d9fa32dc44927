"""The default playbooks, installed as ``metaheal.playbooks`` package data (``*.yaml``)."""
