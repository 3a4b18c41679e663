"""Federated training across Slidebank nodes with Flower: each node trains on its own slides,
under its own grant, audited by its own node; only model parameters travel.

`plan` (what is trained), `model` (built in code), `training` (local rounds, also for single-node
and pooled baselines), `journal` (rounds, model and provenance on the coordinator), `runtime`
(Flower's processes and `flwr`), and the Flower apps `client_app` and `server_app`, which import
flwr and run inside Flower's runtime (`.venv-flower`). Commands: `slidebank federated …`.
"""
