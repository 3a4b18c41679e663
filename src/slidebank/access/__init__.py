"""Governance: people, roles, datasets under policies, access requests, grants, erasure."""

OPERATOR = "operator"  # the node's own command line acts as this administrator
