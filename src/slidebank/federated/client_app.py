"""The Flower ClientApp a Slidebank node runs: each round it reads its own patches from its own
node, under its own grant, trains locally and sends back model parameters (never pixels).

Runs inside Flower's runtime (`flower-supernode`, `.venv-flower`), a fresh process per message.
The node's facts come from its `--node-config`, set by `slidebank federated join` and never seen by
the coordinator: `slidebank-url`, `token-file`, `dataset`, `node-name`.

A node that may not read its dataset (grant revoked or expired, token withdrawn), or finds no patch
of the plan's classes in it, answers the round with no examples and the reason: it contributes
nothing, and the coordinator records why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from slidebank.client import Client, SlidebankError
from slidebank.federated.model import build_model, get_weights, set_weights
from slidebank.federated.plan import TrainingPlan
from slidebank.federated.training import plan_patches, train

REASON_LIMIT = 300


class NodeTrainer(NumPyClient):
    """One round of local training on this node's dataset."""

    def __init__(self, context: Context) -> None:
        config = context.node_config
        self.url = str(config["slidebank-url"])
        self.token_file = Path(str(config["token-file"]))
        self.dataset = str(config["dataset"])
        self.name = str(config.get("node-name", self.url))
        self.run_id = context.run_id
        self.plan = TrainingPlan.from_run_config(context.run_config)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        who = {"node": self.name, "dataset": self.dataset}
        model = build_model(self.plan.model, len(self.plan.classes), self.plan.seed)
        set_weights(model, parameters)
        try:
            token = self.token_file.read_text().strip()
            with Client(self.url, token, progress=False) as bank:
                slides = [s["slide_id"] for s in bank.slides(dataset=self.dataset)]
                if not slides:
                    raise SlidebankError(f"no slide of {self.dataset} is readable with this node's token")
                declared = bank.start_export(slides, {"federated_run": self.run_id, "round": int(config.get("round", 0)),
                                                      **self.plan.run_config()}, use="training")
                patches = plan_patches(bank, slides, self.plan)
                scores = train(model, patches, self.plan)
        except (SlidebankError, OSError, ValueError) as refusal:  # no access, no token, nothing labelled to learn
            return parameters, 0, {**who, "status": "refused", "reason": str(refusal)[:REASON_LIMIT]}
        return get_weights(model), len(patches), {
            **who, "status": "trained", "grant": declared["grants"].get(self.dataset) or "",
            "declaration": declared["export_id"], "slides": len(slides), "patches": len(patches),
            "loss": scores.loss, "accuracy": scores.accuracy}


def _secure_aggregation(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+ when the coordinator runs it (its stages carry their configs), else straight through."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _dp_clipping(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this node's update when the coordinator's DP wrapper sends a clipping norm."""
    if msg.metadata.message_type == MessageType.TRAIN:
        instructions = compat.recorddict_to_fitins(msg.content, keep_input=True)
        if KEY_CLIPPING_NORM in instructions.config:
            return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def _trainer(context: Context) -> Any:
    return NodeTrainer(context).to_client()


# Clipping inside SecAgg+: the update is clipped before it is masked.
app = ClientApp(client_fn=_trainer, mods=[_secure_aggregation, _dp_clipping])
