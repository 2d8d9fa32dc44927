"""What several services use: playbooks, the policy that allows them, the service graph and healthy baselines.

Imported by the meta loop, the executor and the advisors; imports none of them.
"""
